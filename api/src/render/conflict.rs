//! Conflicts: fields the user set where quiesce would have injected its own.
//!
//! quiesce never silently overwrites what the user wrote. When a user field
//! occupies a place quiesce wants, the user's value is kept and a [`Conflict`]
//! records what quiesce did not install and what that costs. Conflicts are
//! data: the controller reports them in the resource's status, and
//! `quiesce-operator render` prints them as warnings.

/// The engine container has its own readinessProbe; quiesce's was not installed.
pub const ENGINE_READINESS_PROBE_KEPT: &str = "EngineReadinessProbeKept";
/// The engine container has its own livenessProbe; quiesce's was not installed.
pub const ENGINE_LIVENESS_PROBE_KEPT: &str = "EngineLivenessProbeKept";
/// The engine container has its own startupProbe; quiesce's was not installed.
pub const ENGINE_STARTUP_PROBE_KEPT: &str = "EngineStartupProbeKept";
/// The vLLM engine already has a `--shutdown-timeout`; quiesce's was not added.
pub const SHUTDOWN_TIMEOUT_KEPT: &str = "ShutdownTimeoutKept";
/// The vLLM engine runs through a shell, so quiesce could not add `--shutdown-timeout`.
pub const SHUTDOWN_TIMEOUT_NOT_PASSED: &str = "ShutdownTimeoutNotPassed";
/// The vLLM engine runs through a shell, so quiesce could not add
/// `--enable-server-load-tracking`.
pub const LOAD_TRACKING_NOT_PASSED: &str = "LoadTrackingNotPassed";
/// vLLM runs with `--disable-log-stats`: the gauges the sidecar reads are
/// gone, and every drain waits for its whole timeout.
pub const ENGINE_LOG_STATS_DISABLED: &str = "EngineLogStatsDisabled";
/// SGLang runs without `--enable-metrics`: its grammar queue is invisible,
/// and every drain waits for its whole timeout.
pub const ENGINE_METRICS_DISABLED: &str = "EngineMetricsDisabled";
/// The SGLang container sets `SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION`
/// itself; quiesce's `false` was not set.
pub const HEALTH_GENERATION_KEPT: &str = "HealthGenerationKept";
/// The engine container already sets `QUIESCE_SOCKET` to another value.
pub const SOCKET_ENV_KEPT: &str = "SocketEnvKept";
/// The engine container mounts something inside `/run/quiesce`.
pub const SHARED_MOUNT_SHADOWED: &str = "SharedMountShadowed";
/// A pod template label uses a key quiesce sets; quiesce's value won.
pub const RESERVED_LABEL_OVERRIDDEN: &str = "ReservedLabelOverridden";
/// A pod template annotation uses a key quiesce sets; quiesce's value won.
pub const RESERVED_ANNOTATION_OVERRIDDEN: &str = "ReservedAnnotationOverridden";

/// Every conflict reason, for tests and for documentation that lists them.
pub const ALL_REASONS: [&str; 13] = [
    ENGINE_READINESS_PROBE_KEPT,
    ENGINE_LIVENESS_PROBE_KEPT,
    ENGINE_STARTUP_PROBE_KEPT,
    SHUTDOWN_TIMEOUT_KEPT,
    SHUTDOWN_TIMEOUT_NOT_PASSED,
    LOAD_TRACKING_NOT_PASSED,
    ENGINE_LOG_STATS_DISABLED,
    ENGINE_METRICS_DISABLED,
    HEALTH_GENERATION_KEPT,
    SOCKET_ENV_KEPT,
    SHARED_MOUNT_SHADOWED,
    RESERVED_LABEL_OVERRIDDEN,
    RESERVED_ANNOTATION_OVERRIDDEN,
];

/// A user field that quiesce kept instead of injecting its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Why, as one of the PascalCase constants of this module: bounded, so
    /// it can be a metric label or a condition reason.
    pub reason: &'static str,
    /// Path of the user's field, such as
    /// `spec.template.spec.containers[0].readinessProbe`.
    pub field: String,
    /// What was kept, what quiesce did not install and what that costs.
    pub message: String,
}

impl Conflict {
    pub(crate) fn new(reason: &'static str, field: impl Into<String>, message: String) -> Self {
        Self {
            reason,
            field: field.into(),
            message,
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_pascal_case_words() {
        let mut seen = std::collections::BTreeSet::new();
        for reason in ALL_REASONS {
            assert!(seen.insert(reason), "{reason} listed twice");
            assert!(reason.starts_with(|c: char| c.is_ascii_uppercase()));
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
        }
    }
}
