//! The controller: reconciles each InferenceDeployment into its Deployment,
//! Service and PodDisruptionBudget, and reports what it finds in the status.
//!
//! A reconcile is a thin layer of API calls around pure functions:
//!
//! 1. fetch: the Deployment, Service and PodDisruptionBudget named after the
//!    resource, from the controller's watch caches (a GET only for one the
//!    cache lacks: it may be someone else's, which must not be taken over);
//! 2. validate and build: [`render::render`] (invalid or unrenderable: the
//!    status says why, nothing is applied);
//! 3. plan: [`plan::plan`] compares the rendered objects with the fetched
//!    ones and decides, per object, to apply, keep or delete;
//! 4. apply: server-side apply with one field manager,
//!    [`FIELD_MANAGER`], forcing ownership of the fields quiesce sets;
//! 5. status: [`status::desired_status`], written (server-side apply on the
//!    status subresource) only when it differs from the stored one.
//!
//! A reconcile that finds everything in place writes nothing: no apply, no
//! status, no event. Deletion needs no code: every object has a controller
//! owner reference, and the garbage collector deletes them with the
//! resource.

pub mod backoff;
mod cache;
mod error;
pub mod events;
pub mod plan;
pub mod scale_in;
pub mod status;
mod stored;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt, future};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, GetParams, PartialObjectMeta, Patch, PatchParams, Preconditions,
};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use self::cache::Cache;
pub use self::error::{Error, describe};
use self::plan::{Existing, Plan, Step};
use self::status::{DEGRADED, Observed, Problem, desired_status, find_condition};
pub use self::stored::Stored;
use crate::metrics::{Metrics, ReconcileResult};
use quiesce_api::reason::Reason;
use quiesce_api::render::labels::{MANAGED_BY, MANAGED_BY_LABEL, SELECTOR_LABEL};
use quiesce_api::render::{self, Conflict, RenderConfig};
use quiesce_api::{InferenceDeployment, InferenceDeploymentStatus, ScaleInPolicy};

/// The one field manager of every write, objects and status alike.
pub const FIELD_MANAGER: &str = "quiesce-operator";

/// A resource that reconciled is looked at again after this long even if
/// nothing changed, to repair what watches may have missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// How long a shutdown waits for the reconciles in flight; below the
/// kubelet's default 30 s grace period, leaving time to release the Lease.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// Several reconciles of one resource within this window become one: a
/// rollout updates the Deployment's status many times a second.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// Reconciles at once, at most. Unbounded, a fleet of 1,000 resources held
/// a thousand of them in flight against an API server that can serve a few
/// dozen: the operator's memory grew with the queue (170 MiB), and nothing
/// went faster.
pub const MAX_CONCURRENT_RECONCILES: u16 = 32;

/// What the reconciles share.
pub struct Context {
    client: Client,
    recorder: Recorder,
    render_config: RenderConfig,
    metrics: Metrics,
    backoff: backoff::FailureBackoff,
    /// What the running controller's watches see.
    caches: RwLock<Caches>,
}

/// The objects the controller watches, as its watches last saw them. Until
/// [`run`] fills them, each is empty and read from the API server instead.
#[derive(Clone)]
struct Caches {
    /// The pods of every InferenceDeployment, metadata only.
    pods: Store<PartialObjectMeta<Pod>>,
    /// quiesce's own objects, by their managed-by label.
    deployments: Cache<Deployment>,
    services: Cache<Service>,
    budgets: Cache<PodDisruptionBudget>,
}

/// The writing ends of [`Caches`], one for each watch.
struct CacheWriters {
    pods: reflector::store::Writer<PartialObjectMeta<Pod>>,
    deployments: cache::Writer<Deployment>,
    services: cache::Writer<Service>,
    budgets: cache::Writer<PodDisruptionBudget>,
}

