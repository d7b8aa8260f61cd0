//! Holds at the edge (DESIGN §12): `Admin/ListPending`, `Approve`, `Deny` and `WatchPending`,
//! the [`HoldFeed`] that carries this server's hold changes to every WatchPending stream, and
//! the conversions of holds and risk to protobuf.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use mintgate_domain::hold::HoldFilter;
use mintgate_domain::ports::Observer;
use mintgate_domain::risk::{RiskAssessment, RiskTier};
use mintgate_domain::service::{HoldChange, HoldEvent, HoldView};
use mintgate_domain::store::CertificateStore;
use mintgate_domain::{Error, InputError, SpiffeId};
use mintgate_proto::v1;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::admin::AdminService;
use crate::convert::{request_state, timestamp};
use crate::metrics::Metrics;
use crate::server::caller;
use crate::status::to_status;

/// Hold changes a WatchPending stream may fall behind by before it is cut loose.
const FEED_CAPACITY: usize = 1024;

/// This server's hold changes (and those other replicas announce), for every WatchPending
/// stream.
#[derive(Clone)]
pub struct HoldFeed {
    tx: broadcast::Sender<HoldEvent>,
    /// Cancelled when the server shuts down: the streams end so that it can drain.
    closing: CancellationToken,
}

impl Default for HoldFeed {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(FEED_CAPACITY).0,
            closing: CancellationToken::new(),
        }
    }
}

impl HoldFeed {
    /// Ends every WatchPending stream (server shutdown); watchers watch again elsewhere.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Sends a hold change another replica made to this server's WatchPending streams.
    pub fn publish(&self, event: HoldEvent) {
        // No stream listening is fine: there is nobody to tell.
        let _ = self.tx.send(event);
    }
}

/// Tells the other replicas of a hold change this server made (hold id, change).
pub type AnnounceHold = Box<dyn Fn(i64, HoldChange) + Send + Sync>;

/// What the service reports: counted by [`Metrics`], hold changes also sent on the feed and
/// announced to the other replicas.
pub struct EdgeObserver {
    pub metrics: Metrics,
    pub holds: HoldFeed,
    pub announce: AnnounceHold,
    /// Called when a CA changed here (the server reloads its CAs).
    pub authorities: Box<dyn Fn() + Send + Sync>,
}

impl Observer for EdgeObserver {
    fn shadow_disagreement(&self, d: &mintgate_domain::service::ShadowDisagreement) {
        self.metrics.shadow_disagreement(d);
    }

    fn break_glass(&self, operator: &SpiffeId, operation: mintgate_domain::policy::Operation) {
        self.metrics.break_glass(operator, operation);
    }

    fn policy_active(&self, version: &str, drift: bool) {
        self.metrics.policy_active(version, drift);
    }

    fn risk_assessed(&self, risk: &RiskAssessment) {
        self.metrics.risk_assessed(risk);
    }

    fn authorities_changed(&self) {
        (self.authorities)();
    }

    fn hold_changed(&self, event: &HoldEvent) {
        self.metrics.hold_changed(event);
        if let Ok(pk) = event.hold.hold_id.parse() {
            (self.announce)(pk, event.change);
        }
        self.holds.publish(event.clone());
    }
}

pub(crate) type WatchPendingStream =
    Pin<Box<dyn Stream<Item = Result<v1::HoldEvent, Status>> + Send>>;

