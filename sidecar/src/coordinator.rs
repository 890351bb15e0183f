//! The drain coordinator: readiness, liveness and the drain itself, on top of
//! the [`EngineHub`]. Everything here is independent of sockets and HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiesce_protocol::{
    Abort, DrainReport, DrainRequest, DrainResult, LIVENESS_MISSED_HEARTBEATS, LoadReport, Phase,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::engine::{EngineCommand, EngineHub, EngineView};
use crate::metrics::Metrics;

/// Where the pod's drain stands. A sidecar drains at most once: a later
/// request joins the running drain or gets the finished drain's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainState {
    /// No drain was requested.
    Idle,
    /// A drain runs.
    Running {
        /// When the sidecar accepted the request.
        started: Instant,
        /// What was requested.
        request: DrainRequest,
    },
    /// The drain ended.
    Finished {
        /// When the sidecar accepted the request.
        started: Instant,
        /// How it ended.
        report: DrainReport,
    },
}

/// Answer of the readiness and liveness checks, with the reason when negative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Whether the check passes.
    pub ok: bool,
    /// Why, in a few words.
    pub reason: &'static str,
}

/// The sidecar's state and behaviour.
pub struct Coordinator {
    /// The engine, as the adapter sees it.
    pub engine: EngineHub,
    /// The sidecar's metrics.
    pub metrics: Metrics,
    drain: watch::Sender<DrainState>,
    heartbeat_interval: Duration,
    liveness_window: Duration,
}

impl Coordinator {
    /// A coordinator whose engine must report at least every
    /// `heartbeat_interval`: it is not live after
    /// [`LIVENESS_MISSED_HEARTBEATS`] missed reports.
    pub fn new(heartbeat_interval: Duration) -> Arc<Self> {
        Self::with_liveness_window(
            heartbeat_interval,
            heartbeat_interval * LIVENESS_MISSED_HEARTBEATS,
        )
    }

