//! The rules a valid `InferenceDeployment` satisfies, twice: as CEL for the
//! API server (embedded in the CRD) and in Rust, so that offline commands and
//! the controller reject what the API server would, with the same messages.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{
    EngineAdapter, InferenceDeploymentSpec, MAX_CONTAINER_NAME_LEN, MAX_CONTAINERS,
    MAX_GRACE_PERIOD_SECONDS,
};

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
/// [`MAX_GRACE_PERIOD_SECONDS`].
pub const GRACE_PERIOD_BOUNDED: &str = "self.propagationSeconds + self.timeoutSeconds + self.abortGraceSeconds + self.exitMarginSeconds <= 3600";
/// Message of [`GRACE_PERIOD_BOUNDED`].
pub const GRACE_PERIOD_BOUNDED_MSG: &str = "spec.drain: propagationSeconds + timeoutSeconds + abortGraceSeconds + exitMarginSeconds is the pods' terminationGracePeriodSeconds and must not exceed 3600; lower timeoutSeconds";

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

/// Checks a (defaulted) spec against every schema bound and CEL rule of the CRD.
pub fn validate(spec: &InferenceDeploymentSpec) -> Result<(), Vec<Violation>> {
    let mut found = Vec::new();
    let mut violation = |field: &str, message: String| {
        found.push(Violation {
            field: field.to_owned(),
            message,
        })
    };
    let mut range = |field: &str, value: i32, min: i32, max: i32| {
        if !(min..=max).contains(&value) {
            violation(
                field,
                format!("must be between {min} and {max}, got {value}"),
            );
        }
    };

    range("spec.replicas", spec.replicas, 0, 10000);
    range("spec.engine.port", spec.engine.port, 1, 65535);
    let startup = spec.engine.startup_timeout_seconds;
    range("spec.engine.startupTimeoutSeconds", startup, 10, 7200);
    let drain = &spec.drain;
    range("spec.drain.timeoutSeconds", drain.timeout_seconds, 0, 3600);
    range(
        "spec.drain.propagationSeconds",
        drain.propagation_seconds,
        0,
        300,
    );
    range(
        "spec.drain.abortGraceSeconds",
        drain.abort_grace_seconds,
        0,
        300,
    );
    range(
        "spec.drain.exitMarginSeconds",
        drain.exit_margin_seconds,
        0,
        600,
    );
    if let Some(port) = spec.service.port {
        range("spec.service.port", port, 1, 65535);
    }
    if let Some(port) = spec.sidecar.port {
        range("spec.sidecar.port", port, 1, 65535);
    }

    let mut violation = |field: &str, message: &str| {
        found.push(Violation {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    if drain.termination_grace_period_seconds() > MAX_GRACE_PERIOD_SECONDS {
        violation("spec.drain", GRACE_PERIOD_BOUNDED_MSG);
    }
    if spec.engine.adapter == EngineAdapter::Http && spec.engine.health_path.is_none() {
        violation("spec.engine.healthPath", HTTP_NEEDS_HEALTH_PATH_MSG);
    }
    if !is_dns_label(&spec.engine.container_name) {
        violation(
            "spec.engine.containerName",
            "must be a container name: lowercase letters, digits and '-', at most 63 characters",
        );
    }
    for (field, path) in [
        ("spec.engine.healthPath", &spec.engine.health_path),
        ("spec.engine.metricsPath", &spec.engine.metrics_path),
    ] {
        if path
            .as_deref()
            .is_some_and(|p| !p.starts_with('/') || p.len() > 256)
        {
            violation(
                field,
                "must be an HTTP path starting with '/', at most 256 characters",
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
                    "at most 16 containers are allowed",
                );
            }
            if pod
                .containers
                .iter()
                .any(|c| c.name.len() as u64 > MAX_CONTAINER_NAME_LEN)
            {
                violation(
                    "spec.template.spec.containers",
                    "container names are at most 63 characters",
                );
            }
            let engine = pod
                .containers
                .iter()
                .find(|c| c.name == spec.engine.container_name);
            match engine {
                None => violation(
                    "spec.template.spec.containers",
                    ENGINE_CONTAINER_PRESENT_MSG,
                ),
                Some(c) if c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()) => {
                    violation("spec.template.spec.containers", NO_ENGINE_PRESTOP_MSG)
                }
                Some(_) => {}
            }
            if pod.termination_grace_period_seconds.is_some() {
                violation(
                    "spec.template.spec.terminationGracePeriodSeconds",
                    NO_TEMPLATE_GRACE_PERIOD_MSG,
                );
            }
        }
    }

    if found.is_empty() { Ok(()) } else { Err(found) }
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    !bytes.is_empty()
        && bytes.len() <= 63
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
