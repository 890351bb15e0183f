//! A local pod runner: runs a `PodTemplateSpec` with real processes, in
//! the order and with the termination sequence of a real kubelet.
//!
//! Fidelity to the kubelet (Kubernetes 1.32, as measured on a real one; the
//! cluster suite, docs/e2e.md, runs the same pods on it):
//! - Start: native sidecars first, each holding the next container back
//!   until its startup probe has passed; plain init containers one after
//!   the other; then the main containers together.
//! - Probes: one worker per probe, ticking at its period from pod creation;
//!   readiness and liveness wait for the startup probe; a container is
//!   probed for readiness at once when it has started; probes keep running
//!   while the pod terminates, so readiness moves (the sidecar's `/ready`
//!   turns 503 when the drain starts). The pod is Ready when every running
//!   container is (a container without a readiness probe once started).
//! - Deletion: the pod is marked terminating at once (load balancers see
//!   it); each main container with a preStop exec hook runs it (a real
//!   process with the container's environment) and gets SIGTERM when it
//!   returns, the others get SIGTERM at once; the grace period counts from
//!   the deletion, across the hook; a container still running when it ends
//!   is SIGKILLed, with at least 2 s after its SIGTERM (the kubelet's
//!   minimum); the native sidecars get SIGTERM only once every main
//!   container has exited, in reverse order, and SIGKILL at the grace end
//!   too. SIGKILL takes the container's whole process group, as the kubelet
//!   kills the container's cgroup.
//!
//! Not modelled: container restarts (a container that exits unexpectedly,
//! or fails its startup or liveness probe while the pod runs, fails the pod
//! with its logs: the demo and the tests treat it as a harness error), the
//! kubelet's own latencies (it sends SIGTERM about 0.5 s after the deletion;
//! here at once), users and groups (every process runs as the current user),
//! read-only mounts.

pub mod plan;
pub mod probe;

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use nix::sys::signal::Signal;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use self::plan::{ContainerPlan, Images, PlanError, PortMap, plan_pod, pod_ports};
use self::probe::{ContainerView, ProbeKind, ProbeUpdate};
use quiesce_testkit::bins;
use quiesce_testkit::process::Process;

/// The simulated engine's image, as an InferenceDeployment names it.
pub const ENGINE_IMAGE: &str = concat!(
    "ghcr.io/quiesce-dev/quiesce-engine:",
    env!("CARGO_PKG_VERSION")
);

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

/// The project's images mapped to the locally built binaries: the sidecar
/// image the operator renders by default, and [`ENGINE_IMAGE`].
pub fn project_images() -> Images {
    Images::new()
        .with(quiesce_api::render::DEFAULT_SIDECAR_IMAGE, bins::sidecar())
        .with(ENGINE_IMAGE, bins::engine())
}

/// Something that happened to a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodEvent {
    /// The pod was created (its probe workers start).
    Created,
    /// A container's process was started.
    ContainerStarted {
        /// The container.
        container: String,
    },
    /// A container's startup probe passed.
    StartupProbePassed {
        /// The container.
        container: String,
    },
    /// Every container is ready: the pod may get traffic.
    Ready,
    /// The pod stopped being ready.
    NotReady,
    /// A liveness probe failed its threshold.
    LivenessFailed {
        /// The container.
        container: String,
    },
    /// The pod was deleted: it is terminating.
    Deleted,
    /// A container's preStop hook started.
    PreStopStarted {
        /// The container.
        container: String,
    },
    /// A container's preStop hook returned.
    PreStopEnded {
        /// The container.
        container: String,
        /// How it exited.
        status: String,
    },
    /// A preStop hook could not be started (the kubelet's
    /// `FailedPreStopHook`): SIGTERM follows at once.
    PreStopFailed {
        /// The container.
        container: String,
        /// Why.
        error: String,
    },
    /// The grace period ended while a preStop hook still ran.
    PreStopTimedOut {
        /// The container.
        container: String,
    },
    /// SIGTERM sent to a container.
    SigTerm {
        /// The container.
        container: String,
    },
    /// SIGKILL sent to a container's processes.
    SigKill {
        /// The container.
        container: String,
    },
    /// A container's process exited.
    Exited {
        /// The container.
        container: String,
        /// Its exit code or signal.
        status: String,
    },
    /// The pod cannot run as its template says: a harness error.
    Failed {
        /// What went wrong.
        reason: String,
    },
    /// Every container has exited; the pod object is gone.
    Gone,
}

