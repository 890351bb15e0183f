//! Every bound of the `InferenceDeployment` API, written once. The CRD's
//! schema takes them (`#[schemars(range(...))]`, the CEL rules, the pod
//! template's bounds) and so do the Rust rules of [`crate::rules`], so the
//! two cannot drift apart.

/// A closed range of an integer field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// JSON path of the field, for messages.
    pub field: &'static str,
    /// The smallest value allowed.
    pub min: i32,
    /// The largest value allowed.
    pub max: i32,
}

impl Bound {
    const fn new(field: &'static str, min: i32, max: i32) -> Self {
        Self { field, min, max }
    }

    /// Whether `value` lies within the bound.
    pub fn contains(&self, value: i32) -> bool {
        (self.min..=self.max).contains(&value)
    }
}

/// [`MAX_GRACE_PERIOD_SECONDS`] as a literal, for the `concat!` of the CEL
/// rule and its message.
macro_rules! max_grace_period_seconds {
    () => {
        3600
    };
}
pub(crate) use max_grace_period_seconds;

/// Upper bound of the computed `terminationGracePeriodSeconds`: one hour.
///
/// Kubernetes itself sets no limit, but a pod that may take longer than an
/// hour to terminate blocks node drains and cluster upgrades for that long.
pub const MAX_GRACE_PERIOD_SECONDS: i32 = max_grace_period_seconds!();

/// Above this grace period cluster-autoscaler (default
/// `--max-graceful-termination-sec=600`) cuts a scale-down drain short.
pub const AUTOSCALER_GRACE_PERIOD_SECONDS: i64 = 600;

/// `spec.replicas`.
pub const REPLICAS: Bound = Bound::new("spec.replicas", 0, 10_000);
/// `spec.engine.port`.
pub const ENGINE_PORT: Bound = Bound::new("spec.engine.port", 1, 65_535);
/// `spec.engine.startupTimeoutSeconds`: model loading takes minutes.
pub const STARTUP_TIMEOUT: Bound = Bound::new("spec.engine.startupTimeoutSeconds", 10, 7200);
/// `spec.drain.timeoutSeconds`: alone it may use the whole grace period.
pub const DRAIN_TIMEOUT: Bound =
    Bound::new("spec.drain.timeoutSeconds", 0, MAX_GRACE_PERIOD_SECONDS);
/// `spec.drain.propagationSeconds`.
pub const PROPAGATION: Bound = Bound::new("spec.drain.propagationSeconds", 0, 300);
/// `spec.drain.abortGraceSeconds`.
pub const ABORT_GRACE: Bound = Bound::new("spec.drain.abortGraceSeconds", 0, 300);
/// `spec.drain.exitMarginSeconds`.
pub const EXIT_MARGIN: Bound = Bound::new("spec.drain.exitMarginSeconds", 0, 600);
/// `spec.service.port`.
pub const SERVICE_PORT: Bound = Bound::new("spec.service.port", 1, 65_535);
/// `spec.sidecar.port`.
pub const SIDECAR_PORT: Bound = Bound::new("spec.sidecar.port", 1, 65_535);

/// Maximum number of containers in `spec.template.spec.containers`. The CEL
/// rules walk that list; the API server refuses rules whose estimated cost is
/// unbounded, so the schema must bound it.
pub const MAX_CONTAINERS: u64 = 16;

/// Maximum length of a container name (an RFC 1123 label).
pub const MAX_CONTAINER_NAME_LEN: u64 = 63;

/// Maximum length of `spec.engine.healthPath` and `metricsPath`.
pub const MAX_HTTP_PATH_LEN: u64 = 256;

/// Maximum length of `spec.sidecar.image`.
pub const MAX_IMAGE_LEN: u64 = 512;

/// Every integer bound, for the tests that check them against the CRD.
pub const BOUNDS: [Bound; 9] = [
    REPLICAS,
    ENGINE_PORT,
    STARTUP_TIMEOUT,
    DRAIN_TIMEOUT,
    PROPAGATION,
    ABORT_GRACE,
    EXIT_MARGIN,
    SERVICE_PORT,
    SIDECAR_PORT,
];
