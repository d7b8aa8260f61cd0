//! The plain-HTTP port: `/healthz` (the process is up), `/readyz` (the database commits, this
//! server signs with the registry's ACTIVE CA, and that CA is not within its minimum lifetime
//! of its notAfter),
//! `/bundle.pem` (the trust bundle: every CA PREPARED, ACTIVE or RETIRING and the CAs above
//! it up to the root, PEM), `/crl` (the revocation registry as an RFC 5280 CRL, DER, signed by
//! the ACTIVE CA; `/crl/{key id}` the same for any CA in the bundle, what each CA stamps into
//! the certificates it signs), `/ocsp`
//! (the same registry over OCSP, RFC 6960; see [`crate::ocsp`]) and `/metrics` (Prometheus text
//! format; see `docs/slo.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mintgate_api::RevocationHub;
use mintgate_ca::Authorities;
use mintgate_domain::lifetime::CaWindow;
use mintgate_domain::ports::{Clock, CrlSpec, Signer};
use mintgate_domain::service::EXPIRY_SKEW;
use mintgate_store::SqlStore;
use time::OffsetDateTime;

use crate::authorities::CaRegistry;
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
    /// The CAs: the trust bundle, the active one's notAfter, whether it is the registry's.
    pub(crate) ca: Arc<CaRegistry>,
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/bundle.pem", get(bundle))
        .route("/crl", get(active_crl))
        .route("/crl/{key_id}", get(crl))
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
    if !state.ca.in_step() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "CA_NOT_LOADED: the registry's ACTIVE CA key cannot be opened here\n".to_owned(),
        );
    }
    let window = CaWindow {
        not_after: state.ca.signer.not_after(),
        ..state.ca_window
    };
    if let Err(e) = window.check(state.clock.now()) {
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
        state.ca.signer.trust_bundle_pem(),
    )
        .into_response()
}

/// `/crl`: the CRL of the ACTIVE CA.
async fn active_crl(State(state): State<HttpState>) -> Response {
    let key_id = state.ca.signer.issuer_key_id();
    crl(State(state), axum::extract::Path(key_id)).await
}

/// `/crl/{key_id}`: the CRL of any CA in the trust bundle (what each CA stamps into the
/// certificates it signs).
async fn crl(
    State(state): State<HttpState>,
    axum::extract::Path(key_id): axum::extract::Path<String>,
) -> Response {
    match state.crl.current(&state.store, &key_id).await {
        Ok(Some(der)) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "no CA in the trust bundle has this key id\n",
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not produce the CRL");
            (StatusCode::SERVICE_UNAVAILABLE, "CRL unavailable; retry\n").into_response()
        }
    }
}

/// Signs each CA's CRL from the registry and keeps the latest: re-signed when the hub has
/// applied a new revocation or the cached one is half-way to its nextUpdate. One CRL is signed
/// at a time, on a blocking thread (a million entries take seconds): requests that arrive
/// meanwhile wait for it and are answered with it, and every answer shares the cached bytes.
pub(crate) struct CrlPublisher {
    authorities: Arc<Authorities>,
    hub: Arc<RevocationHub>,
    clock: Arc<dyn Clock>,
    /// By CA key id.
    cached: Mutex<HashMap<String, CachedCrl>>,
    signing: tokio::sync::Mutex<()>,
}

struct CachedCrl {
    applied: i64,
    number: u64,
    this_update: OffsetDateTime,
    der: Bytes,
}

impl CrlPublisher {
    pub(crate) fn new(
        authorities: Arc<Authorities>,
        hub: Arc<RevocationHub>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            authorities,
            hub,
            clock,
            cached: Mutex::default(),
            signing: tokio::sync::Mutex::default(),
        }
    }

    /// The cached CRL of `key_id` if it is still current, else its CRL number.
    fn cached(&self, key_id: &str, now: OffsetDateTime, applied: i64) -> Result<Bytes, u64> {
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        match cached.get(key_id) {
            Some(c) if c.applied == applied && now - c.this_update < CRL_VALIDITY / 2 => {
                Ok(c.der.clone())
            }
            Some(c) => Err(c.number),
            None => Err(0),
        }
    }

    /// The CRL of the CA `key_id`, DER; none when no CA in the trust bundle has that key id.
    pub(crate) async fn current(
        &self,
        store: &SqlStore,
        key_id: &str,
    ) -> anyhow::Result<Option<Bytes>> {
        if self.authorities.current().find(key_id).is_none() {
            return Ok(None);
        }
        if let Ok(der) = self.cached(key_id, self.clock.now(), self.hub.applied()) {
            return Ok(Some(der));
        }
        let _signing = self.signing.lock().await;
        // Signed by the request this one waited for, if nothing was applied since.
        let (now, applied) = (self.clock.now(), self.hub.applied());
        let previous = match self.cached(key_id, now, applied) {
            Ok(der) => return Ok(Some(der)),
            Err(number) => number,
        };
        // Exactly the revoked, unexpired certificates, as of at least `applied`: like the live
        // set and WatchRevocations snapshots, an entry stays EXPIRY_SKEW past its notAfter for
        // relying parties whose clocks run behind.
        let entries = store.crl_entries(key_id, now - EXPIRY_SKEW).await?;
        // Monotonic across restarts (seconds since the epoch) and across re-signings.
        let number = previous
            .saturating_add(1)
            .max(u64::try_from(now.unix_timestamp()).unwrap_or_default());
        let (authorities, key) = (self.authorities.clone(), key_id.to_owned());
        let der = tokio::task::spawn_blocking(move || {
            authorities.sign_crl(&CrlSpec {
                this_update: now,
                next_update: now + CRL_VALIDITY,
                number,
                issuer_key_id: &key,
                entries: &entries,
            })
        })
        .await??;
        let der = Bytes::from(der);
        let cached = CachedCrl {
            applied,
            number,
            this_update: now,
            der: der.clone(),
        };
        self.cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_id.to_owned(), cached);
        Ok(Some(der))
    }
}
