//! Pure builders: from an `InferenceDeployment` to the objects the
//! controller applies (a Deployment, a Service, a PodDisruptionBudget). No
//! I/O and no API client: the same functions serve the controller and
//! `quiesce-operator render`, and are tested from YAML fixtures.
//!
//! docs/pod.md explains the rendered pod field by field.

pub mod budget;
mod config;
pub mod conflict;
pub mod deployment;
mod engine;
mod error;
#[cfg(test)]
mod fixtures;
pub mod labels;
pub mod owner;
pub mod pod;
pub mod service;
mod sidecar;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

pub use self::budget::render_pod_disruption_budget;
pub use self::config::{DEFAULT_SIDECAR_IMAGE, RenderConfig};
pub use self::conflict::Conflict;
pub use self::deployment::render_deployment;
pub use self::error::RenderError;
use self::labels::MAX_LABEL_VALUE_LEN;
pub use self::owner::Owner;
pub use self::pod::render_pod_template;
pub use self::service::render_service;
use crate::rules::{self, Violation};
use crate::{InferenceDeployment, InferenceDeploymentSpec};

/// The objects the controller applies for one InferenceDeployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Runs the drain-aware pods.
    pub deployment: Deployment,
    /// Routes to the ready pods; `None` when `spec.service.enabled` is false.
    pub service: Option<Service>,
    /// Bounds evictions; `None` when `spec.disruptionBudget.enabled` is false.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// User fields kept instead of quiesce's, to report in the status.
    pub conflicts: Vec<Conflict>,
}

impl Rendered {
    /// The objects as a multi-document YAML stream, in the order they are
    /// applied: Deployment, Service, PodDisruptionBudget.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        let mut documents = vec![serde_saphyr::to_string(&self.deployment)?];
        if let Some(service) = &self.service {
            documents.push(serde_saphyr::to_string(service)?);
        }
        if let Some(budget) = &self.pod_disruption_budget {
            documents.push(serde_saphyr::to_string(budget)?);
        }
        Ok(documents.join("---\n"))
    }
}

/// Renders every object of `resource`. Validates it first, with the same
/// rules as the API server.
pub fn render(
    resource: &InferenceDeployment,
    config: &RenderConfig,
) -> Result<Rendered, RenderError> {
    let owner = Owner::of(resource);
    let (spec, mut invalid) = match rules::validate(&resource.spec) {
        Ok(spec) => (Some(spec), Vec::new()),
        Err(violations) => (None, violations),
    };
    if owner.is_none() {
        invalid.push(Violation {
            field: "metadata.name".to_owned(),
            message: "is required".to_owned(),
        });
    }
    let (Some(owner), Some(spec)) = (owner, spec) else {
        return Err(RenderError::Invalid(invalid));
    };
    let unusable_name = check_name(&owner.name, &spec);
    if !unusable_name.is_empty() {
        return Err(RenderError::Unrenderable(unusable_name));
    }

    let (template, conflicts) = render_pod_template(&spec, &owner.name, config)?;
    Ok(Rendered {
        deployment: render_deployment(&spec, &owner, template),
        service: render_service(&spec, &owner),
        pod_disruption_budget: render_pod_disruption_budget(&spec, &owner),
        conflicts,
    })
}

/// The API server accepts any DNS subdomain as a name, but the name is also
/// a label value on every object and the Service's name.
fn check_name(name: &str, spec: &InferenceDeploymentSpec) -> Vec<Violation> {
    let mut problems = Vec::new();
    if name.len() > MAX_LABEL_VALUE_LEN {
        problems.push(Violation {
            field: "metadata.name".to_owned(),
            message: format!(
                "is {} characters long; quiesce puts it in labels, which allow at most \
                 {MAX_LABEL_VALUE_LEN}: choose a shorter name",
                name.len()
            ),
        });
    }
    if spec.service.enabled && !is_dns_1035_label(name) {
        problems.push(Violation {
            field: "metadata.name".to_owned(),
            message: "is also the Service's name, which must start with a lowercase letter and \
                      contain only lowercase letters, digits and '-': rename the resource or set \
                      spec.service.enabled to false"
                .to_owned(),
        });
    }
    problems
}

/// The characters of an RFC 1035 label; the length is checked on its own.
fn is_dns_1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.last().is_some_and(|b| *b != b'-')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;
    use crate::render::fixtures::*;

    const DEMO: &str = "
