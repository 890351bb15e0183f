//! The injected quiesce sidecar container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::RenderConfig;
use crate::{EngineAdapter, EngineSpec, InferenceDeploymentSpec, SidecarSpec};
use quiesce_protocol::contract::{
    DEFAULT_HEALTH_PATH, DEFAULT_METRICS_PATH, DEFAULT_SIDECAR_PORT, INSTALL_DIR, LIVE_PATH,
    SHARED_MOUNT_PATH, SHARED_VOLUME_NAME, SIDECAR_CONTAINER_NAME, SIDECAR_PORT_NAME,
    SIDECAR_USER_ID, SOCKET_PATH, TRTLLM_METRICS_PATH,
};

/// The sidecar port of `spec.sidecar`.
pub fn sidecar_port(sidecar: &SidecarSpec) -> i32 {
    sidecar.port.unwrap_or(i32::from(DEFAULT_SIDECAR_PORT))
}

/// An HTTP GET probe on `path` of the sidecar's `port` (a number: the engine
/// cannot name a port of another container).
pub(crate) fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

/// The sidecar's command line: `quiesce-sidecar serve ...` with the socket,
/// the HTTP listener for the kubelet, where to install the drain client, and
/// how to follow the engine.
pub fn sidecar_args(engine: &EngineSpec, port: i32) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--socket",
        SOCKET_PATH,
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--install-dir",
        INSTALL_DIR,
        "--adapter",
        engine.adapter.as_str(),
    ]
    .map(str::to_owned)
    .into();
    // Stock images are observed over HTTP from inside the pod; a protocol
    // engine connects to the socket instead.
    if engine.adapter != EngineAdapter::Protocol {
        let health = engine.health_path.as_deref().unwrap_or(DEFAULT_HEALTH_PATH);
        args.extend(
            [
                "--engine-url",
                &format!("http://127.0.0.1:{}", engine.port),
                "--health-path",
                health,
            ]
            .map(str::to_owned),
        );
    }
    let default_metrics = match engine.adapter {
        EngineAdapter::Vllm | EngineAdapter::Sglang => Some(DEFAULT_METRICS_PATH),
        EngineAdapter::Trtllm => Some(TRTLLM_METRICS_PATH),
        EngineAdapter::Protocol | EngineAdapter::Http => None,
    };
    if let Some(default) = default_metrics {
        let metrics = engine.metrics_path.as_deref().unwrap_or(default);
        args.extend(["--metrics-path", metrics].map(str::to_owned));
    }
    args
}

