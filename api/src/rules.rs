//! The rules a valid `InferenceDeployment` satisfies, twice: as CEL for the
//! API server (embedded in the CRD) and in Rust, so that offline commands and
//! the controller reject what the API server would, with the same messages.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::drain_plan::DrainPlan;
use crate::limits::{self, Bound, MAX_CONTAINER_NAME_LEN, MAX_CONTAINERS, MAX_HTTP_PATH_LEN};
use crate::{EngineAdapter, InferenceDeploymentSpec};

/// Root rule: the template contains the engine container.
pub const ENGINE_CONTAINER_PRESENT: &str = "has(self.spec.template.spec) && self.spec.template.spec.containers.exists(c, c.name == self.spec.engine.containerName)";
/// Message of [`ENGINE_CONTAINER_PRESENT`].
pub const ENGINE_CONTAINER_PRESENT_MSG: &str = "spec.template.spec.containers must contain the engine container: name one container after spec.engine.containerName (default \"engine\"), or set spec.engine.containerName to the name of your inference server's container";

/// Root rule: the engine container has no preStop hook of its own.
pub const NO_ENGINE_PRESTOP: &str = "!has(self.spec.template.spec) || self.spec.template.spec.containers.all(c, c.name != self.spec.engine.containerName || !has(c.lifecycle) || !has(c.lifecycle.preStop))";
/// Message of [`NO_ENGINE_PRESTOP`].
pub const NO_ENGINE_PRESTOP_MSG: &str = "the engine container must not define lifecycle.preStop: quiesce installs its drain hook there; remove it and move that work into the engine's own SIGTERM handling (see docs/api.md)";

/// Root rule: the grace period is quiesce's to compute.
pub const NO_TEMPLATE_GRACE_PERIOD: &str =
    "!has(self.spec.template.spec) || !has(self.spec.template.spec.terminationGracePeriodSeconds)";
/// Message of [`NO_TEMPLATE_GRACE_PERIOD`].
pub const NO_TEMPLATE_GRACE_PERIOD_MSG: &str = "spec.template.spec.terminationGracePeriodSeconds is computed by quiesce from spec.drain: remove it and size spec.drain.timeoutSeconds instead";

/// `spec.engine` rule: the http adapter needs a health path.
pub const HTTP_NEEDS_HEALTH_PATH: &str = "self.adapter != 'http' || has(self.healthPath)";
/// Message of [`HTTP_NEEDS_HEALTH_PATH`].
pub const HTTP_NEEDS_HEALTH_PATH_MSG: &str =
    "spec.engine.healthPath is required when spec.engine.adapter is http";

/// `spec.drain` rule: the computed grace period stays under
/// [`limits::MAX_GRACE_PERIOD_SECONDS`].
pub const GRACE_PERIOD_BOUNDED: &str = concat!(
    "self.propagationSeconds + self.timeoutSeconds + self.abortGraceSeconds + self.exitMarginSeconds <= ",
    limits::max_grace_period_seconds!()
);
/// Message of [`GRACE_PERIOD_BOUNDED`].
pub const GRACE_PERIOD_BOUNDED_MSG: &str = concat!(
    "spec.drain: propagationSeconds + timeoutSeconds + abortGraceSeconds + exitMarginSeconds is the pods' terminationGracePeriodSeconds and must not exceed ",
    limits::max_grace_period_seconds!(),
    "; lower timeoutSeconds"
);

/// `spec.strategy` rule: a rollout can make progress.
pub const ROLLOUT_CAN_PROGRESS: &str = "!((self.maxSurge == 0 || self.maxSurge == '0%') && (self.maxUnavailable == 0 || self.maxUnavailable == '0%'))";
/// Message of [`ROLLOUT_CAN_PROGRESS`].
pub const ROLLOUT_CAN_PROGRESS_MSG: &str = "spec.strategy: maxSurge and maxUnavailable cannot both be 0, or a rollout could never make progress";

/// One broken rule: where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON path of the offending field, such as `spec.drain.timeoutSeconds`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A spec that passed every rule, with what its drain settings decide:
/// what render accepts, so that nothing renders an unchecked spec. It reads
/// as the spec it wraps.
#[derive(Clone, Debug)]
pub struct Validated<'a> {
    spec: &'a InferenceDeploymentSpec,
    drain_plan: DrainPlan,
}

impl Validated<'_> {
    /// The drain of the pods, computed once.
    pub fn drain_plan(&self) -> &DrainPlan {
        &self.drain_plan
    }
}

impl std::ops::Deref for Validated<'_> {
    type Target = InferenceDeploymentSpec;

    fn deref(&self) -> &InferenceDeploymentSpec {
        self.spec
    }
}

