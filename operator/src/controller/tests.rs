//! The reconcile against a mock API server: one scenario per expected
//! sequence of calls, and nothing else may be called.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::Value;

use super::fixtures::*;
use super::plan::Existing;
use super::status::{DEGRADED, PROGRESSING, READY, find_condition};
use super::{Caches, Context, Error, Stored, error_policy, reconcile, scale_in};
use crate::metrics::ReconcileResult;
use quiesce_api::reason::Reason;
use quiesce_api::{InferenceDeployment, InferenceDeploymentStatus, ScaleInPolicy};

/// A context on a mock API server that plays one scenario per reconcile.
struct Harness {
    ctx: Arc<Context>,
    verifier: Option<ApiServerVerifier>,
}

impl Harness {
    fn new() -> Self {
        let (ctx, verifier) = Context::test();
        Self {
            ctx,
            verifier: Some(verifier),
        }
    }

    /// Runs one reconcile of `resource` against `scenario`; returns its
    /// result and what the mock API server saw, after checking that the
    /// operator sent nothing beyond the scenario.
    async fn reconcile(
        &mut self,
        resource: &InferenceDeployment,
        scenario: Scenario,
    ) -> (Result<Action, Error>, Seen) {
        let verifier = self.verifier.take().expect("one reconcile at a time");
        self.ctx.use_caches(Caches::holding(&scenario.existing()));
        let playing = verifier.run(scenario);
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            reconcile(Arc::new(Stored::new(resource.clone())), self.ctx.clone()),
        )
        .await
        .expect("the reconcile finishes");
        let (mut verifier, seen) = playing.finish().await;
        verifier.assert_no_more_requests().await;
        self.verifier = Some(verifier);
        (result, seen)
    }
}

fn conditions(status: &InferenceDeploymentStatus) -> Vec<(&str, &str, &str)> {
    status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect()
}

fn degraded(status: &InferenceDeploymentStatus) -> (&str, &str, &str) {
    let condition = find_condition(Some(status), DEGRADED).expect("a Degraded condition");
    (
        condition.status.as_str(),
        condition.reason.as_str(),
        condition.message.as_str(),
    )
}

fn drain_hash(existing: &Existing) -> String {
    let deployment = existing.deployment.as_ref().unwrap();
    let template = &deployment.spec.as_ref().unwrap().template;
    let annotations = template.metadata.as_ref().unwrap().annotations.as_ref();
    annotations.unwrap()["quiesce.dev/drain-hash"].clone()
}

#[tokio::test]
async fn creates_deployment_service_and_budget_then_the_status() {
    let mut api = Harness::new();
    let (result, seen) = api
        .reconcile(&resource(""), Scenario::CreateFromNothing)
        .await;
    assert_eq!(result.unwrap(), Action::requeue(super::RESYNC_INTERVAL));

    let kinds: Vec<&Value> = seen.applied.iter().map(|o| &o["kind"]).collect();
    assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
    for object in &seen.applied {
        let hash = &object["metadata"]["annotations"]["quiesce.dev/applied-hash"];
        assert!(hash.is_string(), "{object}");
        let owner: OwnerReference =
            serde_json::from_value(object["metadata"]["ownerReferences"][0].clone()).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("InferenceDeployment", UID, Some(true))
        );
    }
    let deployment = &seen.applied[0];
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 140);

    let [status] = &seen.statuses[..] else {
        panic!("{:?}", seen.statuses)
    };
    assert_eq!(status.observed_generation, Some(GENERATION));
    assert_eq!(
        status.selector.as_deref(),
        Some("quiesce.dev/inference-deployment=demo")
    );
    assert_eq!(status.termination_grace_period_seconds, Some(140));
    assert_eq!(
        conditions(status),
        [
            ("Ready", "False", "RollingOut"),
            ("Progressing", "True", "RollingOut"),
            ("Degraded", "False", "Reconciled"),
        ]
    );
    assert!(seen.events.is_empty());
    assert_eq!(api.ctx.metrics().reconciles(ReconcileResult::applied), 1);
}

