//! `mintgate audit verify`: the hash chain links up, and it covers every record the store keeps
//! (each certificate, revocation, identity block and request has its event). The first catches
//! an edited, inserted, reordered or deleted event; the second a chain cut short, which links up
//! perfectly. Both are read from one snapshot of the database. Then every signed checkpoint
//! (DESIGN §17) must hold: signed by a trusted audit key, and the chain reaches its seq with the
//! hash it signed — which catches a chain rewritten with every hash recomputed, and a cut of the
//! newest events even where no record is left to miss them.

use std::collections::HashMap;
use std::fmt;

use mintgate_domain::audit::{
    AuditKey, BrokenLink, CheckpointSummary, Coverage, FailedCheckpoint, Gaps, verify_chain,
    verify_checkpoints,
};
use mintgate_domain::store::StoreError;
use mintgate_store::SqlStore;

/// Which audit keys checkpoint signatures are checked against.
#[derive(Debug, Clone)]
pub enum TrustedKeys {
    /// The keys the verifier holds (`--public-key`): a checkpoint by any other key fails.
    Given(Vec<AuditKey>),
    /// The keys published in the database. Someone who can rewrite the database can publish a
    /// key of their own, so this proves consistency, not who signed.
    Stored,
}

/// What `audit verify` found.
#[derive(Debug)]
pub struct Verification {
    /// Events in the chain.
    pub events: u64,
    /// The first link that does not hold.
    pub broken: Option<BrokenLink>,
    /// Records without their events.
    pub gaps: Gaps,
    /// What the signed checkpoints proved, or the first that does not hold.
    pub checkpoints: Result<CheckpointSummary, FailedCheckpoint>,
    /// The ids of the keys signatures were checked against, and whether the caller gave them.
    pub keys: Vec<String>,
    pub keys_given: bool,
}

impl Verification {
    /// Whether the chain is intact and complete.
    pub fn is_sound(&self) -> bool {
        self.broken.is_none() && self.gaps.is_empty() && self.checkpoints.is_ok()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(broken) = &self.broken {
            writeln!(f, "{broken}")?;
        }
        if !self.gaps.is_empty() {
            writeln!(f, "{}", self.gaps)?;
        } else if self.broken.is_none() {
            writeln!(
                f,
                "audit chain intact: {} events, covering every certificate, revocation, block \
                 and request",
                self.events
            )?;
        }
        match &self.checkpoints {
            Ok(summary) => write!(f, "{summary}")?,
            Err(failed) => write!(f, "{failed}")?,
        }
        let whose = if self.keys_given {
            "the given"
        } else {
            "the database's (pass --public-key to check against a key you hold)"
        };
        match self.keys.as_slice() {
            [] => write!(f, "\nno audit keys: {whose}"),
            keys => write!(f, "\naudit keys: {} ({whose})", keys.join(", ")),
        }
    }
}

/// Reads the chain, checks its links, then streams every record past it, then checks every
/// checkpoint against the chain and `trusted` keys.
pub async fn verify(store: &SqlStore, trusted: TrustedKeys) -> Result<Verification, StoreError> {
    let snapshot = store.audit_snapshot().await?;
    let chain = snapshot.chain().await?;
    let checkpoints = snapshot.checkpoints().await?;
    let (keys, keys_given) = match trusted {
        TrustedKeys::Given(keys) => (keys, true),
        // Each id recomputed from its key: a row with a wrong id is no key at all.
        TrustedKeys::Stored => (
            snapshot
                .keys()
                .await?
                .into_iter()
                .map(|k| AuditKey::new(k.algorithm, k.spki_der))
                .collect(),
            false,
        ),
    };
    let keys: HashMap<String, AuditKey> = keys.into_iter().map(|k| (k.key_id.clone(), k)).collect();
    let checked = verify_checkpoints(&chain, &checkpoints, &keys, mintgate_ca::verify_signature);
    let mut key_ids: Vec<String> = keys.into_keys().collect();
    key_ids.sort();
    let events = chain.len() as u64;
    let broken = verify_chain(&chain).err();
    let coverage = Coverage::new(&chain);
    let mut gaps = coverage.gaps();
    let scanned = snapshot
        .for_each_record(|record| {
            if let Some(missing) = coverage.missing(record) {
                gaps.add(missing);
            }
        })
        .await;
    snapshot.close().await;
    scanned?;
    Ok(Verification {
        events,
        broken,
        gaps,
        checkpoints: checked,
        keys: key_ids,
        keys_given,
    })
}
