//! Approval leases (DESIGN §5): an APPROVED request belongs to the server instance that recorded
//! it, while that instance signs. A duplicate waits for it, and takes the request over (the retake
//! in `issuance`) only once the lease has lapsed: it was held longer than [`APPROVAL_LEASE`], or
//! its holder is gone. A server killed mid-issue leaves its leases behind; the store tells a dead
//! instance from a live one, so retries after a restart need not wait the lease out.

use std::fmt;

use time::OffsetDateTime;

use super::{APPROVAL_LEASE, Mintgate};
use crate::Error;
use crate::model::{InstanceId, RequestRecord};
use crate::store::CertificateStore;

/// Why an APPROVED request may be taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lapse {
    /// Held longer than [`APPROVAL_LEASE`]: its holder is presumed stuck.
    Expired,
    /// The instance holding it no longer runs.
    HolderGone(InstanceId),
}

impl fmt::Display for Lapse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("approval lease expired"),
            Self::HolderGone(holder) => write!(f, "lease holder {holder} is gone"),
        }
    }
}

/// What a waiting duplicate has learned about lease holders: it asks the store once per holder
/// (a holder that is alive is not asked about again while the duplicate waits).
#[derive(Debug, Default)]
pub(super) struct Holders {
    alive: Option<InstanceId>,
}

impl<S: CertificateStore> Mintgate<S> {
    /// Whether the lease on APPROVED `request` has lapsed at `now`, and why.
    pub(super) async fn lease_lapse(
        &self,
        request: &RequestRecord,
        now: OffsetDateTime,
        holders: &mut Holders,
    ) -> Result<Option<Lapse>, Error> {
        if now - request.updated_at > APPROVAL_LEASE {
            return Ok(Some(Lapse::Expired));
        }
        // Rows from a server that did not record holders have only the time-based lease.
        let Some(holder) = request.lease_holder else {
            return Ok(None);
        };
        if holders.alive == Some(holder) {
            return Ok(None);
        }
        if self.store.lease_holder_alive(holder).await? {
            holders.alive = Some(holder);
            return Ok(None);
        }
        Ok(Some(Lapse::HolderGone(holder)))
    }
}
