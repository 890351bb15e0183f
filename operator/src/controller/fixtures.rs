//! Test fixtures: resources, the objects an API server would store, and a
//! mock API server that expects one exact sequence of calls per
//! [`Scenario`] and fails the test on anything else.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::{Client, Resource};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

use kube::runtime::reflector;
use kube::runtime::watcher;

use super::cache::{self, Cache};
use super::plan::{self, Existing, Step};
use super::{Caches, Context};
use crate::metrics::Metrics;
use quiesce_api::render::labels::{MANAGED_BY, MANAGED_BY_LABEL};
use quiesce_api::render::{RenderConfig, render};
use quiesce_api::{InferenceDeployment, InferenceDeploymentStatus};

pub const NAMESPACE: &str = "ml";
pub const NAME: &str = "demo";
pub const UID: &str = "uid-demo";
pub const GENERATION: i64 = 2;

/// How long the verifier waits for an expected request, and for silence
/// after the last one.
const PATIENCE: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(100);

/// A stored InferenceDeployment with `extra_spec` (indented YAML lines of
/// the spec) and no status.
pub fn resource(extra_spec: &str) -> InferenceDeployment {
    serde_saphyr::from_str(&format!(
        "
apiVersion: quiesce.dev/v1alpha1
kind: InferenceDeployment
metadata:
  name: {NAME}
  namespace: {NAMESPACE}
  uid: {UID}
  generation: {GENERATION}
spec:
  template:
    spec:
      containers:
      - name: engine
        image: ghcr.io/quiesce-dev/quiesce-engine:0.1.0
{extra_spec}"
    ))
    .expect("the fixture is an InferenceDeployment")
}

/// `resource` with `status`.
pub fn with_status(
    mut resource: InferenceDeployment,
    status: InferenceDeploymentStatus,
) -> InferenceDeployment {
    resource.status = Some(status);
    resource
}

/// What the API server stores once the operator applied `resource`'s objects
/// and the Deployment reports `deployment_status`.
pub fn stored(resource: &InferenceDeployment, deployment_status: DeploymentStatus) -> Existing {
    let rendered = render(resource, &RenderConfig::default()).expect("the fixture renders");
    let plan = plan::plan(rendered, Some(UID), &Existing::default()).expect("nothing exists");
    fn stored_object<K: Resource + Clone>(step: &Step<K>, uid: &str) -> Option<K> {
        let Step::Apply(object) = step else {
            return None;
        };
        let mut object = (**object).clone();
        let meta = object.meta_mut();
        meta.uid = Some(uid.to_owned());
        meta.resource_version = Some("1".to_owned());
        meta.generation = Some(1);
        Some(object)
    }
    let mut deployment = stored_object(&plan.deployment, "uid-deployment");
    if let Some(deployment) = &mut deployment {
        deployment.status = Some(deployment_status);
    }
    Existing {
        deployment,
        service: stored_object(&plan.service, "uid-service"),
        pod_disruption_budget: stored_object(&plan.pod_disruption_budget, "uid-budget"),
    }
}

/// A Deployment status: `(replicas, ready, updated, available)`, observed.
pub fn deployment_status(counts: (i32, i32, i32, i32)) -> DeploymentStatus {
    let (replicas, ready, updated, available) = counts;
    DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        updated_replicas: Some(updated),
        available_replicas: Some(available),
        ..DeploymentStatus::default()
    }
}

/// What the controller's watches, which select our managed-by label, hold
/// of `existing`.
pub fn watched(existing: &Existing) -> Existing {
    fn ours<K: Resource + Clone>(object: &Option<K>) -> Option<K> {
        object.clone().filter(|o| {
            o.meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                == Some(&MANAGED_BY.to_owned())
        })
    }
    Existing {
        deployment: ours(&existing.deployment),
        service: ours(&existing.service),
        pod_disruption_budget: ours(&existing.pod_disruption_budget),
    }
}

/// A cache after its first list, holding `object` if any.
fn listed<K: Resource + Serialize>(object: Option<K>) -> Cache<K> {
    let (cache, mut writer) = cache::cache();
    writer.apply(&watcher::Event::Init);
    if let Some(object) = object {
        writer.apply(&watcher::Event::InitApply(object));
    }
    writer.apply(&watcher::Event::InitDone);
    cache
}

impl Caches {
    /// Caches as the watches would have filled them for `existing`.
    pub fn holding(existing: &Existing) -> Self {
        let watched = watched(existing);
        Self {
            pods: reflector::store().0,
            deployments: listed(watched.deployment),
            services: listed(watched.service),
            budgets: listed(watched.pod_disruption_budget),
        }
    }
}

