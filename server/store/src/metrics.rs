//! What the store measures and logs, only once a transaction has committed. Handles are bound
//! to the recorder the store is given (one per server; see `mintgate_api::metrics`).

use metrics::{
    Counter, Gauge, Histogram, NoopRecorder, Recorder, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram, with_local_recorder,
};
use mintgate_domain::audit::AuditEvent;
use mintgate_domain::lifecycle::RequestState;

/// Client requests made durable per database commit.
pub const COMMIT_BATCH: &str = "mintgate_db_commit_batch_size";
/// Issuance requests (Enroll, Renew) that entered each persisted lifecycle state, by `state`.
pub const REQUESTS: &str = "mintgate_requests_total";
/// Certificates revoked by commits of this server.
pub const REVOCATIONS: &str = "mintgate_revocations_total";
/// 1 while this replica leads the jobs that run once.
pub const LEADER: &str = "mintgate_leader";
/// 1 while this replica listens for other replicas' revocations (PostgreSQL).
pub const LISTENING: &str = "mintgate_revocation_listener_connected";

/// See the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    commit_batch: Histogram,
    revocations: Counter,
    leader: Gauge,
    listening: Gauge,
    /// One counter per [`RequestState::ALL`] entry, in that order.
    requests: [Counter; RequestState::ALL.len()],
}

impl StoreMetrics {
    /// Describes the series to `recorder` and registers them, every state at zero.
    pub fn new(recorder: &dyn Recorder) -> Self {
        with_local_recorder(recorder, || {
            describe_histogram!(
                COMMIT_BATCH,
                "Client requests made durable per database commit (group commit batches them)."
            );
            describe_counter!(
                REQUESTS,
                "Issuance requests (Enroll, Renew) that entered each persisted lifecycle state."
            );
            describe_counter!(
                REVOCATIONS,
                "Certificates revoked by this server's commits."
            );
            describe_gauge!(LEADER, "1 while this replica leads the jobs that run once.");
            describe_gauge!(
                LISTENING,
                "1 while this replica listens for revocations committed by other replicas."
            );
            Self {
                commit_batch: histogram!(COMMIT_BATCH),
                revocations: counter!(REVOCATIONS),
                leader: gauge!(LEADER),
                listening: gauge!(LISTENING),
                requests: RequestState::ALL.map(|s| counter!(REQUESTS, "state" => s.as_str())),
            }
        })
    }
}

/// What a write transaction did, noted as it goes and reported once it has committed.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// Request rows inserted or moved: the client requests this commit makes durable.
    pub(crate) requests: usize,
    /// Lifecycle states entered by issuance requests.
    pub(crate) states: Vec<RequestState>,
    pub(crate) revocations: usize,
    /// The audit events appended: every lifecycle transition, with who, what and why.
    pub(crate) events: Vec<AuditEvent>,
}

impl Done {
    /// Counts what was done and logs each audit event, inside the caller's span (the RPC's,
    /// with its request id and caller). Only once the commit holding it is durable.
    pub(crate) fn report(self, metrics: &StoreMetrics) {
        for state in &self.states {
            if let Some(i) = RequestState::ALL.iter().position(|s| s == state) {
                metrics.requests[i].increment(1);
            }
        }
        if self.revocations > 0 {
            metrics.revocations.increment(self.revocations as u64);
        }
        for e in &self.events {
            tracing::info!(
                audit_seq = e.seq,
                action = %e.action,
                subject = %e.subject,
                detail = e.detail.as_deref(),
                "committed"
            );
        }
    }
}

impl StoreMetrics {
    pub(crate) fn set_leader(&self, leads: bool) {
        self.leader.set(f64::from(u8::from(leads)));
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.set(f64::from(u8::from(listening)));
    }

    /// One durable commit, holding `requests` client requests.
    pub(crate) fn record_commit(&self, requests: usize) {
        if requests > 0 {
            self.commit_batch.record(requests as f64);
        }
    }
}

impl Default for StoreMetrics {
    /// Records nothing.
    fn default() -> Self {
        Self::new(&NoopRecorder)
    }
}
