//! Minimal YAML fixtures for the builders' unit tests.

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

use super::conflict::Conflict;
use quiesce_protocol::contract::SIDECAR_CONTAINER_NAME;

use super::config::RenderConfig;
use super::error::RenderError;
use super::pod::render_pod_template;
use crate::rules::{self, Validated};
use crate::{InferenceDeployment, InferenceDeploymentSpec};

/// The smallest valid spec: one engine container.
pub const MINIMAL: &str = "
template:
  spec:
    containers:
    - name: engine
      image: engine:1
";

/// The owner `demo`, in `namespace`, without a uid (as from a file).
pub fn owner_in(namespace: Option<&str>) -> super::Owner {
    super::Owner {
        name: "demo".to_owned(),
        namespace: namespace.map(str::to_owned),
        reference: None,
    }
}

pub fn spec(yaml: &str) -> InferenceDeploymentSpec {
    serde_saphyr::from_str(yaml).expect("the fixture is a spec")
}

pub fn resource(yaml: &str) -> InferenceDeployment {
    serde_saphyr::from_str(yaml).expect("the fixture is an InferenceDeployment")
}

/// `spec`, validated: it must pass the rules.
pub fn validated(spec: &InferenceDeploymentSpec) -> Validated<'_> {
    rules::validate(spec).unwrap_or_else(|v| panic!("the fixture breaks the rules: {v:?}"))
}

pub fn try_render_pod(yaml: &str) -> Result<(PodTemplateSpec, Vec<Conflict>), RenderError> {
    render_pod_template(&validated(&spec(yaml)), "demo", &RenderConfig::default())
}

pub fn render_pod(yaml: &str) -> (PodTemplateSpec, Vec<Conflict>) {
    try_render_pod(yaml).expect("the fixture renders")
}

pub fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().expect("a pod spec")
}

pub fn container<'a>(template: &'a PodTemplateSpec, name: &str) -> &'a Container {
    pod_spec(template)
        .containers
        .iter()
        .find(|c| c.name == name)
        .expect("the container exists")
}

pub fn sidecar(template: &PodTemplateSpec) -> &Container {
    let init = pod_spec(template)
        .init_containers
        .as_deref()
        .unwrap_or_default();
    init.iter()
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)
        .expect("the sidecar is injected")
}

pub fn reasons(conflicts: &[Conflict]) -> Vec<&'static str> {
    conflicts.iter().map(|c| c.reason).collect()
}

/// The violations' fields of a failed render.
pub fn error_fields(error: &RenderError) -> Vec<&str> {
    error
        .violations()
        .iter()
        .map(|v| v.field.as_str())
        .collect()
}
