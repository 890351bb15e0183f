//! The `InferenceDeployment` API, group `quiesce.dev`, version `v1alpha1`.
//!
//! The Rust types are the source of truth: `quiesce-operator crd` generates
//! `crds/inferencedeployments.quiesce.dev.yaml` from them. Doc comments become
//! the schema's descriptions, which `kubectl explain` shows, so they are
//! written for the people who write the YAML.

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{limits, rules, schema};

/// Desired state of an inference server whose pods drain before they stop.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quiesce.dev",
    version = "v1alpha1",
    kind = "InferenceDeployment",
    doc = "An inference server (vLLM, SGLang, TensorRT-LLM or any engine) whose pods drain in-flight requests before they stop: quiesce renders it into a Deployment with a drain sidecar, a preStop hook and a computed grace period, plus a Service and a PodDisruptionBudget.",
    plural = "inferencedeployments",
    shortname = "infd",
    category = "quiesce",
    namespaced,
    status = "InferenceDeploymentStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Desired number of pods"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas", description = "Pods that pass their readiness probe"),
    printcolumn(name = "Up-To-Date", type_ = "integer", json_path = ".status.updatedReplicas", description = "Pods running the current template", priority = "1"),
    printcolumn(name = "Draining", type_ = "integer", json_path = ".status.drainingReplicas", description = "Pods deleted and still draining"),
    printcolumn(name = "Drain-Timeout", type_ = "integer", json_path = ".spec.drain.timeoutSeconds", description = "Seconds in-flight requests get to finish before they are aborted"),
    printcolumn(name = "Grace-Period", type_ = "integer", json_path = ".status.terminationGracePeriodSeconds", description = "Computed terminationGracePeriodSeconds of the pods"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Reason of the Ready condition", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(rules::ENGINE_CONTAINER_PRESENT).message(rules::ENGINE_CONTAINER_PRESENT_MSG).field_path(".spec.template.spec.containers"),
    validation = Rule::new(rules::NO_ENGINE_PRESTOP).message(rules::NO_ENGINE_PRESTOP_MSG).field_path(".spec.template.spec.containers"),
    validation = Rule::new(rules::NO_TEMPLATE_GRACE_PERIOD).message(rules::NO_TEMPLATE_GRACE_PERIOD_MSG).field_path(".spec.template.spec.terminationGracePeriodSeconds"),
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceDeploymentSpec {
    /// Number of pods. Also set by `kubectl scale` and a HorizontalPodAutoscaler
    /// through the scale subresource.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = limits::REPLICAS.min, max = limits::REPLICAS.max))]
    pub replicas: i32,

    /// Pod template of the inference server, as in a Deployment. quiesce adds
    /// its sidecar, a shared volume, probes, the engine's preStop hook and the
    /// grace period; every other field is kept as written. It must contain the
    /// container named by spec.engine.containerName (at most 16 containers).
    #[schemars(schema_with = "schema::bounded_pod_template")]
    pub template: PodTemplateSpec,

    /// Which container is the inference engine and how quiesce talks to it.
    #[serde(default)]
    pub engine: EngineSpec,

    /// How pods drain when they are deleted (rollout, scale-down, node drain).
    /// The pods' terminationGracePeriodSeconds is the sum of the four
    /// durations and must not exceed 3600 seconds.
    #[serde(default)]
    pub drain: DrainSpec,

    /// How a changed template is rolled out.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// The PodDisruptionBudget that limits voluntary evictions (node drains).
    #[serde(default)]
    pub disruption_budget: DisruptionBudgetSpec,

    /// The injected quiesce sidecar.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// Which pods go first when the replica count goes down (kubectl scale,
    /// a HorizontalPodAutoscaler, KEDA, an edit of spec.replicas).
    #[serde(default)]
    pub scale_in: ScaleInSpec,
}

fn default_replicas() -> i32 {
    1
}

/// How the sidecar learns the engine's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineAdapter {
    /// The engine speaks the quiesce drain protocol on QUIESCE_SOCKET (the
    /// quiesce engine SDK or a plugin).
    #[default]
    Protocol,
    /// A stock vLLM image: health from /health, in-flight work from
    /// vllm:num_requests_running, vllm:num_requests_waiting and /load;
    /// quiesce adds --enable-server-load-tracking and sets
    /// --shutdown-timeout to the abort grace (vLLM 0.18 or newer).
    Vllm,
    /// A stock SGLang image: health from /health (quiesce sets
    /// SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=false so that it generates
    /// nothing), in-flight work from /v1/loads and, for the grammar queue,
    /// its metrics: pass --enable-metrics.
    Sglang,
    /// A stock trtllm-serve image: health from /health, in-flight work from
    /// trtllm_num_requests_running and trtllm_num_requests_waiting on
    /// /prometheus/metrics, which it serves only with return_perf_metrics
    /// and enable_iter_perf_stats in its --extra_llm_api_options.
    Trtllm,
    /// Any HTTP server: readiness from healthPath only.
    Http,
}

