//! Whether the audit chain covers the records it must. The hash chain proves that the events it
//! holds are in order and unedited, but a chain cut short after any event still verifies. Every
//! change to a certificate, a revocation log entry, an identity block or a request appends its
//! event in the same transaction, so a record without its event means events are missing: most
//! likely the chain's tail was cut off. Until signed checkpoints exist, this is what
//! `mintgate audit verify` can tell.
//!
//! [`Coverage`] indexes the chain once (borrowing it); each record is then looked up in constant
//! time, so the store can stream any number of records past it.

use std::collections::HashSet;
use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ChainedEvent;
use crate::Serial;
use crate::lifecycle::{CertState, RequestState};
use crate::model::RequestKind;

/// A stored record whose state the audit trail must account for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Certificate {
        serial: Serial,
        state: CertState,
        issued_at: OffsetDateTime,
        /// When it entered `state`.
        updated_at: OffsetDateTime,
    },
    /// An entry of the revocation log.
    Revocation {
        seq: i64,
        serial: Serial,
        revoked_at: OffsetDateTime,
    },
    IdentityBlock {
        spiffe_id: String,
        blocked_at: OffsetDateTime,
    },
    Request {
        caller: String,
        request_id: String,
        kind: RequestKind,
        state: RequestState,
        /// For UNBLOCK: `UNBLOCKED` or `NOT_BLOCKED`.
        reason: Option<String>,
        updated_at: OffsetDateTime,
    },
}

impl Record {
    /// When the change that `action` records happened.
    fn changed_at(&self, action: &str) -> OffsetDateTime {
        match self {
            Self::Certificate { issued_at, .. } if action == "certificate.issued" => *issued_at,
            Self::Certificate { updated_at: at, .. }
            | Self::Revocation { revoked_at: at, .. }
            | Self::IdentityBlock { blocked_at: at, .. }
            | Self::Request { updated_at: at, .. } => *at,
        }
    }

    /// The events the record's state requires: for each entry, at least one of its actions.
    fn needs(&self) -> &'static [&'static [&'static str]] {
        const ISSUED: &[&str] = &["certificate.issued"];
        const REVOKED: &[&str] = &["certificate.revoked"];
        match self {
            Self::Certificate { state, .. } => match state {
                CertState::Active | CertState::Expired => &[ISSUED],
                CertState::Superseded => &[ISSUED, &["certificate.superseded"]],
                CertState::Revoked => &[ISSUED, REVOKED],
            },
            Self::Revocation { .. } => &[REVOKED],
            Self::IdentityBlock { .. } => &[&["identity.blocked"]],
            Self::Request {
                kind,
                state,
                reason,
                ..
            } => request_needs(*kind, *state, reason.as_deref()),
        }
    }
}

/// What a request in `state` must have left in the chain (by its caller and request id).
fn request_needs(
    kind: RequestKind,
    state: RequestState,
    reason: Option<&str>,
) -> &'static [&'static [&'static str]] {
    use RequestKind as K;
    use RequestState as S;
    match (kind, state) {
        (_, S::Denied) => &[&["request.denied"]],
        (_, S::Rejected) => &[&["request.rejected"]],
        (K::Enroll | K::Renew, S::Approved) => &[&["request.approved", "request.retried"]],
        (K::Enroll | K::Renew, S::Issued) => &[&["certificate.issued"]],
        (K::Enroll | K::Renew, S::Failed) => &[&["request.failed"]],
        (K::JoinToken, S::Issued) => &[&["join_token.created"]],
        (K::Revoke, S::Issued) => &[&["certificate.revoked"]],
        (K::Unblock, S::Issued) if reason == Some("UNBLOCKED") => &[&["identity.unblocked"]],
        // Lifting a block that was not there changes nothing and appends nothing; revoking an
        // identity with nothing live and no block neither. What they did change (revocations,
        // blocks) is checked as records of its own.
        (K::Unblock | K::RevokeIdentity, S::Issued) => &[],
        // No operation stores these (yet): nothing to expect.
        (K::JoinToken | K::Revoke | K::RevokeIdentity | K::Unblock, S::Approved | S::Failed)
        | (_, S::Received | S::Verified | S::PendingApproval | S::Expired) => &[],
    }
}

/// The chain indexed by what records look their events up by.
#[derive(Debug)]
pub struct Coverage<'a> {
    /// (action, subject) of every event.
    by_subject: HashSet<(&'a str, &'a str)>,
    /// (actor, request id, action) of every event that names a request.
    by_request: HashSet<(&'a str, &'a str, &'a str)>,
    /// Sequence number and time of the newest event.
    head: Option<(i64, i64)>,
}