apiVersion: quiesce.dev/v1alpha1
kind: InferenceDeployment
metadata:
  name: demo
  namespace: ml
spec:
  template:
    spec:
      containers:
      - name: engine
        image: engine:1
";

    fn render_default(yaml: &str) -> Result<Rendered, RenderError> {
        render(&resource(yaml), &RenderConfig::default())
    }

    #[test]
    fn every_object_is_named_after_the_resource() {
        let rendered = render_default(DEMO).unwrap();
        let service = rendered.service.unwrap();
        let budget = rendered.pod_disruption_budget.unwrap();
        for metadata in [
            &rendered.deployment.metadata,
            &service.metadata,
            &budget.metadata,
        ] {
            assert_eq!(metadata.name.as_deref(), Some("demo"));
            assert_eq!(metadata.namespace.as_deref(), Some("ml"));
            assert_eq!(metadata.owner_references, None, "no uid, no owner");
        }
        assert!(rendered.conflicts.is_empty());
    }

    #[test]
    fn objects_of_a_stored_resource_are_owned_by_it() {
        let stored = DEMO.replace("  namespace: ml\n", "  namespace: ml\n  uid: 1234-abcd\n");
        let rendered = render_default(&stored).unwrap();
        let owners = rendered.deployment.metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(owner.api_version, "quiesce.dev/v1alpha1");
        assert_eq!(owner.kind, "InferenceDeployment");
        assert_eq!(
            (owner.name.as_str(), owner.uid.as_str()),
            ("demo", "1234-abcd")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let service_owners = rendered.service.unwrap().metadata.owner_references;
        assert_eq!(service_owners, Some(owners.clone()));
        let budget_owners = rendered
            .pod_disruption_budget
            .unwrap()
            .metadata
            .owner_references;
        assert_eq!(budget_owners, Some(owners));
    }

    #[test]
    fn disabled_objects_are_not_rendered() {
        let yaml = format!(
            "{DEMO}  service: {{enabled: false}}\n  disruptionBudget: {{enabled: false}}\n"
        );
        let rendered = render_default(&yaml).unwrap();
        assert_eq!(rendered.service, None);
        assert_eq!(rendered.pod_disruption_budget, None);
        assert_eq!(rendered.to_yaml().unwrap().matches("\n---\n").count(), 0);
    }

    #[test]
    fn an_invalid_resource_is_refused_with_every_violation() {
        let yaml = format!("{DEMO}  replicas: -1\n  drain: {{timeoutSeconds: 3600}}\n");
        let error = render_default(&yaml).unwrap_err();
        assert_eq!(error.reason(), Reason::InvalidSpec);
        assert_eq!(error_fields(&error), ["spec.replicas", "spec.drain"]);
        let text = error.to_string();
        assert!(
            text.starts_with("the InferenceDeployment is invalid:\n  - spec.replicas: "),
            "{text}"
        );
    }

    #[test]
    fn a_resource_without_a_name_is_invalid() {
        let error = render_default(&DEMO.replace("  name: demo\n", "")).unwrap_err();
        assert!(matches!(error, RenderError::Invalid(_)));
        assert_eq!(error_fields(&error), ["metadata.name"]);
    }

    #[test]
    fn names_that_cannot_be_labels_or_services_are_unrenderable() {
        let long = "a".repeat(64);
        let error =
            render_default(&DEMO.replace("name: demo", &format!("name: {long}"))).unwrap_err();
        assert_eq!(error.reason(), Reason::Unrenderable);
        assert_eq!(
            error_fields(&error),
            ["metadata.name"],
            "one problem, one message"
        );

        let dotted = DEMO.replace("name: demo", "name: llama.v3");
        let error = render_default(&dotted).unwrap_err();
        assert!(
            error.to_string().contains("spec.service.enabled"),
            "{error}"
        );
        let without_service = format!("{dotted}  service: {{enabled: false}}\n");
        assert!(render_default(&without_service).is_ok());
    }

    #[test]
    fn the_yaml_stream_is_deployment_service_budget() {
        let yaml = render_default(DEMO).unwrap().to_yaml().unwrap();
        let kinds: Vec<&str> = yaml
            .lines()
            .filter_map(|line| line.strip_prefix("kind: "))
            .collect();
        assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
        assert_eq!(yaml.matches("\n---\n").count(), 2);
        assert!(yaml.starts_with("apiVersion: apps/v1\n"));
    }
}
