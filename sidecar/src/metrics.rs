//! The sidecar's Prometheus metrics (OpenMetrics text on `/metrics`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use quiesce_protocol::{DrainResult, Phase};

/// Engine phase label; `unknown` while no engine is attached.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PhaseLabel {
    unknown,
    starting,
    ready,
    draining,
    aborting,
    stopped,
}

impl From<Option<Phase>> for PhaseLabel {
    fn from(phase: Option<Phase>) -> Self {
        match phase {
            None => Self::unknown,
            Some(Phase::Starting) => Self::starting,
            Some(Phase::Ready) => Self::ready,
            Some(Phase::Draining) => Self::draining,
            Some(Phase::Aborting) => Self::aborting,
            Some(Phase::Stopped) => Self::stopped,
        }
    }
}

const PHASES: [PhaseLabel; 6] = [
    PhaseLabel::unknown,
    PhaseLabel::starting,
    PhaseLabel::ready,
    PhaseLabel::draining,
    PhaseLabel::aborting,
    PhaseLabel::stopped,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: PhaseLabel,
}

/// Drain result label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ResultLabel {
    drained,
    aborted,
    engine_lost,
    no_engine,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: ResultLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlindLabels {
    reason: &'static str,
}

/// Drains last from a fraction of a second (idle) to an hour (the longest
/// grace period).
const DRAIN_DURATION_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Every metric the sidecar exports, registered once.
pub struct Metrics {
    registry: Registry,
    engine_phase: Family<PhaseLabels, Gauge>,
    in_flight: Gauge,
    queued: Gauge,
    kv_transfers: Gauge,
    engine_connected: Gauge,
    drain_in_progress: Gauge,
    drain_duration: Histogram,
    drains: Family<ResultLabels, Counter>,
    requests_aborted: Counter,
    readiness_transitions: Family<ReadyLabels, Counter>,
    drains_not_started: Counter,
    work_unknown: Family<BlindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `quiesce_` prefix.
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("quiesce"),
            engine_phase: Family::default(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            kv_transfers: Gauge::default(),
            engine_connected: Gauge::default(),
            drain_in_progress: Gauge::default(),
            drain_duration: Histogram::new(DRAIN_DURATION_BUCKETS),
            drains: Family::default(),
            requests_aborted: Counter::default(),
            readiness_transitions: Family::default(),
            drains_not_started: Counter::default(),
            work_unknown: Family::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "engine_phase",
            "Engine phase as a state set: 1 for the current phase",
            metrics.engine_phase.clone(),
        );
        registry.register(
            "engine_in_flight_requests",
            "Requests the engine is processing",
            metrics.in_flight.clone(),
        );
        registry.register(
            "engine_queued_requests",
            "Requests admitted by the engine but waiting to be scheduled",
            metrics.queued.clone(),
        );
        registry.register(
            "engine_kv_transfers",
            "KV cache transfers the engine still has to complete",
            metrics.kv_transfers.clone(),
        );
        registry.register(
            "engine_connected",
            "1 while an engine is connected to the sidecar",
            metrics.engine_connected.clone(),
        );
        registry.register(
            "drain_in_progress",
            "1 while a drain runs",
            metrics.drain_in_progress.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Time from the drain request to its end",
            metrics.drain_duration.clone(),
        );
        registry.register("drains", "Drains by how they ended", metrics.drains.clone());
        registry.register(
            "requests_aborted",
            "Requests still in flight or queued when a drain timed out and aborted them",
            metrics.requests_aborted.clone(),
        );
        registry.register(
            "readiness_transitions",
            "Changes of /ready, by the new state",
            metrics.readiness_transitions.clone(),
        );
        registry.register(
            "drains_not_started",
            "Times the sidecar was stopped while an engine had been connected and no drain had \
             been requested: the preStop hook did not run or could not reach the sidecar",
            metrics.drains_not_started.clone(),
        );
        registry.register(
            "engine_work_unknown",
            "1 while the sidecar cannot see the engine's work, by why (a stock engine's missing \
             metrics): a drain then waits for its whole timeout",
            metrics.work_unknown.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        for phase in PHASES {
            metrics
                .engine_phase
                .get_or_create(&PhaseLabels { phase })
                .set(0);
        }
        for blind in crate::stock::Blind::ALL {
            metrics
                .work_unknown
                .get_or_create(&BlindLabels {
                    reason: blind.label(),
                })
                .set(0);
        }
        for ready in ["true", "false"] {
            let _ = metrics
                .readiness_transitions
                .get_or_create(&ReadyLabels { ready });
        }
        for result in [
            ResultLabel::drained,
            ResultLabel::aborted,
            ResultLabel::engine_lost,
            ResultLabel::no_engine,
        ] {
            let _ = metrics.drains.get_or_create(&ResultLabels { result });
        }
        metrics
    }

    /// Records the engine's state.
    pub fn observe_engine(&self, connected: bool, phase: Option<Phase>, counts: (u32, u32, u32)) {
        let current = PhaseLabel::from(phase);
        for phase in PHASES {
            let value = i64::from(phase == current);
            self.engine_phase
                .get_or_create(&PhaseLabels { phase })
                .set(value);
        }
        self.engine_connected.set(i64::from(connected));
        self.in_flight.set(i64::from(counts.0));
        self.queued.set(i64::from(counts.1));
        self.kv_transfers.set(i64::from(counts.2));
    }

    /// Records why the engine's work cannot be seen, if it cannot.
    pub fn observe_visibility(&self, work_unknown: Option<&'static str>) {
        for blind in crate::stock::Blind::ALL {
            let reason = blind.label();
            self.work_unknown
                .get_or_create(&BlindLabels { reason })
                .set(i64::from(work_unknown == Some(reason)));
        }
    }

    /// Records the start of a drain.
    pub fn drain_started(&self) {
        self.drain_in_progress.set(1);
    }

    /// Records the end of a drain.
    pub fn drain_finished(&self, result: DrainResult, seconds: f64) {
        self.drain_in_progress.set(0);
        self.drain_duration.observe(seconds);
        let result = match result {
            DrainResult::Drained => ResultLabel::drained,
            DrainResult::Aborted => ResultLabel::aborted,
            DrainResult::EngineLost => ResultLabel::engine_lost,
            DrainResult::NoEngine => ResultLabel::no_engine,
        };
        self.drains.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records requests aborted at the drain deadline.
    pub fn requests_aborted(&self, count: u32) {
        self.requests_aborted.inc_by(u64::from(count));
    }

    /// Records a change of `/ready`.
    pub fn readiness_changed(&self, ready: bool) {
        let ready = if ready { "true" } else { "false" };
        self.readiness_transitions
            .get_or_create(&ReadyLabels { ready })
            .inc();
    }

    /// Records a sidecar stop without any drain request.
    pub fn drain_not_started(&self) {
        self.drains_not_started.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
