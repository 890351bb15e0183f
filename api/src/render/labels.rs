//! Labels of the rendered objects, and the selector that ties them together.
//!
//! Every object carries the Kubernetes recommended labels. The selectors of
//! the Deployment, the Service and the PodDisruptionBudget use one label only,
//! [`SELECTOR_LABEL`]: a Deployment's selector is immutable, so it must not
//! depend on anything that could ever change (a component name, a version).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::conflict::{Conflict, RESERVED_LABEL_OVERRIDDEN};

/// `app.kubernetes.io/name`: the resource's name.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the resource's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: what the object is, see [`Component`].
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: always [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/part-of`: always [`PART_OF`].
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// The only label the selectors use: the name of the InferenceDeployment.
pub const SELECTOR_LABEL: &str = "quiesce.dev/inference-deployment";

/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "quiesce-operator";
/// Value of [`PART_OF_LABEL`].
pub const PART_OF: &str = "quiesce";

/// Label values are at most 63 characters; the resource name is one.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// What a rendered object is, as its `app.kubernetes.io/component` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The Deployment and its pods.
    InferenceEngine,
    /// The Service.
    InferenceService,
    /// The PodDisruptionBudget.
    DisruptionBudget,
}

impl Component {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InferenceEngine => "inference-engine",
            Self::InferenceService => "inference-service",
            Self::DisruptionBudget => "disruption-budget",
        }
    }
}

/// The labels the selectors match: only [`SELECTOR_LABEL`].
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SELECTOR_LABEL.to_owned(), name.to_owned())])
}

/// The selector of the Deployment and the PodDisruptionBudget.
pub fn label_selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(name)),
        ..LabelSelector::default()
    }
}

/// The selector in string form, as `status.selector` carries it for the
/// scale subresource and HorizontalPodAutoscalers.
pub fn selector_string(name: &str) -> String {
    format!("{SELECTOR_LABEL}={name}")
}

/// The recommended labels plus the selector label, for `component`.
pub fn object_labels(name: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.extend(
        [
            (NAME_LABEL, name),
            (INSTANCE_LABEL, name),
            (COMPONENT_LABEL, component.as_str()),
            (MANAGED_BY_LABEL, MANAGED_BY),
            (PART_OF_LABEL, PART_OF),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned())),
    );
    labels
}

/// The pod template's labels: the user's, with ours on top.
pub fn pod_labels(
    user: Option<&BTreeMap<String, String>>,
    name: &str,
) -> (BTreeMap<String, String>, Vec<Conflict>) {
    overlay_owned_keys(
        user,
        object_labels(name, Component::InferenceEngine),
        "spec.template.metadata.labels",
        RESERVED_LABEL_OVERRIDDEN,
    )
}

/// Lays `ours` over `user`: our keys win, every other user key is kept. A
/// user key that we overwrite with a different value is a conflict.
pub(crate) fn overlay_owned_keys(
    user: Option<&BTreeMap<String, String>>,
    ours: BTreeMap<String, String>,
    field: &str,
    reason: &'static str,
) -> (BTreeMap<String, String>, Vec<Conflict>) {
    let mut merged = user.cloned().unwrap_or_default();
    let mut conflicts = Vec::new();
    for (key, value) in ours {
        if let Some(theirs) = merged.insert(key.clone(), value.clone())
            && theirs != value
        {
            conflicts.push(Conflict::new(
                reason,
                format!("{field}[{key}]"),
                format!(
                    "quiesce sets {key} itself: your value {theirs:?} was replaced by {value:?}; \
                     remove it from the template"
                ),
            ));
        }
    }
    (merged, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_object_gets_the_recommended_labels_and_the_selector_label() {
        let labels = object_labels("llama", Component::InferenceService);
        assert_eq!(
            labels,
            map(&[
                ("app.kubernetes.io/component", "inference-service"),
                ("app.kubernetes.io/instance", "llama"),
                ("app.kubernetes.io/managed-by", "quiesce-operator"),
                ("app.kubernetes.io/name", "llama"),
                ("app.kubernetes.io/part-of", "quiesce"),
                ("quiesce.dev/inference-deployment", "llama"),
            ])
        );
    }

    #[test]
    fn selectors_use_only_the_immutable_label() {
        assert_eq!(
            label_selector("llama").match_labels,
            Some(map(&[("quiesce.dev/inference-deployment", "llama")]))
        );
        assert_eq!(label_selector("llama").match_expressions, None);
        assert_eq!(
            selector_string("llama"),
            "quiesce.dev/inference-deployment=llama"
        );
    }

    #[test]
    fn user_pod_labels_are_kept_and_ours_win_on_our_keys() {
        let user = map(&[
            ("model", "llama-3.1-70b"),
            ("app.kubernetes.io/name", "my-llm"),
            ("app.kubernetes.io/part-of", "quiesce"),
        ]);
        let (labels, conflicts) = pod_labels(Some(&user), "llama");
        assert_eq!(labels["model"], "llama-3.1-70b");
        assert_eq!(labels["app.kubernetes.io/name"], "llama");
        assert_eq!(labels["app.kubernetes.io/component"], "inference-engine");
        assert_eq!(labels["quiesce.dev/inference-deployment"], "llama");
        // Only the label whose value changed is a conflict.
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].reason, RESERVED_LABEL_OVERRIDDEN);
        assert_eq!(
            conflicts[0].field,
            "spec.template.metadata.labels[app.kubernetes.io/name]"
        );
        assert!(conflicts[0].message.contains("\"my-llm\""));
    }

    #[test]
    fn a_user_selector_label_is_overridden_with_a_conflict() {
        let user = map(&[("quiesce.dev/inference-deployment", "other")]);
        let (labels, conflicts) = pod_labels(Some(&user), "llama");
        assert_eq!(labels["quiesce.dev/inference-deployment"], "llama");
        assert_eq!(conflicts.len(), 1);
    }

    #[test]
    fn no_user_labels_no_conflicts() {
        let (labels, conflicts) = pod_labels(None, "llama");
        assert_eq!(labels, object_labels("llama", Component::InferenceEngine));
        assert!(conflicts.is_empty());
    }
}
