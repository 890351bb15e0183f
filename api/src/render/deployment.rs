//! The Deployment that runs the pods.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::labels::{Component, label_selector};
use super::owner::Owner;
use crate::rules::Validated;

/// Added to the progress deadline for scheduling and pulling the image:
/// the Deployment default, since inference images weigh gigabytes.
pub const PROGRESS_DEADLINE_MARGIN_SECONDS: i64 = 600;

/// How long a rollout step may make no progress before the Deployment's
/// `Progressing` condition turns false (`ProgressDeadlineExceeded`):
/// `startupTimeoutSeconds + terminationGracePeriodSeconds + 600`.
///
/// One step of a rollout may wait for an old pod to drain (its GPUs are
/// free only once it is gone), then for the new pod to be scheduled and
/// pulled, then for the model to load. The Deployment default (600 s) would
/// report a healthy rollout of a large model as failed.
pub fn progress_deadline_seconds(spec: &Validated<'_>) -> i32 {
    let seconds = i64::from(spec.engine.startup_timeout_seconds)
        + spec.drain_plan().grace_period_seconds
        + PROGRESS_DEADLINE_MARGIN_SECONDS;
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// The Deployment of `spec` with the rendered pod `template`.
pub fn render_deployment(
    spec: &Validated<'_>,
    owner: &Owner,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: owner.metadata(Component::InferenceEngine),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: label_selector(&owner.name),
            template,
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(spec.strategy.max_surge.clone()),
                    max_unavailable: Some(spec.strategy.max_unavailable.clone()),
                }),
            }),
            progress_deadline_seconds: Some(progress_deadline_seconds(spec)),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::render::fixtures::*;

    #[test]
    fn the_deployment_runs_the_template_with_the_rollout_settings() {
        let spec = spec(&format!(
            "{MINIMAL}replicas: 3\nstrategy: {{maxSurge: 25%, maxUnavailable: 1}}\n"
        ));
        let template = PodTemplateSpec::default();
        let deployment =
            render_deployment(&validated(&spec), &owner_in(Some("ml")), template.clone());
        assert_eq!(deployment.metadata.name.as_deref(), Some("demo"));
        assert_eq!(deployment.metadata.namespace.as_deref(), Some("ml"));
        let labels = deployment.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "inference-engine");
        let body = deployment.spec.unwrap();
        assert_eq!(body.replicas, Some(3));
        assert_eq!(body.selector, label_selector("demo"));
        assert_eq!(body.template, template);
        let strategy = body.strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let rolling = strategy.rolling_update.unwrap();
        assert_eq!(
            rolling.max_surge,
            Some(IntOrString::String("25%".to_owned()))
        );
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn the_progress_deadline_covers_a_drain_and_a_model_load() {
        // 1800 s startup + 140 s grace period + 600 s to schedule and pull.
        assert_eq!(progress_deadline_seconds(&validated(&spec(MINIMAL))), 2540);
        let slow = spec(&format!(
            "{MINIMAL}engine: {{startupTimeoutSeconds: 7200}}\ndrain: {{timeoutSeconds: 3000}}\n"
        ));
        assert_eq!(
            progress_deadline_seconds(&validated(&slow)),
            7200 + 3020 + 600
        );
        let deployment = render_deployment(
            &validated(&slow),
            &owner_in(Some("ml")),
            PodTemplateSpec::default(),
        );
        assert_eq!(
            deployment.spec.unwrap().progress_deadline_seconds,
            Some(10820)
        );
    }
}
