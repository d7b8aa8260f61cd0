//! The plain-HTTP port: `/healthz` (the process is up), `/readyz` (the database commits and
//! the issuing CA is not within its minimum lifetime of its notAfter),
//! `/bundle.pem` (the trust bundle: the issuing CA and the CAs above it up to the root, PEM),
//! `/crl` (the revocation registry as an RFC 5280 CRL, DER, signed by the issuing CA), `/ocsp`
//! (the same registry over OCSP, RFC 6960; see [`crate::ocsp`]) and `/metrics` (Prometheus text
//! format; see `docs/slo.md`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mintgate_api::RevocationHub;
use mintgate_domain::lifetime::CaWindow;
use mintgate_domain::ports::{Clock, CrlSpec, Signer};
use mintgate_domain::service::EXPIRY_SKEW;
use mintgate_domain::store::CertificateStore;
use mintgate_store::SqlStore;
use time::OffsetDateTime;

use crate::metrics::Exporter;
use crate::ocsp::{self, OcspResponder};

/// How long a CRL is valid; a fresh one is signed at half this age, or at once after a
/// revocation.
const CRL_VALIDITY: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) store: SqlStore,
    pub(crate) crl: Arc<CrlPublisher>,
    pub(crate) ocsp: Arc<OcspResponder>,
    pub(crate) metrics: Arc<Exporter>,
    pub(crate) ca_window: CaWindow,
    pub(crate) clock: Arc<dyn Clock>,
    /// The trust bundle, PEM.
    pub(crate) bundle: Arc<str>,
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/bundle.pem", get(bundle))
        .route("/crl", get(crl))
        .route(
            "/ocsp",
            post(ocsp::post).layer(DefaultBodyLimit::max(ocsp::MAX_REQUEST_BYTES)),
        )
        .route("/ocsp/{*request}", get(ocsp::get))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Answers from the store's cached health at once: a hung database makes the probe time out
/// and this say 503, never hang (see `mintgate_store::SqlStore::health`).
async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    // A CA this close to its end issues nothing (CA_EXPIRING), so this replica cannot serve.
    if let Err(e) = state.ca_window.check(state.clock.now()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
    }
    match state.store.health() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", why.as_str()),
        ),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state.metrics.render(&state.store).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn bundle(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.bundle.to_string(),
    )
        .into_response()
}

async fn crl(State(state): State<HttpState>) -> Response {
    match state.crl.current(&state.store).await {
        Ok(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not produce the CRL");
            (StatusCode::SERVICE_UNAVAILABLE, "CRL unavailable; retry\n").into_response()
        }
    }
}

/// Signs CRLs from the registry and keeps the latest: re-signed when the hub has applied a new
/// revocation or the cached one is half-way to its nextUpdate.
pub(crate) struct CrlPublisher {
    signer: Arc<dyn Signer>,
    hub: Arc<RevocationHub>,
    clock: Arc<dyn Clock>,
    cached: Mutex<Option<CachedCrl>>,
}

struct CachedCrl {
    applied: i64,
    number: u64,
    this_update: OffsetDateTime,
    der: Vec<u8>,
}

impl CrlPublisher {
    pub(crate) fn new(
        signer: Arc<dyn Signer>,
        hub: Arc<RevocationHub>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            signer,
            hub,
            clock,
            cached: Mutex::new(None),
        }
    }

    pub(crate) async fn current(&self, store: &SqlStore) -> anyhow::Result<Vec<u8>> {
        let now = self.clock.now();
        let applied = self.hub.applied();
        let previous = {
            let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = cached.as_ref()
                && c.applied == applied
                && now - c.this_update < CRL_VALIDITY / 2
            {
                return Ok(c.der.clone());
            }
            cached.as_ref().map_or(0, |c| c.number)
        };
        // Exactly the revoked, unexpired certificates, as of at least `applied`: like the live
        // set and WatchRevocations snapshots, an entry stays EXPIRY_SKEW past its notAfter for
        // relying parties whose clocks run behind.
        let entries = store.live_revocations(now - EXPIRY_SKEW).await?;
        // Monotonic across restarts (seconds since the epoch) and across re-signings.
        let number = previous
            .saturating_add(1)
            .max(u64::try_from(now.unix_timestamp()).unwrap_or_default());
        let der = self.signer.sign_crl(&CrlSpec {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            number,
            entries: &entries,
        })?;
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(CachedCrl {
            applied,
            number,
            this_update: now,
            der: der.clone(),
        });
        Ok(der)
    }
}
