//! The smallest engine that drains instead of dropping requests: the four
//! steps of the SDK (`docs/engine.md`, "Integrating the SDK") around a
//! made-up model. `cargo run -p quiesce-engine --example sdk`, then
//! `curl -X POST localhost:8000/generate` and Ctrl-C.

use std::future::IntoFuture;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use quiesce_engine::{DrainRequest, Shutdown, sidecar, signals};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Step 1: the state machine, and the signal handlers before anything
    // else, so that a signal at any later moment drains.
    let shutdown = Shutdown::new();
    let local = DrainRequest {
        propagation: Duration::ZERO,
        timeout: Duration::from_secs(30),
        abort_grace: Duration::from_secs(5),
    };
    signals::spawn_driver(shutdown.clone(), local)?;
    // Step 3: follow the sidecar when QUIESCE_SOCKET is set.
    sidecar::spawn_from_env(shutdown.clone(), "sdk-example");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    let app = Router::new()
        .route("/generate", post(generate))
        .with_state(shutdown.clone());
    let stop_http = CancellationToken::new();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(stop_http.clone().cancelled_owned());
    let server = tokio::spawn(server.into_future());

    // Step 1, continued: load, unless a drain begins first.
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(2)) => shutdown.set_ready(),
        () = shutdown.draining().cancelled_owned() => {}
    }

    // Step 4: exit once stopped and asked to, after the answers are written.
    shutdown.wait_for_exit().await;
    stop_http.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// Step 2: admit, count, and end with an explicit abort when told to.
async fn generate(State(shutdown): State<Shutdown>) -> Response {
    let mut guard = match shutdown.admit() {
        Ok(guard) => guard,
        Err(rejected) => {
            let headers = [(header::RETRY_AFTER, "1")];
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                headers,
                rejected.to_string(),
            )
                .into_response();
        }
    };
    // A real engine calls this when the request leaves its queue.
    guard.start();
    let aborted = shutdown.aborted();
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(3)) => (StatusCode::OK, "the answer\n").into_response(),
        () = aborted.cancelled() => (StatusCode::SERVICE_UNAVAILABLE, "aborted: shutting down\n").into_response(),
    }
    // `guard` drops here: the request is done.
}
