//! `mintgate audit verify`: the hash chain links up, and it covers every record the store keeps
//! (each certificate, revocation, identity block and request has its event). The first catches
//! an edited, inserted, reordered or deleted event; the second a chain cut short, which links up
//! perfectly. Both are read from one snapshot of the database.

use std::fmt;

use mintgate_domain::audit::{BrokenLink, Coverage, Gaps, verify_chain};
use mintgate_domain::store::StoreError;
use mintgate_store::SqlStore;

/// What `audit verify` found.
#[derive(Debug)]
pub struct Verification {
    /// Events in the chain.
    pub events: u64,
    /// The first link that does not hold.
    pub broken: Option<BrokenLink>,
    /// Records without their events.
    pub gaps: Gaps,
}

impl Verification {
    /// Whether the chain is intact and complete.
    pub fn is_sound(&self) -> bool {
        self.broken.is_none() && self.gaps.is_empty()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(broken) = &self.broken {
            writeln!(f, "{broken}")?;
        }
        if !self.gaps.is_empty() {
            return write!(f, "{}", self.gaps);
        }
        if self.broken.is_none() {
            write!(
                f,
                "audit chain intact: {} events, covering every certificate, revocation, block \
                 and request",
                self.events
            )?;
        }
        Ok(())
    }
}

/// Reads the chain, checks its links, then streams every record past it.
pub async fn verify(store: &SqlStore) -> Result<Verification, StoreError> {
    let snapshot = store.audit_snapshot().await?;
    let chain = snapshot.chain().await?;
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
    })
}
