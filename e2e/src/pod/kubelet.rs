//! The kubelet of one local pod: a per-container state machine driven by
//! a poll of its processes, its probes' verdicts and its deletion (the
//! sequence the module doc of [`super`] describes).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use quiesce_testkit::process::Process;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::event::{EventSink, PodEvent, PodEventRecord, PodReport, PodStatus};
use super::plan::{self, ContainerPlan};
use super::probe::{self, ContainerView, ProbeKind, ProbeUpdate};

/// The kubelet gives a container at least this long between SIGTERM and
/// SIGKILL, even when its preStop hook used up the grace period
/// (`minimumGracePeriodInSeconds`).
pub const MINIMUM_GRACE: Duration = Duration::from_secs(2);

/// How often the kubelet loop looks at its processes.
const POLL: Duration = Duration::from_millis(5);

/// How long processes a pod left behind get to disappear after it is gone
/// (a SIGKILLed process takes a moment to leave the process table).
const ORPHAN_WAIT: Duration = Duration::from_secs(2);

/// Past the grace period and the minimum grace, how long the runner waits
/// for SIGKILLed processes before it reports the pod as stuck.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// What kind of container a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sidecar,
    Init,
    Main,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not started yet.
    Waiting,
    /// Its process runs.
    Running {
        since: Instant,
        /// Its startup probe passed, or it has none.
        started: bool,
        /// Its readiness probe's last verdict.
        ready: bool,
        /// Set once it got SIGTERM.
        stop: Option<Stop>,
    },
    /// Its process exited.
    Exited(ExitStatus),
}

/// A container that got SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stop {
    /// When SIGKILL is due.
    kill_at: Instant,
    /// Whether it was sent.
    killed: bool,
}

/// A container's preStop hook. It may still run after its container got
/// SIGTERM (the grace period ended first); it dies with its container.
enum Hook {
    NotRun,
    Running(Process),
    Ended(Process),
}

impl Hook {
    fn process(&self) -> Option<&Process> {
        match self {
            Self::NotRun => None,
            Self::Running(process) | Self::Ended(process) => Some(process),
        }
    }

    fn running(&self) -> bool {
        matches!(self, Self::Running(_))
    }

    /// Its exit status if it has just ended.
    fn poll_end(&mut self) -> Option<ExitStatus> {
        let Self::Running(process) = self else {
            return None;
        };
        let status = process.try_exit()?;
        self.end();
        Some(status)
    }

    /// Kills it if it runs: its container is gone.
    fn kill(&mut self) {
        if let Self::Running(process) = self {
            process.kill_group();
        }
        self.end();
    }

    fn end(&mut self) {
        if let Self::Running(process) = std::mem::replace(self, Self::NotRun) {
            *self = Self::Ended(process);
        }
    }
}

/// One container of the pod: its process and where it is in its life.
struct Slot {
    plan: ContainerPlan,
    role: Role,
    process: Option<Process>,
    state: State,
    pre_stop: Hook,
    readiness_trigger: Arc<Notify>,
}

impl Slot {
    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn view(&self) -> ContainerView {
        match self.state {
            State::Running { since, started, .. } => ContainerView {
                running_since: Some(since),
                started,
            },
            State::Waiting | State::Exited(_) => ContainerView {
                running_since: None,
                started: false,
            },
        }
    }

    /// Whether it counts towards the pod's Ready condition: running, and
    /// ready (started, without a readiness probe).
    fn ready(&self) -> bool {
        let State::Running { started, ready, .. } = self.state else {
            return false;
        };
        if self.plan.readiness_probe.is_some() {
            ready
        } else {
            started
        }
    }
}

/// The kubelet of one pod.
pub(super) struct Kubelet {
    name: String,
    slots: Vec<Slot>,
    grace: Duration,
    /// The pod's emptyDir volumes; removed when the pod is gone.
    dir: Option<tempfile::TempDir>,
    created: Instant,
    events: Vec<(Instant, PodEvent)>,
    sink: Option<EventSink>,
    status_tx: watch::Sender<PodStatus>,
    status: PodStatus,
    views: watch::Sender<Vec<ContainerView>>,
    deadline: Option<Instant>,
    failure: Option<String>,
}