impl<S: CertificateStore> AdminService<S> {
    pub(crate) async fn list_pending_rpc(
        &self,
        request: Request<v1::ListPendingRequest>,
    ) -> Result<Response<v1::ListPendingResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let status = |e: &Error| to_status(e, "ListPending", "");
        let tier = match body.tier.as_str() {
            "" => None,
            t => Some(
                RiskTier::parse(t).ok_or_else(|| status(&InputError::RiskTierInvalid.into()))?,
            ),
        };
        let filter = HoldFilter {
            requester: Some(body.requester).filter(|s| !s.is_empty()),
            spiffe_id: Some(body.spiffe_id).filter(|s| !s.is_empty()),
            tier,
            expired_at: None,
        };
        let holds = self
            .app
            .list_pending(&caller, filter)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::ListPendingResponse {
            holds: holds.into_iter().map(hold).collect(),
        }))
    }

    pub(crate) async fn vote_rpc(
        &self,
        caller_of: &mintgate_domain::model::Caller,
        hold_id: &str,
        reason: &str,
        approve: bool,
    ) -> Result<Response<v1::Hold>, Status> {
        let (rpc, result) = if approve {
            (
                "Approve",
                self.app.approve_hold(caller_of, hold_id, reason).await,
            )
        } else {
            ("Deny", self.app.deny_hold(caller_of, hold_id, reason).await)
        };
        result
            .map(|h| Response::new(hold(h)))
            .map_err(|e| to_status(&e, rpc, hold_id))
    }

    pub(crate) async fn watch_pending_rpc(
        &self,
        request: Request<v1::WatchPendingRequest>,
    ) -> Result<Response<WatchPendingStream>, Status> {
        let caller = caller(&request)?;
        // Subscribe first: a change between the snapshot and the subscription is then seen
        // (perhaps twice) rather than lost.
        let live = BroadcastStream::new(self.holds.tx.subscribe());
        let waiting = self
            .app
            .watch_pending(&caller)
            .await
            .map_err(|e| to_status(&e, "WatchPending", ""))?;
        let snapshot = futures_util::stream::iter(waiting.into_iter().map(|h| {
            Ok(v1::HoldEvent {
                kind: v1::HoldEventKind::Pending.into(),
                hold: Some(hold(h)),
            })
        }));
        let live = live.map(|item| match item {
            Ok(event) => Ok(hold_event(event)),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Err(Status::resource_exhausted(
                format!("the subscriber fell {missed} hold changes behind; watch again"),
            )),
        });
        // A lagged stream ends after its error.
        let mut failed = false;
        let live = live.take_while(move |item| {
            let go = !failed;
            failed |= item.is_err();
            std::future::ready(go)
        });
        let closing = self.holds.closing.clone();
        let live = live.take_until(async move { closing.cancelled().await });
        Ok(Response::new(Box::pin(snapshot.chain(live))))
    }
}

fn hold_event(event: HoldEvent) -> v1::HoldEvent {
    let kind = match event.change {
        HoldChange::Held => v1::HoldEventKind::Held,
        HoldChange::Approved => v1::HoldEventKind::Approved,
        HoldChange::Released => v1::HoldEventKind::Released,
        HoldChange::Denied => v1::HoldEventKind::Denied,
        HoldChange::Expired => v1::HoldEventKind::Expired,
    };
    v1::HoldEvent {
        kind: kind.into(),
        hold: Some(hold(event.hold)),
    }
}

pub(crate) fn risk(r: RiskAssessment) -> v1::Risk {
    v1::Risk {
        score: u32::from(r.score),
        tier: r.tier.as_str().to_owned(),
        signals: r.signals.iter().map(|s| s.as_str().to_owned()).collect(),
    }
}

pub(crate) fn hold(h: HoldView) -> v1::Hold {
    v1::Hold {
        approvals: u32::try_from(h.approvals()).unwrap_or(u32::MAX),
        hold_id: h.hold_id,
        requester: h.requester,
        request_id: h.request_id,
        kind: h.kind.as_str().to_owned(),
        spiffe_id: h.spiffe_id,
        state: request_state(h.state).into(),
        reason: h.terms.reason,
        quorum: u32::from(h.terms.quorum),
        votes: h
            .votes
            .into_iter()
            .map(|v| v1::HoldVote {
                operator: v.operator,
                approve: v.approve,
                reason: v.reason,
                at: Some(timestamp(v.at)),
            })
            .collect(),
        risk: h.risk.map(risk),
        created_at: Some(timestamp(h.created_at)),
        expires_at: Some(timestamp(h.terms.expires_at)),
        policy_version: h.policy_version.unwrap_or_default(),
        policies: h.policies,
    }
}