impl EngineAdapter {
    /// The adapter's name as written in the resource.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Trtllm => "trtllm",
            Self::Http => "http",
        }
    }
}

impl std::fmt::Display for EngineAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine container and how quiesce talks to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(rules::HTTP_NEEDS_HEALTH_PATH).message(rules::HTTP_NEEDS_HEALTH_PATH_MSG))]
pub struct EngineSpec {
    /// Name of the container in spec.template that runs the inference
    /// server. It gets the preStop hook, QUIESCE_SOCKET and the probes.
    #[serde(default = "default_container_name")]
    #[schemars(
        length(min = 1, max = limits::MAX_CONTAINER_NAME_LEN),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub container_name: String,

    /// How the sidecar follows the engine: protocol (the engine speaks the
    /// quiesce protocol), vllm, sglang, trtllm (stock images, observed
    /// through their health, metrics and load endpoints) or http (health
    /// endpoint only).
    #[serde(default)]
    pub adapter: EngineAdapter,

    /// Port the engine serves inference on (the Service targets it).
    #[serde(default = "default_engine_port")]
    #[schemars(range(min = limits::ENGINE_PORT.min, max = limits::ENGINE_PORT.max))]
    pub port: i32,

    /// HTTP path of the engine's health endpoint, polled by the vllm,
    /// sglang, trtllm and http adapters. Defaults to /health for vllm,
    /// sglang and trtllm; required for http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_HTTP_PATH_LEN), regex(pattern = "^/"))]
    pub health_path: Option<String>,

    /// HTTP path of the engine's Prometheus metrics, read by the vllm,
    /// sglang and trtllm adapters to count in-flight requests. Defaults to
    /// /metrics, and to /prometheus/metrics for trtllm (never its JSON
    /// /metrics, which a read empties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_HTTP_PATH_LEN), regex(pattern = "^/"))]
    pub metrics_path: Option<String>,

    /// How long the engine may take to start (load weights, compile, warm
    /// up) before the kubelet restarts it. Model loading takes minutes.
    #[serde(default = "default_startup_timeout")]
    #[schemars(range(min = limits::STARTUP_TIMEOUT.min, max = limits::STARTUP_TIMEOUT.max))]
    pub startup_timeout_seconds: i32,
}

fn default_container_name() -> String {
    "engine".to_owned()
}

fn default_engine_port() -> i32 {
    8000
}

fn default_startup_timeout() -> i32 {
    1800
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            container_name: default_container_name(),
            adapter: EngineAdapter::default(),
            port: default_engine_port(),
            health_path: None,
            metrics_path: None,
            startup_timeout_seconds: default_startup_timeout(),
        }
    }
}

/// The drain a pod goes through when it is deleted:
/// propagation, then drain, then (only if work is left) abort, then exit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(rules::GRACE_PERIOD_BOUNDED).message(rules::GRACE_PERIOD_BOUNDED_MSG))]
pub struct DrainSpec {
    /// Seconds in-flight requests (and KV transfers) get to finish once the
    /// pod stops admitting new ones. What is left when it expires is aborted
    /// with explicit abort responses. An idle pod does not wait it out. Size it
    /// to the longest request: max output tokens x time per token + queueing.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = limits::DRAIN_TIMEOUT.min, max = limits::DRAIN_TIMEOUT.max))]
    pub timeout_seconds: i32,

    /// Seconds the pod keeps admitting requests after it turned unready, while
    /// endpoint removal reaches every kube-proxy and load balancer.
    #[serde(default = "default_propagation")]
    #[schemars(range(min = limits::PROPAGATION.min, max = limits::PROPAGATION.max))]
    pub propagation_seconds: i32,

