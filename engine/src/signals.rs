//! Signals for engine binaries. A library must not install signal handlers;
//! an engine's `main` decides to by calling [`spawn_driver`] (or awaiting
//! [`drive_from_signals`]).

use std::io;

use quiesce_protocol::{DrainRequest, Phase};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

/// Maps SIGTERM and SIGINT (the same thing, as in vLLM) to the shutdown
/// state machine, for the life of the process:
///
/// - the first signal asks the process to exit once stopped, and starts a
///   drain with `local`, unless a drain is already in progress (one the
///   sidecar ordered): that one keeps its own deadlines;
/// - a second signal aborts at once, with `local.abort_grace` to deliver the
///   abort responses.
///
/// Returns after the second signal, or with an error if the handlers cannot
/// be installed. The handlers are installed when the future is first polled:
/// to run it in the background, use [`spawn_driver`], which installs them
/// before it returns.
pub async fn drive_from_signals(shutdown: Shutdown, local: DrainRequest) -> io::Result<()> {
    Handlers::install()?.drive(shutdown, local).await;
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, then runs
/// [`drive_from_signals`] in a background task. Must be called inside a Tokio
/// runtime.
///
/// Prefer it to `tokio::spawn(drive_from_signals(..))`: a spawned future
/// installs its handlers only when a worker thread first polls it, and a
/// signal that arrives before then still has its default action, which kills
/// the process (and orphans its children) instead of draining it.
pub fn spawn_driver(shutdown: Shutdown, local: DrainRequest) -> io::Result<JoinHandle<()>> {
    let handlers = Handlers::install()?;
    Ok(tokio::spawn(handlers.drive(shutdown, local)))
}

struct Handlers {
    terminate: Signal,
    interrupt: Signal,
}

impl Handlers {
    fn install() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    async fn drive(mut self, shutdown: Shutdown, local: DrainRequest) {
        let first = self.next().await;
        shutdown.request_exit();
        match shutdown.phase() {
            // A drain in progress (the sidecar's, or one the preStop hook
            // started before it lost the sidecar) keeps its own deadlines:
            // the kubelet's SIGTERM must not cut it short.
            Phase::Draining | Phase::Aborting | Phase::Stopped => {
                tracing::info!(signal = first, phase = %shutdown.phase(), "exiting once the drain in progress ends");
            }
            Phase::Starting | Phase::Ready => {
                tracing::info!(signal = first, phase = %shutdown.phase(), "draining before exit");
                shutdown.drain(local);
            }
        }
        let second = self.next().await;
        tracing::warn!(
            signal = second,
            "second signal: aborting in-flight requests"
        );
        shutdown.abort(local.abort_grace);
    }
}
