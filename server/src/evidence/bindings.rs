//! `role-bindings.json`: every role binding in force at some time in the period, rebuilt from
//! the `role_bindings` rows and the applied role-binding proposals. A binding is made only by
//! the first start's configuration (a row with no proposal) or by an applied proposal, and ended
//! only by an applied removal, a new grant of the same role, or its `valid_until`; so the
//! applied proposals in approval order, after the configuration's rows, replay every change.
//! Approval times are whole seconds, so the order within a second is the seq of each
//! proposal's `proposal.approved` audit event.
//!
//! One thing the rows no longer show: a configuration binding later re-granted by a proposal
//! (its row now names the proposal). Its span before the re-grant is missing here; the
//! `role.granted` event by `bootstrap` in the audit chain is its record.

use std::collections::{BTreeMap, HashMap};

use mintgate_domain::governance::{Change, ProposalRecord, RoleBinding};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One span of an operator holding a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct BindingSpan {
    pub operator: String,
    pub role: String,
    /// RFC 3339; None: before the oldest record (a configuration binding removed since).
    pub granted_at: Option<String>,
    /// The approver (`bootstrap` for the first start's configuration).
    pub granted_by: Option<String>,
    pub grant_proposal: Option<String>,
    pub valid_until: Option<String>,
    /// When a removal or a new grant of the same role ended it (RFC 3339).
    pub ended_at: Option<String>,
    pub ended_by: Option<String>,
    pub end_proposal: Option<String>,
    /// In force when the export was made.
    pub in_force_at_export: bool,
}

/// A change to one (operator, role), in the order they took effect.
struct Step {
    at: OffsetDateTime,
    /// The approval's audit seq (0 for the configuration's rows; unknown: last in its second).
    seq: i64,
    by: String,
    proposal: Option<String>,
    /// None: a removal.
    grant: Option<Option<OffsetDateTime>>,
}

struct Open {
    granted_at: Option<OffsetDateTime>,
    granted_by: Option<String>,
    proposal: Option<String>,
    valid_until: Option<OffsetDateTime>,
}

