//! `/metrics`: one Prometheus recorder per [`Application`](crate::Application), never installed
//! as the process-wide recorder, so several servers in one process keep separate series. The
//! api and store crates record into it through handles (`mintgate_api::Metrics`,
//! `mintgate_store::StoreMetrics`); the gauges that are cheaper to read than to track (CA expiry,
//! outstanding join tokens) are refreshed here on each scrape.

use std::sync::Arc;

use metrics::{Gauge, Recorder, Unit, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use mintgate_api::metrics::{ISSUANCE_DURATION, PROPAGATION, RPC_DURATION};
use mintgate_domain::ports::{Clock, Signer};
use mintgate_store::SqlStore;
use mintgate_store::metrics::COMMIT_BATCH;

/// Seconds until the issuing CA certificate's notAfter (negative once it has passed).
pub const CA_EXPIRY: &str = "mintgate_ca_expiry_seconds";
/// Join tokens neither used nor expired.
pub const JOIN_TOKENS: &str = "mintgate_join_tokens_outstanding";
/// 1 while the store commits writes (what `/readyz` reports), else 0.
pub const STORE_READY: &str = "mintgate_store_ready";

/// How long a scrape waits for the database before it leaves the database-backed gauges at
/// their last values.
const SCRAPE_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Bucket bounds: histograms are exported as Prometheus histograms (not summaries), so they
/// aggregate across replicas and `histogram_quantile` works on them.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const LAG: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// See the module documentation.
pub(crate) struct Exporter {
    recorder: Arc<dyn Recorder + Send + Sync>,
    handle: PrometheusHandle,
    ca_expiry: Gauge,
    join_tokens: Gauge,
    store_ready: Gauge,
    /// The active CA, whose notAfter the expiry gauge counts down to.
    signer: Arc<dyn Signer>,
    clock: Arc<dyn Clock>,
}

impl Exporter {
    pub(crate) fn new(signer: Arc<dyn Signer>, clock: Arc<dyn Clock>) -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (RPC_DURATION, LATENCY),
            (ISSUANCE_DURATION, LATENCY),
            (PROPAGATION, LAG),
            (COMMIT_BATCH, BATCH),
        ] {
            // The only error is an empty bucket list; these are constants and none is empty.
            #[allow(clippy::expect_used)]
            {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                    .expect("bucket lists are not empty");
            }
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let recorder: Arc<dyn Recorder + Send + Sync> = Arc::new(recorder);
        let (ca_expiry, join_tokens, store_ready) = with_local_recorder(&*recorder, || {
            describe_gauge!(
                CA_EXPIRY,
                Unit::Seconds,
                "Seconds until the issuing CA certificate expires."
            );
            describe_gauge!(JOIN_TOKENS, "Join tokens neither used nor expired.");
            describe_gauge!(
                STORE_READY,
                "1 while the database commits writes (what /readyz reports), else 0."
            );
            (gauge!(CA_EXPIRY), gauge!(JOIN_TOKENS), gauge!(STORE_READY))
        });
        Self {
            recorder,
            handle,
            ca_expiry,
            join_tokens,
            store_ready,
            signer,
            clock,
        }
    }

    /// The recorder the rest of the application records into.
    pub(crate) fn recorder(&self) -> Arc<dyn Recorder + Send + Sync> {
        self.recorder.clone()
    }

    /// Folds recorded histogram samples into their buckets, so memory stays bounded between
    /// scrapes (a scrape does the same).
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Refreshes the read-on-scrape gauges and renders the text exposition format. A database
    /// that does not answer within [`SCRAPE_DB_TIMEOUT`] leaves the join-token gauge at its last
    /// value (and `/readyz` fails).
    pub(crate) async fn render(&self, store: &SqlStore) -> String {
        let now = self.clock.now();
        self.ca_expiry
            .set((self.signer.not_after() - now).as_seconds_f64());
        self.store_ready
            .set(if store.health().is_ok() { 1.0 } else { 0.0 });
        let tokens = tokio::time::timeout(SCRAPE_DB_TIMEOUT, store.outstanding_join_tokens(now));
        match tokens.await {
            Ok(Ok(n)) => self.join_tokens.set(n as f64),
            Ok(Err(e)) => tracing::warn!(error = %e, "counting outstanding join tokens failed"),
            Err(_) => tracing::warn!("counting outstanding join tokens timed out"),
        }
        self.handle.render()
    }
}
