//! This server's part among several replicas on one PostgreSQL (DESIGN §15): following what
//! the others commit (revocations wake the tailer, hold changes reach WatchPending), announcing
//! its own hold changes, and taking its turn as the leader of the jobs that run once.

use std::sync::Arc;
use std::time::Duration;

use mintgate_api::GrpcServer;
use mintgate_api::holds::AnnounceHold;
use mintgate_domain::service::HoldChange;
use mintgate_store::SqlStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::authorities::CaRegistry;

/// Announces each hold change this server makes to the other replicas (after it committed).
pub(crate) fn announce_holds(store: SqlStore) -> AnnounceHold {
    Box::new(move |pk, change| {
        let store = store.clone();
        tokio::spawn(async move { store.announce_hold(pk, change.as_str()).await });
    })
}

/// Starts the listener for the other replicas' revocations and hold changes, and the leader
/// lock's keeper, until `stop` turns true.
pub(crate) fn spawn(
    store: &SqlStore,
    server: &GrpcServer<SqlStore>,
    registry: &Arc<CaRegistry>,
    leader_check: Duration,
    stop: &watch::Receiver<bool>,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let (hub, app, holds) = (server.hub.clone(), server.app.clone(), server.holds.clone());
    let on_hold = move |pk: i64, change: &str| {
        let Some(change) = HoldChange::parse(change) else {
            return;
        };
        let (app, holds) = (app.clone(), holds.clone());
        tokio::spawn(async move {
            match app.hold_event(pk, change).await {
                Ok(Some(event)) => holds.publish(event),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "another replica's hold change could not be read")
                }
            }
        });
    };
    let (follower, mut stopped) = (store.clone(), stop.clone());
    let registry = registry.clone();
    let listener = tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        follower
            .follow_other_replicas(|| hub.nudge(), || registry.nudge(), on_hold, stop)
            .await;
    });
    let (leading, mut stopped) = (store.clone(), stop.clone());
    let leader = tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        leading.lead(leader_check, stop).await;
    });
    (listener, leader)
}
