//! What a reconcile writes: the rendered objects compared with what the API
//! server has. Pure, so the decisions (apply, keep, delete, refuse) are
//! tested without a cluster.
//!
//! An object is in sync, and nothing is written, when we control it, its
//! [`APPLIED_HASH_ANNOTATION`] matches the hash of the object as rendered
//! now, and the stored object still [`covers`] the rendered one: every field
//! we set has our value there. The hash sees what we stopped setting (which
//! an apply removes); the cover check sees what someone else changed since
//! (`kubectl edit` removing the preStop hook or the sidecar), while the
//! defaults the API server fills in and the fields other managers add are
//! no difference.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use quiesce_api::render::Rendered;
use quiesce_api::render::pod::DRAIN_HASH_ANNOTATION;

/// Annotation on each applied object: 16 hex digits of the SHA-256 of the
/// object as rendered, before this annotation was added.
pub const APPLIED_HASH_ANNOTATION: &str = "quiesce.dev/applied-hash";

/// The objects of an InferenceDeployment as the API server has them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Existing {
    /// The Deployment named after the resource, if any.
    pub deployment: Option<Deployment>,
    /// The Service named after the resource, if any.
    pub service: Option<Service>,
    /// The PodDisruptionBudget named after the resource, if any.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
}

/// What to do with one object.
#[derive(Clone, Debug, PartialEq)]
pub enum Step<K> {
    /// Server-side apply this object (with the applied-hash annotation).
    Apply(Box<K>),
    /// Delete the object, which we control and which the spec disabled,
    /// provided it still has this uid.
    Delete {
        /// The uid of the object to delete, as a precondition.
        uid: Option<String>,
    },
    /// Nothing to write: in sync, or absent and not wanted.
    Keep,
}

impl<K> Step<K> {
    /// Whether the step writes.
    pub fn writes(&self) -> bool {
        !matches!(self, Self::Keep)
    }
}

/// A change of the drain settings on the Deployment's pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainChange {
    /// The grace period of the current pods, if it could be read.
    pub old_grace_period_seconds: Option<i64>,
    /// The grace period of the new pods.
    pub new_grace_period_seconds: Option<i64>,
}

/// Everything a reconcile writes, object by object.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The Deployment: applied or kept (quiesce always wants one).
    pub deployment: Step<Deployment>,
    /// The Service: applied, kept, or deleted when disabled.
    pub service: Step<Service>,
    /// The PodDisruptionBudget: applied, kept, or deleted when disabled.
    pub pod_disruption_budget: Step<PodDisruptionBudget>,
    /// Set when the applied Deployment changes the drain settings of the pods.
    pub drain_change: Option<DrainChange>,
}

impl Plan {
    /// Whether anything is written.
    pub fn writes(&self) -> bool {
        self.deployment.writes() || self.service.writes() || self.pod_disruption_budget.writes()
    }
}

/// An object with the resource's name that another controller owns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} {name} already exists and is controlled by {owner_kind} {owner_name}: quiesce does \
     not take over another controller's objects; delete that {kind} or give the \
     InferenceDeployment another name"
)]
pub struct NotOwned {
    /// Kind of the object: `Deployment`, `Service`, `PodDisruptionBudget`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Kind of its controller.
    pub owner_kind: String,
    /// Name of its controller.
    pub owner_name: String,
}

/// Compares the rendered objects of the resource whose uid is `owner_uid`
/// with the existing ones.
///
/// Fails when an object that would be applied is controlled by someone
/// else. An object without a controller is adopted. A disabled Service or
/// PodDisruptionBudget is deleted only if we control it.
pub fn plan(
    rendered: Rendered,
    owner_uid: Option<&str>,
    existing: &Existing,
) -> Result<Plan, NotOwned> {
    let deployment = step(
        Some(rendered.deployment),
        existing.deployment.as_ref(),
        owner_uid,
    )?;
    let drain_change = match &deployment {
        Step::Apply(desired) => drain_change(existing.deployment.as_ref(), desired),
        _ => None,
    };
    Ok(Plan {
        deployment,
        service: step(rendered.service, existing.service.as_ref(), owner_uid)?,
        pod_disruption_budget: step(
            rendered.pod_disruption_budget,
            existing.pod_disruption_budget.as_ref(),
            owner_uid,
        )?,
        drain_change,
    })
}

