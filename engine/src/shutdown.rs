//! The engine's shutdown state machine: running → draining → aborting →
//! stopped, with an admission guard for requests.
//!
//! An engine wires its request handler to [`Shutdown::admit`] and ends its
//! responses with an explicit abort when [`Shutdown::aborted`] fires; the
//! drain itself comes from the sidecar ([`crate::sidecar`]) or from signals
//! ([`crate::signals`]), or both.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiesce_protocol::{DrainRequest, EngineStatus, Phase};
use tokio::sync::watch;
// Tokio's clock, so that tests with a paused clock see the deadlines move.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why [`Shutdown::admit`] refused a request. Every variant means "retry on
/// another replica"; an HTTP engine answers 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The engine is still loading.
    #[error("the engine is starting")]
    Starting,
    /// The engine is draining and no longer admits requests.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// The deadlines of a drain, on this process's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadlines {
    /// New requests are refused from this instant.
    stop_admitting: Instant,
    /// Work still left is aborted at this instant.
    abort: Instant,
    /// The engine reports `stopped` at the latest at this instant.
    stop: Instant,
}

impl Deadlines {
    fn tighten(&mut self, other: Deadlines) {
        self.stop_admitting = self.stop_admitting.min(other.stop_admitting);
        self.abort = self.abort.min(other.abort);
        self.stop = self.stop.min(other.stop);
    }
}

/// The pure part: phase and deadlines, advanced by [`Machine::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Machine {
    phase: Phase,
    deadlines: Option<Deadlines>,
}

impl Machine {
    fn drain(&mut self, now: Instant, request: DrainRequest) {
        // A starting engine was never routed to: no propagation delay.
        let propagation = match self.phase {
            Phase::Starting => Duration::ZERO,
            _ => request.propagation,
        };
        let stop_admitting = now + propagation;
        let abort = stop_admitting + request.timeout;
        let new = Deadlines {
            stop_admitting,
            abort,
            stop: abort + request.abort_grace,
        };
        match (self.phase, &mut self.deadlines) {
            (Phase::Stopped, _) => {}
            (Phase::Draining | Phase::Aborting, Some(current)) => current.tighten(new),
            _ => {
                self.phase = Phase::Draining;
                self.deadlines = Some(new);
            }
        }
    }

    fn abort(&mut self, now: Instant, grace: Duration) {
        if self.phase == Phase::Stopped {
            return;
        }
        let new = Deadlines {
            stop_admitting: now,
            abort: now,
            stop: now + grace,
        };
        match &mut self.deadlines {
            Some(current) => current.tighten(new),
            None => self.deadlines = Some(new),
        }
        self.phase = Phase::Aborting;
    }

    /// Moves to the phase that `now` and the amount of work left imply;
    /// returns the next instant at which the phase may change by itself.
    fn advance(&mut self, now: Instant, idle: bool) -> Option<Instant> {
        let deadlines = self.deadlines?;
        if self.phase == Phase::Draining && now >= deadlines.abort {
            self.phase = Phase::Aborting;
        }
        match self.phase {
            Phase::Draining if now >= deadlines.stop_admitting && idle => {
                self.phase = Phase::Stopped;
                None
            }
            Phase::Draining if now < deadlines.stop_admitting => Some(deadlines.stop_admitting),
            Phase::Draining => Some(deadlines.abort),
            Phase::Aborting if idle || now >= deadlines.stop => {
                self.phase = Phase::Stopped;
                None
            }
            Phase::Aborting => Some(deadlines.stop),
            _ => None,
        }
    }