impl fmt::Display for PodEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => write!(f, "created"),
            Self::ContainerStarted { container } => write!(f, "{container} started"),
            Self::StartupProbePassed { container } => write!(f, "{container} startup probe passed"),
            Self::Ready => write!(f, "ready"),
            Self::NotReady => write!(f, "not ready"),
            Self::LivenessFailed { container } => write!(f, "{container} liveness probe failed"),
            Self::Deleted => write!(f, "deleted: terminating"),
            Self::PreStopStarted { container } => write!(f, "{container} preStop started"),
            Self::PreStopEnded { container, status } => {
                write!(f, "{container} preStop returned ({status})")
            }
            Self::PreStopFailed { container, error } => {
                write!(f, "{container} preStop failed: {error}")
            }
            Self::PreStopTimedOut { container } => {
                write!(f, "{container} preStop outlived the grace period")
            }
            Self::SigTerm { container } => write!(f, "SIGTERM {container}"),
            Self::SigKill { container } => write!(f, "SIGKILL {container}"),
            Self::Exited { container, status } => write!(f, "{container} exited ({status})"),
            Self::Failed { reason } => write!(f, "FAILED: {reason}"),
            Self::Gone => write!(f, "gone"),
        }
    }
}

/// A pod event as sent to an [`EventSink`].
#[derive(Clone, Debug)]
pub struct PodEventRecord {
    /// The pod's name.
    pub pod: String,
    /// When.
    pub at: Instant,
    /// What.
    pub event: PodEvent,
}

/// Where a pod sends its events as they happen (for progress output).
pub type EventSink = mpsc::UnboundedSender<PodEventRecord>;

/// What the rest of the cluster sees of a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodStatus {
    /// The pod's Ready condition.
    pub ready: bool,
    /// Since when it has been ready, while it is.
    pub ready_since: Option<Instant>,
    /// It has a deletion timestamp.
    pub terminating: bool,
    /// Every container has exited.
    pub gone: bool,
    /// The pod failed (see [`PodReport::failure`]).
    pub failed: bool,
}

impl PodStatus {
    /// Whether an EndpointSlice would list it as ready: ready and not
    /// terminating.
    pub fn serving(&self) -> bool {
        self.ready && !self.terminating && !self.gone
    }
}

/// Everything a pod went through, once it is gone.
#[derive(Clone, Debug)]
pub struct PodReport {
    /// Its name.
    pub name: String,
    /// Its events, in order.
    pub events: Vec<(Instant, PodEvent)>,
    /// Processes of its containers and hooks still alive after it was gone.
    pub orphans: Vec<String>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Each container's stderr, for diagnosis.
    pub logs: Vec<(String, String)>,
}

impl PodReport {
    /// When the first event matching `pred` happened.
    pub fn first(&self, pred: impl Fn(&PodEvent) -> bool) -> Option<Instant> {
        self.events.iter().find(|(_, e)| pred(e)).map(|(at, _)| *at)
    }

    /// When it was created.
    pub fn created(&self) -> Option<Instant> {
        self.first(|e| *e == PodEvent::Created)
    }

    /// When it first became ready.
    pub fn ready(&self) -> Option<Instant> {
        self.first(|e| *e == PodEvent::Ready)
    }

    /// When it was deleted.
    pub fn deleted(&self) -> Option<Instant> {
        self.first(|e| *e == PodEvent::Deleted)
    }

    /// When it was gone.
    pub fn gone(&self) -> Option<Instant> {
        self.first(|e| *e == PodEvent::Gone)
    }

    /// From deletion to gone.
    pub fn termination(&self) -> Option<Duration> {
        Some(self.gone()?.saturating_duration_since(self.deleted()?))
    }