impl Kubelet {
    pub(super) fn new(
        name: String,
        plan: plan::PodPlan,
        dir: tempfile::TempDir,
        status_tx: watch::Sender<PodStatus>,
        sink: Option<EventSink>,
    ) -> Self {
        let slot = |plan, role| Slot {
            plan,
            role,
            process: None,
            state: State::Waiting,
            pre_stop: Hook::NotRun,
            readiness_trigger: Arc::new(Notify::new()),
        };
        let slots: Vec<Slot> = (plan.sidecars.into_iter().map(|p| slot(p, Role::Sidecar)))
            .chain(
                plan.init_containers
                    .into_iter()
                    .map(|p| slot(p, Role::Init)),
            )
            .chain(plan.containers.into_iter().map(|p| slot(p, Role::Main)))
            .collect();
        let (views, _) = watch::channel(slots.iter().map(Slot::view).collect());
        Self {
            name,
            slots,
            grace: plan.grace_period,
            dir: Some(dir),
            created: Instant::now(),
            events: Vec::new(),
            sink,
            status_tx,
            status: PodStatus::default(),
            views,
            deadline: None,
            failure: None,
        }
    }

    fn record(&mut self, at: Instant, event: PodEvent) {
        if let Some(sink) = &self.sink {
            let _ = sink.send(PodEventRecord {
                pod: self.name.clone(),
                at,
                event: event.clone(),
            });
        }
        self.events.push((at, event));
    }