    /// Seconds the engine gets to deliver abort responses to clients after the
    /// timeout, before it must exit.
    #[serde(default = "default_abort_grace")]
    #[schemars(range(min = limits::ABORT_GRACE.min, max = limits::ABORT_GRACE.max))]
    pub abort_grace_seconds: i32,

    /// Seconds the engine gets after SIGTERM to tear down (free GPU memory,
    /// stop workers) before the kubelet kills it.
    #[serde(default = "default_exit_margin")]
    #[schemars(range(min = limits::EXIT_MARGIN.min, max = limits::EXIT_MARGIN.max))]
    pub exit_margin_seconds: i32,
}

fn default_timeout() -> i32 {
    120
}
fn default_propagation() -> i32 {
    5
}
fn default_abort_grace() -> i32 {
    5
}
fn default_exit_margin() -> i32 {
    10
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout_seconds: default_timeout(),
            propagation_seconds: default_propagation(),
            abort_grace_seconds: default_abort_grace(),
            exit_margin_seconds: default_exit_margin(),
        }
    }
}

impl DrainSpec {
    /// The pods' `terminationGracePeriodSeconds`: the kubelet must not kill
    /// the engine before propagation, drain, abort and teardown have all run.
    pub fn termination_grace_period_seconds(&self) -> i64 {
        [
            self.propagation_seconds,
            self.timeout_seconds,
            self.abort_grace_seconds,
            self.exit_margin_seconds,
        ]
        .into_iter()
        .map(i64::from)
        .sum()
    }
}

/// Rolling update parameters of the generated Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(rules::ROLLOUT_CAN_PROGRESS).message(rules::ROLLOUT_CAN_PROGRESS_MSG))]
pub struct RolloutStrategy {
    /// Pods created above spec.replicas during a rollout (a number or a
    /// percentage). Needs spare GPU capacity for one more pod.
    #[serde(default = "default_max_surge")]
    #[schemars(schema_with = "schema::int_or_percent")]
    pub max_surge: IntOrString,

    /// Pods that may be unavailable during a rollout (a number or a
    /// percentage). 0 keeps serving capacity constant.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "schema::int_or_percent")]
    pub max_unavailable: IntOrString,
}

fn default_max_surge() -> IntOrString {
    IntOrString::Int(1)
}
fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(0)
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// Type of the generated Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through the cloud provider's load balancer.
    LoadBalancer,
}

/// The Service that routes to ready pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Whether quiesce creates a Service named after the resource.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Service type: ClusterIP, NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service exposes; traffic goes to spec.engine.port. Defaults to
    /// spec.engine.port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = limits::SERVICE_PORT.min, max = limits::SERVICE_PORT.max))]
    pub port: Option<i32>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            type_: ServiceType::default(),
            port: None,
        }
    }
}

/// Which pods go first when the replica count goes down.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleInSpec {
    /// IdleFirst: before it lowers the Deployment's replicas, the operator
    /// reads the load of each Ready pod from its sidecar and sets
    /// controller.kubernetes.io/pod-deletion-cost so that the idlest pods
    /// are removed first; a pod whose load cannot be read counts as busy.
    /// Default: the ReplicaSet controller picks, knowing nothing of the load.
    #[serde(default)]
    pub policy: ScaleInPolicy,
}

/// How the pods to remove at a scale-in are picked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScaleInPolicy {
    /// The idlest pods go first, by their sidecars' load reports.
    #[default]
    IdleFirst,
    /// The ReplicaSet controller's own choice.
    Default,
}

impl ScaleInPolicy {
    /// The policy's name as written in the resource, and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleFirst => "IdleFirst",
            Self::Default => "Default",
        }
    }
}

/// The PodDisruptionBudget that bounds voluntary evictions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudgetSpec {
    /// Whether quiesce creates a PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Pods that node drains may evict at once (a number or a percentage).
    #[serde(default = "default_budget_max_unavailable")]
    #[schemars(schema_with = "schema::int_or_percent")]
    pub max_unavailable: IntOrString,
}

fn default_budget_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

impl Default for DisruptionBudgetSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: default_budget_max_unavailable(),
        }
    }
}