    /// Whether any of its containers was SIGKILLed.
    pub fn killed(&self) -> bool {
        self.first(|e| matches!(e, PodEvent::SigKill { .. }))
            .is_some()
    }
}

/// Why a pod could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The template cannot run locally.
    #[error("pod {pod}: {source}")]
    Plan {
        /// The pod.
        pod: String,
        /// The problem.
        source: PlanError,
    },
    /// Its directory or ports could not be set up.
    #[error("pod {pod}: {what}: {source}")]
    Setup {
        /// The pod.
        pod: String,
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// A running pod. Dropping it deletes it (its processes are killed when the
/// runtime stops at the latest).
pub struct LocalPod {
    name: String,
    ports: PortMap,
    status: watch::Receiver<PodStatus>,
    delete: CancellationToken,
    task: Option<JoinHandle<PodReport>>,
}

impl LocalPod {
    /// Creates the pod: its volumes, its ports, and a kubelet task that
    /// starts its containers. Must be called inside a Tokio runtime.
    pub fn start(
        name: impl Into<String>,
        template: &PodTemplateSpec,
        images: &Images,
        sink: Option<EventSink>,
    ) -> Result<Self, PodError> {
        let name = name.into();
        let setup = |what| {
            let pod = name.clone();
            move |source| PodError::Setup { pod, what, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("qpod-")
            .tempdir()
            .map_err(setup("creating its directory"))?;
        let ports = PortMap::allocate(&pod_ports(template)).map_err(setup("picking ports"))?;
        let plan =
            plan_pod(template, images, dir.path(), &ports).map_err(|source| PodError::Plan {
                pod: name.clone(),
                source,
            })?;
        for volume in plan.volumes.values() {
            std::fs::create_dir_all(volume).map_err(setup("creating an emptyDir"))?;
        }
        let (status_tx, status) = watch::channel(PodStatus::default());
        let delete = CancellationToken::new();
        let kubelet = Kubelet::new(name.clone(), plan, dir, status_tx, sink);
        let task = tokio::spawn(kubelet.run(delete.clone()));
        Ok(Self {
            name,
            ports,
            status,
            delete,
            task: Some(task),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the pod's `port` is reachable from the host.
    pub fn address(&self, port: i32) -> Option<SocketAddr> {
        self.ports.address(port)
    }

    /// Its status now.
    pub fn status(&self) -> PodStatus {
        *self.status.borrow()
    }

    /// A receiver of its status changes.
    pub fn watch(&self) -> watch::Receiver<PodStatus> {
        self.status.clone()
    }

    /// Deletes the pod: the kubelet's termination sequence starts. Idempotent.
    pub fn delete(&self) {
        self.delete.cancel();
    }

    /// Whether it was deleted (its status may not say so yet).
    pub fn is_deleted(&self) -> bool {
        self.delete.is_cancelled()
    }

    /// Waits until its status satisfies `pred`, at most `within`.
    pub async fn wait_until(
        &mut self,
        pred: impl Fn(&PodStatus) -> bool,
        within: Duration,
    ) -> Result<PodStatus, String> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(within, status.wait_for(|s| pred(s) || s.gone)).await;
        let reached = match waited {
            Ok(Ok(status)) => Some(*status),
            Ok(Err(_)) => Some(self.status()),
            Err(_) => None,
        };
        match reached {
            Some(status) if pred(&status) => Ok(status),
            Some(_) => Err(format!("pod {} is gone", self.name)),
            None => Err(format!(
                "pod {}: condition not reached within {within:?} (status {:?})",
                self.name,
                self.status()
            )),
        }
    }

    /// Waits for the pod to be gone and returns its report. Delete it first,
    /// or this waits as long as it runs.
    pub async fn finished(mut self) -> PodReport {
        let task = self.task.take().expect("finished is called once");
        match task.await {
            Ok(report) => report,
            Err(e) => PodReport {
                name: self.name.clone(),
                events: Vec::new(),
                orphans: Vec::new(),
                failure: Some(format!("its kubelet task failed: {e}")),
                logs: Vec::new(),
            },
        }
    }
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        self.delete.cancel();
    }
}

/// What kind of container a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sidecar,
    Init,
    Main,
}

/// One container of the pod, and its state.
struct Slot {
    plan: ContainerPlan,
    role: Role,
    process: Option<Process>,
    running_since: Option<Instant>,
    started: bool,
    ready: bool,
    exit: Option<ExitStatus>,
    pre_stop: Option<Process>,
    pre_stop_running: bool,
    sigterm_at: Option<Instant>,
    kill_at: Option<Instant>,
    killed: bool,
    readiness_trigger: Arc<Notify>,
}

impl Slot {
    fn running(&self) -> bool {
        self.process.is_some() && self.exit.is_none()
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            running_since: self.running_since.filter(|_| self.running()),
            started: self.started,
        }
    }
}

/// The kubelet of one pod.
struct Kubelet {
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
    fn new(
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
            running_since: None,
            started: false,
            ready: false,
            exit: None,
            pre_stop: None,
            pre_stop_running: false,
            sigterm_at: None,
            kill_at: None,
            killed: false,
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

    async fn run(mut self, delete: CancellationToken) -> PodReport {
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
                .flat_map(|s| s.process.iter().chain(s.pre_stop.iter()))
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
                slot.running_since = Some(now);
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
        slot.started = true;
        // The kubelet probes readiness at once when a container has started.
        slot.readiness_trigger.notify_one();
    }

    /// Starts what may start: sidecars one by one, init containers one by
    /// one, then the main containers.
    fn advance_start(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.role {
                Role::Sidecar | Role::Init if slot.process.is_none() => {
                    self.spawn(i, now);
                    return;
                }
                Role::Sidecar if !slot.started => return,
                Role::Init if slot.exit.is_none() => return,
                Role::Main if slot.process.is_none() => self.spawn(i, now),
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
            ProbeKind::Readiness => slot.ready = update.ok,
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
            if slot.pre_stop_running
                && let Some(status) = slot.pre_stop.as_mut().and_then(Process::try_exit)
            {
                slot.pre_stop_running = false;
                let container = slot.plan.name.clone();
                let status = describe(status);
                self.record(now, PodEvent::PreStopEnded { container, status });
                // SIGTERM waits for the hook, then gets the grace period's
                // remainder, with the kubelet's minimum.
                self.sigterm(i, now);
            }
            let slot = &mut self.slots[i];
            if slot.exit.is_some() {
                continue;
            }
            let Some(status) = slot.process.as_mut().and_then(Process::try_exit) else {
                continue;
            };
            slot.exit = Some(status);
            slot.ready = false;
            // A hook runs inside its container and dies with it.
            if slot.pre_stop_running {
                if let Some(hook) = slot.pre_stop.as_mut() {
                    hook.kill_group();
                }
                slot.pre_stop_running = false;
            }
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
                    slot.pre_stop = Some(hook);
                    slot.pre_stop_running = true;
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
        if !slot.running() || slot.sigterm_at.is_some() {
            return;
        }
        if let Some(process) = slot.process.as_mut() {
            process.signal(Signal::SIGTERM);
        }
        slot.sigterm_at = Some(now);
        slot.kill_at = Some(deadline.max(now + MINIMUM_GRACE));
        let container = slot.plan.name.clone();
        self.record(now, PodEvent::SigTerm { container });
    }

    fn advance_termination(&mut self, now: Instant) {
        let deadline = self.deadline.unwrap_or(now);
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.pre_stop_running && now >= deadline && slot.sigterm_at.is_none() {
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
            if slot.running() && !slot.killed && slot.kill_at.is_some_and(|at| now >= at) {
                slot.killed = true;
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
            .all(|s| !s.running() && !s.pre_stop_running)
    }

    /// Publishes the pod's Ready condition and the containers' states.
    fn publish(&mut self, now: Instant) {
        let ready = !self.status.gone
            && self.slots.iter().filter(|s| s.role != Role::Init).all(|s| {
                s.running()
                    && if s.plan.readiness_probe.is_some() {
                        s.ready
                    } else {
                        s.started
                    }
            });
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
