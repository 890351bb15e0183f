//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` answers 200 while the process serves HTTP at all: the kubelet
//! restarts the pod when it stops. `/readyz` answers 200 once the operator
//! has started (the CRD is installed, the controller or the standby is
//! running) and 503 from the moment it shuts down. A standby that waits for
//! the lease is ready: it is healthy and takes over when the leader goes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use quiesce_http::Limits;
use tokio::net::TcpListener;

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the operator is ready, shared between the code that starts and
/// stops it and `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Backs `/readyz`.
    pub readiness: Arc<Readiness>,
    /// Encoded on `/metrics`.
    pub registry: Arc<Registry>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` completes, within
/// the bounds of [`quiesce_http`]: the port is reachable by anything in the
/// cluster.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    quiesce_http::serve(listener, router(state), Limits::default(), shutdown).await;
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.readiness.get() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match crate::metrics::encode(&state.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::metrics::Metrics;

    /// One HTTP/1.1 request over a real socket: the status line and the body.
    async fn get(address: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_over_http() {
        let (registry, metrics) = Metrics::new_registry();
        metrics.set_leader(true);
        let readiness = Arc::new(Readiness::default());
        let state = AdminState {
            readiness: readiness.clone(),
            registry: Arc::new(registry),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));

        let (head, body) = get(address, "/healthz").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "ok\n");

        let (head, _) = get(address, "/readyz").await;
        assert!(
            head.starts_with("HTTP/1.1 503"),
            "not ready before start: {head}"
        );
        readiness.set(true);
        let (head, _) = get(address, "/readyz").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");

        let (head, body) = get(address, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.lines().any(|l| l == "quiesce_operator_leader 1"),
            "{body}"
        );
        assert!(body.contains("quiesce_operator_reconciles_total{result=\"applied\"} 0"));

        let (head, _) = get(address, "/nope").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        stop.cancel();
        server.await.unwrap();
    }
}