    fn admits(&self, now: Instant) -> Result<(), Rejected> {
        match (self.phase, self.deadlines) {
            (Phase::Ready, _) => Ok(()),
            (Phase::Starting, _) => Err(Rejected::Starting),
            (Phase::Draining, Some(d)) if now < d.stop_admitting => Ok(()),
            _ => Err(Rejected::ShuttingDown),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU32,
    in_flight: AtomicU32,
    kv_transfers: AtomicU32,
}

impl Counters {
    fn idle(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.kv_transfers.load(Ordering::Acquire) == 0
    }
}

#[derive(Debug)]
struct Inner {
    machine: Mutex<Machine>,
    counters: Counters,
    /// Bumped on every change of phase or counters: wakes the driver and the
    /// sidecar reporter.
    changes: watch::Sender<Phase>,
    aborted: CancellationToken,
    draining: CancellationToken,
    exit_requested: CancellationToken,
    /// The instant the pending timer task wakes at, if any.
    timer: Mutex<Option<Instant>>,
}

/// The shutdown state of one engine process. Cheap to clone; all clones share
/// the same state. [`Shutdown::drain`] and [`Shutdown::abort`] arm timers and
/// must be called inside a Tokio runtime.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new engine, in phase `starting`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                machine: Mutex::new(Machine {
                    phase: Phase::Starting,
                    deadlines: None,
                }),
                counters: Counters::default(),
                changes: watch::Sender::new(Phase::Starting),
                aborted: CancellationToken::new(),
                draining: CancellationToken::new(),
                exit_requested: CancellationToken::new(),
                timer: Mutex::new(None),
            }),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.machine().phase
    }

    /// The current status, as reported to the sidecar.
    pub fn status(&self) -> EngineStatus {
        let counters = &self.inner.counters;
        EngineStatus {
            phase: self.phase(),
            in_flight: counters.in_flight.load(Ordering::Acquire),
            queued: counters.queued.load(Ordering::Acquire),
            kv_transfers: counters.kv_transfers.load(Ordering::Acquire),
        }
    }

    /// Marks the end of start-up: the engine admits requests. Does nothing
    /// once a drain has begun.
    pub fn set_ready(&self) {
        let changed = {
            let mut machine = self.machine();
            let starting = machine.phase == Phase::Starting;
            if starting {
                machine.phase = Phase::Ready;
            }
            starting
        };
        if changed {
            self.publish();
        }
    }

    /// Admits a request, or says why not. The request counts as queued until
    /// [`RequestGuard::start`], then as in flight until the guard is dropped.
    pub fn admit(&self) -> Result<RequestGuard, Rejected> {
        {
            // Under the lock, so that the drain cannot find the engine idle
            // between the check and the count.
            let machine = self.machine();
            machine.admits(Instant::now())?;
            self.inner.counters.queued.fetch_add(1, Ordering::AcqRel);
        }
        self.bump();
        Ok(RequestGuard {
            shutdown: self.clone(),
            running: false,
        })
    }

    /// Registers a pending KV-cache transfer (a prefill whose KV cache a
    /// decode instance still pulls). The drain waits for it until the guard is
    /// dropped, or until the abort deadline.
    pub fn kv_transfer(&self) -> KvTransferGuard {
        self.inner
            .counters
            .kv_transfers
            .fetch_add(1, Ordering::AcqRel);
        self.bump();
        KvTransferGuard {
            shutdown: self.clone(),
        }
    }

    /// Starts a drain, or tightens the deadlines of the one in progress:
    /// keep admitting for `request.propagation` (none while starting), then
    /// refuse new requests, then abort what is left after `request.timeout`,
    /// then stop after `request.abort_grace` at the latest.
    pub fn drain(&self, request: DrainRequest) {
        self.machine().drain(Instant::now(), request);
        self.step();
    }

    /// Aborts everything now; the engine stops once the abort responses are
    /// delivered, or after `grace`.
    pub fn abort(&self, grace: Duration) {
        self.machine().abort(Instant::now(), grace);
        self.step();
    }

    /// Cancelled when aborting begins: every in-flight request must then end
    /// with an explicit abort response.
    pub fn aborted(&self) -> CancellationToken {
        self.inner.aborted.clone()
    }

    /// Cancelled when a drain begins (an engine still loading stops loading).
    pub fn draining(&self) -> CancellationToken {
        self.inner.draining.clone()
    }

    /// Records that the process was asked to exit (SIGTERM): it exits once
    /// stopped. See [`Shutdown::wait_for_exit`].
    pub fn request_exit(&self) {
        self.inner.exit_requested.cancel();
    }

    /// Whether [`Shutdown::request_exit`] was called.
    pub fn exit_requested(&self) -> bool {
        self.inner.exit_requested.is_cancelled()
    }

    /// Resolves once the engine is stopped.
    pub async fn stopped(&self) {
        let mut changes = self.inner.changes.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = changes.wait_for(|phase| *phase == Phase::Stopped).await;
    }

    /// Resolves once the engine is stopped and asked to exit: after a drain
    /// the sidecar ordered, the process waits for the kubelet's SIGTERM.
    pub async fn wait_for_exit(&self) {
        self.inner.exit_requested.cancelled().await;
        self.stopped().await;
    }

    /// A receiver that wakes on every change of phase or counters.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.inner.changes.subscribe()
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.inner.machine.lock().expect("shutdown state lock")
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|_| {});
    }

    /// Advances the machine, publishes the result and arms a timer for the
    /// next deadline (at most one timer per deadline).
    fn step(&self) {
        let next = {
            let mut machine = self.machine();
            let idle = self.inner.counters.idle();
            machine.advance(Instant::now(), idle)
        };
        self.publish();
        let Some(at) = next else { return };
        {
            let mut armed = self.inner.timer.lock().expect("timer lock");
            if armed.is_some_and(|armed| armed <= at) {
                return;
            }
            *armed = Some(at);
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            {
                let mut armed = this.inner.timer.lock().expect("timer lock");
                if *armed == Some(at) {
                    *armed = None;
                }
            }
            this.step();
        });
    }

    fn publish(&self) {
        let phase = self.phase();
        if matches!(phase, Phase::Draining | Phase::Aborting | Phase::Stopped) {
            self.inner.draining.cancel();
        }
        // Not on `Stopped`: a drain that completed aborted nothing. Every
        // path that stops with work left publishes `Aborting` first (an
        // engine reaches `Stopped` straight from `advance` only when idle).
        if phase == Phase::Aborting {
            self.inner.aborted.cancel();
        }
        self.inner.changes.send_modify(|current| *current = phase);
    }

    /// Called when work finished: the engine may now be idle.
    fn work_done(&self) {
        let busy = matches!(self.phase(), Phase::Draining | Phase::Aborting);
        if busy && self.inner.counters.idle() {
            self.step();
        } else {
            self.bump();
        }
    }
}

