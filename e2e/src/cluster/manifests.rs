//! The workloads the suite runs: an InferenceDeployment of the simulated
//! engine, and a stock Deployment of the same engine for comparison.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use quiesce_api::{DrainSpec, InferenceDeployment};
use serde_json::{Value, json};

use super::Images;

/// Port the engine serves on, and its Services expose.
pub const ENGINE_PORT: u16 = 8000;
/// Time per output token of the engine.
pub const TOKEN_MS: u64 = 20;
/// The engine's user: not the sidecar's (65532), so that the socket is
/// reached through the pod's shared group, as in production.
pub const ENGINE_USER: i64 = 1000;
/// The drain settings of the suite's InferenceDeployments: a propagation
/// delay of 2 s (one kube-proxy on one node catches up within a second) and
/// a timeout far above the longest request of the suite's load.
pub fn drain() -> DrainSpec {
    DrainSpec {
        propagation_seconds: 2,
        timeout_seconds: 30,
        abort_grace_seconds: 5,
        exit_margin_seconds: 5,
    }
}
/// Label of the stock Deployment's pods.
pub const STOCK_LABEL: &str = "quiesce.dev/e2e-stock";

/// The pod spec of the simulated engine (a one-second model load, 20 ms
/// per token), non-root, read-only and without capabilities, as a
/// hardened engine runs; `engine` is merged into its container.
fn engine_pod(images: &Images, engine: Value) -> Value {
    let mut container = json!({
        "name": "engine",
        "image": images.engine(),
        "args": [
            "--listen", format!("0.0.0.0:{ENGINE_PORT}"),
            "--startup-seconds", "1",
            "--token-interval-ms", TOKEN_MS.to_string(),
        ],
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": ENGINE_USER,
            "runAsGroup": ENGINE_USER,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    });
    if let (Some(container), Value::Object(extra)) = (container.as_object_mut(), engine) {
        container.extend(extra);
    }
    json!({
        // The cluster may have no DNS; nothing here needs it.
        "dnsPolicy": "Default",
        "automountServiceAccountToken": false,
        "containers": [container],
    })
}

/// An InferenceDeployment `name` of `replicas` simulated engines that speak
/// the drain protocol.
pub fn inference_deployment(name: &str, replicas: i32, images: &Images) -> InferenceDeployment {
    let resource = json!({
        "apiVersion": "quiesce.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "engine": {"startupTimeoutSeconds": 60},
            "drain": drain(),
            "sidecar": {"image": images.sidecar()},
            "template": {"spec": engine_pod(images, json!({}))},
        },
    });
    serde_json::from_value(resource).expect("the suite's InferenceDeployment is well-formed")
}

/// A stock Deployment of the same engine and its Service: no sidecar, no
/// preStop hook, Kubernetes' default 30 s grace period, the engine's own
/// health endpoint as readiness, and the engine's default on SIGTERM: abort
/// everything at once (vLLM's `--shutdown-timeout 0`).
pub fn stock(name: &str, replicas: i32, images: &Images) -> (Deployment, Service) {
    let labels = json!({STOCK_LABEL: name});
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": engine_pod(images, json!({
                    "readinessProbe": {
                        "httpGet": {"path": "/health", "port": ENGINE_PORT},
                        "periodSeconds": 1,
                    },
                })),
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": ENGINE_PORT}],
        },
    });
    (
        serde_json::from_value(deployment).expect("the stock Deployment is well-formed"),
        serde_json::from_value(service).expect("the stock Service is well-formed"),
    )
}
