//! The simulated engine's life, from the first signal handler to the exit
//! code: the four SDK steps of [`crate`] wired to an HTTP server and worker
//! processes.
//!
//! 1. Signal handlers first, so that a signal at any later moment drains
//!    instead of killing the process with its children.
//! 2. Follow the sidecar if `QUIESCE_SOCKET` is set.
//! 3. Bind and serve HTTP at once (`/health` answers 503 while loading);
//!    start the workers; load until every worker is ready, or until a drain
//!    begins ([`Shutdown::draining`]): a signal during start-up stops loading.
//! 4. When stopped and asked to exit: stop the HTTP server gracefully
//!    (bounded), so that every answer already handed to hyper is written;
//!    close the workers' pipes and reap them; exit.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::EngineConfig;
use super::server::Engine;
use super::workers::{WorkerLost, WorkerPool, WorkerSpec};
use quiesce_engine::{Phase, Shutdown, sidecar, signals};

/// How long workers have to exit after end-of-file on their pipe before
/// they are killed.
pub const WORKER_EXIT_PATIENCE: Duration = Duration::from_secs(2);

/// The shortest time given to open connections to finish writing after the
/// engine stopped (otherwise `--abort-grace-seconds`).
pub const MIN_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// The name the engine gives itself to the sidecar.
pub const SIDECAR_NAME: &str = "quiesce-engine";

/// Why the engine exited; [`Exit::code`] is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped as asked (drained, aborted at the deadline or on a second
    /// signal, or interrupted during start-up), every worker reaped.
    Clean,
    /// Could not start: the address is taken, a worker cannot be spawned,
    /// the signal handlers cannot be installed.
    StartupFailed,
    /// A worker process died (or broke its pipe) while the engine was not
    /// stopping it; in-flight requests were aborted explicitly.
    WorkerLost,
}

impl Exit {
    /// The process exit code: 0, 1 or 3 (2 is a usage error, from the
    /// argument parser).
    pub fn code(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::StartupFailed => 1,
            Self::WorkerLost => 3,
        }
    }
}

/// Runs the engine until it has stopped and was asked to exit.
///
/// Must be awaited on the main thread (the future given to
/// `Runtime::block_on`), because the worker processes are forked from it;
/// see [`WorkerPool::start`].
pub async fn run(config: EngineConfig, worker: WorkerSpec) -> Exit {
    let shutdown = Shutdown::new();
    if let Err(error) = signals::spawn_driver(shutdown.clone(), config.local_drain) {
        tracing::error!(%error, "cannot install the signal handlers");
        return Exit::StartupFailed;
    }
    tracing::info!(
        pid = std::process::id(),
        model = config.model,
        workers = config.workers,
        "starting"
    );
    if sidecar::spawn_from_env(shutdown.clone(), SIDECAR_NAME).is_some() {
        tracing::info!("following the sidecar");
    }
    tokio::spawn(log_phases(shutdown.clone()));

    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(listen = %config.listen, %error, "cannot listen");
            return Exit::StartupFailed;
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "listening"),
        Err(error) => tracing::warn!(%error, "listening on an unknown address"),
    }

    let started = Instant::now();
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let pool = if config.workers > 0 {
        match WorkerPool::start(&worker, config.workers, &shutdown.draining(), lost_tx).await {
            Ok(pool) => Some(Arc::new(pool)),
            Err(error) => {
                tracing::error!(%error, "cannot start the workers");
                return Exit::StartupFailed;
            }
        }
    } else {
        None
    };
    let worker_lost = Arc::new(AtomicBool::new(false));
    let stay_up = config.stock.personality.stays_up_when_dead(&config.stock);
    tokio::spawn(supervise(
        lost_rx,
        shutdown.clone(),
        config.local_drain.abort_grace,
        worker_lost.clone(),
        stay_up,
    ));

    let connection_grace = config.local_drain.abort_grace.max(MIN_CONNECTION_GRACE);
    let startup = config.startup;
    let engine = Engine::new(config, shutdown.clone(), pool.clone(), worker_lost.clone());
    let stop_http = CancellationToken::new();
    let server = axum::serve(
        listener.tap_io(|tcp| {
            // Tokens are small writes that must leave at once.
            let _ = tcp.set_nodelay(true);
        }),
        engine.router(),
    )
    .with_graceful_shutdown(stop_http.clone().cancelled_owned());
    let server = tokio::spawn(server.into_future());

    let loaded = async {
        match &pool {
            Some(pool) => pool.ready().await.is_ok(),
            None => {
                tokio::time::sleep(startup).await;
                true
            }
        }
    };
    tokio::select! {
        ok = loaded => {
            // A worker lost while loading leaves the engine starting; the
            // supervisor is already aborting it.
            if ok {
                shutdown.set_ready();
            }
            if shutdown.phase() == Phase::Ready {
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "ready");
            }
        }
        () = shutdown.draining().cancelled_owned() => tracing::info!("start-up interrupted: not loading further"),
    }

    shutdown.wait_for_exit().await;
    tracing::info!("stopped; closing connections");
    stop_http.cancel();
    match tokio::time::timeout(connection_grace, server).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            grace_ms = connection_grace.as_millis() as u64,
            "connections still open after the grace; closing them"
        ),
    }
    if let Some(pool) = &pool {
        pool.shutdown(WORKER_EXIT_PATIENCE).await;
    }
    let exit = if worker_lost.load(Ordering::Acquire) {
        Exit::WorkerLost
    } else {
        Exit::Clean
    };
    tracing::info!(code = exit.code(), "exiting");
    exit
}

/// Turns the first lost worker into an abort of everything and an exit:
/// the engine cannot generate without all its workers (like a
/// tensor-parallel group), and the parent, not the worker, decides what
/// happens to the requests. With `stay_up` (a stock engine that outlives its
/// engine core) the server stays up instead, dead, until a signal.
async fn supervise(
    mut lost: mpsc::UnboundedReceiver<WorkerLost>,
    shutdown: Shutdown,
    grace: Duration,
    worker_lost: Arc<AtomicBool>,
    stay_up: bool,
) {
    while let Some(event) = lost.recv().await {
        if worker_lost.swap(true, Ordering::AcqRel) {
            tracing::debug!(
                worker = event.index,
                reason = event.reason,
                "another worker lost"
            );
            continue;
        }
        if stay_up {
            tracing::error!(
                worker = event.index,
                pid = event.pid,
                reason = event.reason,
                "lost a worker: aborting every request; staying up, dead"
            );
        } else {
            tracing::error!(
                worker = event.index,
                pid = event.pid,
                reason = event.reason,
                "lost a worker: aborting every request and exiting"
            );
            shutdown.request_exit();
        }
        shutdown.abort(grace);
    }
}

async fn log_phases(shutdown: Shutdown) {
    let mut changes = shutdown.subscribe();
    let mut last = *changes.borrow_and_update();
    while changes.changed().await.is_ok() {
        let phase = *changes.borrow_and_update();
        if phase != last {
            tracing::info!(from = %last, to = %phase, "phase changed");
            last = phase;
        }
    }
}
