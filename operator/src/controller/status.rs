//! The status of an InferenceDeployment, computed from what the reconcile
//! saw and did. Pure: the same inputs give the same status, so a reconcile
//! that changes nothing computes the status already stored and writes none.
//!
//! Three conditions, one of each type:
//! - `Ready`: the pods. True once every replica runs the current template
//!   and is available.
//! - `Progressing`: the rollout. True while the Deployment replaces pods or
//!   scales.
//! - `Degraded`: the reconcile. True when quiesce could not apply the spec
//!   (invalid, unrenderable, an object of another owner, an API error) or the
//!   Deployment is stuck. False with a warning reason (`Conflicts`,
//!   `GracePeriodExceedsAutoscalerLimit`) when the pods run but deserve a
//!   look; False with `Reconciled` otherwise.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use quiesce_api::limits::AUTOSCALER_GRACE_PERIOD_SECONDS;
use quiesce_api::reason::Reason;
use quiesce_api::render::labels::selector_string;
use quiesce_api::render::{Conflict, RenderError};
use quiesce_api::{InferenceDeployment, InferenceDeploymentStatus};

/// Condition type: the pods run the current template and are available.
pub const READY: &str = "Ready";
/// Condition type: the Deployment is rolling out or scaling.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: quiesce could not realise the spec, or the pods run with
/// caveats (see the reasons).
pub const DEGRADED: &str = "Degraded";

/// Condition messages stay readable in `kubectl describe`; the API allows
/// 32768 bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// What kept the reconcile from applying the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The spec is invalid or unrenderable; nothing was applied.
    Rejected {
        /// [`Reason::InvalidSpec`] or [`Reason::Unrenderable`].
        reason: Reason,
        /// What to fix.
        message: String,
    },
    /// An object with the resource's name belongs to another controller.
    NotOwned(String),
    /// A write failed.
    ApplyFailed(String),
}

impl Problem {
    /// The problem of a render error.
    pub fn rejected(error: &RenderError) -> Self {
        Self::Rejected {
            reason: error.reason(),
            message: error.to_string(),
        }
    }

    /// Whether the spec of this generation was handled: rejected for good
    /// (until the spec changes), rather than still to be applied.
    fn settles_generation(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }
}

/// What the status is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The resource, with the status the API server has.
    pub resource: &'a InferenceDeployment,
    /// The Deployment as the API server has it after the reconcile's writes;
    /// `None` if there is none.
    pub deployment: Option<&'a Deployment>,
    /// Why the spec was not applied, if it was not.
    pub problem: Option<&'a Problem>,
    /// User fields kept instead of quiesce's.
    pub conflicts: &'a [Conflict],
    /// Pods of the resource deleted and not yet gone, as the pod watch sees
    /// them (before Kubernetes 1.33 a Deployment does not count them).
    pub draining_pods: i32,
}

/// The status to store: counts from the Deployment, the three conditions.
///
/// A condition keeps its `lastTransitionTime` unless its status flips, so
/// that an unchanged situation yields exactly the stored status.
pub fn desired_status(observed: Observed<'_>, now: &Time) -> InferenceDeploymentStatus {
    let resource = observed.resource;
    let previous = resource.status.as_ref();
    let generation = resource.metadata.generation;
    let settled = observed.problem.is_none_or(Problem::settles_generation);
    let observed_generation = if settled {
        generation
    } else {
        previous.and_then(|status| status.observed_generation)
    };

    let rollout = observed
        .deployment
        .map(|deployment| Rollout::of(deployment, observed.draining_pods));
    let grace_period = observed.deployment.and_then(grace_period_of);
    let previous_conditions = previous.map_or(&[][..], |status| &status.conditions[..]);
    let condition = |(type_, status, reason, message): ConditionParts| {
        let message = truncate(message, MAX_MESSAGE_LEN);
        let last_transition_time = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == condition_status(status))
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: condition_status(status).to_owned(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };

    let conditions = vec![
        condition(ready(rollout.as_ref())),
        condition(progressing(rollout.as_ref())),
        condition(degraded(
            observed.problem,
            rollout.as_ref(),
            observed.conflicts,
            grace_period,
        )),
    ];
    let name = resource.metadata.name.as_deref().unwrap_or_default();
    InferenceDeploymentStatus {
        observed_generation,
        replicas: rollout.as_ref().map_or(0, |r| r.replicas),
        ready_replicas: rollout.as_ref().map_or(0, |r| r.ready),
        updated_replicas: rollout.as_ref().map_or(0, |r| r.updated),
        available_replicas: rollout.as_ref().map_or(0, |r| r.available),
        draining_replicas: rollout.as_ref().map_or(0, |r| r.terminating),
        selector: Some(selector_string(name)),
        termination_grace_period_seconds: grace_period,
        conditions,
    }
}