impl Caches {
    /// Empty caches and their writers.
    fn new() -> (Self, CacheWriters) {
        let (pods, pods_writer) = reflector::store();
        let (deployments, deployments_writer) = cache::cache();
        let (services, services_writer) = cache::cache();
        let (budgets, budgets_writer) = cache::cache();
        let caches = Self {
            pods,
            deployments,
            services,
            budgets,
        };
        let writers = CacheWriters {
            pods: pods_writer,
            deployments: deployments_writer,
            services: services_writer,
            budgets: budgets_writer,
        };
        (caches, writers)
    }
}

impl Context {
    /// A context that talks to the API server through `client` and records
    /// events as `reporter`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        render_config: RenderConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            render_config,
            metrics,
            backoff: backoff::FailureBackoff::default(),
            caches: RwLock::new(Caches::new().0),
        }
    }

    fn caches(&self) -> Caches {
        self.caches.read().expect("cache lock").clone()
    }

    /// From now on, the reconciles read `caches`.
    fn use_caches(&self, caches: Caches) {
        *self.caches.write().expect("cache lock") = caches;
    }

    /// The pods of InferenceDeployment `namespace/name` that are deleted and
    /// not yet gone, by name.
    fn deleted_pods(&self, namespace: &str, name: &str) -> Vec<String> {
        self.caches()
            .pods
            .state()
            .iter()
            .filter(|pod| {
                pod.metadata.deletion_timestamp.is_some()
                    && pod.metadata.namespace.as_deref() == Some(namespace)
                    && pod.labels().get(SELECTOR_LABEL).map(String::as_str) == Some(name)
            })
            .map(|pod| pod.name_any())
            .collect()
    }

    /// The metrics the reconciles update.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// How a successful reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Something was written.
    Applied,
    /// Everything was in place.
    Unchanged,
    /// The spec cannot be applied; the status says why.
    Rejected(Reason),
    /// The resource is being deleted.
    Deleting,
}

/// Reconciles one InferenceDeployment. Counts the result, times it, and
/// resets the object's backoff when it succeeds.
pub async fn reconcile(stored: Arc<Stored>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile();
    match reconcile_resource(&stored.resource(), &ctx).await {
        Ok(outcome) => {
            ctx.backoff.succeeded(&ObjectRef::from_obj(&*stored));
            let (result, action) = match outcome {
                Outcome::Applied => (ReconcileResult::applied, Action::requeue(RESYNC_INTERVAL)),
                Outcome::Unchanged => {
                    (ReconcileResult::unchanged, Action::requeue(RESYNC_INTERVAL))
                }
                // Only a new spec can help.
                Outcome::Rejected(reason) => {
                    ctx.metrics.failed(reason);
                    (ReconcileResult::rejected, Action::await_change())
                }
                Outcome::Deleting => (ReconcileResult::deleting, Action::await_change()),
            };
            ctx.metrics.reconciled(result);
            Ok(action)
        }
        Err(error) => {
            ctx.metrics.reconciled(ReconcileResult::error);
            ctx.metrics.failed(error.reason());
            Err(error)
        }
    }
}

