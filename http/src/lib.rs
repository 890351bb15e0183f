//! The HTTP server of the sidecar's probe endpoints and the operator's
//! admin endpoints, which anyone who reaches the pod can talk to.
//!
//! `axum::serve` keeps a connection for as long as the client likes: a
//! client that sends its headers one byte at a time (slowloris), or opens
//! thousands of connections and says nothing, holds a file descriptor and
//! a buffer each, until the process runs out of both and the kubelet's
//! probes fail. This server bounds all of it:
//! - at most [`Limits::max_connections`] connections; a new one evicts the
//!   oldest, so that a probe (the newest connection) is answered while a
//!   flood of idle connections churns;
//! - the request head must arrive within [`Limits::header_timeout`], on a
//!   new connection and between the requests of a kept-alive one;
//! - the head is at most [`Limits::max_head_bytes`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one server allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time for a request head to arrive.
    pub header_timeout: Duration,
    /// Size of a request head (line and headers) at most; hyper's minimum is
    /// 8 KiB.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    /// Room for every probe, scrape and debugging `curl` a pod sees, and
    /// memory for all of them well under the sidecar's 64 MiB limit: the
    /// head buffer of an idle connection is 8 KiB.
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            max_head_bytes: 16 * 1024,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes; then closes every connection and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    // The open connections, oldest first, each with its eviction.
    let mut open: VecDeque<CancellationToken> = VecDeque::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some
                    // to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Forget the connections that closed, once there are more entries
        // than can be open: the list stays within the limit and one.
        if open.len() >= max_connections {
            open.retain(|evict| !evict.is_cancelled());
        }
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Full: evict the oldest, and wait until it has closed.
                if let Some(oldest) = open.pop_front() {
                    oldest.cancel();
                }
                match Arc::clone(&slots).acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => break,
                }
            }
        };
        let evict = stop.child_token();
        open.push_back(evict.clone());
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            // Evicted (or shut down): dropped at once.
            tokio::select! {
                _ = connection => {}
                () = evict.cancelled() => {}
            }
            // The connection is closed: its slot is free.
            evict.cancel();
            drop(slot);
        });
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
}