    pub(super) async fn run(mut self, delete: CancellationToken) -> PodReport {
        let created = self.created;
        self.record(created, PodEvent::Created);
        let stop_probes = CancellationToken::new();
        let (updates_tx, mut updates) = mpsc::unbounded_channel();
        for (i, slot) in self.slots.iter().enumerate() {
            let probes = [
                (&slot.plan.startup_probe, ProbeKind::Startup),
                (&slot.plan.readiness_probe, ProbeKind::Readiness),
                (&slot.plan.liveness_probe, ProbeKind::Liveness),
            ];
            for (probe, kind) in probes {
                let Some(probe) = probe.clone() else { continue };
                let trigger = if kind == ProbeKind::Readiness {
                    Arc::clone(&slot.readiness_trigger)
                } else {
                    Arc::new(Notify::new())
                };
                let worker = probe::Worker {
                    plan: probe,
                    kind,
                    container: i,
                    origin: created,
                    views: self.views.subscribe(),
                    trigger,
                    updates: updates_tx.clone(),
                    stop: stop_probes.clone(),
                };
                tokio::spawn(worker.run());
            }
        }
        drop(updates_tx);

        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = poll.tick() => {}
                Some(update) = updates.recv() => self.on_probe(update),
                () = delete.cancelled(), if !self.status.terminating => {
                    self.begin_termination(Instant::now());
                }
            }
            let now = Instant::now();
            self.poll_processes(now);
            if self.status.terminating {
                self.advance_termination(now);
            } else {
                self.advance_start(now);
            }
            self.publish(now);
            if self.status.terminating && self.all_stopped() {
                break;
            }
            if self
                .deadline
                .is_some_and(|d| now > d + MINIMUM_GRACE + STUCK_AFTER)
            {
                self.fail(now, "processes survived SIGKILL".to_owned());
                break;
            }
        }
        stop_probes.cancel();
        let gone = Instant::now();
        self.record(gone, PodEvent::Gone);
        self.status.gone = true;
        self.status.ready = false;
        self.status.ready_since = None;
        self.status_tx.send_replace(self.status);
        let orphans = self.orphans().await;
        // The emptyDir goes with the pod.
        drop(self.dir.take());
        PodReport {
            name: self.name.clone(),
            events: std::mem::take(&mut self.events),
            orphans,
            failure: self.failure.take(),
            logs: self
                .slots
                .iter()
                .filter_map(|s| Some((s.plan.name.clone(), s.process.as_ref()?.logs())))
                .collect(),
        }
    }

    /// Processes left by any container or hook, waiting a moment for
    /// killed ones to leave the process table.
    async fn orphans(&self) -> Vec<String> {
        let deadline = Instant::now() + ORPHAN_WAIT;
        loop {
            let survivors: Vec<String> = self
                .slots
                .iter()
                .flat_map(|s| s.process.iter().chain(s.pre_stop.process()))
                .flat_map(|p| {
                    p.survivors()
                        .into_iter()
                        .map(move |s| format!("{}: {s}", p.name()))
                })
                .collect();
            if survivors.is_empty() || Instant::now() >= deadline {
                return survivors;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn fail(&mut self, now: Instant, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(reason.clone());
            self.status.failed = true;
            self.record(now, PodEvent::Failed { reason });
        }
        if !self.status.terminating {
            self.begin_termination(now);
        }
    }

    fn spawn(&mut self, i: usize, now: Instant) {
        let slot = &self.slots[i];
        let mut command = container_command(&slot.plan.program, &slot.plan.args, &slot.plan.env);
        let label = format!("{}/{}", self.name, slot.plan.name);
        match Process::spawn(label, &mut command) {
            Ok(process) => {
                let slot = &mut self.slots[i];
                slot.process = Some(process);
                slot.state = State::Running {
                    since: now,
                    started: false,
                    ready: false,
                    stop: None,
                };
                let container = slot.plan.name.clone();
                let no_startup_probe = slot.plan.startup_probe.is_none();
                self.record(now, PodEvent::ContainerStarted { container });
                if no_startup_probe {
                    self.mark_started(i);
                }
            }
            Err(e) => {
                let reason = format!(
                    "cannot start container {} ({}): {e}",
                    slot.plan.name,
                    slot.plan.program.display()
                );
                self.fail(now, reason);
            }
        }
    }

    fn mark_started(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let State::Running { started, .. } = &mut slot.state {
            *started = true;
        }
        // The kubelet probes readiness at once when a container has started.
        slot.readiness_trigger.notify_one();
    }

    /// Starts what may start: sidecars one by one, init containers one by
    /// one, then the main containers.
    fn advance_start(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.role {
                Role::Sidecar | Role::Init if slot.state == State::Waiting => {
                    self.spawn(i, now);
                    return;
                }
                Role::Sidecar if matches!(slot.state, State::Running { started: false, .. }) => {
                    return;
                }
                Role::Init if !matches!(slot.state, State::Exited(_)) => return,
                Role::Main if slot.state == State::Waiting => self.spawn(i, now),
                _ => {}
            }
            if self.status.terminating {
                return;
            }
        }
    }

    fn on_probe(&mut self, update: ProbeUpdate) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(update.container) else {
            return;
        };
        if !slot.running() {
            return;
        }
        let container = slot.plan.name.clone();
        match update.kind {
            ProbeKind::Startup if update.ok => {
                self.record(now, PodEvent::StartupProbePassed { container });
                self.mark_started(update.container);
            }
            ProbeKind::Startup => {
                if !self.status.terminating {
                    let logs = slot.process.as_ref().map(|p| tail(&p.logs(), 20));
                    let reason = format!(
                        "container {container} failed its startup probe too often (the kubelet \
                         would restart it; the local runner does not); its last log lines:\n{}",
                        logs.unwrap_or_default()
                    );
                    self.fail(now, reason);
                }
            }
            ProbeKind::Readiness => {
                if let State::Running { ready, .. } = &mut slot.state {
                    *ready = update.ok;
                }
            }
            ProbeKind::Liveness if !update.ok => {
                self.record(
                    now,
                    PodEvent::LivenessFailed {
                        container: container.clone(),
                    },
                );
                // A terminating pod is not restarted; the kubelet ignores it then.
                if !self.status.terminating {
                    let reason = format!(
                        "container {container} failed its liveness probe (the kubelet would \
                         restart it; the local runner does not)"
                    );
                    self.fail(now, reason);
                }
            }
            ProbeKind::Liveness => {}
        }
    }

    /// Notes exits of containers and hooks.
    fn poll_processes(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(status) = slot.pre_stop.poll_end() {
                let container = slot.plan.name.clone();
                let status = describe(status);
                self.record(now, PodEvent::PreStopEnded { container, status });
                // SIGTERM waits for the hook, then gets the grace period's
                // remainder, with the kubelet's minimum.
                self.sigterm(i, now);
            }
            let slot = &mut self.slots[i];
            if !slot.running() {
                continue;
            }
            let Some(status) = slot.process.as_mut().and_then(Process::try_exit) else {
                continue;
            };
            slot.state = State::Exited(status);
            // A hook runs inside its container and dies with it.
            slot.pre_stop.kill();
            let container = slot.plan.name.clone();
            let role = slot.role;
            let expected = self.status.terminating || (role == Role::Init && status.success());
            let logs = slot
                .process
                .as_ref()
                .map(|p| tail(&p.logs(), 20))
                .unwrap_or_default();
            let status_text = describe(status);
            self.record(
                now,
                PodEvent::Exited {
                    container: container.clone(),
                    status: status_text.clone(),
                },
            );
            if !expected {
                let reason = format!(
                    "container {container} exited ({status_text}) while the pod was running; its \
                     last log lines:\n{logs}"
                );
                self.fail(now, reason);
            }
        }
    }

    fn begin_termination(&mut self, now: Instant) {
        self.status.terminating = true;
        self.deadline = Some(now + self.grace);
        self.record(now, PodEvent::Deleted);
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.role == Role::Sidecar || !slot.running() {
                continue;
            }
            let Some((program, args)) = slot.plan.pre_stop.clone() else {
                self.sigterm(i, now);
                continue;
            };
            let container = slot.plan.name.clone();
            let mut command = container_command(&program, &args, &slot.plan.env);
            let label = format!("{}/{} preStop", self.name, container);
            match Process::spawn(label, &mut command) {
                Ok(hook) => {
                    let slot = &mut self.slots[i];
                    slot.pre_stop = Hook::Running(hook);
                    self.record(now, PodEvent::PreStopStarted { container });
                }
                Err(e) => {
                    let error = format!("{}: {e}", program.display());
                    self.record(now, PodEvent::PreStopFailed { container, error });
                    self.sigterm(i, now);
                }
            }
        }
    }

    /// SIGTERM to a container, with its SIGKILL due at the grace period's
    /// end, but no sooner than the kubelet's minimum grace.
    fn sigterm(&mut self, i: usize, now: Instant) {
        let deadline = self.deadline.unwrap_or(now);
        let slot = &mut self.slots[i];
        let State::Running {
            stop: stop @ None, ..
        } = &mut slot.state
        else {
            return;
        };
        *stop = Some(Stop {
            kill_at: deadline.max(now + MINIMUM_GRACE),
            killed: false,
        });
        if let Some(process) = slot.process.as_mut() {
            process.signal(Signal::SIGTERM);
        }
        let container = slot.plan.name.clone();
        self.record(now, PodEvent::SigTerm { container });
    }

    fn advance_termination(&mut self, now: Instant) {
        let deadline = self.deadline.unwrap_or(now);
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let stopped = matches!(slot.state, State::Running { stop: Some(_), .. });
            if slot.pre_stop.running() && now >= deadline && !stopped {
                let container = slot.plan.name.clone();
                self.record(now, PodEvent::PreStopTimedOut { container });
                self.sigterm(i, now);
            }
        }
        let mains_done = self
            .slots
            .iter()
            .filter(|s| s.role != Role::Sidecar)
            .all(|s| !s.running());
        if mains_done {
            // Sidecars stop after the main containers, in reverse order.
            let next = self
                .slots
                .iter()
                .rposition(|s| s.role == Role::Sidecar && s.running());
            if let Some(i) = next {
                self.sigterm(i, now);
            }
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let State::Running {
                stop: Some(stop), ..
            } = &mut slot.state
            else {
                continue;
            };
            if !stop.killed && now >= stop.kill_at {
                stop.killed = true;
                if let Some(process) = slot.process.as_mut() {
                    process.kill_group();
                }
                let container = slot.plan.name.clone();
                self.record(now, PodEvent::SigKill { container });
            }
        }
    }

    fn all_stopped(&self) -> bool {
        self.slots
            .iter()
            .all(|s| !s.running() && !s.pre_stop.running())
    }

    /// Publishes the pod's Ready condition and the containers' states.
    fn publish(&mut self, now: Instant) {
        let ready = !self.status.gone
            && self
                .slots
                .iter()
                .filter(|s| s.role != Role::Init)
                .all(Slot::ready);
        if ready != self.status.ready {
            self.status.ready = ready;
            self.status.ready_since = ready.then_some(now);
            self.record(
                now,
                if ready {
                    PodEvent::Ready
                } else {
                    PodEvent::NotReady
                },
            );
        }
        self.status_tx.send_if_modified(|current| {
            let changed = *current != self.status;
            *current = self.status;
            changed
        });
        let views: Vec<ContainerView> = self.slots.iter().map(Slot::view).collect();
        self.views.send_if_modified(|current| {
            let changed = *current != views;
            *current = views;
            changed
        });
    }
}

/// A container's process: its program and arguments, and only its own
/// environment plus the host's `PATH` (where an image has its own).
fn container_command(program: &PathBuf, args: &[String], env: &[(String, String)]) -> Command {
    let mut command = Command::new(program);
    command.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// `0`, `1`, or `SIGKILL`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => Signal::try_from(signal)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {signal}")),
        (None, None) => status.to_string(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
