//! What a pod says about itself: its events as they happen, the status the
//! rest of the cluster sees, and its report once it is gone.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

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