/// An admitted request. Dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard {
    shutdown: Shutdown,
    running: bool,
}

impl RequestGuard {
    /// The request leaves the queue and starts running.
    pub fn start(&mut self) {
        if !self.running {
            self.running = true;
            let counters = &self.shutdown.inner.counters;
            counters.in_flight.fetch_add(1, Ordering::AcqRel);
            counters.queued.fetch_sub(1, Ordering::AcqRel);
            self.shutdown.bump();
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let counters = &self.shutdown.inner.counters;
        let counter = if self.running {
            &counters.in_flight
        } else {
            &counters.queued
        };
        counter.fetch_sub(1, Ordering::AcqRel);
        self.shutdown.work_done();
    }
}

/// A pending KV transfer. Dropping it marks the transfer complete.
#[derive(Debug)]
pub struct KvTransferGuard {
    shutdown: Shutdown,
}

impl Drop for KvTransferGuard {
    fn drop(&mut self) {
        let counters = &self.shutdown.inner.counters;
        counters.kv_transfers.fetch_sub(1, Ordering::AcqRel);
        self.shutdown.work_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(p: u64, t: u64, g: u64) -> DrainRequest {
        DrainRequest {
            propagation: Duration::from_secs(p),
            timeout: Duration::from_secs(t),
            abort_grace: Duration::from_secs(g),
        }
    }

    fn ready() -> Machine {
        Machine {
            phase: Phase::Ready,
            deadlines: None,
        }
    }

    #[test]
    fn admits_during_propagation_then_refuses() {
        let t0 = Instant::now();
        let mut m = ready();
        m.drain(t0, request(5, 60, 5));
        assert_eq!(m.phase, Phase::Draining);
        assert_eq!(m.admits(t0 + Duration::from_secs(4)), Ok(()));
        assert_eq!(
            m.admits(t0 + Duration::from_secs(5)),
            Err(Rejected::ShuttingDown)
        );
    }

    #[test]
    fn idle_engine_stops_at_the_end_of_propagation() {
        let t0 = Instant::now();
        let mut m = ready();
        m.drain(t0, request(5, 60, 5));
        assert_eq!(m.advance(t0, true), Some(t0 + Duration::from_secs(5)));
        assert_eq!(m.phase, Phase::Draining);
        assert_eq!(m.advance(t0 + Duration::from_secs(5), true), None);
        assert_eq!(m.phase, Phase::Stopped);
    }

    #[test]
    fn busy_engine_aborts_at_the_deadline_and_stops_after_the_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = ready();
        m.drain(t0, request(5, 60, 5));
        assert_eq!(m.advance(t0 + s(10), false), Some(t0 + s(65)));
        assert_eq!(m.advance(t0 + s(65), false), Some(t0 + s(70)));
        assert_eq!(m.phase, Phase::Aborting);
        assert_eq!(m.advance(t0 + s(70), false), None);
        assert_eq!(m.phase, Phase::Stopped);
    }