/// The condition of `type_` in `status`, if any.
pub fn find_condition<'a>(
    status: Option<&'a InferenceDeploymentStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

fn condition_status(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

type ConditionParts = (&'static str, bool, Reason, String);

/// The Deployment's counts and conditions, read once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rollout {
    desired: i32,
    replicas: i32,
    ready: i32,
    updated: i32,
    available: i32,
    terminating: i32,
    /// The Deployment controller has seen the latest Deployment spec.
    observed: bool,
    /// Its Progressing condition says `ProgressDeadlineExceeded`.
    deadline_exceeded: Option<String>,
    /// Its ReplicaFailure condition is True.
    replica_failure: Option<String>,
}

impl Rollout {
    fn of(deployment: &Deployment, draining_pods: i32) -> Self {
        let spec_replicas = deployment.spec.as_ref().and_then(|spec| spec.replicas);
        let status = deployment.status.clone().unwrap_or_default();
        let conditions = status.conditions.as_deref().unwrap_or_default();
        let condition = |type_: &str, status: &str| -> Option<&DeploymentCondition> {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
        };
        let message = |c: &DeploymentCondition| c.message.clone().unwrap_or_default();
        Self {
            // The Deployment's own default.
            desired: spec_replicas.unwrap_or(1),
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            terminating: status.terminating_replicas.unwrap_or(0).max(draining_pods),
            observed: match (deployment.metadata.generation, status.observed_generation) {
                (Some(generation), Some(seen)) => seen >= generation,
                (None, _) => true,
                (Some(_), None) => false,
            },
            deadline_exceeded: condition("Progressing", "False")
                .filter(|c| c.reason.as_deref() == Some(Reason::ProgressDeadlineExceeded.as_str()))
                .map(message),
            replica_failure: condition("ReplicaFailure", "True").map(message),
        }
    }

    /// What the Deployment is doing, if anything: a reason and a message.
    fn activity(&self) -> Option<(Reason, String)> {
        let draining = self.draining();
        if !self.observed {
            Some((
                Reason::RollingOut,
                "the Deployment controller has not yet picked up the latest change".to_owned(),
            ))
        } else if self.replicas > self.updated {
            Some((
                Reason::RollingOut,
                format!(
                    "{} of {} replicas run the current template, {} old ones remain{draining}",
                    self.updated,
                    self.desired,
                    self.replicas - self.updated
                ),
            ))
        } else if self.updated < self.desired || self.replicas > self.desired {
            Some((
                Reason::Scaling,
                format!(
                    "scaling to {} replicas: {} exist{draining}",
                    self.desired, self.replicas
                ),
            ))
        } else {
            None
        }
    }

    fn draining(&self) -> String {
        match self.terminating {
            0 => String::new(),
            1 => ", 1 pod draining".to_owned(),
            n => format!(", {n} pods draining"),
        }
    }
}

fn ready(rollout: Option<&Rollout>) -> ConditionParts {
    let Some(rollout) = rollout else {
        return (READY, false, Reason::DeploymentNotFound, no_deployment());
    };
    if let Some((reason, message)) = rollout.activity() {
        return (READY, false, reason, message);
    }
    let draining = rollout.draining();
    if rollout.available < rollout.desired {
        return (
            READY,
            false,
            Reason::ReplicasUnavailable,
            format!(
                "{} of {} replicas available, {} ready{draining}",
                rollout.available, rollout.desired, rollout.ready
            ),
        );
    }
    if rollout.desired == 0 {
        return (
            READY,
            true,
            Reason::ScaledToZero,
            format!("spec.replicas is 0{draining}"),
        );
    }
    (
        READY,
        true,
        Reason::AllReplicasReady,
        format!(
            "{} of {} replicas available and up to date{draining}",
            rollout.available, rollout.desired
        ),
    )
}

fn progressing(rollout: Option<&Rollout>) -> ConditionParts {
    let Some(rollout) = rollout else {
        return (
            PROGRESSING,
            false,
            Reason::DeploymentNotFound,
            no_deployment(),
        );
    };
    if let Some(message) = &rollout.deadline_exceeded {
        return (
            PROGRESSING,
            false,
            Reason::ProgressDeadlineExceeded,
            message.clone(),
        );
    }
    match rollout.activity() {
        Some((reason, message)) => (PROGRESSING, true, reason, message),
        None => (
            PROGRESSING,
            false,
            Reason::RolloutComplete,
            format!(
                "all {} replicas run the current template{}",
                rollout.desired,
                rollout.draining()
            ),
        ),
    }
}

fn no_deployment() -> String {
    "the Deployment does not exist; see the Degraded condition".to_owned()
}

fn degraded(
    problem: Option<&Problem>,
    rollout: Option<&Rollout>,
    conflicts: &[Conflict],
    grace_period: Option<i64>,
) -> ConditionParts {
    match problem {
        Some(Problem::Rejected { reason, message }) => {
            return (DEGRADED, true, *reason, message.clone());
        }
        Some(Problem::NotOwned(message)) => {
            return (DEGRADED, true, Reason::NotOwned, message.clone());
        }
        Some(Problem::ApplyFailed(message)) => {
            return (DEGRADED, true, Reason::ApplyFailed, message.clone());
        }
        None => {}
    }
    if let Some(message) = rollout.and_then(|r| r.deadline_exceeded.as_ref()) {
        return (
            DEGRADED,
            true,
            Reason::ProgressDeadlineExceeded,
            format!(
                "the rollout made no progress within the Deployment's progressDeadlineSeconds: \
                 {message}; check the new pods' events (image pull, scheduling, model loading)"
            ),
        );
    }
    if let Some(message) = rollout.and_then(|r| r.replica_failure.as_ref()) {
        return (
            DEGRADED,
            true,
            Reason::ReplicaFailure,
            format!("the Deployment cannot create pods: {message}"),
        );
    }
    let grace_warning = grace_period
        .filter(|seconds| *seconds > AUTOSCALER_GRACE_PERIOD_SECONDS)
        .map(|seconds| {
            format!(
                "terminationGracePeriodSeconds is {seconds}, above the \
                 {AUTOSCALER_GRACE_PERIOD_SECONDS} s after which cluster-autoscaler (default \
                 --max-graceful-termination-sec) kills pods of a node it scales down: such \
                 drains are cut short; lower spec.drain.timeoutSeconds or raise the autoscaler's \
                 limit"
            )
        });
    if !conflicts.is_empty() {
        let mut message = format!(
            "your settings limit what quiesce does ({}): {}",
            conflicts.len(),
            conflicts
                .iter()
                .map(Conflict::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        if let Some(warning) = grace_warning {
            message = format!("{message}. Also: {warning}");
        }
        return (DEGRADED, false, Reason::Conflicts, message);
    }
    if let Some(warning) = grace_warning {
        return (
            DEGRADED,
            false,
            Reason::GracePeriodExceedsAutoscalerLimit,
            warning,
        );
    }
    (
        DEGRADED,
        false,
        Reason::Reconciled,
        "the Deployment, Service and PodDisruptionBudget match the spec".to_owned(),
    )
}

/// The grace period the pods of `deployment` get.
fn grace_period_of(deployment: &Deployment) -> Option<i64> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .termination_grace_period_seconds
}

/// `text` cut to at most `max` bytes, on a character boundary, marked `…`.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use quiesce_api::render::conflict::ENGINE_READINESS_PROBE_KEPT;

    fn resource(status: Option<InferenceDeploymentStatus>) -> InferenceDeployment {
        let mut resource: InferenceDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "quiesce.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "metadata": {"name": "demo", "namespace": "ml", "generation": 4, "uid": "u1"},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "engine", "image": "e"}]}}}
        }))
        .unwrap();
        resource.status = status;
        resource
    }

    /// A Deployment fixture: `(spec replicas, replicas, ready, updated, available)`.
    fn deployment(counts: (i32, i32, i32, i32, i32), grace: i64) -> Deployment {
        let (desired, replicas, ready, updated, available) = counts;
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "demo", "namespace": "ml", "generation": 7},
            "spec": {
                "replicas": desired,
                "selector": {"matchLabels": {"quiesce.dev/inference-deployment": "demo"}},
                "template": {"spec": {"terminationGracePeriodSeconds": grace, "containers": []}}
            },
            "status": {
                "observedGeneration": 7,
                "replicas": replicas,
                "readyReplicas": ready,
                "updatedReplicas": updated,
                "availableReplicas": available,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                ]
            }
        }))
        .unwrap()
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn status_of(
        resource: &InferenceDeployment,
        deployment: Option<&Deployment>,
        problem: Option<&Problem>,
    ) -> InferenceDeploymentStatus {
        desired_status(
            Observed {
                resource,
                deployment,
                problem,
                conflicts: &[],
                draining_pods: 0,
            },
            &at(1000),
        )
    }

    fn condition<'a>(status: &'a InferenceDeploymentStatus, type_: &str) -> &'a Condition {
        find_condition(Some(status), type_).unwrap()
    }

    fn summary(status: &InferenceDeploymentStatus) -> Vec<(String, String, String)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn expect(summary_: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        summary_
            .iter()
            .map(|(t, s, r)| ((*t).to_owned(), (*s).to_owned(), (*r).to_owned()))
            .collect()
    }

    #[test]
    fn a_complete_rollout_is_ready_and_copies_the_counts() {
        let resource = resource(None);
        let deployment = deployment((3, 3, 3, 3, 3), 140);
        let status = status_of(&resource, Some(&deployment), None);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.updated_replicas,
                status.available_replicas
            ),
            (3, 3, 3, 3)
        );
        assert_eq!(
            status.selector.as_deref(),
            Some("quiesce.dev/inference-deployment=demo")
        );
        assert_eq!(status.termination_grace_period_seconds, Some(140));
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "True", "AllReplicasReady"),
                ("Progressing", "False", "RolloutComplete"),
                ("Degraded", "False", "Reconciled"),
            ])
        );
        let ready = condition(&status, READY);
        assert_eq!(ready.message, "3 of 3 replicas available and up to date");
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(ready.last_transition_time, at(1000));
    }

    #[test]
    fn old_pods_mean_a_rollout_in_progress() {
        let mut deployment = deployment((3, 4, 4, 1, 3), 140);
        deployment.status.as_mut().unwrap().terminating_replicas = Some(1);
        let status = status_of(&resource(None), Some(&deployment), None);
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "False", "RollingOut"),
                ("Progressing", "True", "RollingOut"),
                ("Degraded", "False", "Reconciled"),
            ])
        );
        assert_eq!(
            condition(&status, PROGRESSING).message,
            "1 of 3 replicas run the current template, 3 old ones remain, 1 pod draining"
        );
    }

    #[test]
    fn an_unobserved_deployment_change_is_a_rollout() {
        let mut deployment = deployment((3, 3, 3, 3, 3), 140);
        deployment.metadata.generation = Some(8);
        let status = status_of(&resource(None), Some(&deployment), None);
        assert_eq!(condition(&status, PROGRESSING).reason, Reason::RollingOut);
        assert_eq!(condition(&status, READY).status, "False");
    }

    #[test]
    fn adding_pods_is_scaling() {
        let deployment = deployment((5, 3, 3, 3, 3), 140);
        let status = status_of(&resource(None), Some(&deployment), None);
        assert_eq!(
            summary(&status)[..2],
            expect(&[
                ("Ready", "False", "Scaling"),
                ("Progressing", "True", "Scaling")
            ])
        );
        assert_eq!(
            condition(&status, READY).message,
            "scaling to 5 replicas: 3 exist"
        );
    }

    #[test]
    fn unavailable_replicas_after_the_rollout_are_not_ready() {
        let deployment = deployment((3, 3, 2, 3, 2), 140);
        let status = status_of(&resource(None), Some(&deployment), None);
        assert_eq!(
            summary(&status)[..2],
            expect(&[
                ("Ready", "False", "ReplicasUnavailable"),
                ("Progressing", "False", "RolloutComplete"),
            ])
        );
        assert_eq!(
            condition(&status, READY).message,
            "2 of 3 replicas available, 2 ready"
        );
    }

    #[test]
    fn zero_replicas_is_ready() {
        let deployment = deployment((0, 0, 0, 0, 0), 140);
        let status = status_of(&resource(None), Some(&deployment), None);
        assert_eq!(condition(&status, READY).reason, Reason::ScaledToZero);
        assert_eq!(condition(&status, READY).status, "True");
    }

    #[test]
    fn a_stuck_rollout_is_degraded() {
        let mut deployment = deployment((3, 4, 3, 1, 3), 140);
        let conditions = deployment
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap();
        conditions[1].status = "False".to_owned();
        conditions[1].reason = Some("ProgressDeadlineExceeded".to_owned());
        conditions[1].message =
            Some("ReplicaSet \"demo-7f\" has timed out progressing.".to_owned());
        let status = status_of(&resource(None), Some(&deployment), None);
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "False", "RollingOut"),
                ("Progressing", "False", "ProgressDeadlineExceeded"),
                ("Degraded", "True", "ProgressDeadlineExceeded"),
            ])
        );
        assert!(
            condition(&status, DEGRADED)
                .message
                .contains("timed out progressing")
        );
    }

    #[test]
    fn pods_the_deployment_cannot_create_are_degraded() {
        let mut deployment = deployment((3, 0, 0, 0, 0), 140);
        deployment.status.as_mut().unwrap().conditions.as_mut().unwrap().push(
            serde_json::from_value(serde_json::json!({
                "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": "pods \"demo-x\" is forbidden: violates PodSecurity \"restricted:latest\""
            }))
            .unwrap(),
        );
        let status = status_of(&resource(None), Some(&deployment), None);
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ReplicaFailure")
        );
        assert!(degraded.message.contains("violates PodSecurity"));
    }

    #[test]
    fn an_invalid_spec_reports_the_running_pods_and_settles_the_generation() {
        let problem = Problem::Rejected {
            reason: Reason::InvalidSpec,
            message: "the InferenceDeployment is invalid:\n  - spec.replicas: ...".to_owned(),
        };
        let deployment = deployment((3, 3, 3, 3, 3), 140);
        let status = status_of(&resource(None), Some(&deployment), Some(&problem));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(
            summary(&status),
            expect(&[
                ("Ready", "True", "AllReplicasReady"),
                ("Progressing", "False", "RolloutComplete"),
                ("Degraded", "True", "InvalidSpec"),
            ])
        );

        let status = status_of(&resource(None), None, Some(&problem));
        assert_eq!(status.termination_grace_period_seconds, None);
        assert_eq!(
            summary(&status)[..2],
            expect(&[
                ("Ready", "False", "DeploymentNotFound"),
                ("Progressing", "False", "DeploymentNotFound"),
            ])
        );
    }

    #[test]
    fn a_failed_apply_keeps_the_previous_observed_generation() {
        let previous = InferenceDeploymentStatus {
            observed_generation: Some(3),
            ..InferenceDeploymentStatus::default()
        };
        let problem = Problem::ApplyFailed("cannot apply Deployment ml/demo: 500".to_owned());
        let deployment = deployment((3, 3, 3, 3, 3), 140);
        let status = status_of(&resource(Some(previous)), Some(&deployment), Some(&problem));
        assert_eq!(status.observed_generation, Some(3));
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ApplyFailed")
        );
        let not_owned = Problem::NotOwned("Deployment ml/demo is controlled by ...".to_owned());
        let status = status_of(&resource(None), Some(&deployment), Some(&not_owned));
        assert_eq!(status.observed_generation, None);
        assert_eq!(condition(&status, DEGRADED).reason, Reason::NotOwned);
    }

    #[test]
    fn a_long_grace_period_is_a_warning_not_a_degradation() {
        let deployment = deployment((3, 3, 3, 3, 3), 900);
        let status = status_of(&resource(None), Some(&deployment), None);
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "GracePeriodExceedsAutoscalerLimit")
        );
        assert!(
            degraded
                .message
                .contains("terminationGracePeriodSeconds is 900")
        );
        // 600 is still fine.
        let at_limit = self::deployment((3, 3, 3, 3, 3), 600);
        let status = status_of(&resource(None), Some(&at_limit), None);
        assert_eq!(condition(&status, DEGRADED).reason, Reason::Reconciled);
    }

    #[test]
    fn conflicts_are_listed_in_the_degraded_message() {
        let conflicts = [Conflict {
            reason: ENGINE_READINESS_PROBE_KEPT,
            field: "spec.template.spec.containers[0].readinessProbe".to_owned(),
            message: "your probe was kept".to_owned(),
        }];
        let deployment = deployment((3, 3, 3, 3, 3), 900);
        let resource = resource(None);
        let status = desired_status(
            Observed {
                resource: &resource,
                deployment: Some(&deployment),
                problem: None,
                conflicts: &conflicts,
                draining_pods: 0,
            },
            &at(1000),
        );
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "Conflicts")
        );
        assert_eq!(
            degraded.message,
            "your settings limit what quiesce does (1): \
             spec.template.spec.containers[0].readinessProbe: your probe was kept \
             (EngineReadinessProbeKept). Also: terminationGracePeriodSeconds is 900, above the \
             600 s after which cluster-autoscaler (default --max-graceful-termination-sec) kills \
             pods of a node it scales down: such drains are cut short; lower \
             spec.drain.timeoutSeconds or raise the autoscaler's limit"
        );
    }

    #[test]
    fn transition_times_change_only_when_a_condition_flips() {
        let deployment_ready = deployment((3, 3, 3, 3, 3), 140);
        let first = status_of(&resource(None), Some(&deployment_ready), None);

        // Same situation later: the stored status comes back unchanged.
        let stored = resource(Some(first.clone()));
        let again = desired_status(
            Observed {
                resource: &stored,
                deployment: Some(&deployment_ready),
                problem: None,
                conflicts: &[],
                draining_pods: 0,
            },
            &at(2000),
        );
        assert_eq!(again, first);

        // A scale-up: Ready and Progressing flip, Degraded keeps its time.
        let scaling = deployment((5, 3, 3, 3, 3), 140);
        let later = desired_status(
            Observed {
                resource: &stored,
                deployment: Some(&scaling),
                problem: None,
                conflicts: &[],
                draining_pods: 0,
            },
            &at(2000),
        );
        assert_eq!(condition(&later, READY).last_transition_time, at(2000));
        assert_eq!(
            condition(&later, PROGRESSING).last_transition_time,
            at(2000)
        );
        assert_eq!(condition(&later, DEGRADED).last_transition_time, at(1000));

        // A new reason with the same status keeps the time too.
        let unavailable = deployment((3, 3, 2, 3, 2), 140);
        let stored = resource(Some(later));
        let next = desired_status(
            Observed {
                resource: &stored,
                deployment: Some(&unavailable),
                problem: None,
                conflicts: &[],
                draining_pods: 0,
            },
            &at(3000),
        );
        let ready = condition(&next, READY);
        assert_eq!(ready.reason, Reason::ReplicasUnavailable);
        assert_eq!(ready.last_transition_time, at(2000));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(3000);
        let cut = truncate(text, MAX_MESSAGE_LEN);
        assert!(cut.len() <= MAX_MESSAGE_LEN);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short".to_owned(), 10), "short");
    }
}
