//! Approval leases (DESIGN §5): an APPROVED request belongs to the server instance that recorded
//! it, while that instance signs. A duplicate waits for it, and takes the request over (the retake
//! in `issuance`) only once the lease has lapsed: it was held longer than [`APPROVAL_LEASE`], or
//! its holder is gone. A server killed mid-issue leaves its leases behind; the store tells a dead
//! instance from a live one, so retries after a restart need not wait the lease out.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

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
    /// This instance holds it but no attempt here is signing it any more: the attempt failed
    /// and could not record so (its store write failed too).
    Abandoned,
}

impl fmt::Display for Lapse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("approval lease expired"),
            Self::HolderGone(holder) => write!(f, "lease holder {holder} is gone"),
            Self::Abandoned => f.write_str("abandoned by its attempt on this server"),
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
        if holder == self.store.instance_id()
            && !self
                .in_flight
                .contains(&request.caller, &request.request_id)
        {
            return Ok(Some(Lapse::Abandoned));
        }
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

/// The requests an attempt in this process is recording or signing, by (caller, request id):
/// a lease this instance holds for a request not in here belongs to no one.
#[derive(Debug, Default)]
pub(super) struct InFlight(Mutex<HashMap<(String, String), usize>>);

impl InFlight {
    /// Marks the request in flight until the guard is dropped.
    pub(super) fn enter(&self, caller: &str, request_id: &str) -> InFlightGuard<'_> {
        let key = (caller.to_owned(), request_id.to_owned());
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        InFlightGuard { set: self, key }
    }

    fn contains(&self, caller: &str, request_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&(caller.to_owned(), request_id.to_owned()))
    }
}

/// See [`InFlight::enter`].
pub(super) struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: (String, String),
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.set.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
