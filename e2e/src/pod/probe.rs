//! Probes as the kubelet runs them: one worker per probe, ticking at the
//! probe's period from the moment the pod was created (the kubelet creates
//! its probe workers when it first syncs the pod, before the containers
//! start), skipping ticks while the container is not running, and
//! publishing a result only once a threshold of equal results is reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::plan::ProbePlan;
use crate::client;

/// The three probe kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `startupProbe`: holds the others back until it passes once.
    Startup,
    /// `readinessProbe`: whether the pod gets traffic.
    Readiness,
    /// `livenessProbe`: whether the kubelet restarts the container.
    Liveness,
}

impl ProbeKind {
    /// The field name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Readiness => "readiness",
            Self::Liveness => "liveness",
        }
    }

    /// The result the kubelet assumes before the first probe: a container
    /// is not ready until proven so, and alive until proven otherwise.
    fn initial(self) -> Option<bool> {
        match self {
            Self::Startup | Self::Readiness => Some(false),
            Self::Liveness => Some(true),
        }
    }
}

/// The kubelet's threshold logic (`prober/worker.go`): consecutive equal
/// results are counted, and the published result changes only when the
/// count reaches `successThreshold` or `failureThreshold`.
#[derive(Clone, Debug)]
pub struct ProbeState {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    published: Option<bool>,
}

impl ProbeState {
    /// A probe that has not run yet.
    pub fn new(kind: ProbeKind, success_threshold: u32, failure_threshold: u32) -> Self {
        Self {
            success_threshold,
            failure_threshold,
            last: None,
            run: 0,
            published: kind.initial(),
        }
    }

    /// Counts one result; returns the newly published result, if it changed
    /// (or was just confirmed by reaching a threshold for the first time).
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold || self.published == Some(ok) {
            return None;
        }
        self.published = Some(ok);
        Some(ok)
    }

    /// Consecutive failures so far (for the startup probe's verdict).
    pub fn failures(&self) -> u32 {
        if self.last == Some(false) {
            self.run
        } else {
            0
        }
    }
}

/// What a probe worker needs to know about its container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerView {
    /// When the container's process started, while it runs.
    pub running_since: Option<Instant>,
    /// Whether its startup probe has passed (or it has none).
    pub started: bool,
}

/// A published probe result, for the pod's kubelet loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeUpdate {
    /// The container's index in the pod's container list.
    pub container: usize,
    /// Which probe.
    pub kind: ProbeKind,
    /// The new result.
    pub ok: bool,
    /// For a failing startup probe: its threshold was reached, the kubelet
    /// gives up on the container.
    pub gave_up: bool,
}

/// One probe worker, as the kubelet runs one per probe.
pub struct Worker {
    /// The probe.
    pub plan: ProbePlan,
    /// Which kind.
    pub kind: ProbeKind,
    /// Its container's index in the pod's container list.
    pub container: usize,
    /// When the pod was created: ticks count from then.
    pub origin: Instant,
    /// The containers' states.
    pub views: watch::Receiver<Vec<ContainerView>>,
    /// Runs a probe at once (the kubelet does so for readiness when a
    /// container has started).
    pub trigger: Arc<Notify>,
    /// Where published results go.
    pub updates: mpsc::UnboundedSender<ProbeUpdate>,
    /// Ends the worker.
    pub stop: CancellationToken,
}

impl Worker {
    /// Runs until `stop`: ticks at the probe's period from `origin`, probes
    /// only a running container past its initial delay (readiness and
    /// liveness only once it has started), and sends each published change.
    pub async fn run(self) {
        let Self {
            plan,
            kind,
            container,
            origin,
            views,
            trigger,
            updates,
            stop,
        } = self;
        let mut ticker = tokio::time::interval_at(origin.into(), plan.period);
        // A Go ticker drops ticks it could not deliver; so does the kubelet.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut state = ProbeState::new(kind, plan.success_threshold, plan.failure_threshold);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
                () = trigger.notified() => {}
            }
            let view = views.borrow().get(container).copied().unwrap_or_default();
            let Some(since) = view.running_since else {
                continue;
            };
            let gated = match kind {
                ProbeKind::Startup => view.started,
                ProbeKind::Readiness | ProbeKind::Liveness => !view.started,
            };
            if gated || Instant::now() < since + plan.initial_delay {
                continue;
            }
            let ok = probe_once(plan.address, &plan.path, plan.timeout).await;
            if stop.is_cancelled() {
                return;
            }
            let published = state.observe(ok);
            // A startup probe that fails failureThreshold times in a row makes
            // the kubelet kill the container.
            let gave_up =
                kind == ProbeKind::Startup && !ok && state.failures() >= plan.failure_threshold;
            let update = if gave_up { Some(false) } else { published };
            if let Some(ok) = update {
                let update = ProbeUpdate {
                    container,
                    kind,
                    ok,
                    gave_up,
                };
                if updates.send(update).is_err() || gave_up {
                    return;
                }
            }
        }
    }
}

/// One HTTP probe: success is a status in 200..400, as for the kubelet.
async fn probe_once(address: SocketAddr, path: &str, timeout: Duration) -> bool {
    matches!(
        client::get_status(address, path, timeout).await,
        Some(200..=399)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_starts_unready_and_flips_at_the_thresholds() {
        let mut p = ProbeState::new(ProbeKind::Readiness, 2, 3);
        assert_eq!(p.observe(true), None, "one success of two");
        assert_eq!(p.observe(true), Some(true));
        assert_eq!(p.observe(true), None, "no change, nothing published");
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(true), None, "a success resets the failure run");
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(false), Some(false));
    }

    #[test]
    fn liveness_starts_alive_and_startup_counts_failures() {
        let mut live = ProbeState::new(ProbeKind::Liveness, 1, 1);
        assert_eq!(live.observe(true), None);
        assert_eq!(live.observe(false), Some(false));

        let mut startup = ProbeState::new(ProbeKind::Startup, 1, 30);
        assert_eq!(startup.observe(false), None);
        assert_eq!(startup.observe(false), None);
        assert_eq!(startup.failures(), 2);
        assert_eq!(startup.observe(true), Some(true));
        assert_eq!(startup.failures(), 0);
    }
}