impl<'a> Coverage<'a> {
    pub fn new(chain: impl IntoIterator<Item = &'a ChainedEvent>) -> Self {
        let mut coverage = Self {
            by_subject: HashSet::new(),
            by_request: HashSet::new(),
            head: None,
        };
        for c in chain {
            let e = &c.event;
            coverage.by_subject.insert((&e.action, &e.subject));
            if let Some(request_id) = &e.request_id {
                coverage
                    .by_request
                    .insert((&e.actor, request_id, &e.action));
            }
            if coverage.head.is_none_or(|(seq, _)| e.seq > seq) {
                coverage.head = Some((e.seq, e.at));
            }
        }
        coverage
    }

    /// The first event `record` requires that the chain lacks.
    pub fn missing(&self, record: Record) -> Option<Missing> {
        let action = record
            .needs()
            .iter()
            .find(|any_of| !any_of.iter().any(|action| self.has(&record, action)))?
            .first()?;
        Some(Missing {
            at: record.changed_at(action),
            record,
            action,
        })
    }

    /// An empty list of gaps in this chain, to add [`Coverage::missing`] records to.
    pub fn gaps(&self) -> Gaps {
        Gaps {
            head: self.head,
            count: 0,
            earliest: Vec::new(),
        }
    }

    fn has(&self, record: &Record, action: &str) -> bool {
        match record {
            Record::Certificate { serial, .. } | Record::Revocation { serial, .. } => self
                .by_subject
                .contains(&(action, format!("serial:{serial}").as_str())),
            Record::IdentityBlock { spiffe_id, .. } => self
                .by_subject
                .contains(&(action, format!("identity:{spiffe_id}").as_str())),
            Record::Request {
                caller, request_id, ..
            } => self
                .by_request
                .contains(&(caller.as_str(), request_id.as_str(), action)),
        }
    }
}

/// A record without an event it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub record: Record,
    /// The action expected (the first one, where any of several would do).
    pub action: &'static str,
    /// When the change that event would record happened.
    pub at: OffsetDateTime,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = time_text(self.at);
        match &self.record {
            Record::Certificate {
                serial,
                state: CertState::Active,
                issued_at,
                ..
            } => write!(
                f,
                "certificate {serial} (ACTIVE, issued {})",
                time_text(*issued_at)
            )?,
            Record::Certificate {
                serial,
                state,
                issued_at,
                updated_at,
            } => write!(
                f,
                "certificate {serial} ({state} {}, issued {})",
                time_text(*updated_at),
                time_text(*issued_at)
            )?,
            Record::Revocation { seq, serial, .. } => {
                write!(f, "revocation {seq} of certificate {serial} (revoked {at})")?;
            }
            Record::IdentityBlock { spiffe_id, .. } => {
                write!(f, "block of {spiffe_id} (blocked {at})")?;
            }
            Record::Request {
                caller,
                request_id,
                kind,
                state,
                ..
            } => write!(f, "request {request_id} of {caller} ({kind} {state}, {at})")?,
        }
        write!(f, " has no {} event", self.action)
    }
}

/// The records found without their events: how many, and the earliest few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gaps {
    head: Option<(i64, i64)>,
    count: u64,
    /// Sorted by time, at most [`Gaps::SHOWN`] once [`Gaps::add`] is done.
    earliest: Vec<Missing>,
}

impl Gaps {
    /// How many of the missing records are named.
    pub const SHOWN: usize = 5;

    pub fn add(&mut self, missing: Missing) {
        self.count += 1;
        self.earliest.push(missing);
        if self.earliest.len() >= 4 * Self::SHOWN {
            self.trim();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The earliest missing records (by when their change happened), at most [`Gaps::SHOWN`].
    pub fn earliest(&mut self) -> &[Missing] {
        self.trim();
        &self.earliest
    }

    fn trim(&mut self) {
        self.earliest.sort_by_key(|m| m.at);
        self.earliest.truncate(Self::SHOWN);
    }
}

impl fmt::Display for Gaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.clone();
        let records = if self.count == 1 {
            "record has"
        } else {
            "records have"
        };
        write!(
            f,
            "audit chain incomplete: {} {records} no audit event",
            self.count
        )?;
        match self.head {
            Some((seq, at)) => {
                let at = OffsetDateTime::from_unix_timestamp(at).map_or(at.to_string(), time_text);
                write!(
                    f,
                    "; the chain may have been truncated after seq {seq} ({at})"
                )?;
            }
            None => write!(f, "; the chain is empty (it may have been truncated)")?,
        }
        for missing in shown.earliest() {
            write!(f, "\n  {missing}")?;
        }
        let more = self.count.saturating_sub(Gaps::SHOWN as u64);
        if more > 0 {
            write!(f, "\n  … and {more} more")?;
        }
        Ok(())
    }
}

