//! Signed checkpoints of the audit chain (DESIGN §17). A checkpoint pins the chain's head — the
//! event at `seq` has `hash` — at a time, signed with the audit key (never the CA key). The hash
//! chain alone cannot tell a chain from one rewritten end to end with every hash recomputed, nor
//! from one whose newest events were cut; a checkpoint signed before the rewrite can.
//!
//! The signature covers [`Checkpoint::message`], a canonical byte string:
//!
//! ```text
//! mintgate-audit-checkpoint-v1\n{seq}\n{hash}\n{at}\n{key_id}
//! ```
//!
//! `seq` and `at` (unix seconds) in decimal, `hash` and `key_id` in lower-case hex, lines
//! separated by a single `\n`, no trailing newline. The key id is the hex SHA-256 of the public
//! key's SubjectPublicKeyInfo (DER), so a signature says which key made it.
//!
//! Checking signatures needs cryptography, which the domain does not do: [`verify_checkpoints`]
//! takes it as a function (the key backends crate provides one).

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::ChainedEvent;

/// The first line of every checkpoint message: the format and its version.
pub const CHECKPOINT_CONTEXT: &str = "mintgate-audit-checkpoint-v1";

/// What a checkpoint asserts: the event at `seq` has `hash`, as seen at `at` by `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: [u8; 32],
    /// Unix time in seconds.
    pub at: i64,
    /// Hex SHA-256 of the signing key's SPKI (DER): see [`key_id`].
    pub key_id: String,
}

impl Checkpoint {
    /// The canonical bytes that are signed (see the module documentation).
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{CHECKPOINT_CONTEXT}\n{}\n{}\n{}\n{}",
            self.seq,
            hex::encode(self.hash),
            self.at,
            self.key_id
        )
        .into_bytes()
    }
}

/// A checkpoint and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signature: Vec<u8>,
}

/// A public key that signs checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKey {
    /// [`key_id`] of `spki_der`.
    pub key_id: String,
    /// `ED25519` or `ECDSA_P256_SHA256`.
    pub algorithm: String,
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

impl AuditKey {
    /// The key with its id computed from `spki_der`.
    pub fn new(algorithm: impl Into<String>, spki_der: Vec<u8>) -> Self {
        Self {
            key_id: key_id(&spki_der),
            algorithm: algorithm.into(),
            spki_der,
        }
    }
}

/// The key id of a public key: lower-case hex SHA-256 of its SPKI (DER).
pub fn key_id(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// The first checkpoint that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit checkpoint at seq {seq} does not hold: {problem}")]
pub struct FailedCheckpoint {
    pub seq: i64,
    pub problem: CheckpointProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointProblem {
    #[error("it is signed by key {key_id}, which is not a trusted audit key")]
    UnknownKey { key_id: String },
    #[error(
        "its signature does not verify under key {key_id} (the checkpoint was forged or altered)"
    )]
    BadSignature { key_id: String },
    #[error("the chain ends at seq {head}, before the checkpoint (the newest events were cut off)")]
    ChainCut { head: i64 },
    #[error(
        "event {seq} has hash {found}, the checkpoint signed {signed} (the chain was rewritten)",
        seq = .seq, found = .found, signed = .signed
    )]
    HashMismatch {
        seq: i64,
        found: String,
        signed: String,
    },
}

/// What the checkpoints proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointSummary {
    /// Checkpoints that held.
    pub verified: u64,
    /// The newest checkpoint's seq, if any.
    pub newest: Option<i64>,
}

impl fmt::Display for CheckpointSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.newest {
            Some(seq) => write!(
                f,
                "{} signed checkpoint{} hold{}, the newest at seq {seq}",
                self.verified,
                if self.verified == 1 { "" } else { "s" },
                if self.verified == 1 { "s" } else { "" },
            ),
            None => write!(f, "no signed checkpoints"),
        }
    }
}

/// Checks every checkpoint, in seq order, against `chain` (in seq order, as stored): its key is
/// among `trusted`, its signature verifies under that key (`verify(spki_der, message,
/// signature)`), the chain reaches its seq, and the event there has the hash it signed. Returns
/// the first that does not hold.
///
/// Whether the chain itself links up is [`super::verify_chain`]'s to say; this relies only on
/// the stored hash at each checkpoint's seq, so together they catch a chain rewritten with every
/// hash recomputed (the hash at some checkpoint changes) and a cut (the chain ends too soon).
pub fn verify_checkpoints(
    chain: &[ChainedEvent],
    checkpoints: &[SignedCheckpoint],
    trusted: &HashMap<String, AuditKey>,
    verify: impl Fn(&AuditKey, &[u8], &[u8]) -> bool,
) -> Result<CheckpointSummary, FailedCheckpoint> {
    let head = chain.last().map_or(0, |e| e.event.seq);
    // Stored events are numbered 1.. with no gaps when the chain links up; look the seq up by
    // position, falling back to a search should it not.
    let hash_at = |seq: i64| {
        usize::try_from(seq - 1)
            .ok()
            .and_then(|i| chain.get(i))
            .filter(|e| e.event.seq == seq)
            .or_else(|| chain.iter().find(|e| e.event.seq == seq))
            .map(|e| e.hash)
    };
    verify_checkpoints_at(head, hash_at, checkpoints, trusted, verify)
}