/// Create, then the pods become ready, then a resync: the last reconcile
/// finds everything in the watch caches and sends not one request.
#[tokio::test]
async fn a_resync_with_nothing_to_do_writes_nothing() {
    let mut api = Harness::new();
    let (result, created) = api
        .reconcile(&resource(""), Scenario::CreateFromNothing)
        .await;
    result.unwrap();

    // The pods are up: only the status changes.
    let existing = stored(&resource(""), deployment_status((1, 1, 1, 1)));
    let after_create = with_status(resource(""), created.statuses[0].clone());
    let (result, ready) = api
        .reconcile(&after_create, Scenario::StatusOnly(existing.clone()))
        .await;
    result.unwrap();
    let status = &ready.statuses[0];
    assert_eq!(
        conditions(status),
        [
            ("Ready", "True", "AllReplicasReady"),
            ("Progressing", "False", "RolloutComplete"),
            ("Degraded", "False", "Reconciled"),
        ]
    );
    // Degraded did not flip: its transition time is the one of the create.
    assert_eq!(
        find_condition(Some(status), DEGRADED)
            .unwrap()
            .last_transition_time,
        find_condition(Some(&created.statuses[0]), DEGRADED)
            .unwrap()
            .last_transition_time
    );

    // Resync: nothing changed, nothing is written.
    let settled = with_status(resource(""), status.clone());
    let (result, seen) = api
        .reconcile(&settled, Scenario::NothingToDo(existing))
        .await;
    assert_eq!(result.unwrap(), Action::requeue(super::RESYNC_INTERVAL));
    assert!(seen.applied.is_empty() && seen.statuses.is_empty() && seen.events.is_empty());
    let metrics = api.ctx.metrics();
    assert_eq!(metrics.reconciles(ReconcileResult::applied), 2);
    assert_eq!(metrics.reconciles(ReconcileResult::unchanged), 1);
}

#[tokio::test]
async fn the_deployment_status_becomes_the_resource_status() {
    let mut api = Harness::new();
    let three = "  replicas: 3\n";
    let mut rolling = deployment_status((3, 3, 2, 2));
    rolling.terminating_replicas = Some(1);
    let existing = stored(&resource(three), rolling);
    let (result, seen) = api
        .reconcile(&resource(three), Scenario::StatusOnly(existing))
        .await;
    result.unwrap();
    let status = &seen.statuses[0];
    let counts = (
        status.replicas,
        status.ready_replicas,
        status.updated_replicas,
        status.available_replicas,
    );
    assert_eq!(counts, (3, 3, 2, 2));
    assert_eq!(
        conditions(status),
        [
            ("Ready", "False", "RollingOut"),
            ("Progressing", "True", "RollingOut"),
            ("Degraded", "False", "Reconciled"),
        ]
    );
    assert_eq!(
        find_condition(Some(status), PROGRESSING).unwrap().message,
        "2 of 3 replicas run the current template, 1 old ones remain, 1 pod draining"
    );
}

#[tokio::test]
async fn scaling_applies_the_new_replica_count() {
    let mut api = Harness::new();
    let existing = stored(&resource(""), deployment_status((1, 1, 1, 1)));
    let scaled = resource("  replicas: 3\n");
    let (result, seen) = api
        .reconcile(&scaled, Scenario::ApplyDeployment(existing))
        .await;
    result.unwrap();
    assert_eq!(seen.applied[0]["spec"]["replicas"], 3);
    // The drain did not change: no event.
    assert!(seen.events.is_empty());
    // The Deployment controller has not seen the new generation yet.
    assert_eq!(
        conditions(&seen.statuses[0])[..2],
        [
            ("Ready", "False", "RollingOut"),
            ("Progressing", "True", "RollingOut")
        ]
    );
}

#[tokio::test]
async fn new_drain_settings_roll_the_pods_and_record_an_event() {
    let mut api = Harness::new();
    let existing = stored(&resource(""), deployment_status((1, 1, 1, 1)));
    let old_hash = drain_hash(&existing);
    let longer = resource("  drain: {timeoutSeconds: 195}\n");
    let (result, seen) = api
        .reconcile(&longer, Scenario::DrainChange(existing))
        .await;
    result.unwrap();

    let template = &seen.applied[0]["spec"]["template"];
    assert_eq!(template["spec"]["terminationGracePeriodSeconds"], 215);
    let new_hash = &template["metadata"]["annotations"]["quiesce.dev/drain-hash"];
    assert_ne!(new_hash, &Value::String(old_hash));

    let event = &seen.events[0];
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "DrainSettingsChanged");
    assert_eq!(event["regarding"]["name"], NAME);
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("terminationGracePeriodSeconds 140s -> 215s"),
        "{note}"
    );
    let status = &seen.statuses[0];
    assert_eq!(status.termination_grace_period_seconds, Some(215));
}