/// The injected quiesce sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image. Defaults to the image the operator was started with
    /// (its --sidecar-image flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_IMAGE_LEN))]
    pub image: Option<String>,

    /// Compute resources of the sidecar. Defaults to requests of 10m CPU and
    /// 32Mi memory and a 64Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Port of the sidecar's /live, /ready and /metrics. Defaults to 9090;
    /// change it only if the engine already uses that port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = limits::SIDECAR_PORT.min, max = limits::SIDECAR_PORT.max))]
    pub port: Option<i32>,
}

fn default_true() -> bool {
    true
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceDeploymentStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pods that exist, in any state.
    #[serde(default)]
    pub replicas: i32,

    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Pods running the current template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// Pods ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,

    /// Pods deleted and still draining: finishing their in-flight work
    /// before they exit.
    #[serde(default)]
    pub draining_replicas: i32,

    /// Label selector of the pods, in string form (for the scale subresource
    /// and HorizontalPodAutoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// terminationGracePeriodSeconds computed from spec.drain and set on the
    /// pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,

    /// Ready, Progressing and Degraded, one of each at most.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::condition_list")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules;

    fn spec_from_yaml(yaml: &str) -> InferenceDeploymentSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const MINIMAL: &str =
        "template:\n  spec:\n    containers:\n    - name: engine\n      image: e\n";

    #[test]
    fn omitted_fields_take_their_defaults() {
        let spec = spec_from_yaml(MINIMAL);
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.engine, EngineSpec::default());
        assert_eq!(spec.engine.container_name, "engine");
        assert_eq!(spec.engine.adapter, EngineAdapter::Protocol);
        assert_eq!(spec.engine.port, 8000);
        assert_eq!(spec.drain, DrainSpec::default());
        assert_eq!(
            (spec.drain.propagation_seconds, spec.drain.timeout_seconds),
            (5, 120)
        );
        assert_eq!(
            (
                spec.drain.abort_grace_seconds,
                spec.drain.exit_margin_seconds
            ),
            (5, 10)
        );
        assert_eq!(spec.strategy.max_surge, IntOrString::Int(1));
        assert_eq!(spec.strategy.max_unavailable, IntOrString::Int(0));
        assert!(spec.service.enabled);
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert!(spec.disruption_budget.enabled);
        assert_eq!(spec.sidecar, SidecarSpec::default());
    }

    #[test]
    fn a_partial_drain_keeps_the_other_defaults() {
        let spec = spec_from_yaml(&format!("{MINIMAL}drain:\n  timeoutSeconds: 300\n"));
        assert_eq!(spec.drain.timeout_seconds, 300);
        assert_eq!(spec.drain.propagation_seconds, 5);
        assert_eq!(spec.drain.abort_grace_seconds, 5);
        assert_eq!(spec.drain.exit_margin_seconds, 10);
    }

    #[test]
    fn grace_period_is_the_sum_of_the_drain_phases() {
        assert_eq!(DrainSpec::default().termination_grace_period_seconds(), 140);
        let drain = DrainSpec {
            propagation_seconds: 7,
            timeout_seconds: 600,
            abort_grace_seconds: 3,
            exit_margin_seconds: 30,
        };
        assert_eq!(drain.termination_grace_period_seconds(), 640);
        let zero = DrainSpec {
            propagation_seconds: 0,
            timeout_seconds: 0,
            abort_grace_seconds: 0,
            exit_margin_seconds: 0,
        };
        assert_eq!(zero.termination_grace_period_seconds(), 0);
        // Each phase counts once.
        for bump in 0..4 {
            let mut d = zero.clone();
            *[
                &mut d.propagation_seconds,
                &mut d.timeout_seconds,
                &mut d.abort_grace_seconds,
                &mut d.exit_margin_seconds,
            ][bump] = 11;
            assert_eq!(d.termination_grace_period_seconds(), 11);
        }
    }

    #[test]
    fn the_cel_grace_rule_uses_the_documented_maximum() {
        let max = crate::limits::MAX_GRACE_PERIOD_SECONDS.to_string();
        assert!(rules::GRACE_PERIOD_BOUNDED.ends_with(&format!("<= {max}")));
        assert!(rules::GRACE_PERIOD_BOUNDED_MSG.contains(&max));
        // The description of spec.drain, which kubectl explain shows.
        let crd = serde_json::to_value(crate::crd::definition()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let description = spec["properties"]["drain"]["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("must not exceed {max} seconds")),
            "{description}"
        );
    }
}