/// A native sidecar: an init container with `restartPolicy: Always` starts
/// before the engine, is restarted if it dies, and is stopped only after the
/// engine has exited, so it outlives the drain.
pub(super) fn sidecar_container(
    spec: &InferenceDeploymentSpec,
    config: &RenderConfig,
) -> Container {
    let port = sidecar_port(&spec.sidecar);
    let image = spec.sidecar.image.as_ref().unwrap_or(&config.sidecar_image);
    Container {
        name: SIDECAR_CONTAINER_NAME.to_owned(),
        image: Some(image.clone()),
        args: Some(sidecar_args(&spec.engine, port)),
        restart_policy: Some("Always".to_owned()),
        ports: Some(vec![ContainerPort {
            name: Some(SIDECAR_PORT_NAME.to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // The kubelet holds the next containers back until a native
        // sidecar's startup probe passes: the engine starts with the socket
        // and the drain client already in place.
        startup_probe: Some(sidecar_startup_probe(port)),
        // No readiness probe: a sidecar's readiness counts towards the pod's,
        // and the engine's readiness probe already asks the sidecar. No
        // liveness probe: a sidecar restarted mid-drain would lose the drain.
        resources: Some(
            spec.sidecar
                .resources
                .clone()
                .unwrap_or_else(default_sidecar_resources),
        ),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: SHARED_VOLUME_NAME.to_owned(),
            mount_path: SHARED_MOUNT_PATH.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// Up to 30 s at one probe per second: the sidecar starts in milliseconds,
/// and the engine waits for it.
fn sidecar_startup_probe(port: i32) -> Probe {
    Probe {
        period_seconds: Some(1),
        failure_threshold: Some(30),
        ..http_probe(LIVE_PATH, port)
    }
}

/// Requests 10m CPU and 32Mi memory, limit 64Mi memory. No CPU limit: a
/// throttled sidecar would answer probes late and fail the engine's
/// readiness.
pub fn default_sidecar_resources() -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity("10m")),
            ("memory".to_owned(), quantity("32Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), quantity("64Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// What the "restricted" Pod Security Standard asks of a container, and a
/// read-only root filesystem: the sidecar writes only to the shared volume.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_USER_ID),
        run_as_group: Some(SIDECAR_USER_ID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::render::fixtures::*;
    use crate::render::pod::render_pod_template;

    fn args(engine_yaml: &str) -> Vec<String> {
        sidecar_args(&spec(&format!("{engine_yaml}{MINIMAL}")).engine, 9090)
    }

    const SERVE: [&str; 8] = [
        "serve",
        "--socket",
        "/run/quiesce/quiesce.sock",
        "--listen",
        "0.0.0.0:9090",
        "--install-dir",
        "/run/quiesce/bin",
        "--adapter",
    ];

    #[test]
    fn a_protocol_engine_is_followed_over_the_socket_only() {
        assert_eq!(args(""), [&SERVE[..], &["protocol"]].concat());
    }

    #[test]
    fn vllm_and_sglang_are_followed_through_health_and_metrics() {
        let tail = [
            "--engine-url",
            "http://127.0.0.1:8000",
            "--health-path",
            "/health",
            "--metrics-path",
            "/metrics",
        ];
        assert_eq!(
            args("engine: {adapter: vllm}\n"),
            [&SERVE[..], &["vllm"], &tail].concat()
        );
        assert_eq!(
            args("engine: {adapter: sglang, port: 30000, healthPath: /healthz, metricsPath: /m}\n"),
            [
                &SERVE[..],
                &["sglang", "--engine-url", "http://127.0.0.1:30000"],
                &["--health-path", "/healthz", "--metrics-path", "/m"],
            ]
            .concat()
        );
    }

    #[test]
    fn an_http_engine_is_followed_through_its_health_path_only() {
        assert_eq!(
            args("engine: {adapter: http, port: 8080, healthPath: /ping, metricsPath: /m}\n"),
            [
                &SERVE[..],
                &[
                    "http",
                    "--engine-url",
                    "http://127.0.0.1:8080",
                    "--health-path",
                    "/ping"
                ],
            ]
            .concat()
        );
    }

    #[test]
    fn the_sidecar_is_a_native_sidecar_with_a_startup_probe_only() {
        let (template, _) = render_pod(MINIMAL);
        let sidecar = sidecar(&template);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            sidecar.image.as_deref(),
            Some(crate::render::DEFAULT_SIDECAR_IMAGE)
        );
        assert_eq!(sidecar.readiness_probe, None);
        assert_eq!(sidecar.liveness_probe, None);
        let startup = sidecar.startup_probe.clone().unwrap();
        let get = startup.http_get.unwrap();
        assert_eq!(
            (get.path.as_deref(), get.port),
            (Some("/live"), IntOrString::Int(9090))
        );
        assert_eq!(
            (startup.period_seconds, startup.failure_threshold),
            (Some(1), Some(30))
        );
        let port = &sidecar.ports.as_ref().unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("quiesce"));
        assert_eq!(port.container_port, 9090);
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.host_port, None);
        let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            ("quiesce", "/run/quiesce")
        );
        assert_ne!(mount.read_only, Some(true), "the sidecar writes the socket");
        assert_eq!(sidecar.resources, Some(default_sidecar_resources()));
        assert_eq!(
            sidecar.security_context,
            Some(restricted_security_context())
        );
    }

    #[test]
    fn image_port_and_resources_follow_the_spec() {
        let config = RenderConfig {
            sidecar_image: "registry.local/quiesce-sidecar:dev".to_owned(),
        };
        let (template, _) =
            render_pod_template(&validated(&spec(MINIMAL)), "demo", &config).unwrap();
        assert_eq!(
            sidecar(&template).image.as_deref(),
            Some("registry.local/quiesce-sidecar:dev")
        );

        let custom = format!(
            "{MINIMAL}sidecar:
  image: mine:1
  port: 9191
  resources: {{requests: {{cpu: 50m}}}}
"
        );
        let (template, _) =
            render_pod_template(&validated(&spec(&custom)), "demo", &config).unwrap();
        let sidecar = sidecar(&template);
        assert_eq!(sidecar.image.as_deref(), Some("mine:1"));
        assert!(
            sidecar
                .args
                .as_ref()
                .unwrap()
                .contains(&"0.0.0.0:9191".to_owned())
        );
        assert_eq!(sidecar.ports.as_ref().unwrap()[0].container_port, 9191);
        let probe_port = sidecar
            .startup_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port
            .clone();
        assert_eq!(probe_port, IntOrString::Int(9191));
        let resources = sidecar.resources.clone().unwrap();
        assert_eq!(resources.limits, None, "the user's resources, as written");
        assert_eq!(resources.requests.unwrap()["cpu"].0, "50m");
    }
}