#[tokio::test]
async fn a_disabled_service_and_budget_are_deleted() {
    let mut api = Harness::new();
    let existing = stored(&resource(""), deployment_status((1, 1, 1, 1)));
    let disabled = resource("  service: {enabled: false}\n  disruptionBudget: {enabled: false}\n");
    let (result, seen) = api
        .reconcile(&disabled, Scenario::DeleteDisabled(existing))
        .await;
    result.unwrap();
    let (path, body) = &seen.deleted[0];
    assert_eq!(path, &service_path());
    assert_eq!(body["preconditions"]["uid"], "uid-service");
    assert_eq!(seen.deleted[1].1["preconditions"]["uid"], "uid-budget");
}

#[tokio::test]
async fn an_invalid_spec_is_reported_once_and_never_applied() {
    let mut api = Harness::new();
    // A spec the API server would have refused (validation bypassed).
    let invalid = resource("  replicas: -1\n");
    let (result, seen) = api
        .reconcile(&invalid, Scenario::Warned(Existing::default()))
        .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let status = &seen.statuses[0];
    let (state, reason, message) = degraded(status);
    assert_eq!((state, reason), ("True", "InvalidSpec"));
    assert!(message.contains("spec.replicas"), "{message}");
    assert_eq!(status.observed_generation, Some(GENERATION));
    let ready = find_condition(Some(status), READY).unwrap();
    assert_eq!(ready.reason, "DeploymentNotFound");
    assert_eq!(seen.events[0]["type"], "Warning");
    assert_eq!(seen.events[0]["reason"], "InvalidSpec");
    let metrics = api.ctx.metrics();
    assert_eq!(metrics.reconciles(ReconcileResult::rejected), 1);
    assert_eq!(metrics.failures(Reason::InvalidSpec), 1);

    // Reported already: the next reconcile writes nothing.
    let reported = with_status(invalid, status.clone());
    let (result, _) = api
        .reconcile(&reported, Scenario::NothingToDo(Existing::default()))
        .await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn an_unrenderable_spec_is_reported_and_never_applied() {
    let mut api = Harness::new();
    let mut clash = resource("");
    let pod = clash.spec.template.spec.as_mut().unwrap();
    let mut impostor = pod.containers[0].clone();
    impostor.name = "quiesce-sidecar".to_owned();
    pod.containers.push(impostor);
    let (result, seen) = api
        .reconcile(&clash, Scenario::Warned(Existing::default()))
        .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(degraded(&seen.statuses[0]).1, "Unrenderable");
    assert_eq!(seen.events[0]["reason"], "Unrenderable");
    let metrics = api.ctx.metrics();
    assert_eq!(metrics.failures(Reason::Unrenderable), 1);
}

/// The objects of the resource, with a Deployment that a Rollout controls
/// and that has quiesce's labels when `labelled`.
fn with_another_controllers_deployment(labelled: bool) -> Existing {
    let mut existing = stored(&resource(""), deployment_status((1, 1, 1, 1)));
    let deployment = existing.deployment.as_mut().unwrap();
    let owners = deployment.metadata.owner_references.as_mut().unwrap();
    owners[0].uid = "uid-someone-else".to_owned();
    owners[0].kind = "Rollout".to_owned();
    owners[0].name = "llm".to_owned();
    if !labelled {
        deployment.metadata.labels = None;
    }
    existing
}

#[tokio::test]
async fn an_object_of_another_controller_is_not_taken_over() {
    // Labelled as ours, it is in the watch cache; without our labels the
    // cache lacks it, and the reconcile reads it from the API server.
    for labelled in [true, false] {
        let mut api = Harness::new();
        let existing = with_another_controllers_deployment(labelled);
        assert_eq!(watched(&existing).deployment.is_some(), labelled);
        let (result, seen) = api
            .reconcile(&resource(""), Scenario::Warned(existing))
            .await;
        let error = result.unwrap_err();
        assert!(matches!(error, Error::NotOwned(_)), "{error}");
        let (state, reason, message) = degraded(&seen.statuses[0]);
        assert_eq!((state, reason), ("True", "NotOwned"));
        assert!(message.contains("controlled by Rollout llm"), "{message}");
        assert_eq!(seen.events[0]["reason"], "NotOwned");
        assert_eq!(api.ctx.metrics().failures(Reason::NotOwned), 1);
    }
}

#[tokio::test]
async fn a_conflict_fails_the_reconcile_sets_degraded_and_backs_off() {
    let mut api = Harness::new();
    let resource = resource("");
    let (result, seen) = api.reconcile(&resource, Scenario::ApplyFails(409)).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), Reason::ApiConflict);
    let text = error.to_string();
    assert!(
        text.starts_with("cannot apply Deployment ml/demo: 409 Conflict: "),
        "{text}"
    );

    let status = &seen.statuses[0];
    assert_eq!(degraded(status), ("True", "ApplyFailed", text.as_str()));
    assert_eq!(status.observed_generation, None, "not applied");
    assert_eq!(seen.events[0]["reason"], "ApplyFailed");
    let metrics = api.ctx.metrics();
    assert_eq!(metrics.reconciles(ReconcileResult::error), 1);
    assert_eq!(metrics.failures(Reason::ApiConflict), 1);

    let stored = Arc::new(Stored::new(resource.clone()));
    let first = error_policy(stored.clone(), &error, api.ctx.clone());
    let second = error_policy(stored, &error, api.ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    assert_eq!(api.ctx.failures(&resource), 2);
}

