//! An InferenceDeployment as the controller keeps it between reconciles.
//!
//! kube's controller keeps every resource it watches, and hands one to each
//! reconcile. [`Stored`] parses only the metadata, which the controller's
//! queue and predicates read, and keeps the spec and status (a whole pod
//! template) as JSON, parsed again when a reconcile begins. With 10,000
//! resources on a real API server this lowered the operator's peak from
//! 207 MiB to 162 MiB (docs/operator.md, "At scale").

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize};

use quiesce_api::{InferenceDeployment, InferenceDeploymentSpec, InferenceDeploymentStatus};

/// `kubectl apply`'s copy of the whole resource, which nothing here reads.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// An InferenceDeployment: its metadata, and the rest as JSON.
#[derive(Clone, Debug)]
pub struct Stored {
    metadata: ObjectMeta,
    body: Arc<[u8]>,
}

/// Everything of an InferenceDeployment but its metadata.
#[derive(Serialize, Deserialize)]
struct Body {
    spec: InferenceDeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<InferenceDeploymentStatus>,
}

impl Stored {
    /// Keeps `resource`, but for the copy `kubectl apply` annotates it with.
    pub fn new(mut resource: InferenceDeployment) -> Self {
        if let Some(annotations) = &mut resource.metadata.annotations {
            annotations.remove(LAST_APPLIED);
        }
        let body = Body {
            spec: resource.spec,
            status: resource.status,
        };
        // Serializing a value that was just deserialized cannot fail.
        let body = serde_json::to_vec(&body).expect("an InferenceDeployment serializes");
        Self {
            metadata: resource.metadata,
            body: body.into(),
        }
    }

    /// The resource, whole.
    pub fn resource(&self) -> InferenceDeployment {
        // It was serialized from a Body.
        let body: Body = serde_json::from_slice(&self.body).expect("a kept resource deserializes");
        InferenceDeployment {
            metadata: self.metadata.clone(),
            spec: body.spec,
            status: body.status,
        }
    }
}

/// What the controller reads from the watch: an InferenceDeployment.
impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        InferenceDeployment::deserialize(deserializer).map(Self::new)
    }
}

/// The InferenceDeployment's kind, group and version: owner references and
/// object references to a [`Stored`] are to the resource.
impl Resource for Stored {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        InferenceDeployment::kind(&())
    }

    fn group((): &()) -> Cow<'_, str> {
        InferenceDeployment::group(&())
    }

    fn version((): &()) -> Cow<'_, str> {
        InferenceDeployment::version(&())
    }

    fn plural((): &()) -> Cow<'_, str> {
        InferenceDeployment::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use kube::runtime::reflector::ObjectRef;
    use serde_json::json;

    use super::*;

    fn resource() -> InferenceDeployment {
        serde_json::from_value(json!({
            "apiVersion": "quiesce.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "metadata": {
                "name": "chat",
                "namespace": "serving",
                "generation": 3,
                "labels": {"team": "a"},
            },
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [{"name": "engine", "image": "e"}]}},
            },
            "status": {"observedGeneration": 2, "replicas": 2},
        }))
        .unwrap()
    }

    fn value(resource: &InferenceDeployment) -> serde_json::Value {
        serde_json::to_value(resource).unwrap()
    }

    #[test]
    fn gives_back_the_resource_it_kept() {
        let kept = Stored::new(resource());
        assert_eq!(value(&kept.resource()), value(&resource()));
        assert_eq!(kept.name_any(), "chat");
        assert_eq!(kept.meta().generation, Some(3));
        assert_eq!(kept.labels()["team"], "a");
    }

    #[test]
    fn drops_the_copy_kubectl_apply_keeps() {
        let mut applied = resource();
        applied.metadata.annotations = Some(
            [(LAST_APPLIED, "{\"spec\":{}}"), ("team", "a")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        );
        let kept = Stored::new(applied).resource();
        assert_eq!(kept.annotations().keys().collect::<Vec<_>>(), ["team"]);
        assert_eq!(kept.spec, resource().spec);
    }

    #[test]
    fn reads_what_the_api_server_sends() {
        let json = serde_json::to_vec(&resource()).unwrap();
        let kept: Stored = serde_json::from_slice(&json).unwrap();
        assert_eq!(value(&kept.resource()), value(&resource()));
    }

    #[test]
    fn is_referred_to_as_the_resource() {
        let kept = Stored::new(resource());
        assert_eq!(
            ObjectRef::from_obj(&kept).erase(),
            ObjectRef::from_obj(&resource()).erase()
        );
        assert_eq!(
            Stored::url_path(&(), Some("serving")),
            InferenceDeployment::url_path(&(), Some("serving"))
        );
    }
}
