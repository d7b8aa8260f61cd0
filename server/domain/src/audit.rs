//! The audit trail's event and its hash chain (DESIGN §6):
//! `hash = SHA-256(prev_hash ‖ canonical event)`, the first `prev_hash` being 32 zero bytes;
//! whether the chain covers the records it must ([`coverage`]); and the signed checkpoints that
//! pin its head ([`checkpoint`]).

mod checkpoint;
mod coverage;

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use checkpoint::{
    AuditKey, CHECKPOINT_CONTEXT, Checkpoint, CheckpointProblem, CheckpointSummary,
    FailedCheckpoint, SignedCheckpoint, key_id, verify_checkpoints, verify_checkpoints_at,
};
pub use coverage::{Coverage, Gaps, Missing, Record};

/// The `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit event: who did what to which subject, in which scope, when, and under which policy.
/// Field order is the canonical order; adding a field is a format change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the chain, starting at 1, with no gaps.
    pub seq: i64,
    /// Unix time in seconds.
    pub at: i64,
    /// The peer SPIFFE ID that caused the event.
    pub actor: String,
    /// What happened, e.g. `request.approved`, `certificate.issued`.
    pub action: String,
    /// What it happened to: a request (`request:<caller>/<id>`) or a certificate serial.
    pub subject: String,
    pub spiffe_id: Option<String>,
    pub dns_names: Vec<String>,
    pub key_type: Option<String>,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub policy_version: Option<String>,
    pub policy_rule: Option<String>,
    pub request_id: Option<String>,
    /// A reason code or state change, e.g. `APPROVED->ISSUED`.
    pub detail: Option<String>,
}

impl AuditEvent {
    /// The bytes that are hashed: compact JSON in field order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising a plain struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn chain_hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev_hash);
        h.update(self.canonical_bytes());
        h.finalize().into()
    }
}

/// An event as stored: with the hash of its predecessor and its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEvent {
    #[serde(flatten)]
    pub event: AuditEvent,
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

impl ChainedEvent {
    pub fn seal(event: AuditEvent, prev_hash: [u8; 32]) -> Self {
        let hash = event.chain_hash(&prev_hash);
        Self {
            event,
            prev_hash,
            hash,
        }
    }
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {problem}")]
pub struct BrokenLink {
    pub seq: i64,
    pub problem: LinkProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkProblem {
    #[error("expected seq {expected} (an event was deleted or reordered)")]
    SeqGap { expected: i64 },
    #[error(
        "prev_hash does not match the previous event's hash (an event was deleted, inserted or reordered)"
    )]
    PrevHashMismatch,
    #[error("hash does not match the event's contents (the event was edited)")]
    HashMismatch,
}

/// Checks events in storage order; returns how many were verified.
pub fn verify_chain<E: Borrow<ChainedEvent>>(
    events: impl IntoIterator<Item = E>,
) -> Result<u64, BrokenLink> {
    let mut links = ChainVerifier::new();
    for e in events {
        links.push(e.borrow())?;
    }
    Ok(links.count())
}

/// [`verify_chain`] one event at a time, for a chain read as a stream (it keeps only the
/// previous hash).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: [u8; 32],
    count: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self {
            prev: GENESIS,
            count: 0,
        }
    }

    /// Checks the next event in storage order.
    pub fn push(&mut self, e: &ChainedEvent) -> Result<(), BrokenLink> {
        let seq = e.event.seq;
        let broken = |problem| BrokenLink { seq, problem };
        let expected = i64::try_from(self.count)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        if seq != expected {
            return Err(broken(LinkProblem::SeqGap { expected }));
        }
        if e.prev_hash != self.prev {
            return Err(broken(LinkProblem::PrevHashMismatch));
        }
        if e.event.chain_hash(&e.prev_hash) != e.hash {
            return Err(broken(LinkProblem::HashMismatch));
        }
        self.prev = e.hash;
        self.count += 1;
        Ok(())
    }

    /// How many events linked up so far (the last one's seq).
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("hash must be 32 bytes"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn event(seq: i64, action: &str) -> AuditEvent {
        AuditEvent {
            seq,
            at: 1_700_000_000 + seq,
            actor: "spiffe://td/node/a".into(),
            action: action.into(),
            subject: "request:x".into(),
            spiffe_id: Some("spiffe://td/w".into()),
            dns_names: vec![],
            key_type: Some("P-256".into()),
            not_before: None,
            not_after: None,
            policy_version: Some("1".into()),
            policy_rule: None,
            request_id: Some("r1".into()),
            detail: None,
        }
    }

    pub(crate) fn chain(n: i64) -> Vec<ChainedEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let c = ChainedEvent::seal(event(seq, "request.received"), prev);
                prev = c.hash;
                c
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(chain(5)), Ok(5));
        assert_eq!(verify_chain(Vec::<ChainedEvent>::new()), Ok(0));
    }

    #[test]
    fn an_edit_is_found_at_the_edited_event() {
        let mut c = chain(5);
        c[2].event.actor = "spiffe://td/evil".into();
        let err = verify_chain(c).unwrap_err();
        assert_eq!((err.seq, err.problem), (3, LinkProblem::HashMismatch));
    }

    #[test]
    fn a_deletion_or_reorder_is_found() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(c).unwrap_err().seq, 3);
        let mut c = chain(5);
        c.swap(1, 2);
        assert_eq!(verify_chain(c).unwrap_err().seq, 3);
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let mut c = chain(4);
        c[1].event.detail = Some("forged".into());
        c[1].hash = c[1].event.chain_hash(&c[1].prev_hash);
        let err = verify_chain(c).unwrap_err();
        assert_eq!((err.seq, err.problem), (3, LinkProblem::PrevHashMismatch));
    }

    #[test]
    fn exported_json_round_trips() {
        let c = chain(2);
        let line = serde_json::to_string(&c[1]).unwrap();
        let back: ChainedEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, c[1]);
    }
}