fn step<K>(
    desired: Option<K>,
    existing: Option<&K>,
    owner_uid: Option<&str>,
) -> Result<Step<K>, NotOwned>
where
    K: Resource + k8s_openapi::Resource + Serialize,
{
    let ours = match existing {
        None => false,
        Some(current) => match (controller_of(current.meta()), &desired) {
            (None, _) => false,
            (Some(owner), _) if Some(owner.uid.as_str()) == owner_uid => true,
            // Not ours and not wanted: leave it alone.
            (Some(_), None) => return Ok(Step::Keep),
            (Some(owner), Some(_)) => {
                return Err(NotOwned {
                    kind: K::KIND,
                    name: current.meta().name.clone().unwrap_or_default(),
                    owner_kind: owner.kind.clone(),
                    owner_name: owner.name.clone(),
                });
            }
        },
    };
    let Some(desired) = desired else {
        return Ok(match existing {
            Some(current) if ours => Step::Delete {
                uid: current.meta().uid.clone(),
            },
            _ => Step::Keep,
        });
    };
    let desired = with_applied_hash(desired);
    let in_sync = existing.is_some_and(|current| {
        ours && applied_hash(current.meta()).is_some()
            && applied_hash(current.meta()) == applied_hash(desired.meta())
            && covers(&json(current), &json(&desired))
    });
    Ok(if in_sync {
        Step::Keep
    } else {
        Step::Apply(Box::new(desired))
    })
}

/// Whether `stored` has every field of `desired` with the same value.
///
/// Extra fields in `stored` are no difference: the API server's defaults,
/// status, and whatever other field managers set (which our apply would
/// keep anyway). A field missing from `stored` is no difference when
/// `desired` has its zero value there (`false`, `0`, `""`, `[]`, `{}`): the
/// API server omits those. Lists are compared as sets: each element of
/// `desired` must be covered by some element of `stored`, so containers,
/// env vars and volumes match by content whatever their order.
pub fn covers(stored: &Value, desired: &Value) -> bool {
    match (stored, desired) {
        (Value::Object(stored), Value::Object(desired)) => {
            desired.iter().all(|(key, want)| match stored.get(key) {
                Some(have) => covers(have, want),
                None => is_zero(want),
            })
        }
        (Value::Array(stored), Value::Array(desired)) => desired
            .iter()
            .all(|want| stored.iter().any(|have| covers(have, want))),
        (stored, desired) => stored == desired,
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn json<K: Serialize>(object: &K) -> Value {
    // Serializing a k8s-openapi object cannot fail: it is plain data with
    // string keys.
    serde_json::to_value(object).unwrap_or_default()
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|owner| owner.controller == Some(true))
}

fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(APPLIED_HASH_ANNOTATION)
        .map(String::as_str)
}

/// `object` with [`APPLIED_HASH_ANNOTATION`] set to the hash of `object`.
pub fn with_applied_hash<K: Resource + Serialize>(mut object: K) -> K {
    // Serializing a k8s-openapi object cannot fail: it is plain data with
    // string keys.
    let bytes = serde_json::to_vec(&object).unwrap_or_default();
    let hash: String = Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash);
    object
}

