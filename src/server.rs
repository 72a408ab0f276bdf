//! The HTTP server: `/healthz`, `/readyz`, `/metrics` and the webhook receiver.
//!
//! `/healthz` answers 200 while the controller loop runs; `/readyz` only once the caches have
//! synced; `/metrics` serves the Prometheus text format. The receiver
//! (`POST /webhooks/{namespace}/{name}`) lives in `crate::receiver`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use futures::channel::mpsc::UnboundedSender;
use kube::{Client, runtime::reflector::ObjectRef};
use tokio::sync::watch;

use crate::{api::CarerixConnection, carerix::RateLimiters, metrics::Metrics, sync::SyncManager};

/// What the handlers share.
#[derive(Clone)]
pub struct ServerState {
    /// Kubernetes client (the receiver reads connections and Secrets).
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Caches synced.
    pub ready: Arc<AtomicBool>,
    /// Controller loop running.
    pub alive: Arc<AtomicBool>,
    /// Leader election is on.
    pub leader_election: bool,
    /// This replica holds the lease (always true without leader election).
    pub leading: Arc<AtomicBool>,
    /// The data sync, which applies deliveries.
    pub sync: Arc<SyncManager>,
    /// Connections the receiver looked up itself.
    pub lookups: crate::receiver::Lookups,
    /// Timeout and retries of the receiver's Carerix clients.
    pub carerix: crate::controller::Settings,
    /// Per-tenant rate limiters.
    pub rate_limiters: RateLimiters,
    /// Asks the controller to reconcile a connection.
    pub reconcile: UnboundedSender<ObjectRef<CarerixConnection>>,
}

/// The router.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/webhooks/{namespace}/{name}", post(crate::receiver::receive))
        .layer(axum::extract::DefaultBodyLimit::max(crate::receiver::MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves until `shutdown` turns true.
///
/// # Errors
/// Fails when the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn healthz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.alive.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controller loop stopped")
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else if state.leader_election && !state.leading.load(Ordering::SeqCst) {
        // A standby is ready to take over; it must not hold up rollouts.
        (StatusCode::OK, "standby")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}