/// Retries a failed reconcile after an exponential, per-object delay (see
/// [`backoff`]).
pub fn error_policy(resource: Arc<Stored>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&ObjectRef::from_obj(&*resource));
    warn!(
        namespace = resource.namespace().unwrap_or_default(),
        name = resource.name_any(),
        reason = ?error.reason(),
        retry_in_seconds = delay.as_secs(),
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` completes, then lets the reconciles
/// in flight finish, for at most [`SHUTDOWN_TIMEOUT`]. Watches
/// InferenceDeployments in `namespace`, or in every namespace, and the
/// Deployments, Services and PodDisruptionBudgets labelled as quiesce's.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }
    let client = &ctx.client;
    let (caches, writers) = Caches::new();
    ctx.use_caches(caches);
    // Only our objects: a cluster-wide watch of every Deployment would cache
    // all of them.
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    // The pods, metadata only: their deletions make status.drainingReplicas
    // and tell a scale-in which pods went. The store sees every update; only
    // a deletion that begins or ends triggers a reconcile.
    let pod_events = watcher(
        api::<PartialObjectMeta<Pod>>(client, namespace),
        watcher::Config::default().labels(SELECTOR_LABEL),
    )
    .default_backoff()
    .reflect(writers.pods)
    .scan(HashSet::new(), |terminating, event| {
        future::ready(Some(
            event.map(|event| drain_transition(terminating, event)),
        ))
    })
    .filter_map(|event| future::ready(event.transpose()));
    let (resources, resources_writer) = reflector::store();
    // A new spec or new metadata (`kubectl annotate` to ask for a
    // reconcile), not a new status: our own status writes would each
    // trigger one more reconcile.
    let new_specs = watch(
        api::<InferenceDeployment>(client, namespace),
        watcher::Config::default(),
    )
    .map_ok(stored)
    .reflect(resources_writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(predicates::labels)
            .combine(predicates::annotations),
        PredicateConfig::default(),
    );
    let controller = Controller::for_stream(new_specs, resources)
        .owns_stream(cached(
            api::<Deployment>(client, namespace),
            ours.clone(),
            writers.deployments,
        ))
        .owns_stream(cached(
            api::<Service>(client, namespace),
            ours.clone(),
            writers.services,
        ))
        .owns_stream(cached(
            api::<PodDisruptionBudget>(client, namespace),
            ours,
            writers.budgets,
        ))
        .watches_stream(pod_events, |pod| {
            let name = pod.labels().get(SELECTOR_LABEL)?;
            Some(ObjectRef::new(name).within(&pod.namespace()?))
        })
        .with_config(
            controller::Config::default()
                .debounce(DEBOUNCE)
                .concurrency(MAX_CONCURRENT_RECONCILES),
        );
    let store = controller.store();
    let stopping = shutdown.shared();
    let running = controller
        .graceful_shutdown_on(stopping.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(object = %object, "reconciled"),
                // Logged by error_policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!("controller: {error}"),
            }
        });
    let overdue = async move {
        stopping.await;
        // Until the first list of InferenceDeployments completes no reconcile
        // runs, and kube's controller would wait for that list forever once
        // its watches are stopped: nothing to finish, stop now.
        if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
            return;
        }
        tokio::time::sleep(SHUTDOWN_TIMEOUT).await;
        warn!(
            "reconciles still running {}s after the shutdown began: abandoning them",
            SHUTDOWN_TIMEOUT.as_secs()
        );
    };
    tokio::select! {
        () = running => {}
        () = overdue => {}
    }
}

/// The watch events of the objects of `api` that `config` selects, without
/// their managedFields, which nothing reads.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(|object| object.meta_mut().managed_fields = None)
}

/// The watch event, with each resource as the controller keeps it.
fn stored(event: watcher::Event<InferenceDeployment>) -> watcher::Event<Stored> {
    match event {
        watcher::Event::Apply(resource) => watcher::Event::Apply(Stored::new(resource)),
        watcher::Event::Delete(resource) => watcher::Event::Delete(Stored::new(resource)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(resource) => watcher::Event::InitApply(Stored::new(resource)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Every object of `api` that `config` selects and that changed or went,
/// once `writer` has taken it in.
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: cache::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    watch(api, config)
        .inspect_ok(move |event| writer.apply(event))
        .touched_objects()
}

/// The pod event, if `event` begins or ends a pod's deletion; `terminating`
/// holds the uids of the pods whose deletion began. Every other update of a
/// pod (its status, its annotations) is dropped: each trigger restarts the
/// debounce, and the stream of pod updates of a rollout would hold the
/// resource's reconciles back for as long as it lasts.
fn drain_transition(
    terminating: &mut HashSet<String>,
    event: watcher::Event<PartialObjectMeta<Pod>>,
) -> Option<PartialObjectMeta<Pod>> {
    match event {
        watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
            let uid = pod.metadata.uid.clone()?;
            (pod.metadata.deletion_timestamp.is_some() && terminating.insert(uid)).then_some(pod)
        }
        watcher::Event::Delete(pod) => {
            if let Some(uid) = &pod.metadata.uid {
                terminating.remove(uid);
            }
            Some(pod)
        }
        // A new list: its pods come again as InitApply.
        watcher::Event::Init => {
            terminating.clear();
            None
        }
        watcher::Event::InitDone => None,
    }
}

async fn reconcile_resource(
    resource: &InferenceDeployment,
    ctx: &Arc<Context>,
) -> Result<Outcome, Error> {
    if resource.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the owned objects; applying them now
        // would fight it.
        return Ok(Outcome::Deleting);
    }
    let name = resource
        .metadata
        .name
        .as_deref()
        .ok_or(Error::Incomplete("metadata.name"))?;
    let namespace = resource
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let objects = Objects::new(&ctx.client, namespace, name);
    let existing = objects.fetch(&ctx.caches()).await?;
    let draining_pods = i32::try_from(ctx.deleted_pods(namespace, name).len()).unwrap_or(i32::MAX);

    let rendered = match render::render(resource, &ctx.render_config) {
        Ok(rendered) => rendered,
        Err(error) => {
            info!(namespace, name, "not applied: {error}");
            let problem = Problem::rejected(&error);
            let report = Report {
                resource,
                deployment: existing.deployment.as_ref(),
                problem: Some(&problem),
                conflicts: &[],
                draining_pods,
            };
            report.write(ctx, &objects).await?;
            let reason = match error {
                render::RenderError::Invalid(_) => Reason::InvalidSpec,
                render::RenderError::Unrenderable(_) => Reason::Unrenderable,
            };
            return Ok(Outcome::Rejected(reason));
        }
    };
    let conflicts = rendered.conflicts.clone();
    let plan = match plan::plan(rendered, resource.metadata.uid.as_deref(), &existing) {
        Ok(plan) => plan,
        Err(not_owned) => {
            let problem = Problem::NotOwned(not_owned.to_string());
            let report = Report {
                resource,
                deployment: existing.deployment.as_ref(),
                problem: Some(&problem),
                conflicts: &conflicts,
                draining_pods,
            };
            report.write_best_effort(ctx, &objects).await;
            return Err(not_owned.into());
        }
    };

    let mut deployment = existing.deployment.clone();
    let executed = execute(plan, &existing, resource, ctx, &objects, &mut deployment).await;
    let wrote_objects = match executed {
        Ok(wrote) => wrote,
        Err(error) => {
            let problem = Problem::ApplyFailed(error.to_string());
            let report = Report {
                resource,
                deployment: deployment.as_ref(),
                problem: Some(&problem),
                conflicts: &conflicts,
                draining_pods,
            };
            report.write_best_effort(ctx, &objects).await;
            return Err(error);
        }
    };
    let report = Report {
        resource,
        deployment: deployment.as_ref(),
        problem: None,
        conflicts: &conflicts,
        draining_pods,
    };
    let wrote_status = report.write(ctx, &objects).await?;
    Ok(if wrote_objects || wrote_status {
        Outcome::Applied
    } else {
        Outcome::Unchanged
    })
}

/// Carries out `plan`: Deployment first, so the pods change as early as
/// possible, then Service and PodDisruptionBudget. `deployment` follows
/// what the API server returned. Returns whether anything was written: an
/// apply whose object the API server already had (it differed from the
/// rendered one only in form, such as a quantity written `0.5` instead of
/// `500m`) writes nothing and keeps the resourceVersion.
async fn execute(
    plan: Plan,
    existing: &Existing,
    resource: &InferenceDeployment,
    ctx: &Arc<Context>,
    objects: &Objects,
    deployment: &mut Option<Deployment>,
) -> Result<bool, Error> {
    let mut wrote = false;
    if let Step::Apply(desired) = plan.deployment {
        let scale_in = scale_in_of(existing.deployment.as_ref(), &desired);
        let before = match scale_in {
            Some((from, to)) => Some(prepare_scale_in(ctx, resource, objects, from, to).await),
            None => None,
        };
        let applied = objects.apply(&objects.deployments, &desired).await?;
        if let (Some((from, to)), Some(before)) = (scale_in, before) {
            tokio::spawn(follow_scale_in(
                ctx.clone(),
                resource.clone(),
                (from, to),
                before,
            ));
        }
        if changed(existing.deployment.as_ref(), &applied) {
            wrote = true;
            info!(
                namespace = objects.namespace,
                name = objects.name,
                "applied the Deployment"
            );
            if let Some(change) = &plan.drain_change {
                publish(ctx, resource, events::drain_settings_changed(change)).await;
            }
        }
        *deployment = Some(applied);
    }
    wrote |= objects
        .carry_out(&objects.services, existing.service.as_ref(), plan.service)
        .await?;
    wrote |= objects
        .carry_out(
            &objects.budgets,
            existing.pod_disruption_budget.as_ref(),
            plan.pod_disruption_budget,
        )
        .await?;
    Ok(wrote)
}

/// The replica counts `(from, to)` when applying `desired` lowers them.
fn scale_in_of(current: Option<&Deployment>, desired: &Deployment) -> Option<(i32, i32)> {
    // The Deployment's own default.
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let (from, to) = (replicas(current?), replicas(desired));
    (to < from).then_some((from, to))
}

/// Before a scale-in from `from` to `to`: under IdleFirst, reads every
/// Ready pod's load and sets the deletion costs, idlest first; under
/// Default, removes the costs quiesce set earlier. Returns the Ready pods
/// and how many of them should go. A failure here does not hold up the
/// scale-in: a Warning event says the ReplicaSet controller picks unaided.
async fn prepare_scale_in(
    ctx: &Context,
    resource: &InferenceDeployment,
    objects: &Objects,
    from: i32,
    to: i32,
) -> (Vec<scale_in::Candidate>, usize) {
    let policy = resource.spec.scale_in.policy;
    ctx.metrics.scaled_in(policy);
    let pods = match scale_in::list_pods(&objects.pods, &objects.name).await {
        Ok(pods) => pods,
        Err(error) => {
            let error = describe(&error);
            warn!(
                namespace = objects.namespace,
                name = objects.name,
                "scale-in: cannot list the pods: {error}"
            );
            publish(ctx, resource, events::scale_in_unprepared(&error)).await;
            return (Vec::new(), 0);
        }
    };
    let candidates = scale_in::candidates(&pods);
    // Pods that are not Ready go first whatever their cost.
    let alive = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    let removed = usize::try_from(from - to)
        .unwrap_or(0)
        .saturating_sub(alive - candidates.len());
    let now = Timestamp::now();
    let mut patches = Vec::new();
    if policy == ScaleInPolicy::IdleFirst {
        let started = Instant::now();
        let mut loads = scale_in::read_loads(&candidates).await;
        ctx.metrics.loads_read(started.elapsed());
        scale_in::idlest_first(&mut loads);
        let (going, staying) = loads.split_at(removed.min(loads.len()));
        info!(
            namespace = objects.namespace,
            name = objects.name,
            from,
            to,
            read_ms = started.elapsed().as_millis(),
            "scale-in, idlest first: removing {}; keeping {}",
            scale_in::list(going),
            scale_in::list(staying)
        );
        publish(ctx, resource, events::scaling_in(from, to, going, staying)).await;
        patches.extend(loads.iter().map(|pod| {
            (
                pod.name.clone(),
                scale_in::cost_patch(Some(pod.cost()), now),
            )
        }));
    }
    // Costs of earlier scale-ins mislead this one: remove them.
    let sampled: Vec<String> = patches.iter().map(|(name, _)| name.clone()).collect();
    patches.extend(
        pods.iter()
            .filter(|pod| scale_in::has_our_cost(pod) && !sampled.contains(&pod.name_any()))
            .map(|pod| (pod.name_any(), scale_in::cost_patch(None, now))),
    );
    if let Err(error) = scale_in::patch_pods(&objects.pods, patches).await {
        let error = describe(&error);
        warn!(
            namespace = objects.namespace,
            name = objects.name,
            "scale-in: cannot set the deletion costs: {error}"
        );
        publish(ctx, resource, events::scale_in_unprepared(&error)).await;
    }
    (candidates, removed)
}

/// After a scale-in: once the ReplicaSet controller deleted its pods, reads
/// the load of the removed and the kept ones, counts them in the metrics and
/// records which went in a ScaledIn event.
async fn follow_scale_in(
    ctx: Arc<Context>,
    resource: InferenceDeployment,
    (from, to): (i32, i32),
    (candidates, removed): (Vec<scale_in::Candidate>, usize),
) {
    if removed == 0 {
        return;
    }
    let namespace = resource.namespace().unwrap_or_default();
    let name = resource.name_any();
    let deleted_now = || ctx.deleted_pods(&namespace, &name);
    let Some(outcome) = scale_in::follow(candidates, removed, deleted_now).await else {
        debug!(
            namespace,
            name, "scale-in: the pods were not deleted in time to follow"
        );
        return;
    };
    ctx.metrics.scale_in_outcome(&outcome);
    let policy = resource.spec.scale_in.policy;
    info!(
        namespace,
        name,
        policy = policy.as_str(),
        mischosen = outcome.mischosen(),
        "scale-in done: removed {}; kept {}",
        scale_in::list(&outcome.removed),
        scale_in::list(&outcome.kept)
    );
    publish(
        &ctx,
        &resource,
        events::scaled_in(from, to, policy, &outcome),
    )
    .await;
}

/// Whether `applied`, as the API server returned it, is a new version of
/// `before`.
fn changed<K: Resource>(before: Option<&K>, applied: &K) -> bool {
    let version = |object: &K| object.meta().resource_version.clone();
    before.is_none_or(|before| version(before) != version(applied))
}

/// The status of one reconcile, to be written if it changed.
struct Report<'a> {
    resource: &'a InferenceDeployment,
    deployment: Option<&'a Deployment>,
    problem: Option<&'a Problem>,
    conflicts: &'a [Conflict],
    draining_pods: i32,
}

impl Report<'_> {
    /// Writes the status when it differs from the stored one, and records a
    /// Warning event when the Degraded condition changed. Returns whether it
    /// wrote.
    async fn write(&self, ctx: &Context, objects: &Objects) -> Result<bool, Error> {
        let now = Time(Timestamp::now());
        let status = desired_status(
            Observed {
                resource: self.resource,
                deployment: self.deployment,
                problem: self.problem,
                conflicts: self.conflicts,
                draining_pods: self.draining_pods,
            },
            &now,
        );
        let previous = self.resource.status.as_ref();
        if previous == Some(&status) {
            return Ok(false);
        }
        objects.patch_status(&status).await?;
        let event = events::degraded_changed(
            find_condition(previous, DEGRADED),
            find_condition(Some(&status), DEGRADED),
        );
        if let Some(event) = event {
            publish(ctx, self.resource, event).await;
        }
        Ok(true)
    }

    /// Writes the status of a failed reconcile; the reconcile's own error
    /// matters more than this one's, so this one is only logged.
    async fn write_best_effort(&self, ctx: &Context, objects: &Objects) {
        if let Err(error) = self.write(ctx, objects).await {
            warn!(
                namespace = objects.namespace,
                name = objects.name,
                "{error}"
            );
        }
    }
}

/// Events are for people; a reconcile does not fail because one could not
/// be recorded.
async fn publish(ctx: &Context, resource: &InferenceDeployment, event: Event) {
    let reference = resource.object_ref(&());
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        warn!(
            namespace = reference.namespace,
            name = reference.name,
            reason = event.reason,
            "cannot record an event: {}",
            describe(&error)
        );
    }
}

/// The API of each kind, in the resource's namespace.
struct Objects {
    namespace: String,
    name: String,
    resources: Api<InferenceDeployment>,
    deployments: Api<Deployment>,
    services: Api<Service>,
    budgets: Api<PodDisruptionBudget>,
    pods: Api<Pod>,
}

impl Objects {
    fn new(client: &Client, namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            resources: Api::namespaced(client.clone(), namespace),
            deployments: Api::namespaced(client.clone(), namespace),
            services: Api::namespaced(client.clone(), namespace),
            budgets: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client.clone(), namespace),
        }
    }

    async fn fetch(&self, caches: &Caches) -> Result<Existing, Error> {
        Ok(Existing {
            deployment: self.read(&caches.deployments, &self.deployments).await?,
            service: self.read(&caches.services, &self.services).await?,
            pod_disruption_budget: self.read(&caches.budgets, &self.budgets).await?,
        })
    }

    /// The object from `cache` once it holds its first list, else from the
    /// API server: one the cache lacks may be another controller's, with
    /// our name and not our label, and must be seen to be refused.
    async fn read<K>(&self, cache: &Cache<K>, api: &Api<K>) -> Result<Option<K>, Error>
    where
        K: k8s_openapi::Resource + Clone + DeserializeOwned + Debug,
    {
        // Not listed only when no watch fills this cache (a context on its
        // own).
        if cache.listed().await
            && let Some(object) = cache.get(&self.namespace, &self.name)
        {
            return Ok(Some(object));
        }
        self.get(api).await
    }

    async fn get<K>(&self, api: &Api<K>) -> Result<Option<K>, Error>
    where
        K: k8s_openapi::Resource + Clone + DeserializeOwned + Debug,
    {
        // From the API server's own watch cache, not a quorum read of etcd:
        // as fresh as our watches, and far cheaper under load.
        match api.get_with(&self.name, &GetParams::any()).await {
            Ok(object) => Ok(Some(object)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(source) => Err(Error::Read {
                kind: K::KIND,
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
        }
    }

    async fn apply<K>(&self, api: &Api<K>, object: &K) -> Result<K, Error>
    where
        K: k8s_openapi::Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&self.name, &params, &Patch::Apply(object))
            .await
            .map_err(|source| Error::Apply {
                kind: K::KIND,
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })
    }

    /// Carries out `step` on the object that was `current`; returns
    /// whether it wrote.
    async fn carry_out<K>(
        &self,
        api: &Api<K>,
        current: Option<&K>,
        step: Step<K>,
    ) -> Result<bool, Error>
    where
        K: k8s_openapi::Resource + Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        match step {
            Step::Keep => Ok(false),
            Step::Apply(object) => {
                let applied = self.apply(api, &object).await?;
                let wrote = changed(current, &applied);
                if wrote {
                    info!(
                        namespace = self.namespace,
                        name = self.name,
                        kind = K::KIND,
                        "applied"
                    );
                }
                Ok(wrote)
            }
            Step::Delete { uid } => {
                // The uid precondition spares an object that replaced ours.
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&self.name, &params).await {
                    Ok(_) => {
                        info!(
                            namespace = self.namespace,
                            name = self.name,
                            kind = K::KIND,
                            "deleted: disabled in the spec"
                        );
                        Ok(true)
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
                    Err(source) => Err(Error::Delete {
                        kind: K::KIND,
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        source,
                    }),
                }
            }
        }
    }

    async fn patch_status(&self, status: &InferenceDeploymentStatus) -> Result<(), Error> {
        let patch = serde_json::json!({
            "apiVersion": <InferenceDeployment as kube::Resource>::api_version(&()),
            "kind": <InferenceDeployment as kube::Resource>::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.resources
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await
            .map(drop)
            .map_err(|source| Error::Status {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })
    }
}