/// The spans in force at some time in `since..=until`, by operator, role and start.
/// `approvals` maps a proposal id to the seq of its `proposal.approved` event.
pub(super) fn spans_in_period(
    rows: &[RoleBinding],
    proposals: &[ProposalRecord],
    approvals: &HashMap<String, i64>,
    since: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<BindingSpan>, time::error::Format> {
    let mut steps: BTreeMap<(String, String), Vec<Step>> = BTreeMap::new();
    let applied: Vec<&ProposalRecord> = proposals
        .iter()
        .filter(|p| p.approved_at.is_some() && matches!(p.change, Change::RoleBinding { .. }))
        .collect();
    for row in rows {
        let by_proposal = row
            .proposal_id
            .as_ref()
            .is_some_and(|id| applied.iter().any(|p| &p.id == id));
        if !by_proposal {
            steps
                .entry((row.operator.clone(), row.role.clone()))
                .or_default()
                .push(Step {
                    at: row.granted_at,
                    seq: 0,
                    by: row.granted_by.clone(),
                    proposal: row.proposal_id.clone(),
                    grant: Some(row.valid_until),
                });
        }
    }
    for p in applied {
        let (
            Change::RoleBinding {
                operator,
                role,
                valid_until,
                remove,
            },
            Some(at),
        ) = (&p.change, p.approved_at)
        else {
            continue;
        };
        steps
            .entry((operator.clone(), role.clone()))
            .or_default()
            .push(Step {
                at,
                seq: approvals.get(&p.id).copied().unwrap_or(i64::MAX),
                by: p.approved_by.clone().unwrap_or_default(),
                proposal: Some(p.id.clone()),
                grant: (!remove).then_some(*valid_until),
            });
    }

    let fmt = |t: OffsetDateTime| t.format(&Rfc3339);
    let mut spans = Vec::new();
    for ((operator, role), mut steps) in steps {
        steps.sort_by_key(|s| (s.at, s.seq));
        let mut open: Option<Open> = None;
        let mut close = |o: Open, end: Option<&Step>| -> Result<(), time::error::Format> {
            let ended_at = end.map(|s| s.at);
            let effective_end = match (ended_at, o.valid_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let started = o.granted_at.is_none_or(|g| g <= until);
            let not_over = effective_end.is_none_or(|e| e > since);
            if started && not_over {
                spans.push(BindingSpan {
                    operator: operator.clone(),
                    role: role.clone(),
                    granted_at: o.granted_at.map(fmt).transpose()?,
                    granted_by: o.granted_by,
                    grant_proposal: o.proposal,
                    valid_until: o.valid_until.map(fmt).transpose()?,
                    ended_at: ended_at.map(fmt).transpose()?,
                    ended_by: end.map(|s| s.by.clone()),
                    end_proposal: end.and_then(|s| s.proposal.clone()),
                    in_force_at_export: end.is_none() && o.valid_until.is_none_or(|v| now < v),
                });
            }
            Ok(())
        };
        for step in &steps {
            match (open.take(), step.grant) {
                (Some(o), _) => close(o, Some(step))?,
                // A removal with nothing open: the binding came from before the records.
                (None, None) => close(
                    Open {
                        granted_at: None,
                        granted_by: None,
                        proposal: None,
                        valid_until: None,
                    },
                    Some(step),
                )?,
                (None, Some(_)) => {}
            }
            if let Some(valid_until) = step.grant {
                open = Some(Open {
                    granted_at: Some(step.at),
                    granted_by: Some(step.by.clone()),
                    proposal: step.proposal.clone(),
                    valid_until,
                });
            }
        }
        if let Some(o) = open {
            close(o, None)?;
        }
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use mintgate_domain::governance::ProposalState;
    use time::macros::datetime;

    use super::*;

    const BOB: &str = "spiffe://td/operator/bob";

    fn row(role: &str, at: OffsetDateTime, proposal: Option<&str>) -> RoleBinding {
        RoleBinding {
            operator: BOB.into(),
            role: role.into(),
            valid_until: None,
            granted_by: if proposal.is_some() {
                "carol"
            } else {
                "bootstrap"
            }
            .into(),
            granted_at: at,
            proposal_id: proposal.map(str::to_owned),
        }
    }

    fn proposal(
        id: &str,
        role: &str,
        at: OffsetDateTime,
        valid_until: Option<OffsetDateTime>,
        remove: bool,
    ) -> ProposalRecord {
        ProposalRecord {
            id: id.into(),
            author: "alice".into(),
            request_id: id.into(),
            payload_hash: String::new(),
            change: Change::RoleBinding {
                operator: BOB.into(),
                role: role.into(),
                valid_until,
                remove,
            },
            state: ProposalState::Applied,
            created_at: at,
            expires_at: at,
            approved_by: Some("carol".into()),
            approved_at: Some(at),
            superseded_by: None,
        }
    }

    fn summary(spans: &[BindingSpan]) -> Vec<(String, Option<String>, Option<String>, bool)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.role.clone(),
                    s.granted_at.clone(),
                    s.ended_at.clone(),
                    s.in_force_at_export,
                )
            })
            .collect()
    }

    #[test]
    fn bindings_held_at_any_time_in_the_period_and_only_those() {
        let t = |h: u8| datetime!(2026-01-01 00:00 UTC) + time::Duration::hours(h.into());
        let s = |h: u8| Some(t(h).format(&Rfc3339).unwrap());
        // auditor: from the configuration at 0, removed at 2 (before the period 3..=6).
        // revoker: granted at 1, removed at 4 (in the period, gone now).
        // issuer: granted at 5 until 8 (in the period, expired at export time 9).
        // approver: granted at 7 (after the period).
        // admin: from the configuration, never changed (in force throughout).
        // policy-author: held before the records, removed at 4.
        let rows = [row("admin", t(0), None), row("approver", t(7), Some("p5"))];
        let proposals = [
            proposal("p1", "auditor", t(2), None, true),
            proposal("p2", "revoker", t(1), None, false),
            proposal("p3", "revoker", t(4), None, true),
            proposal("p4", "issuer", t(5), Some(t(8)), false),
            proposal("p5", "approver", t(7), None, false),
            proposal("p6", "policy-author", t(4), None, true),
        ];
        let mut rows_with_removed = rows.to_vec();
        rows_with_removed.push(row("auditor", t(0), None));
        // The auditor row is gone (removed); only the proposal says so.
        let spans = spans_in_period(&rows, &proposals, &HashMap::new(), t(3), t(6), t(9)).unwrap();
        assert_eq!(
            summary(&spans),
            vec![
                ("admin".into(), s(0), None, true),
                ("issuer".into(), s(5), None, false),
                ("policy-author".into(), None, s(4), false),
                ("revoker".into(), s(1), s(4), false),
            ]
        );
        let revoker = &spans[3];
        assert_eq!(revoker.grant_proposal.as_deref(), Some("p2"));
        assert_eq!(revoker.end_proposal.as_deref(), Some("p3"));
        assert_eq!(revoker.ended_by.as_deref(), Some("carol"));
        // The auditor's removal at 2 ends before the period; ending exactly at its start is
        // not "in force during" it.
        let spans = spans_in_period(
            &rows_with_removed,
            &proposals,
            &HashMap::new(),
            t(2),
            t(2),
            t(9),
        )
        .unwrap();
        assert!(
            !summary(&spans).iter().any(|s| s.0 == "auditor"),
            "{spans:?}"
        );
        let spans = spans_in_period(&rows, &proposals, &HashMap::new(), t(1), t(1), t(9)).unwrap();
        assert!(
            summary(&spans)
                .iter()
                .any(|s| s.0 == "auditor" && s.1.is_none())
        );
    }

    #[test]
    fn a_regrant_ends_the_previous_span_and_starts_another() {
        let t = |h: u8| datetime!(2026-01-01 00:00 UTC) + time::Duration::hours(h.into());
        let rows = [row("issuer", t(3), Some("b"))];
        let proposals = [
            proposal("a", "issuer", t(1), Some(t(10)), false),
            proposal("b", "issuer", t(3), None, false),
        ];
        let spans = spans_in_period(&rows, &proposals, &HashMap::new(), t(0), t(5), t(5)).unwrap();
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_eq!(spans[0].end_proposal.as_deref(), Some("b"));
        assert!(!spans[0].in_force_at_export);
        assert!(spans[1].in_force_at_export && spans[1].ended_at.is_none());
    }

    #[test]
    fn within_one_second_the_approval_events_give_the_order() {
        let t = datetime!(2026-01-01 00:00 UTC);
        // Listed removal first; approved grant first (seq 10, then 11).
        let proposals = [
            proposal("remove", "issuer", t, None, true),
            proposal("grant", "issuer", t, None, false),
        ];
        let approvals = HashMap::from([("grant".to_owned(), 10), ("remove".to_owned(), 11)]);
        let since = t - time::Duration::hours(1);
        let spans = spans_in_period(&[], &proposals, &approvals, since, t, t).unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].grant_proposal.as_deref(), Some("grant"));
        assert_eq!(spans[0].end_proposal.as_deref(), Some("remove"));
        assert!(!spans[0].in_force_at_export);
    }
}