    /// A coordinator whose engine is not live once it has not reported for
    /// `liveness_window` (a stock engine's look may take seconds).
    pub fn with_liveness_window(
        heartbeat_interval: Duration,
        liveness_window: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine: EngineHub::default(),
            metrics: Metrics::new(),
            drain: watch::Sender::new(DrainState::Idle),
            heartbeat_interval,
            liveness_window,
        })
    }

    /// How often the engine must report.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn liveness_window(&self) -> Duration {
        self.liveness_window
    }

    /// The drain state now.
    pub fn drain_state(&self) -> DrainState {
        *self.drain.borrow()
    }

    /// A receiver that wakes on every change of the drain state.
    pub fn subscribe_drain(&self) -> watch::Receiver<DrainState> {
        self.drain.subscribe()
    }

    /// `/live`: the engine makes progress (or has not connected yet).
    pub fn liveness(&self, now: Instant) -> Check {
        if self.engine.view().is_live(now, self.liveness_window()) {
            Check {
                ok: true,
                reason: "ok",
            }
        } else {
            Check {
                ok: false,
                reason: "the engine stopped reporting",
            }
        }
    }

    /// `/ready`: the engine is ready and no drain has begun.
    pub fn readiness(&self, now: Instant) -> Check {
        let view = self.engine.view();
        let fail = |reason| Check { ok: false, reason };
        if self.drain_state() != DrainState::Idle {
            return fail("draining");
        }
        if !view.attached {
            return fail("no engine connected");
        }
        if !view.is_live(now, self.liveness_window()) {
            return fail("the engine stopped reporting");
        }
        match view.phase() {
            Some(Phase::Ready) => Check {
                ok: true,
                reason: "ok",
            },
            Some(Phase::Draining | Phase::Aborting | Phase::Stopped) => {
                fail("the engine is draining")
            }
            Some(Phase::Starting) | None => fail("the engine is starting"),
        }
    }

    /// Starts the drain, or joins the one already requested. The receiver
    /// shows [`DrainState::Finished`] when it ends.
    pub fn request_drain(self: &Arc<Self>, request: DrainRequest) -> watch::Receiver<DrainState> {
        let started = Instant::now();
        let first = self.drain.send_if_modified(|state| {
            if *state != DrainState::Idle {
                return false;
            }
            *state = DrainState::Running { started, request };
            true
        });
        if first {
            self.metrics.drain_started();
            tracing::info!(
                propagation_ms = request.propagation.as_millis() as u64,
                timeout_ms = request.timeout.as_millis() as u64,
                abort_grace_ms = request.abort_grace.as_millis() as u64,
                "drain requested: /ready now fails"
            );
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let result = this.run_drain(request, started).await;
                let report = DrainReport {
                    result,
                    elapsed: started.elapsed(),
                };
                this.metrics
                    .drain_finished(result, report.elapsed.as_secs_f64());
                tracing::info!(%result, elapsed_ms = report.elapsed.as_millis() as u64, "drain finished");
                this.drain
                    .send_replace(DrainState::Finished { started, report });
            });
        }
        self.drain.subscribe()
    }

    async fn run_drain(&self, request: DrainRequest, started: Instant) -> DrainResult {
        let mut view = self.engine.subscribe();
        if !self.engine.send(EngineCommand::Drain(request)) {
            // The drain client waits out the propagation delay itself.
            tracing::warn!("drain requested but no engine is connected");
            return DrainResult::NoEngine;
        }
        let abort_at = started + request.abort_after();
        let give_up_at = started + request.max_duration();
        let mut abort_sent = false;
        let mut aborting = false;
        loop {
            let current = view.borrow_and_update().clone();
            if !current.attached {
                tracing::error!("the engine disconnected during the drain");
                return DrainResult::EngineLost;
            }
            aborting |= current.reported_aborting;
            if current.phase() == Some(Phase::Stopped) {
                return if aborting {
                    DrainResult::Aborted
                } else {
                    DrainResult::Drained
                };
            }
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        return DrainResult::EngineLost;
                    }
                }
                () = sleep_until(abort_at.into()), if !abort_sent && !aborting => {
                    abort_sent = true;
                    aborting = true;
                    let left = current.status.map_or(0, |s| s.in_flight + s.queued);
                    self.metrics.requests_aborted(left);
                    tracing::warn!(left, "drain timeout: aborting what is left");
                    self.engine.send(EngineCommand::Abort(Abort { grace: request.abort_grace }));
                }
                () = sleep_until(give_up_at.into()) => {
                    tracing::error!("the engine did not stop within the abort grace");
                    return DrainResult::Aborted;
                }
            }
        }
    }

    /// Waits, on the sidecar's own SIGTERM, for a drain in progress (the
    /// sidecar's, or one the engine started by itself) to end, at most
    /// `max_wait`. Counts a drain that never started.
    pub async fn wait_before_exit(&self, max_wait: Duration) {
        let deadline = Instant::now() + max_wait;
        let view = self.engine.view();
        if self.drain_state() == DrainState::Idle && view.ever_attached {
            self.metrics.drain_not_started();
            tracing::error!(
                "stopping, but no drain was ever requested: the engine's preStop hook did not \
                 run or could not reach the sidecar, so in-flight requests were not drained \
                 (look for FailedPreStopHook events)"
            );
        }
        let mut drain = self.subscribe_drain();
        let mut engine = self.engine.subscribe();
        loop {
            let running = matches!(*drain.borrow_and_update(), DrainState::Running { .. });
            let view = engine.borrow_and_update().clone();
            let engine_busy = matches!(view.phase(), Some(Phase::Draining | Phase::Aborting));
            if !running && !engine_busy {
                return;
            }
            tracing::info!(
                running,
                engine_busy,
                "waiting for the drain to end before exiting"
            );
            tokio::select! {
                _ = drain.changed() => {}
                _ = engine.changed() => {}
                () = sleep_until(deadline.into()) => {
                    tracing::warn!("exiting before the drain ended: wait limit reached");
                    return;
                }
            }
        }
    }

    /// A JSON snapshot for `/status`.
    pub fn status(&self, now: Instant) -> Status {
        let view: EngineView = self.engine.view();
        let status = view.status.filter(|_| view.attached);
        let drain = match self.drain_state() {
            DrainState::Idle => None,
            DrainState::Running { started, request } => Some(DrainStatus {
                state: "running",
                elapsed_ms: millis(now.saturating_duration_since(started)),
                propagation_ms: millis(request.propagation),
                timeout_ms: millis(request.timeout),
                abort_grace_ms: millis(request.abort_grace),
                result: None,
            }),
            DrainState::Finished { report, .. } => Some(DrainStatus {
                state: "finished",
                elapsed_ms: millis(report.elapsed),
                propagation_ms: 0,
                timeout_ms: 0,
                abort_grace_ms: 0,
                result: Some(report.result.as_str()),
            }),
        };
        Status {
            ready: self.readiness(now).ok,
            live: self.liveness(now).ok,
            engine_connected: view.attached,
            phase: status.map(|s| s.phase.as_str()),
            in_flight: status.map_or(0, |s| s.in_flight),
            queued: status.map_or(0, |s| s.queued),
            kv_transfers: status.map_or(0, |s| s.kv_transfers),
            last_seen_ms_ago: view
                .last_seen
                .map(|t| millis(now.saturating_duration_since(t))),
            work_unknown: view.work_unknown.filter(|_| view.attached),
            drain,
        }
    }

    /// The body of `/load`: the engine's work as last sampled, or why it is
    /// unknown.
    pub fn load(&self, now: Instant) -> LoadReport {
        let view = self.engine.view();
        let draining = self.drain_state() != DrainState::Idle
            || matches!(
                view.phase(),
                Some(Phase::Draining | Phase::Aborting | Phase::Stopped)
            );
        let sample_age_ms = view
            .last_seen
            .map(|seen| millis(now.saturating_duration_since(seen)));
        let unknown = if !view.attached {
            Some("no_engine")
        } else if !view.is_live(now, self.liveness_window()) {
            Some("engine_silent")
        } else {
            view.work_unknown
                .or(view.status.is_none().then_some("no_report"))
        };
        let status = view.status.filter(|_| unknown.is_none());
        LoadReport {
            in_flight: status.map(|s| s.in_flight),
            queued: status.map(|s| s.queued),
            kv_transfers: status.map(|s| s.kv_transfers),
            draining,
            sample_age_ms,
            unknown: unknown.map(str::to_owned),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of `/status`.
#[derive(Serialize, Debug)]
pub struct Status {
    /// What `/ready` answers.
    pub ready: bool,
    /// What `/live` answers.
    pub live: bool,
    /// Whether an engine is connected.
    pub engine_connected: bool,
    /// The engine's phase, when connected.
    pub phase: Option<&'static str>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests queued.
    pub queued: u32,
    /// Pending KV transfers.
    pub kv_transfers: u32,
    /// Milliseconds since the engine last reported.
    pub last_seen_ms_ago: Option<u64>,
    /// Why the engine's work cannot be seen, when it cannot: a drain then
    /// waits for its whole timeout.
    pub work_unknown: Option<&'static str>,
    /// The drain, once requested.
    pub drain: Option<DrainStatus>,
}

/// The drain part of `/status`.
#[derive(Serialize, Debug)]
pub struct DrainStatus {
    /// `running` or `finished`.
    pub state: &'static str,
    /// Milliseconds since the request (the whole drain, once finished).
    pub elapsed_ms: u64,
    /// Requested propagation delay (while running).
    pub propagation_ms: u64,
    /// Requested drain timeout (while running).
    pub timeout_ms: u64,
    /// Requested abort grace (while running).
    pub abort_grace_ms: u64,
    /// How it ended (once finished).
    pub result: Option<&'static str>,
}

/// Keeps the metrics and the readiness-transition counter in step with the
/// engine and the drain. Runs until its task is aborted.
pub async fn observe(coordinator: Arc<Coordinator>) {
    let mut engine = coordinator.engine.subscribe();
    let mut drain = coordinator.subscribe_drain();
    let mut was_ready = false;
    loop {
        let view = engine.borrow_and_update().clone();
        drain.borrow_and_update();
        let status = view.status.filter(|_| view.attached).unwrap_or_default();
        coordinator.metrics.observe_engine(
            view.attached,
            view.phase(),
            (status.in_flight, status.queued, status.kv_transfers),
        );
        coordinator
            .metrics
            .observe_visibility(view.work_unknown.filter(|_| view.attached));
        let ready = coordinator.readiness(Instant::now()).ok;
        if ready != was_ready {
            coordinator.metrics.readiness_changed(ready);
            tracing::info!(ready, "readiness changed");
            was_ready = ready;
        }
        // Liveness expires without any event: wake up when it does.
        let expiry = view
            .live_until(coordinator.liveness_window())
            .filter(|at| *at > Instant::now());
        tokio::select! {
            changed = engine.changed() => if changed.is_err() { return },
            changed = drain.changed() => if changed.is_err() { return },
            () = sleep_until(expiry.unwrap_or_else(Instant::now).into()), if expiry.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use quiesce_protocol::EngineStatus;

    use super::*;

    fn status(phase: Phase, in_flight: u32) -> EngineStatus {
        EngineStatus {
            phase,
            in_flight,
            ..EngineStatus::default()
        }
    }

    fn request(propagation_ms: u64, timeout_ms: u64, grace_ms: u64) -> DrainRequest {
        DrainRequest {
            propagation: Duration::from_millis(propagation_ms),
            timeout: Duration::from_millis(timeout_ms),
            abort_grace: Duration::from_millis(grace_ms),
        }
    }

    async fn finished(drain: &mut watch::Receiver<DrainState>) -> DrainResult {
        let state = drain
            .wait_for(|s| matches!(s, DrainState::Finished { .. }))
            .await
            .unwrap();
        match *state {
            DrainState::Finished { report, .. } => report.result,
            _ => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_while_the_engine_is_ready_and_no_drain_began() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let now = Instant::now;
        assert!(!coordinator.readiness(now()).ok);
        assert!(
            coordinator.liveness(now()).ok,
            "an engine not yet connected may be loading"
        );
        let engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Starting, 0));
        assert_eq!(
            coordinator.readiness(now()).reason,
            "the engine is starting"
        );
        engine.report(status(Phase::Ready, 0));
        assert!(coordinator.readiness(now()).ok);
        let _drain = coordinator.request_drain(request(0, 1000, 1000));
        assert_eq!(coordinator.readiness(now()).reason, "draining");
        assert!(
            coordinator.liveness(now()).ok,
            "a draining engine stays live"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_load_is_known_only_from_a_live_engine_that_sees_its_work() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let unknown = |at| coordinator.load(at).unknown;
        assert_eq!(unknown(Instant::now()).as_deref(), Some("no_engine"));
        let engine = coordinator.engine.attach().unwrap();
        assert_eq!(unknown(Instant::now()).as_deref(), Some("no_report"));
        engine.report(EngineStatus {
            queued: 2,
            kv_transfers: 1,
            ..status(Phase::Ready, 3)
        });
        let sampled = Instant::now();
        let load = coordinator.load(sampled + Duration::from_millis(300));
        assert_eq!(
            (load.in_flight, load.queued, load.kv_transfers),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!((load.draining, load.sample_age_ms), (false, Some(300)));
        assert_eq!(
            unknown(sampled + Duration::from_secs(5)).as_deref(),
            Some("engine_silent")
        );
        engine.report_blind(status(Phase::Ready, 0), Some("gauge_missing"));
        let blind = coordinator.load(Instant::now());
        assert_eq!(blind.unknown.as_deref(), Some("gauge_missing"));
        assert_eq!(blind.in_flight, None, "unknown is not zero");
        engine.report(status(Phase::Ready, 1));
        let _drain = coordinator.request_drain(request(1000, 1000, 1000));
        assert!(coordinator.load(Instant::now()).draining);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_engine_is_not_live_after_five_heartbeats() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Ready, 0));
        let seen = Instant::now();
        assert!(coordinator.liveness(seen + Duration::from_millis(4999)).ok);
        assert!(!coordinator.liveness(seen + Duration::from_secs(5)).ok);
        engine.report(status(Phase::Stopped, 0));
        assert!(
            coordinator
                .liveness(Instant::now() + Duration::from_secs(60))
                .ok,
            "stopped stays live"
        );
        drop(engine);
        let lost = coordinator.liveness(Instant::now() + Duration::from_secs(60));
        assert!(!lost.ok, "a lost engine that never comes back is not live");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_forwarded_and_ends_when_the_engine_stops() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let mut engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Ready, 1));
        let mut drain = coordinator.request_drain(request(100, 60_000, 5_000));
        let forwarded = engine.commands.recv().await.unwrap();
        assert_eq!(forwarded, EngineCommand::Drain(request(100, 60_000, 5_000)));
        // A second request joins the same drain.
        let mut joined = coordinator.request_drain(request(0, 1, 1));
        engine.report(status(Phase::Draining, 1));
        engine.report(status(Phase::Stopped, 0));
        assert_eq!(finished(&mut drain).await, DrainResult::Drained);
        assert_eq!(finished(&mut joined).await, DrainResult::Drained);
        assert!(engine.commands.try_recv().is_err(), "nothing aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_sends_abort_once() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let mut engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Ready, 2));
        let started = tokio::time::Instant::now();
        let mut drain = coordinator.request_drain(request(1_000, 2_000, 500));
        assert!(matches!(
            engine.commands.recv().await,
            Some(EngineCommand::Drain(_))
        ));
        let abort = engine.commands.recv().await.unwrap();
        let at = started.elapsed();
        assert!(
            at >= Duration::from_secs(3) && at < Duration::from_millis(3100),
            "{at:?}"
        );
        assert_eq!(
            abort,
            EngineCommand::Abort(Abort {
                grace: Duration::from_millis(500)
            })
        );
        engine.report(status(Phase::Stopped, 0));
        assert_eq!(finished(&mut drain).await, DrainResult::Aborted);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_seen_only_in_passing_still_counts() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let mut engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Ready, 1));
        let mut drain = coordinator.request_drain(request(0, 60_000, 1_000));
        assert!(matches!(
            engine.commands.recv().await,
            Some(EngineCommand::Drain(_))
        ));
        // The engine aborts by itself and stops before the drain looks again.
        engine.report(status(Phase::Aborting, 1));
        engine.report(status(Phase::Stopped, 0));
        assert_eq!(finished(&mut drain).await, DrainResult::Aborted);
    }

    #[tokio::test(start_paused = true)]
    async fn no_engine_and_lost_engine() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        assert_eq!(
            finished(&mut coordinator.request_drain(request(0, 1, 1))).await,
            DrainResult::NoEngine
        );
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let mut engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Ready, 1));
        let mut drain = coordinator.request_drain(request(0, 60_000, 1_000));
        assert!(matches!(
            engine.commands.recv().await,
            Some(EngineCommand::Drain(_))
        ));
        drop(engine);
        assert_eq!(finished(&mut drain).await, DrainResult::EngineLost);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_without_a_drain_is_counted() {
        let coordinator = Coordinator::new(Duration::from_secs(1));
        let engine = coordinator.engine.attach().unwrap();
        engine.report(status(Phase::Ready, 3));
        coordinator.wait_before_exit(Duration::from_secs(10)).await;
        assert!(
            coordinator
                .metrics
                .encode()
                .contains("quiesce_drains_not_started_total 1")
        );
    }
}
