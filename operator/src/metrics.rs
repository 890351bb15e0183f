//! The operator's Prometheus metrics, served as OpenMetrics on `/metrics`.
//!
//! Every label is a closed enum: a reconcile's result, a failure's reason.
//! Never an object's name or an error's text, which would grow the series
//! without bound.

use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::controller::scale_in::Outcome;
use quiesce_api::ScaleInPolicy;
use quiesce_api::reason::Reason;

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReconcileResult {
    /// At least one object or the status was written.
    applied,
    /// Everything matched already: nothing was written.
    unchanged,
    /// The spec is invalid or cannot be rendered: the status says why,
    /// nothing was applied.
    rejected,
    /// The resource is being deleted: nothing to do.
    deleting,
    /// The reconcile failed and is retried with a backoff.
    error,
}

impl ReconcileResult {
    /// Every value, so that each series exists from the start.
    pub const ALL: [Self; 5] = [
        Self::applied,
        Self::unchanged,
        Self::rejected,
        Self::deleting,
        Self::error,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: ReconcileResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// A [`Reason::FAILURES`] value.
    reason: &'static str,
}

/// A reconcile reads three objects and writes up to four, each a round trip
/// to the API server: milliseconds when all is well, seconds when the API
/// server is slow.
const RECONCILE_DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Requests in flight on a removed pod: 0 is the goal.
const IN_FLIGHT_BUCKETS: [f64; 9] = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Reading every pod's load at once: milliseconds, at most the timeout.
const LOAD_READ_BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: &'static str,
}

/// The metrics the controller and the leader election update.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
    scale_ins: Family<PolicyLabels, Counter>,
    removed_in_flight: Histogram,
    mischosen: Counter,
    load_read: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (whose prefix,
    /// `quiesce_operator`, names them).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Histogram::new(RECONCILE_DURATION_BUCKETS),
            leader: Gauge::default(),
            scale_ins: Family::default(),
            removed_in_flight: Histogram::new(IN_FLIGHT_BUCKETS),
            mischosen: Counter::default(),
            load_read: Histogram::new(LOAD_READ_BUCKETS),
        };
        registry.register(
            "reconciles",
            "Reconciles of InferenceDeployments, by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, API calls included",
            metrics.duration.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed or rejected the resource, by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "leader",
            "Whether this instance reconciles: it holds the Lease or runs without election",
            metrics.leader.clone(),
        );
        registry.register(
            "scale_ins",
            "Scale-ins of InferenceDeployments, by spec.scaleIn.policy",
            metrics.scale_ins.clone(),
        );
        registry.register(
            "scale_in_removed_in_flight",
            "Requests in flight on each pod a scale-in removed, as it began to drain",
            metrics.removed_in_flight.clone(),
        );
        registry.register(
            "scale_in_mischosen",
            "Pods a scale-in removed that were busier than a pod it kept, as they began to drain",
            metrics.mischosen.clone(),
        );
        registry.register(
            "scale_in_load_read_duration_seconds",
            "Time to read the load of every Ready pod of a scale-in, all at once",
            metrics.load_read.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        for result in ReconcileResult::ALL {
            let _ = metrics.reconciles.get_or_create(&ResultLabels { result });
        }
        for reason in Reason::FAILURES {
            let reason = reason.as_str();
            let _ = metrics.failures.get_or_create(&ReasonLabels { reason });
        }
        for policy in [ScaleInPolicy::IdleFirst, ScaleInPolicy::Default] {
            let policy = policy.as_str();
            let _ = metrics.scale_ins.get_or_create(&PolicyLabels { policy });
        }
        metrics
    }

    /// A registry with the operator's prefix and these metrics in it.
    pub fn new_registry() -> (Registry, Self) {
        let mut registry = Registry::with_prefix("quiesce_operator");
        let metrics = Self::register(&mut registry);
        (registry, metrics)
    }

    /// Starts timing a reconcile; the duration is recorded when the guard
    /// drops, whichever way the reconcile ends.
    pub fn start_reconcile(&self) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self.duration.clone(),
            start: Instant::now(),
        }
    }

    /// Counts a finished reconcile.
    pub fn reconciled(&self, result: ReconcileResult) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failure (or a rejected resource) by reason.
    pub fn failed(&self, reason: Reason) {
        let reason = reason.as_str();
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Records whether this instance leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts a scale-in under `policy`.
    pub fn scaled_in(&self, policy: ScaleInPolicy) {
        let policy = policy.as_str();
        self.scale_ins.get_or_create(&PolicyLabels { policy }).inc();
    }

    /// Records how long reading the loads of a scale-in took.
    pub fn loads_read(&self, took: std::time::Duration) {
        self.load_read.observe(took.as_secs_f64());
    }

    /// Records what a scale-in removed: each removed pod's requests in
    /// flight (when known), and the pods busier than one kept.
    pub fn scale_in_outcome(&self, outcome: &Outcome) {
        for pod in &outcome.removed {
            if let Ok(work) = &pod.load {
                self.removed_in_flight.observe(f64::from(work.in_flight));
            }
        }
        self.mischosen.inc_by(outcome.mischosen() as u64);
    }

    /// How many reconciles ended with `result`.
    pub fn reconciles(&self, result: ReconcileResult) -> u64 {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// How many scale-ins ran under `policy`.
    pub fn scale_ins(&self, policy: ScaleInPolicy) -> u64 {
        let policy = policy.as_str();
        self.scale_ins.get_or_create(&PolicyLabels { policy }).get()
    }

    /// How many failures had `reason`.
    pub fn failures(&self, reason: Reason) -> u64 {
        let reason = reason.as_str();
        self.failures.get_or_create(&ReasonLabels { reason }).get()
    }

    /// Whether the leader gauge is set.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }
}

/// Records the duration of a reconcile when dropped.
#[must_use = "the duration is recorded when the timer drops"]
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_before_the_first_reconcile() {
        let (registry, metrics) = Metrics::new_registry();
        metrics.reconciled(ReconcileResult::applied);
        metrics.failed(Reason::ApiConflict);
        drop(metrics.start_reconcile());
        let text = encode(&registry).unwrap();
        assert!(
            text.contains("# TYPE quiesce_operator_reconciles counter"),
            "{text}"
        );
        assert!(text.contains("quiesce_operator_reconciles_total{result=\"applied\"} 1"));
        assert!(text.contains("quiesce_operator_reconciles_total{result=\"unchanged\"} 0"));
        assert!(
            text.contains("quiesce_operator_reconcile_failures_total{reason=\"ApiConflict\"} 1")
        );
        assert!(text.contains("quiesce_operator_reconcile_failures_total{reason=\"NotOwned\"} 0"));
        assert!(text.contains("quiesce_operator_reconcile_duration_seconds_count 1"));
        assert!(text.lines().any(|line| line == "quiesce_operator_leader 0"));
        let version = env!("CARGO_PKG_VERSION");
        assert!(text.contains(&format!(
            "quiesce_operator_build_info{{version=\"{version}\"}} 1"
        )));
        assert!(text.ends_with("# EOF\n"));
    }
}