#[tokio::test]
async fn a_server_error_on_apply_fails_the_reconcile() {
    let mut api = Harness::new();
    let (result, seen) = api
        .reconcile(&resource(""), Scenario::ApplyFails(500))
        .await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), Reason::ApiServerError);
    assert_eq!(degraded(&seen.statuses[0]).1, "ApplyFailed");
    let metrics = api.ctx.metrics();
    assert_eq!(metrics.failures(Reason::ApiServerError), 1);
}

#[tokio::test]
async fn a_server_error_on_read_fails_before_any_write() {
    let mut api = Harness::new();
    let (result, seen) = api.reconcile(&resource(""), Scenario::ReadFails(500)).await;
    let error = result.unwrap_err();
    assert!(matches!(error, Error::Read { .. }), "{error}");
    assert_eq!(error.reason(), Reason::ApiServerError);
    assert!(seen.statuses.is_empty());
    assert_eq!(api.ctx.metrics().reconciles(ReconcileResult::error), 1);
}

#[tokio::test]
async fn a_success_resets_the_backoff() {
    let mut api = Harness::new();
    let resource = resource("");
    let (result, _) = api.reconcile(&resource, Scenario::ReadFails(503)).await;
    let stored = Arc::new(Stored::new(resource.clone()));
    error_policy(stored, &result.unwrap_err(), api.ctx.clone());
    assert_eq!(api.ctx.failures(&resource), 1);

    let (result, _) = api.reconcile(&resource, Scenario::CreateFromNothing).await;
    result.unwrap();
    assert_eq!(api.ctx.failures(&resource), 0);
}

#[tokio::test]
async fn a_deleted_resource_makes_no_call() {
    let mut api = Harness::new();
    let mut deleting = resource("");
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let (result, _) = api.reconcile(&deleting, Scenario::RadioSilence).await;
    assert_eq!(result.unwrap(), Action::await_change());
    let metrics = api.ctx.metrics();
    assert_eq!(metrics.reconciles(ReconcileResult::deleting), 1);
}

#[tokio::test]
async fn a_grace_period_above_the_autoscaler_limit_warns_once() {
    let mut api = Harness::new();
    let long = resource("  drain: {timeoutSeconds: 900}\n");
    let existing = stored(&long, deployment_status((1, 1, 1, 1)));
    let (result, seen) = api
        .reconcile(&long, Scenario::Warned(existing.clone()))
        .await;
    result.unwrap();
    let status = &seen.statuses[0];
    let (state, reason, _) = degraded(status);
    assert_eq!(
        (state, reason),
        ("False", "GracePeriodExceedsAutoscalerLimit")
    );
    assert_eq!(find_condition(Some(status), READY).unwrap().status, "True");
    assert_eq!(seen.events[0]["type"], "Warning");
    assert_eq!(
        seen.events[0]["reason"],
        "GracePeriodExceedsAutoscalerLimit"
    );

    let warned = with_status(long, status.clone());
    let (result, _) = api
        .reconcile(&warned, Scenario::NothingToDo(existing))
        .await;
    result.unwrap();
}

