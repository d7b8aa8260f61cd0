//! The plain-HTTP port: `/healthz` (the process is up) and `/readyz` (the database answers).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use mintgate_store::SqlStore;

pub(crate) fn router(store: SqlStore) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(store)
}

async fn readyz(State(store): State<SqlStore>) -> (StatusCode, &'static str) {
    if store.ping().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
    }
}
