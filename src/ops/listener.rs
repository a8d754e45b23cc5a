//! The operator's HTTP listener (`[ops] listen`): `/metrics` for Prometheus, `/healthz` (the
//! process answers) and `/readyz` (every readiness probe passes; 503 with the failing ones
//! otherwise). Plain HTTP on an address the operator chooses: bind it to loopback or a private
//! network, it has no authentication.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::health::Readiness;
use super::metrics::{Metrics, CONTENT_TYPE};

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    readiness: Readiness,
}

/// A running listener. Dropping it (or [`OpsServer::stop`]) closes it.
pub struct OpsServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl OpsServer {
    /// Binds `listen` (port 0 picks a free one, see [`OpsServer::local_addr`]) and serves in
    /// the background on the current Tokio runtime.
    pub async fn start(listen: SocketAddr, metrics: Metrics, readiness: Readiness) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("opening the ops listener on {listen} (`ops.listen`)"))?;
        let addr = listener.local_addr()?;
        let app = router(OpsState { metrics, readiness });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                // A dropped sender stops the listener too.
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the ops listener stopped");
            }
        });
        tracing::info!(%addr, "ops listener: /metrics, /healthz, /readyz");
        Ok(OpsServer {
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish, and returns once closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let report = state.readiness.check().await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.to_text()).into_response()
}