impl Scenario {
    /// The objects the API server has when the scenario begins.
    pub fn existing(&self) -> Existing {
        match self {
            Self::NothingToDo(existing)
            | Self::StatusOnly(existing)
            | Self::ApplyDeployment(existing)
            | Self::ScaleIn { existing, .. }
            | Self::DrainChange(existing)
            | Self::DeleteDisabled(existing)
            | Self::Warned(existing) => existing.clone(),
            Self::CreateFromNothing
            | Self::ApplyFails(_)
            | Self::ReadFails(_)
            | Self::RadioSilence => Existing::default(),
        }
    }
}

impl Context {
    /// A context on a mock API server, with its own metrics.
    pub fn test() -> (Arc<Self>, ApiServerVerifier) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NAMESPACE);
        let (_, metrics) = Metrics::new_registry();
        let reporter = Reporter {
            controller: super::FIELD_MANAGER.to_owned(),
            instance: Some("test".to_owned()),
        };
        let ctx = Context::new(client, reporter, RenderConfig::default(), metrics);
        (Arc::new(ctx), ApiServerVerifier(handle))
    }

    /// Failures in a row of `resource`, which set its retry delay.
    pub fn failures(&self, resource: &InferenceDeployment) -> u32 {
        let stored = super::Stored::new(resource.clone());
        self.backoff
            .failures(&kube::runtime::reflector::ObjectRef::from_obj(&stored))
    }
}

pub fn deployment_path() -> String {
    format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}")
}
pub fn service_path() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/services/{NAME}")
}
pub fn budget_path() -> String {
    format!("/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/{NAME}")
}
pub fn pods_path() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/pods")
}
pub fn status_path() -> String {
    format!("/apis/quiesce.dev/v1alpha1/namespaces/{NAMESPACE}/inferencedeployments/{NAME}/status")
}
pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events")
}

/// An expected sequence of API calls.
pub enum Scenario {
    /// Nothing exists: the reads, then apply Deployment, Service and
    /// PodDisruptionBudget, then the status.
    CreateFromNothing,
    /// Everything is in place: the reads and not one write.
    NothingToDo(Existing),
    /// Only the Deployment's status moved: the reads, the status.
    StatusOnly(Existing),
    /// A new replica count: the reads, apply the Deployment, the status.
    ApplyDeployment(Existing),
    /// A lower replica count: the reads, the pods listed (answered with
    /// `pods`), a ScalingIn event if `event`, `patches` pod patches in any
    /// order, apply the Deployment, the status.
    ScaleIn {
        existing: Existing,
        pods: Vec<Pod>,
        event: bool,
        patches: usize,
    },
    /// New drain settings: the reads, apply the Deployment, a
    /// DrainSettingsChanged event, the status.
    DrainChange(Existing),
    /// Service and budget disabled: the reads, delete both, the status.
    DeleteDisabled(Existing),
    /// Nothing to apply, a new problem or warning: the reads, the status,
    /// a Warning event. For an invalid or unrenderable spec, an object that
    /// is not ours, a long grace period.
    Warned(Existing),
    /// Nothing exists and the Deployment apply fails with `code`: the
    /// reads, the failed apply, the status with Degraded=True, a Warning
    /// event.
    ApplyFails(u16),
    /// The first read fails with `code`.
    ReadFails(u16),
    /// Not a single request.
    RadioSilence,
}

/// What the mock API server received, for the test to inspect.
#[derive(Debug, Default)]
pub struct Seen {
    /// Bodies of the server-side applies, in order.
    pub applied: Vec<Value>,
    /// Status patches, in order.
    pub statuses: Vec<InferenceDeploymentStatus>,
    /// Events created, in order.
    pub events: Vec<Value>,
    /// Paths and bodies of the deletes, in order.
    pub deleted: Vec<(String, Value)>,
    /// Pod names and merge patches, sorted by name.
    pub pod_patches: Vec<(String, Value)>,
    /// Requests beyond the scenario (answered with a 500 so the reconcile
    /// ends): `METHOD URI`.
    pub unexpected: Vec<String>,
}

/// A scenario being played.
pub struct Playing {
    stop: oneshot::Sender<()>,
    task: JoinHandle<(ApiServerVerifier, Seen)>,
}

impl Playing {
    /// Ends the scenario once the reconcile returned: fails the test if a
    /// request was missing, wrong or in excess; gives the verifier back.
    pub async fn finish(self) -> (ApiServerVerifier, Seen) {
        let _ = self.stop.send(());
        let (verifier, seen) = self.task.await.expect("the scenario ran as expected");
        assert!(
            seen.unexpected.is_empty(),
            "unexpected requests: {:?}",
            seen.unexpected
        );
        (verifier, seen)
    }
}

