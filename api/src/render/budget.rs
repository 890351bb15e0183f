//! The PodDisruptionBudget that bounds voluntary evictions.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};

use super::labels::{Component, label_selector};
use super::owner::Owner;
use crate::InferenceDeploymentSpec;

/// `unhealthyPodEvictionPolicy` of the budget.
///
/// With the default (`IfHealthyBudget`) a pod that is running but not ready
/// (an engine stuck loading, a crash loop) may be evicted only while the
/// budget is not exhausted, so a few stuck pods can block a node drain
/// forever. Such pods serve nothing, and evicting them loses no request.
pub const UNHEALTHY_POD_EVICTION_POLICY: &str = "AlwaysAllow";

/// The PodDisruptionBudget of `spec`, or `None` when
/// `spec.disruptionBudget.enabled` is false.
pub fn render_pod_disruption_budget(
    spec: &InferenceDeploymentSpec,
    owner: &Owner,
) -> Option<PodDisruptionBudget> {
    let budget = &spec.disruption_budget;
    if !budget.enabled {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: owner.metadata(Component::DisruptionBudget),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(budget.max_unavailable.clone()),
            selector: Some(label_selector(&owner.name)),
            unhealthy_pod_eviction_policy: Some(UNHEALTHY_POD_EVICTION_POLICY.to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::render::fixtures::*;

    #[test]
    fn the_budget_selects_the_pods_and_lets_unhealthy_ones_go() {
        let spec = spec(&format!(
            "{MINIMAL}disruptionBudget: {{maxUnavailable: 25%}}\n"
        ));
        let budget = render_pod_disruption_budget(&spec, &owner_in(None)).unwrap();
        assert_eq!(
            budget.metadata.labels.unwrap()["app.kubernetes.io/component"],
            "disruption-budget"
        );
        let body = budget.spec.unwrap();
        assert_eq!(
            body.max_unavailable,
            Some(IntOrString::String("25%".to_owned()))
        );
        assert_eq!(body.min_available, None);
        assert_eq!(body.selector, Some(label_selector("demo")));
        assert_eq!(
            body.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
    }

    #[test]
    fn a_disabled_budget_is_not_rendered() {
        let spec = spec(&format!("{MINIMAL}disruptionBudget: {{enabled: false}}\n"));
        assert_eq!(render_pod_disruption_budget(&spec, &owner_in(None)), None);
    }
}
