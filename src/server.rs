//! The HTTP servers: the public receiver, and probes and metrics on a port of their own.
//!
//! The receiver (`POST /webhooks/{namespace}/{name}`, in `crate::receiver`) faces the internet:
//! it reads headers and bodies under timeouts, serves a bounded number of requests at once
//! (more get 503 at once) and limits requests per connection. The probe server answers
//! `/healthz` (200 while the controller loop runs), `/readyz` (once the caches have synced) and
//! `/metrics` (Prometheus text format); a flood on the receiver cannot fail liveness.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower::ServiceBuilder;
use tracing::debug;

use crate::{
    metrics::Metrics,
    receiver::{Outcome, Receiver},
};

/// What the probe handlers share.
#[derive(Clone)]
pub struct ProbeState {
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
    /// The receiver, whose informer cache must be synced too.
    pub receiver: Receiver,
}

/// The receiver's router: only `POST /webhooks/{namespace}/{name}`.
pub fn receiver_router(receiver: Receiver) -> Router {
    let limits = receiver.limits().clone();
    let on_overload = {
        let receiver = receiver.clone();
        move |_: tower::BoxError| {
            let receiver = receiver.clone();
            async move { receiver.answer(Outcome::Overloaded) }
        }
    };
    Router::new()
        .route("/webhooks/{namespace}/{name}", post(crate::receiver::receive))
        .with_state(receiver)
        .layer(
            ServiceBuilder::new()
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    limits.request_timeout,
                ))
                .layer(HandleErrorLayer::new(on_overload))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrency)),
        )
}

/// The probe router: `/healthz`, `/readyz`, `/metrics`.
pub fn probe_router(state: ProbeState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` turns true, then waits for the requests in
/// flight. HTTP/1.1 only; a connection that does not send a request's headers within
/// `header_read_timeout` (including an idle kept-alive one) is closed.
///
/// # Errors
/// Never: failed accepts are retried, failed connections only end themselves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    debug!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "an HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves when `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn healthz(State(state): State<ProbeState>) -> impl IntoResponse {
    if state.alive.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controller loop stopped")
    }
}

async fn readyz(State(state): State<ProbeState>) -> impl IntoResponse {
    if !state.receiver.connections().is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "receiver cache not synced yet")
    } else if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else if state.leader_election && !state.leading.load(Ordering::SeqCst) {
        // A standby is ready to take over; it must not hold up rollouts.
        (StatusCode::OK, "standby")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}

async fn metrics(State(state): State<ProbeState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}