/// Checks a (defaulted) spec against every schema bound and CEL rule of the CRD.
pub fn validate(spec: &InferenceDeploymentSpec) -> Result<Validated<'_>, Vec<Violation>> {
    let mut found = Vec::new();
    let mut violation = |field: &str, message: String| {
        found.push(Violation {
            field: field.to_owned(),
            message,
        })
    };
    let drain = &spec.drain;
    let bounded = [
        (limits::REPLICAS, Some(spec.replicas)),
        (limits::ENGINE_PORT, Some(spec.engine.port)),
        (
            limits::STARTUP_TIMEOUT,
            Some(spec.engine.startup_timeout_seconds),
        ),
        (limits::DRAIN_TIMEOUT, Some(drain.timeout_seconds)),
        (limits::PROPAGATION, Some(drain.propagation_seconds)),
        (limits::ABORT_GRACE, Some(drain.abort_grace_seconds)),
        (limits::EXIT_MARGIN, Some(drain.exit_margin_seconds)),
        (limits::SERVICE_PORT, spec.service.port),
        (limits::SIDECAR_PORT, spec.sidecar.port),
    ];
    for (bound, value) in bounded {
        if let Some(value) = value.filter(|v| !bound.contains(*v)) {
            let Bound { min, max, .. } = bound;
            violation(
                bound.field,
                format!("must be between {min} and {max}, got {value}"),
            );
        }
    }

    let mut violation = |field: &str, message: &str| {
        found.push(Violation {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    if drain.termination_grace_period_seconds() > i64::from(limits::MAX_GRACE_PERIOD_SECONDS) {
        violation("spec.drain", GRACE_PERIOD_BOUNDED_MSG);
    }
    if spec.engine.adapter == EngineAdapter::Http && spec.engine.health_path.is_none() {
        violation("spec.engine.healthPath", HTTP_NEEDS_HEALTH_PATH_MSG);
    }
    if !is_dns_label(&spec.engine.container_name) {
        violation(
            "spec.engine.containerName",
            &format!(
                "must be a container name: lowercase letters, digits and '-', at most \
                 {MAX_CONTAINER_NAME_LEN} characters"
            ),
        );
    }
    for (field, path) in [
        ("spec.engine.healthPath", &spec.engine.health_path),
        ("spec.engine.metricsPath", &spec.engine.metrics_path),
    ] {
        if path
            .as_deref()
            .is_some_and(|p| !p.starts_with('/') || p.len() as u64 > MAX_HTTP_PATH_LEN)
        {
            violation(
                field,
                &format!(
                    "must be an HTTP path starting with '/', at most {MAX_HTTP_PATH_LEN} \
                     characters"
                ),
            );
        }
    }
    let strategy = &spec.strategy;
    let budget = &spec.disruption_budget;
    for (field, value) in [
        ("spec.strategy.maxSurge", &strategy.max_surge),
        ("spec.strategy.maxUnavailable", &strategy.max_unavailable),
        (
            "spec.disruptionBudget.maxUnavailable",
            &budget.max_unavailable,
        ),
    ] {
        if !is_count_or_percent(value) {
            violation(
                field,
                "must be a non-negative integer or a percentage such as \"25%\"",
            );
        }
    }
    if is_zero(&strategy.max_surge) && is_zero(&strategy.max_unavailable) {
        violation("spec.strategy", ROLLOUT_CAN_PROGRESS_MSG);
    }

    match spec.template.spec.as_ref() {
        None => violation(
            "spec.template.spec.containers",
            ENGINE_CONTAINER_PRESENT_MSG,
        ),
        Some(pod) => {
            if pod.containers.len() as u64 > MAX_CONTAINERS {
                violation(
                    "spec.template.spec.containers",
                    &format!("at most {MAX_CONTAINERS} containers are allowed"),
                );
            }
            if pod
                .containers
                .iter()
                .any(|c| c.name.len() as u64 > MAX_CONTAINER_NAME_LEN)
            {
                violation(
                    "spec.template.spec.containers",
                    &format!("container names are at most {MAX_CONTAINER_NAME_LEN} characters"),
                );
            }
            // Every container of the engine's name, as the CEL rules see
            // them: the API server refuses duplicate names only later, in
            // the Deployment.
            let mut engines = pod
                .containers
                .iter()
                .filter(|c| c.name == spec.engine.container_name)
                .peekable();
            if engines.peek().is_none() {
                violation(
                    "spec.template.spec.containers",
                    ENGINE_CONTAINER_PRESENT_MSG,
                );
            }
            if engines.any(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some())) {
                violation("spec.template.spec.containers", NO_ENGINE_PRESTOP_MSG);
            }
            if pod.termination_grace_period_seconds.is_some() {
                violation(
                    "spec.template.spec.terminationGracePeriodSeconds",
                    NO_TEMPLATE_GRACE_PERIOD_MSG,
                );
            }
        }
    }

    if !found.is_empty() {
        return Err(found);
    }
    Ok(Validated {
        spec,
        drain_plan: DrainPlan::of(&spec.drain),
    })
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    !bytes.is_empty()
        && bytes.len() as u64 <= MAX_CONTAINER_NAME_LEN
        && bytes.iter().all(allowed)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_count_or_percent(value: &IntOrString) -> bool {
    match value {
        IntOrString::Int(n) => *n >= 0,
        IntOrString::String(s) => s.strip_suffix('%').is_some_and(|digits| {
            (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }),
    }
}

fn is_zero(value: &IntOrString) -> bool {
    matches!(value, IntOrString::Int(0)) || matches!(value, IntOrString::String(s) if s == "0%")
}
