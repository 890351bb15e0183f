//! The identity every rendered object inherits from its InferenceDeployment.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use super::labels::{Component, object_labels};
use crate::InferenceDeployment;

/// Name, namespace and owner reference of the InferenceDeployment whose
/// objects are rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// The resource's name, which every rendered object also takes.
    pub name: String,
    /// The resource's namespace; `None` for a file without one (kubectl then
    /// applies to its current namespace).
    pub namespace: Option<String>,
    /// Controller reference to the resource, present once it has a uid (it
    /// was read from the API server), absent when rendering a file.
    pub reference: Option<OwnerReference>,
}

impl Owner {
    /// The owner of `resource`'s objects, or `None` when it has no name.
    pub fn of(resource: &InferenceDeployment) -> Option<Self> {
        Some(Self {
            name: resource.metadata.name.clone()?,
            namespace: resource.metadata.namespace.clone(),
            reference: controller_reference(resource),
        })
    }

    /// Metadata of a rendered object: same name and namespace as the
    /// resource, our labels, and the controller reference (garbage
    /// collection deletes the object with the resource).
    pub fn metadata(&self, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            labels: Some(object_labels(&self.name, component)),
            owner_references: self.reference.clone().map(|r| vec![r]),
            ..ObjectMeta::default()
        }
    }
}

/// `controller: true` so that only quiesce adopts the objects;
/// `blockOwnerDeletion: true` so that foreground deletion of the resource
/// waits for its pods, which are draining.
fn controller_reference(resource: &InferenceDeployment) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..resource.controller_owner_ref(&())?
    })
}