fn drain_change(existing: Option<&Deployment>, desired: &Deployment) -> Option<DrainChange> {
    let template_annotation = |deployment: &Deployment| {
        deployment
            .spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(DRAIN_HASH_ANNOTATION)
            .cloned()
    };
    let grace_period = |deployment: &Deployment| {
        deployment
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .termination_grace_period_seconds
    };
    let existing = existing?;
    let old = template_annotation(existing)?;
    (Some(old) != template_annotation(desired)).then(|| DrainChange {
        old_grace_period_seconds: grace_period(existing),
        new_grace_period_seconds: grace_period(desired),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiesce_api::InferenceDeployment;
    use quiesce_api::render::{RenderConfig, render};

    fn resource(extra_spec: &str) -> InferenceDeployment {
        serde_saphyr::from_str(&format!(
            "
apiVersion: quiesce.dev/v1alpha1
kind: InferenceDeployment
metadata: {{name: demo, namespace: ml, uid: u1}}
spec:
  template:
    spec:
      containers: [{{name: engine, image: 'engine:1'}}]
{extra_spec}"
        ))
        .unwrap()
    }

    fn rendered(extra_spec: &str) -> Rendered {
        render(&resource(extra_spec), &RenderConfig::default()).unwrap()
    }

    /// What the API server stores after our apply: our object plus
    /// defaults and a uid.
    fn stored<K: Resource + Serialize + Clone>(step: &Step<K>) -> K {
        let Step::Apply(object) = step else {
            panic!("expected an apply")
        };
        let mut object = (**object).clone();
        object.meta_mut().uid = Some("child-uid".to_owned());
        object.meta_mut().resource_version = Some("42".to_owned());
        object
    }

    fn existing_after(plan: &Plan) -> Existing {
        Existing {
            deployment: Some(stored(&plan.deployment)),
            service: Some(stored(&plan.service)),
            pod_disruption_budget: Some(stored(&plan.pod_disruption_budget)),
        }
    }

    #[test]
    fn nothing_exists_so_everything_is_applied_with_a_hash() {
        let plan = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let Step::Apply(deployment) = &plan.deployment else {
            panic!("{plan:?}")
        };
        let hash = applied_hash(&deployment.metadata).unwrap();
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(matches!(plan.service, Step::Apply(_)));
        assert!(matches!(plan.pod_disruption_budget, Step::Apply(_)));
        assert_eq!(plan.drain_change, None, "a new Deployment changes no drain");
    }

    #[test]
    fn the_same_render_again_writes_nothing() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let second = plan(rendered(""), Some("u1"), &existing_after(&first)).unwrap();
        assert_eq!(second.deployment, Step::Keep);
        assert_eq!(second.service, Step::Keep);
        assert_eq!(second.pod_disruption_budget, Step::Keep);
        assert!(!second.writes());
    }

    #[test]
    fn api_server_defaults_do_not_count_as_changes() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut existing = existing_after(&first);
        let deployment = existing.deployment.as_mut().unwrap();
        let spec = deployment.spec.as_mut().unwrap();
        spec.revision_history_limit = Some(10);
        spec.min_ready_seconds = Some(0);
        let pod = spec.template.spec.as_mut().unwrap();
        pod.dns_policy = Some("ClusterFirst".to_owned());
        pod.containers[0].termination_message_path = Some("/dev/termination-log".to_owned());
        deployment.status = Some(Default::default());
        let second = plan(rendered(""), Some("u1"), &existing).unwrap();
        assert!(!second.writes(), "{second:?}");
    }

    #[test]
    fn a_new_replica_count_is_applied() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let scaled = plan(
            rendered("  replicas: 4\n"),
            Some("u1"),
            &existing_after(&first),
        )
        .unwrap();
        let Step::Apply(deployment) = &scaled.deployment else {
            panic!("{scaled:?}")
        };
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(4));
        assert_eq!(scaled.drain_change, None);
        assert_eq!(scaled.service, Step::Keep);
    }

    #[test]
    fn replicas_changed_behind_our_back_are_restored() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut existing = existing_after(&first);
        existing
            .deployment
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .replicas = Some(7);
        let again = plan(rendered(""), Some("u1"), &existing).unwrap();
        assert!(matches!(again.deployment, Step::Apply(_)));
    }

    fn pod_of(existing: &mut Existing) -> &mut k8s_openapi::api::core::v1::PodSpec {
        let deployment = existing.deployment.as_mut().unwrap();
        let spec = deployment.spec.as_mut().unwrap();
        spec.template.spec.as_mut().unwrap()
    }

    #[test]
    fn a_removed_pre_stop_hook_or_sidecar_is_restored() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut no_hook = existing_after(&first);
        pod_of(&mut no_hook).containers[0].lifecycle = None;
        let again = plan(rendered(""), Some("u1"), &no_hook).unwrap();
        assert!(matches!(again.deployment, Step::Apply(_)), "{again:?}");
        assert_eq!(
            again.drain_change, None,
            "the drain settings did not change"
        );

        let mut no_sidecar = existing_after(&first);
        pod_of(&mut no_sidecar).init_containers = None;
        let again = plan(rendered(""), Some("u1"), &no_sidecar).unwrap();
        assert!(matches!(again.deployment, Step::Apply(_)), "{again:?}");

        let mut other_grace = existing_after(&first);
        pod_of(&mut other_grace).termination_grace_period_seconds = Some(30);
        let again = plan(rendered(""), Some("u1"), &other_grace).unwrap();
        assert!(matches!(again.deployment, Step::Apply(_)), "{again:?}");
    }

    #[test]
    fn what_others_add_and_zero_values_the_server_omits_are_no_drift() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut existing = existing_after(&first);
        let pod = pod_of(&mut existing);
        // Another field manager's env var, and reordered volumes.
        pod.containers[0].env.get_or_insert_default().insert(
            0,
            k8s_openapi::api::core::v1::EnvVar {
                name: "EXTRA".to_owned(),
                value: Some("1".to_owned()),
                ..Default::default()
            },
        );
        pod.volumes.get_or_insert_default().reverse();
        let again = plan(rendered(""), Some("u1"), &existing).unwrap();
        assert!(!again.writes(), "{again:?}");

        let desired = serde_json::json!({"readOnly": false, "items": [], "port": 0, "name": "x"});
        assert!(covers(
            &serde_json::json!({"name": "x", "more": 1}),
            &desired
        ));
        assert!(!covers(&serde_json::json!({"name": "y"}), &desired));
        assert!(!covers(
            &serde_json::json!({"list": [{"name": "a"}]}),
            &serde_json::json!({"list": [{"name": "a"}, {"name": "b"}]})
        ));
    }

    #[test]
    fn a_drain_change_is_reported_with_both_grace_periods() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let longer = plan(
            rendered("  drain: {timeoutSeconds: 195}\n"),
            Some("u1"),
            &existing_after(&first),
        )
        .unwrap();
        assert!(matches!(longer.deployment, Step::Apply(_)));
        assert_eq!(
            longer.drain_change,
            Some(DrainChange {
                old_grace_period_seconds: Some(140),
                new_grace_period_seconds: Some(215),
            })
        );
    }

    #[test]
    fn disabled_objects_we_control_are_deleted_and_others_left_alone() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let disabled = "  service: {enabled: false}\n  disruptionBudget: {enabled: false}\n";
        let existing = existing_after(&first);
        let second = plan(rendered(disabled), Some("u1"), &existing).unwrap();
        assert_eq!(
            second.service,
            Step::Delete {
                uid: Some("child-uid".to_owned())
            }
        );
        assert!(matches!(second.pod_disruption_budget, Step::Delete { .. }));
        assert_eq!(second.deployment, Step::Keep);

        // Not ours (no controller, or another one): kept.
        let mut foreign = existing.clone();
        foreign.service.as_mut().unwrap().metadata.owner_references = None;
        let budget = foreign.pod_disruption_budget.as_mut().unwrap();
        budget.metadata.owner_references.as_mut().unwrap()[0].uid = "other".to_owned();
        let third = plan(rendered(disabled), Some("u1"), &foreign).unwrap();
        assert_eq!(third.service, Step::Keep);
        assert_eq!(third.pod_disruption_budget, Step::Keep);

        // Absent and disabled: nothing to do.
        let nothing = plan(rendered(disabled), Some("u1"), &Existing::default()).unwrap();
        assert_eq!(nothing.service, Step::Keep);
    }

    #[test]
    fn an_object_without_a_controller_is_adopted() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut existing = existing_after(&first);
        existing.service.as_mut().unwrap().metadata.owner_references = None;
        let second = plan(rendered(""), Some("u1"), &existing).unwrap();
        let Step::Apply(service) = &second.service else {
            panic!("{second:?}")
        };
        assert_eq!(
            controller_of(&service.metadata).map(|o| o.uid.as_str()),
            Some("u1")
        );
    }

    #[test]
    fn an_object_of_another_controller_is_refused() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut existing = existing_after(&first);
        let owners = existing
            .deployment
            .as_mut()
            .unwrap()
            .metadata
            .owner_references
            .as_mut()
            .unwrap();
        owners[0].uid = "helm".to_owned();
        owners[0].kind = "HelmRelease".to_owned();
        owners[0].name = "llm".to_owned();
        let error = plan(rendered(""), Some("u1"), &existing).unwrap_err();
        assert_eq!(error.kind, "Deployment");
        assert_eq!(
            error.to_string(),
            "Deployment demo already exists and is controlled by HelmRelease llm: quiesce does \
             not take over another controller's objects; delete that Deployment or give the \
             InferenceDeployment another name"
        );
    }

    #[test]
    fn an_object_without_our_hash_is_applied() {
        let first = plan(rendered(""), Some("u1"), &Existing::default()).unwrap();
        let mut existing = existing_after(&first);
        existing.service.as_mut().unwrap().metadata.annotations = None;
        let second = plan(rendered(""), Some("u1"), &existing).unwrap();
        assert!(matches!(second.service, Step::Apply(_)));
        assert_eq!(second.deployment, Step::Keep);
    }

    #[test]
    fn the_hash_is_deterministic_and_follows_the_object() {
        let hash = |extra: &str| {
            let deployment = with_applied_hash(rendered(extra).deployment);
            applied_hash(&deployment.metadata).map(str::to_owned)
        };
        assert_eq!(hash(""), hash(""));
        assert_ne!(hash(""), hash("  replicas: 2\n"));
        assert_ne!(hash(""), hash("  sidecar: {image: 'sidecar:2'}\n"));
    }
}