/// The verifier itself: a write the scenario does not expect fails the test.
#[tokio::test]
#[should_panic(
    expected = "unexpected requests: [\"PATCH /apis/quiesce.dev/v1alpha1/namespaces/ml/inferencedeployments/demo/status"
)]
async fn the_verifier_fails_on_an_unexpected_write() {
    let mut api = Harness::new();
    let existing = stored(&resource(""), deployment_status((1, 1, 1, 1)));
    // No status yet, so the reconcile writes one; the scenario expects none.
    let _ = api
        .reconcile(&resource(""), Scenario::NothingToDo(existing))
        .await;
}

/// kube's controller alone would wait forever for a first list that a
/// stopped watch never completes.
#[tokio::test]
async fn a_shutdown_before_the_first_list_stops_at_once() {
    // The mock API server never answers the controller's lists.
    let (ctx, _silent) = Context::test();
    let stopped = tokio::time::timeout(
        Duration::from_secs(2),
        super::run(ctx, Some(NAMESPACE), std::future::ready(())),
    )
    .await;
    assert!(stopped.is_ok(), "the controller did not stop");
}

/// A sidecar that answers `GET /load` with `report`; its port.
async fn sidecar_reporting(report: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/load", axum::routing::get(move || async move { report }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A pod of the resource whose sidecar listens on 127.0.0.1:`port`.
fn pod(name: &str, port: u16, ready: bool, our_cost: bool) -> k8s_openapi::api::core::v1::Pod {
    let annotations = if our_cost {
        serde_json::json!({scale_in::DELETION_COST_ANNOTATION: "0", scale_in::LOAD_SAMPLED_ANNOTATION: "2026-12-01T00:00:00Z"})
    } else {
        serde_json::json!({})
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "quiesce-sidecar", "ports": [{"name": "quiesce", "containerPort": port}]}],
            "containers": [{"name": "engine"}],
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    }))
    .unwrap()
}

const IDLE: &str =
    r#"{"in_flight":0,"queued":0,"kv_transfers":0,"draining":false,"sample_age_ms":12}"#;
const BUSY: &str =
    r#"{"in_flight":3,"queued":1,"kv_transfers":0,"draining":false,"sample_age_ms":12}"#;
const BLIND: &str = r#"{"in_flight":null,"queued":null,"kv_transfers":null,"draining":false,"sample_age_ms":12,"unknown":"gauge_missing"}"#;

fn cost_of(patch: &Value) -> &Value {
    &patch["metadata"]["annotations"][scale_in::DELETION_COST_ANNOTATION]
}

#[tokio::test]
async fn an_idle_first_scale_in_sets_deletion_costs_from_the_sidecars_before_it_scales() {
    let mut api = Harness::new();
    let existing = stored(
        &resource("  replicas: 4\n"),
        deployment_status((4, 3, 4, 3)),
    );
    let gone = {
        // Bound and released: nothing answers there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let pods = vec![
        pod("busy", sidecar_reporting(BUSY).await, true, false),
        pod("idle", sidecar_reporting(IDLE).await, true, false),
        pod("blind", sidecar_reporting(BLIND).await, true, false),
        pod("silent", gone, true, false),
        // Not Ready: the ReplicaSet controller takes it first, whatever its cost.
        pod("loading", sidecar_reporting(IDLE).await, false, true),
    ];
    let scenario = Scenario::ScaleIn {
        existing,
        pods,
        event: true,
        patches: 5,
    };
    let (result, seen) = api.reconcile(&resource("  replicas: 3\n"), scenario).await;
    result.unwrap();
    let costs: Vec<(&str, &Value)> = seen
        .pod_patches
        .iter()
        .map(|(name, patch)| (name.as_str(), cost_of(patch)))
        .collect();
    assert_eq!(
        costs,
        [
            ("blind", &Value::from("1000000")),
            ("busy", &Value::from("400")),
            ("idle", &Value::from("0")),
            ("loading", &Value::Null),
            ("silent", &Value::from("1000000")),
        ],
        "unknown counts as the busiest; an old cost is removed"
    );
    assert_eq!(seen.applied[0]["spec"]["replicas"], 3, "then it scales");
    let note = seen.events[0]["note"].as_str().unwrap();
    assert_eq!(seen.events[0]["reason"], "ScalingIn");
    assert!(
        note.starts_with("replicas 4 -> 3, idlest first: removing none; keeping idle (0 in flight, 0 queued), busy (3 in flight, 1 queued), blind (load unknown: gauge_missing), silent (load unknown: connect:"),
        "the not-Ready pod goes, so none of the Ready ones: {note}"
    );
    assert_eq!(api.ctx.metrics().scale_ins(ScaleInPolicy::IdleFirst), 1);
}