fn time_text(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, GENESIS};

    const NODE: &str = "spiffe://td/node/a";

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn serial(n: u8) -> Serial {
        Serial::from_random([n; 17])
    }

    /// What an issuance, then a revocation of what it issued, append.
    fn chain() -> Vec<ChainedEvent> {
        let event = |seq: i64, action: &str, subject: String| AuditEvent {
            seq,
            at: at(seq).unix_timestamp(),
            actor: NODE.into(),
            action: action.into(),
            subject,
            spiffe_id: None,
            dns_names: vec![],
            key_type: None,
            not_before: None,
            not_after: None,
            policy_version: None,
            policy_rule: None,
            request_id: Some(if seq < 3 { "e-1" } else { "v-1" }.into()),
            detail: None,
        };
        let mut prev = GENESIS;
        [
            event(1, "request.approved", format!("request:{NODE}#e-1")),
            event(2, "certificate.issued", format!("serial:{}", serial(1))),
            event(3, "certificate.revoked", format!("serial:{}", serial(1))),
        ]
        .into_iter()
        .map(|e| {
            let c = ChainedEvent::seal(e, prev);
            prev = c.hash;
            c
        })
        .collect()
    }

    fn records() -> Vec<Record> {
        let request = |request_id: &str, kind, updated_at| Record::Request {
            caller: NODE.into(),
            request_id: request_id.into(),
            kind,
            state: RequestState::Issued,
            reason: None,
            updated_at,
        };
        vec![
            Record::Certificate {
                serial: serial(1),
                state: CertState::Revoked,
                issued_at: at(2),
                updated_at: at(3),
            },
            Record::Revocation {
                seq: 1,
                serial: serial(1),
                revoked_at: at(3),
            },
            request("e-1", RequestKind::Enroll, at(2)),
            request("v-1", RequestKind::Revoke, at(3)),
        ]
    }

    fn gaps(chain: &[ChainedEvent]) -> Gaps {
        let coverage = Coverage::new(chain);
        let mut gaps = coverage.gaps();
        for r in records() {
            if let Some(m) = coverage.missing(r) {
                gaps.add(m);
            }
        }
        gaps
    }

    #[test]
    fn a_whole_chain_covers_every_record() {
        assert!(gaps(&chain()).is_empty());
    }

    #[test]
    fn a_cut_tail_leaves_the_newest_records_uncovered() {
        let mut c = chain();
        c.truncate(2);
        let mut found = gaps(&c);
        assert_eq!(found.count(), 3, "{found}");
        let text = found.to_string();
        assert!(text.contains("truncated after seq 2"), "{text}");
        let first = &found.earliest()[0];
        assert_eq!(first.action, "certificate.revoked");
        assert!(
            matches!(first.record, Record::Certificate { .. }),
            "{first}"
        );

        c.truncate(0);
        let found = gaps(&c);
        assert_eq!(found.count(), 4);
        assert!(found.to_string().contains("the chain is empty"), "{found}");
    }

    #[test]
    fn an_event_for_another_caller_or_subject_does_not_count() {
        let mut c = chain();
        c[1].event.subject = format!("serial:{}", serial(2));
        c[1].event.actor = "spiffe://td/node/b".into();
        let mut found = gaps(&c);
        let missing: Vec<_> = found.earliest().iter().map(|m| m.action).collect();
        assert_eq!(missing, ["certificate.issued", "certificate.issued"]);
    }

    #[test]
    fn requests_that_change_nothing_need_no_event() {
        let coverage = Coverage::new(&[]);
        let unblock = |reason: &str| Record::Request {
            caller: NODE.into(),
            request_id: "u-1".into(),
            kind: RequestKind::Unblock,
            state: RequestState::Issued,
            reason: Some(reason.into()),
            updated_at: at(0),
        };
        assert_eq!(coverage.missing(unblock("NOT_BLOCKED")), None);
        assert_eq!(
            coverage.missing(unblock("UNBLOCKED")).map(|m| m.action),
            Some("identity.unblocked")
        );
    }

    #[test]
    fn only_the_earliest_few_are_kept() {
        let coverage = Coverage::new(&[]);
        let mut gaps = coverage.gaps();
        for n in (1..=100u8).rev() {
            let record = Record::Certificate {
                serial: serial(n),
                state: CertState::Active,
                issued_at: at(i64::from(n)),
                updated_at: at(i64::from(n)),
            };
            gaps.add(coverage.missing(record).unwrap());
        }
        assert_eq!(gaps.count(), 100);
        let times: Vec<_> = gaps.earliest().iter().map(|m| m.at).collect();
        assert_eq!(times, (1..=5).map(at).collect::<Vec<_>>());
        assert!(gaps.to_string().ends_with("… and 95 more"), "{gaps}");
    }
}
