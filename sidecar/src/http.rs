//! The sidecar's HTTP endpoints, for the kubelet and Prometheus. All are
//! read-only: nothing reachable over the network changes the drain.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use quiesce_protocol::contract::{LIVE_PATH, LOAD_PATH, METRICS_PATH, READY_PATH, STATUS_PATH};

use crate::coordinator::{Check, Coordinator};

/// The router: `GET /live`, `/ready`, `/metrics`, `/status` and `/load`.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route(LIVE_PATH, get(live))
        .route(READY_PATH, get(ready))
        .route(METRICS_PATH, get(metrics))
        .route(STATUS_PATH, get(status))
        .route(LOAD_PATH, get(load))
        // No endpoint reads a body; refuse to buffer one.
        .layer(DefaultBodyLimit::max(0))
        .with_state(coordinator)
}

fn check_response(check: Check) -> Response {
    let code = if check.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", check.reason)).into_response()
}

async fn live(State(coordinator): State<Arc<Coordinator>>) -> Response {
    check_response(coordinator.liveness(Instant::now()))
}

async fn ready(State(coordinator): State<Arc<Coordinator>>) -> Response {
    check_response(coordinator.readiness(Instant::now()))
}

async fn metrics(State(coordinator): State<Arc<Coordinator>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        coordinator.metrics.encode(),
    )
        .into_response()
}

async fn status(State(coordinator): State<Arc<Coordinator>>) -> Response {
    Json(coordinator.status(Instant::now())).into_response()
}

async fn load(State(coordinator): State<Arc<Coordinator>>) -> Response {
    Json(coordinator.load(Instant::now())).into_response()
}