#[tokio::test]
async fn idle_first_removes_the_idlest_ready_pod() {
    let mut api = Harness::new();
    let existing = stored(
        &resource("  replicas: 3\n"),
        deployment_status((3, 3, 3, 3)),
    );
    let pods = vec![
        pod("a", sidecar_reporting(BUSY).await, true, false),
        pod("b", sidecar_reporting(IDLE).await, true, false),
        pod("c", sidecar_reporting(BUSY).await, true, false),
    ];
    let scenario = Scenario::ScaleIn {
        existing,
        pods,
        event: true,
        patches: 3,
    };
    let (result, seen) = api.reconcile(&resource("  replicas: 2\n"), scenario).await;
    result.unwrap();
    let note = seen.events[0]["note"].as_str().unwrap();
    assert!(
        note.starts_with("replicas 3 -> 2, idlest first: removing b (0 in flight, 0 queued); keeping a (3 in flight, 1 queued), c"),
        "{note}"
    );
    assert_eq!(cost_of(&seen.pod_patches[1].1), "0");
}

#[tokio::test]
async fn a_default_scale_in_reads_no_load_and_removes_old_costs() {
    let mut api = Harness::new();
    let existing = stored(
        &resource("  replicas: 3\n  scaleIn: {policy: Default}\n"),
        deployment_status((3, 3, 3, 3)),
    );
    let pods = vec![
        pod("a", sidecar_reporting(IDLE).await, true, true),
        pod("b", sidecar_reporting(IDLE).await, true, false),
    ];
    let scenario = Scenario::ScaleIn {
        existing,
        pods,
        event: false,
        patches: 1,
    };
    let scaled = resource("  replicas: 1\n  scaleIn: {policy: Default}\n");
    let (result, seen) = api.reconcile(&scaled, scenario).await;
    result.unwrap();
    assert_eq!(seen.pod_patches.len(), 1);
    assert_eq!(seen.pod_patches[0].0, "a");
    assert_eq!(cost_of(&seen.pod_patches[0].1), &Value::Null);
    assert!(seen.events.is_empty());
    assert_eq!(api.ctx.metrics().scale_ins(ScaleInPolicy::Default), 1);
}

#[tokio::test]
async fn a_load_report_is_bounded_in_size_and_time() {
    let huge: &'static str =
        Box::leak(format!("{{\"pad\":\"{}\"}}", "x".repeat(4096)).into_boxed_str());
    let port = sidecar_reporting(huge).await;
    let addr = ([127, 0, 0, 1], port).into();
    let error = scale_in::read_load(addr, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(error.starts_with("body:"), "{error}");

    // Accepts the connection and never answers.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = mute.local_addr().unwrap();
    let error = scale_in::read_load(addr, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(error, "no answer within 200 ms");

    let port = sidecar_reporting("not json").await;
    let error = scale_in::read_load(([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(error.starts_with("not a load report"), "{error}");
}

#[test]
fn only_a_deletion_that_begins_or_ends_triggers_a_reconcile() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::PartialObjectMeta;
    use kube::runtime::watcher::Event;

    let pod = |uid: &str, deleting: bool| -> PartialObjectMeta<Pod> {
        let mut pod = PartialObjectMeta::<Pod>::default();
        pod.metadata.uid = Some(uid.to_owned());
        if deleting {
            pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        pod
    };
    let mut terminating = std::collections::HashSet::new();
    let mut triggers = |event| super::drain_transition(&mut terminating, event).is_some();
    assert!(
        !triggers(Event::Apply(pod("a", false))),
        "a running pod's update"
    );
    assert!(
        triggers(Event::Apply(pod("a", true))),
        "its deletion begins"
    );
    assert!(
        !triggers(Event::Apply(pod("a", true))),
        "it updates while draining"
    );
    assert!(triggers(Event::Delete(pod("a", true))), "it is gone");
    assert!(!triggers(Event::Init));
    assert!(
        triggers(Event::InitApply(pod("b", true))),
        "a draining pod in a new list"
    );
    assert!(!triggers(Event::InitDone));
}
