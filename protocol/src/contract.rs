//! The pod contract: the names, paths, ports and users that the operator
//! renders into a pod and that the sidecar and the engine rely on. One
//! place, importing nothing, so that both sides agree by construction.

/// Name of the injected sidecar (an init container with `restartPolicy:
/// Always`, a native sidecar).
pub const SIDECAR_CONTAINER_NAME: &str = "quiesce-sidecar";

/// Name of the shared volume that holds the socket and the drain client.
pub const SHARED_VOLUME_NAME: &str = "quiesce";
/// Where both the sidecar and the engine mount the shared volume.
pub const SHARED_MOUNT_PATH: &str = "/run/quiesce";
/// The Unix socket the sidecar serves and the engine connects to.
pub const SOCKET_PATH: &str = "/run/quiesce/quiesce.sock";
/// Environment variable that tells the engine (and the sidecar) where the
/// socket is.
pub const SOCKET_ENV: &str = "QUIESCE_SOCKET";
/// Where the sidecar copies its own static binary at start-up.
pub const INSTALL_DIR: &str = "/run/quiesce/bin";
/// The copied binary, run by the engine's preStop hook as the drain client.
pub const DRAIN_CLIENT_PATH: &str = "/run/quiesce/bin/quiesce-sidecar";

/// Port of the sidecar's HTTP endpoints unless `spec.sidecar.port` says
/// otherwise.
pub const DEFAULT_SIDECAR_PORT: u16 = 9090;
/// Name of the sidecar's container port.
pub const SIDECAR_PORT_NAME: &str = "quiesce";
/// The sidecar's liveness endpoint.
pub const LIVE_PATH: &str = "/live";
/// The sidecar's readiness endpoint: ready while the engine is ready and no
/// drain was asked.
pub const READY_PATH: &str = "/ready";
/// The sidecar's OpenMetrics endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// The sidecar's JSON snapshot.
pub const STATUS_PATH: &str = "/status";
/// The sidecar's load report ([`crate::LoadReport`]).
pub const LOAD_PATH: &str = "/load";

/// A stock engine's health endpoint unless `spec.engine.healthPath` says
/// otherwise.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// The Prometheus endpoint of vLLM and SGLang unless `spec.engine.metricsPath`
/// says otherwise.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// trtllm-serve's Prometheus page. Its JSON `/metrics` hands each statistic
/// out once and must never be polled.
pub const TRTLLM_METRICS_PATH: &str = "/prometheus/metrics";

/// User and group the sidecar runs as (the distroless `nonroot` user).
pub const SIDECAR_USER_ID: i64 = 65532;
/// Group set as the pod's `fsGroup` when the user sets none, so that an
/// engine running as another user may connect to the socket (mode 0660).
pub const SHARED_GROUP_ID: i64 = 65532;