/// [`verify_checkpoints`] for a chain that is not held in memory (read as a stream, keeping
/// only the hashes at the checkpoints' seqs): `head` is its last seq, `hash_at(seq)` the stored
/// hash of the event at `seq`, if the chain has it.
pub fn verify_checkpoints_at(
    head: i64,
    hash_at: impl Fn(i64) -> Option<[u8; 32]>,
    checkpoints: &[SignedCheckpoint],
    trusted: &HashMap<String, AuditKey>,
    verify: impl Fn(&AuditKey, &[u8], &[u8]) -> bool,
) -> Result<CheckpointSummary, FailedCheckpoint> {
    let mut sorted: Vec<&SignedCheckpoint> = checkpoints.iter().collect();
    sorted.sort_by_key(|c| c.checkpoint.seq);
    let mut summary = CheckpointSummary::default();
    for signed in sorted {
        let c = &signed.checkpoint;
        let failed = |problem| FailedCheckpoint {
            seq: c.seq,
            problem,
        };
        let Some(key) = trusted.get(&c.key_id) else {
            return Err(failed(CheckpointProblem::UnknownKey {
                key_id: c.key_id.clone(),
            }));
        };
        if !verify(key, &c.message(), &signed.signature) {
            return Err(failed(CheckpointProblem::BadSignature {
                key_id: c.key_id.clone(),
            }));
        }
        let Some(hash) = hash_at(c.seq) else {
            return Err(failed(CheckpointProblem::ChainCut { head }));
        };
        if hash != c.hash {
            return Err(failed(CheckpointProblem::HashMismatch {
                seq: c.seq,
                found: hex::encode(hash),
                signed: hex::encode(c.hash),
            }));
        }
        summary.verified += 1;
        summary.newest = Some(c.seq);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::tests::chain;
    use super::*;

    /// A stand-in signature: SHA-256 of the key and the message (real signatures are checked in
    /// the key backend's tests).
    fn fake_sign(key: &AuditKey, message: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(&key.spki_der);
        h.update(message);
        h.finalize().to_vec()
    }

    fn fake_verify(key: &AuditKey, message: &[u8], signature: &[u8]) -> bool {
        fake_sign(key, message) == signature
    }

    fn key() -> AuditKey {
        AuditKey::new("ED25519", b"spki".to_vec())
    }

    fn trusted() -> HashMap<String, AuditKey> {
        HashMap::from([(key().key_id, key())])
    }

    fn checkpoint_of(c: &ChainedEvent) -> SignedCheckpoint {
        let checkpoint = Checkpoint {
            seq: c.event.seq,
            hash: c.hash,
            at: c.event.at,
            key_id: key().key_id,
        };
        let signature = fake_sign(&key(), &checkpoint.message());
        SignedCheckpoint {
            checkpoint,
            signature,
        }
    }

    #[test]
    fn the_message_is_the_documented_string() {
        let c = Checkpoint {
            seq: 42,
            hash: [0xab; 32],
            at: 1_700_000_000,
            key_id: "00ff".into(),
        };
        let expected = format!(
            "mintgate-audit-checkpoint-v1\n42\n{}\n1700000000\n00ff",
            "ab".repeat(32)
        );
        assert_eq!(c.message(), expected.into_bytes());
        assert_eq!(key_id(b"").len(), 64);
    }

    #[test]
    fn checkpoints_of_the_chain_hold() {
        let c = chain(5);
        let cps = vec![checkpoint_of(&c[4]), checkpoint_of(&c[1])];
        let summary = verify_checkpoints(&c, &cps, &trusted(), fake_verify).unwrap();
        assert_eq!(summary.verified, 2);
        assert_eq!(summary.newest, Some(5));
        assert_eq!(
            verify_checkpoints(&c, &[], &trusted(), fake_verify).unwrap(),
            CheckpointSummary::default()
        );
    }

    #[test]
    fn a_rewritten_chain_a_cut_a_forgery_and_a_stranger_are_named() {
        let c = chain(5);
        let cps = vec![checkpoint_of(&c[1]), checkpoint_of(&c[3])];

        // Rewritten from seq 3 on, every hash recomputed: it links up, the checkpoint at 4
        // does not hold.
        let mut rewritten = c.clone();
        rewritten[2].event.actor = "spiffe://td/evil".into();
        let mut prev = rewritten[1].hash;
        for e in &mut rewritten[2..] {
            e.prev_hash = prev;
            e.hash = e.event.chain_hash(&prev);
            prev = e.hash;
        }
        assert!(super::super::verify_chain(&rewritten).is_ok());
        let err = verify_checkpoints(&rewritten, &cps, &trusted(), fake_verify).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(matches!(
            err.problem,
            CheckpointProblem::HashMismatch { .. }
        ));

        let err = verify_checkpoints(&c[..3], &cps, &trusted(), fake_verify).unwrap_err();
        assert_eq!(
            (err.seq, err.problem),
            (4, CheckpointProblem::ChainCut { head: 3 })
        );

        let mut forged = cps.clone();
        forged[1].checkpoint.at += 1;
        let err = verify_checkpoints(&c, &forged, &trusted(), fake_verify).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(matches!(
            err.problem,
            CheckpointProblem::BadSignature { .. }
        ));

        let err = verify_checkpoints(&c, &cps, &HashMap::new(), fake_verify).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(matches!(err.problem, CheckpointProblem::UnknownKey { .. }));
    }
}