/// One received request.
struct Call {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// Mock API server: answers requests in the order a scenario expects them
/// and panics on anything else.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Plays `scenario` in the background. Requests after the scenario are
    /// recorded as unexpected until [`Playing::finish`].
    pub fn run(mut self, scenario: Scenario) -> Playing {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            self.play(scenario, &mut seen).await;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    request = self.0.next_request() => {
                        let Some((request, send)) = request else { break };
                        seen.unexpected.push(format!("{} {}", request.method(), request.uri()));
                        respond(send, failure(500));
                    }
                }
            }
            (self, seen)
        });
        Playing { stop, task }
    }

    /// Fails the test if the operator sends one more request.
    pub async fn assert_no_more_requests(&mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(SILENCE, self.0.next_request()).await {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }

    async fn play(&mut self, scenario: Scenario, seen: &mut Seen) {
        match scenario {
            Scenario::CreateFromNothing => {
                self.reads(&Existing::default()).await;
                let new = DeploymentStatus::default();
                let path = deployment_path();
                seen.applied
                    .push(self.apply::<Deployment>(&path, None, Some(&new)).await);
                let path = service_path();
                seen.applied
                    .push(self.apply::<Service>(&path, None, None).await);
                let path = budget_path();
                seen.applied
                    .push(self.apply::<PodDisruptionBudget>(&path, None, None).await);
                seen.statuses.push(self.status().await);
            }
            Scenario::NothingToDo(existing) => self.reads(&existing).await,
            Scenario::StatusOnly(existing) => {
                self.reads(&existing).await;
                seen.statuses.push(self.status().await);
            }
            Scenario::ApplyDeployment(existing) => {
                self.reads(&existing).await;
                let current = existing.deployment.as_ref();
                let status = current.and_then(|d| d.status.as_ref());
                seen.applied
                    .push(self.apply(&deployment_path(), current, status).await);
                seen.statuses.push(self.status().await);
            }
            Scenario::ScaleIn {
                existing,
                pods,
                event,
                patches,
            } => {
                self.reads(&existing).await;
                let (call, send) = self.next().await;
                assert_eq!((call.method, call.path), (Method::GET, pods_path()));
                assert!(
                    call.query
                        .contains("labelSelector=quiesce.dev%2Finference-deployment%3Ddemo"),
                    "{}",
                    call.query
                );
                let list =
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods});
                respond(send, (StatusCode::OK, list));
                if event {
                    seen.events.push(self.event().await);
                }
                for _ in 0..patches {
                    let (call, send) = self.next().await;
                    assert_eq!(call.method, Method::PATCH);
                    assert_eq!(call.content_type, "application/merge-patch+json");
                    let name = call.path.rsplit('/').next().unwrap_or_default().to_owned();
                    respond(
                        send,
                        (
                            StatusCode::OK,
                            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}),
                        ),
                    );
                    seen.pod_patches.push((name, call.body));
                }
                seen.pod_patches.sort_by(|a, b| a.0.cmp(&b.0));
                let current = existing.deployment.as_ref();
                let status = current.and_then(|d| d.status.as_ref());
                seen.applied
                    .push(self.apply(&deployment_path(), current, status).await);
                seen.statuses.push(self.status().await);
            }
            Scenario::DrainChange(existing) => {
                self.reads(&existing).await;
                let current = existing.deployment.as_ref();
                let status = current.and_then(|d| d.status.as_ref());
                seen.applied
                    .push(self.apply(&deployment_path(), current, status).await);
                seen.events.push(self.event().await);
                seen.statuses.push(self.status().await);
            }
            Scenario::DeleteDisabled(existing) => {
                self.reads(&existing).await;
                seen.deleted
                    .push(self.delete(&service_path(), &existing.service).await);
                let budget = &existing.pod_disruption_budget;
                seen.deleted.push(self.delete(&budget_path(), budget).await);
                seen.statuses.push(self.status().await);
            }
            Scenario::Warned(existing) => {
                self.reads(&existing).await;
                seen.statuses.push(self.status().await);
                seen.events.push(self.event().await);
            }
            Scenario::ApplyFails(code) => {
                self.reads(&Existing::default()).await;
                let (call, send) = self.next().await;
                assert_eq!((call.method, call.path), (Method::PATCH, deployment_path()));
                respond(send, failure(code));
                seen.statuses.push(self.status().await);
                seen.events.push(self.event().await);
            }
            Scenario::ReadFails(code) => {
                let (call, send) = self.next().await;
                assert_eq!((call.method, call.path), (Method::GET, deployment_path()));
                respond(send, failure(code));
            }
            Scenario::RadioSilence => {}
        }
    }

    async fn next(&mut self) -> (Call, SendResponse<Response<Body>>) {
        let (request, send) = tokio::time::timeout(PATIENCE, self.0.next_request())
            .await
            .expect("the operator stopped calling the API server too early")
            .expect("the client was dropped");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let call = Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type,
            body,
        };
        (call, send)
    }

    /// The reads of every reconcile: a GET of each object of `existing`
    /// that the watches do not hold (see [`watched`]), answered from it.
    async fn reads(&mut self, existing: &Existing) {
        let cached = watched(existing);
        if cached.deployment.is_none() {
            self.read(&deployment_path(), &existing.deployment).await;
        }
        if cached.service.is_none() {
            self.read(&service_path(), &existing.service).await;
        }
        if cached.pod_disruption_budget.is_none() {
            self.read(&budget_path(), &existing.pod_disruption_budget)
                .await;
        }
    }

    async fn read<K: Serialize>(&mut self, path: &str, object: &Option<K>) {
        let (call, send) = self.next().await;
        assert_eq!((call.method, call.path.as_str()), (Method::GET, path));
        // The API server's watch cache, not etcd.
        assert!(call.query.contains("resourceVersion=0"), "{}", call.query);
        match object {
            Some(object) => respond(send, (StatusCode::OK, json(object))),
            None => respond(send, failure(404)),
        }
    }

    /// A server-side apply with our field manager; answered with the
    /// object as stored: `current`'s uid and a new generation, and `status`.
    async fn apply<K: Resource + Serialize>(
        &mut self,
        path: &str,
        current: Option<&K>,
        status: Option<&DeploymentStatus>,
    ) -> Value {
        let (call, send) = self.next().await;
        assert_eq!((call.method, call.path.as_str()), (Method::PATCH, path));
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        assert!(
            call.query.contains("fieldManager=quiesce-operator"),
            "{}",
            call.query
        );
        assert!(call.query.contains("force=true"), "{}", call.query);
        let mut stored = call.body.clone();
        let meta = current.map(Resource::meta);
        let uid = meta
            .and_then(|m| m.uid.clone())
            .unwrap_or_else(|| "uid-new".to_owned());
        let generation = meta.and_then(|m| m.generation).unwrap_or(0) + 1;
        stored["metadata"]["uid"] = json!(uid);
        stored["metadata"]["resourceVersion"] = json!("2");
        stored["metadata"]["generation"] = json!(generation);
        if let Some(status) = status {
            stored["status"] = json(status);
        }
        respond(send, (StatusCode::OK, stored));
        call.body
    }

    async fn status(&mut self) -> InferenceDeploymentStatus {
        let (call, send) = self.next().await;
        assert_eq!((call.method, call.path), (Method::PATCH, status_path()));
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        assert!(
            call.query.contains("fieldManager=quiesce-operator"),
            "{}",
            call.query
        );
        assert_eq!(call.body["apiVersion"], "quiesce.dev/v1alpha1");
        assert_eq!(call.body["kind"], "InferenceDeployment");
        let status: InferenceDeploymentStatus =
            serde_json::from_value(call.body["status"].clone()).expect("a status");
        let mut stored = json(&resource(""));
        stored["status"] = call.body["status"].clone();
        respond(send, (StatusCode::OK, stored));
        status
    }

    async fn event(&mut self) -> Value {
        let (call, send) = self.next().await;
        assert_eq!((call.method, call.path), (Method::POST, events_path()));
        respond(send, (StatusCode::CREATED, call.body.clone()));
        call.body
    }

    async fn delete<K: Serialize>(&mut self, path: &str, current: &Option<K>) -> (String, Value) {
        let (call, send) = self.next().await;
        assert_eq!((call.method, call.path.as_str()), (Method::DELETE, path));
        let object = current.as_ref().map_or(Value::Null, json);
        respond(send, (StatusCode::OK, object));
        (call.path, call.body)
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("fixtures serialize")
}

fn failure(code: u16) -> (StatusCode, Value) {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    let status = StatusCode::from_u16(code).expect("a status code");
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("fake API server says {code}"),
        "reason": reason,
        "code": code,
    });
    (status, body)
}

fn respond(send: SendResponse<Response<Body>>, (status, body): (StatusCode, Value)) {
    let bytes = serde_json::to_vec(&body).expect("JSON");
    let response = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .expect("a response");
    send.send_response(response);
}