    #[test]
    fn aborting_engine_stops_as_soon_as_it_is_idle() {
        let t0 = Instant::now();
        let mut m = ready();
        m.abort(t0, Duration::from_secs(5));
        assert_eq!(m.phase, Phase::Aborting);
        assert_eq!(m.advance(t0 + Duration::from_millis(10), true), None);
        assert_eq!(m.phase, Phase::Stopped);
    }

    #[test]
    fn a_second_drain_keeps_the_earlier_deadlines() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = ready();
        m.drain(t0, request(5, 60, 5));
        m.drain(t0 + s(1), request(5, 600, 5));
        assert_eq!(m.advance(t0 + s(10), false), Some(t0 + s(65)));
        m.drain(t0 + s(11), request(0, 10, 1));
        assert_eq!(m.advance(t0 + s(12), false), Some(t0 + s(21)));
    }

    #[test]
    fn a_starting_engine_drains_without_propagation() {
        let t0 = Instant::now();
        let mut m = Machine {
            phase: Phase::Starting,
            deadlines: None,
        };
        assert_eq!(m.admits(t0), Err(Rejected::Starting));
        m.drain(t0, request(5, 60, 5));
        assert_eq!(m.advance(t0, true), None);
        assert_eq!(m.phase, Phase::Stopped);
    }

    #[test]
    fn stopped_is_final() {
        let t0 = Instant::now();
        let mut m = ready();
        m.abort(t0, Duration::ZERO);
        m.advance(t0, true);
        assert_eq!(m.phase, Phase::Stopped);
        m.drain(t0, request(5, 60, 5));
        m.abort(t0, Duration::from_secs(1));
        assert_eq!(m.phase, Phase::Stopped);
        assert_eq!(m.admits(t0), Err(Rejected::ShuttingDown));
    }

    #[tokio::test]
    async fn guards_count_queued_running_and_kv_work() {
        let shutdown = Shutdown::new();
        assert_eq!(shutdown.admit().unwrap_err(), Rejected::Starting);
        shutdown.set_ready();
        let mut a = shutdown.admit().unwrap();
        let b = shutdown.admit().unwrap();
        a.start();
        let kv = shutdown.kv_transfer();
        let status = shutdown.status();
        assert_eq!(
            (status.in_flight, status.queued, status.kv_transfers),
            (1, 1, 1)
        );
        drop((a, b, kv));
        let status = shutdown.status();
        assert_eq!(
            (status.in_flight, status.queued, status.kv_transfers),
            (0, 0, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_when_the_last_request_finishes() {
        let shutdown = Shutdown::new();
        shutdown.set_ready();
        let mut guard = shutdown.admit().unwrap();
        guard.start();
        shutdown.drain(request(1, 60, 5));
        let aborted = shutdown.aborted();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(shutdown.phase(), Phase::Draining);
        drop(guard);
        shutdown.stopped().await;
        assert!(!aborted.is_cancelled(), "a completed drain aborts nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_aborts_and_the_grace_bounds_the_stop() {
        let shutdown = Shutdown::new();
        shutdown.set_ready();
        let mut guard = shutdown.admit().unwrap();
        guard.start();
        shutdown.drain(request(1, 3, 2));
        let aborted = shutdown.aborted();
        tokio::time::timeout(Duration::from_secs(5), aborted.cancelled())
            .await
            .expect("aborted at propagation + timeout");
        assert_eq!(shutdown.phase(), Phase::Aborting);
        // The request ignores the abort: the grace still ends the drain.
        tokio::time::timeout(Duration::from_secs(3), shutdown.stopped())
            .await
            .expect("stopped after the abort grace");
        drop(guard);
    }
}
