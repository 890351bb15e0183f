//! The operator at a platform team's scale: many InferenceDeployments with
//! `replicas: 0` (a Deployment, a Service and a PDB each, no pods), then a
//! change of the drain timeout of all of them, then a new leader (the
//! chart's standby, with kube-controller-manager stopped so that nothing
//! else moves), whose first pass over everything must write nothing. A
//! benchmark: `QUIESCE_FLEET_SIZES=100,1000,10000 quiesce-cluster
//! --only helm-install,fleet` (docs/operator.md gives the curve), and with
//! `QUIESCE_FLEET_REPLICAS=1` each resource runs a pod, whose Ready and
//! whose rollout after the change are timed too.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure as check};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use quiesce_api::{InferenceDeployment, InferenceDeploymentStatus};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::endurance::{running, usage};
use super::install::{self, OPERATOR, helm_release};
use super::workload::{leader, leader_metrics, sample};
use crate::cluster::manifests;
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{RELEASE_NAMESPACE, Suite};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Namespace of the fleet.
const NAMESPACE: &str = "qe2e-fleet";
/// Requests in flight while the suite creates or patches the fleet.
const CONCURRENCY: usize = 32;
/// The goal for 10,000 resources; a run of another size scales it.
const CONVERGE_GOAL_PER_10K: Duration = Duration::from_secs(120);

/// The sizes to run, from `QUIESCE_FLEET_SIZES` (`100,1000,10000`), or
/// 1,000.
fn sizes() -> anyhow::Result<Vec<usize>> {
    let Ok(sizes) = std::env::var("QUIESCE_FLEET_SIZES") else {
        return Ok(vec![1000]);
    };
    sizes
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("QUIESCE_FLEET_SIZES: {s:?} is not a count"))
        })
        .collect()
}

/// Waits until `size` objects of `api` are `observed`, at most `within`.
/// A watch, not polls: a list of 10,000 resources every few seconds would
/// load the API server being measured.
async fn until_observed<K>(
    api: &Api<K>,
    size: usize,
    within: Duration,
    what: &str,
    observed: impl Fn(&K) -> bool,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut done = HashSet::new();
    let watch = async {
        let events = watcher(api.clone(), watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.try_next().await? {
            match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    if observed(&o) {
                        done.insert(o.name_any());
                    } else {
                        done.remove(&o.name_any());
                    }
                }
                watcher::Event::Delete(o) => {
                    done.remove(&o.name_any());
                }
                watcher::Event::Init => done.clear(),
                watcher::Event::InitDone => {}
            }
            if done.len() >= size {
                return Ok(());
            }
        }
        anyhow::bail!("{what}: the watch ended")
    };
    match tokio::time::timeout(within, watch).await {
        Ok(watched) => watched,
        Err(_) => anyhow::bail!("{what}: {} of {size} after {within:?}", done.len()),
    }
}

/// Waits until every resource has a status for its current generation.
async fn until_converged(
    api: &Api<InferenceDeployment>,
    size: usize,
    within: Duration,
    what: &str,
) -> anyhow::Result<()> {
    until_observed(api, size, within, what, |r: &InferenceDeployment| {
        r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation
    })
    .await
}

/// Waits until every resource has `replicas` Ready replicas of its current
/// pod template, and a complete rollout: until the Deployment controller
/// picks up a change, the counts are still the old template's. Returns the
/// time since `since`, or `None` without pods.
async fn until_ready(
    api: &Api<InferenceDeployment>,
    size: usize,
    replicas: i32,
    within: Duration,
    what: &str,
    since: Instant,
) -> anyhow::Result<Option<Duration>> {
    if replicas == 0 {
        return Ok(None);
    }
    until_observed(api, size, within, what, |r: &InferenceDeployment| {
        r.status.as_ref().is_some_and(|s| {
            s.observed_generation == r.metadata.generation
                && s.ready_replicas == replicas
                && s.updated_replicas == replicas
                && s.replicas == replicas
                && rollout_complete(s)
        })
    })
    .await?;
    Ok(Some(since.elapsed()))
}

/// Whether `status` says the Deployment controller completed the rollout
/// of the current template.
fn rollout_complete(status: &InferenceDeploymentStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "False" && c.reason == "RolloutComplete")
}

/// kube-controller-manager, stopped (SIGSTOP) until this is dropped.
///
/// A new leader's pass writes nothing only if nothing changed since the old
/// leader's last reconcile, but the kit's controller-manager (20 requests/s
/// per controller, its default) takes about 4 minutes to write the statuses
/// of 1,000 new Deployments, and most of an hour for 10,000. While it is
/// stopped the fleet stands still; the operator's standby needs none of its
/// controllers to take over.
struct ControllerManagerStopped(Pid);

impl ControllerManagerStopped {
    fn stop() -> anyhow::Result<Self> {
        let found = running("kube-controller-manager", &[]);
        let [process] = found[..] else {
            anyhow::bail!(
                "{} kube-controller-manager processes run on this machine, not one",
                found.len()
            );
        };
        let pid = Pid::from_raw(process);
        signal::kill(pid, Signal::SIGSTOP).context("stopping kube-controller-manager")?;
        Ok(Self(pid))
    }
}

impl Drop for ControllerManagerStopped {
    fn drop(&mut self) {
        if let Err(error) = signal::kill(self.0, Signal::SIGCONT) {
            eprintln!("    could not resume kube-controller-manager: {error}");
        }
    }
}

/// Waits until no pod of the fleet is still draining (the kubelet goes on
/// with those), and every resource's status shows its Deployment as it is
/// now: the same replica counts, and a rollout in progress exactly when the
/// Deployment controller has not finished one. With the controller-manager
/// stopped, the old leader then has nothing left to write.
async fn until_caught_up(suite: &Suite, size: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let everything = ListParams::default();
        let draining = suite
            .api::<Pod>(NAMESPACE)
            .list(&everything)
            .await?
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count();
        let deployments: BTreeMap<String, Deployment> = suite
            .api::<Deployment>(NAMESPACE)
            .list(&everything)
            .await?
            .into_iter()
            .map(|d| (d.name_any(), d))
            .collect();
        let resources = suite
            .api::<InferenceDeployment>(NAMESPACE)
            .list(&everything)
            .await?;
        let behind = resources
            .iter()
            .filter(|r| !deployments.get(&r.name_any()).is_some_and(|d| shows(r, d)))
            .count();
        if resources.items.len() == size && behind == 0 && draining == 0 {
            return Ok(());
        }
        check!(
            Instant::now() < deadline,
            "after {within:?}, {behind} of {size} statuses still lag their Deployments, \
             and {draining} pods still drain"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether the status of `resource` shows `deployment` as it is.
fn shows(resource: &InferenceDeployment, deployment: &Deployment) -> bool {
    let Some(status) = &resource.status else {
        return false;
    };
    let counts = deployment.status.clone().unwrap_or_default();
    let (replicas, updated) = (
        counts.replicas.unwrap_or(0),
        counts.updated_replicas.unwrap_or(0),
    );
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let observed = counts.observed_generation >= deployment.metadata.generation;
    let complete = observed && replicas == updated && updated == desired;
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .is_some_and(|c| c.status == "True");
    status.observed_generation == resource.metadata.generation
        && status.replicas == replicas
        && status.updated_replicas == updated
        && status.ready_replicas == counts.ready_replicas.unwrap_or(0)
        && status.available_replicas == counts.available_replicas.unwrap_or(0)
        && status.draining_replicas == 0
        && progressing != complete
}

/// Waits until the operator runs a leader and a standby, both Ready.
async fn until_standby(suite: &Suite, within: Duration) -> anyhow::Result<()> {
    let operator: Api<Deployment> = suite.api(RELEASE_NAMESPACE);
    until_observed(&operator, 1, within, "a standby", |d: &Deployment| {
        d.name_any() == OPERATOR && d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await
}

/// The resourceVersion of every object of the fleet: the resources (their
/// statuses) and what the operator owns.
async fn versions(suite: &Suite) -> anyhow::Result<BTreeMap<String, String>> {
    let everything = ListParams::default();
    let mut versions = BTreeMap::new();
    let mut note = |kind: &str, name: String, version: Option<String>| {
        versions.insert(format!("{kind}/{name}"), version.unwrap_or_default());
    };
    for r in suite
        .api::<InferenceDeployment>(NAMESPACE)
        .list(&everything)
        .await?
    {
        note("InferenceDeployment", r.name_any(), r.resource_version());
    }
    for d in suite.api::<Deployment>(NAMESPACE).list(&everything).await? {
        note("Deployment", d.name_any(), d.resource_version());
    }
    for s in suite.api::<Service>(NAMESPACE).list(&everything).await? {
        note("Service", s.name_any(), s.resource_version());
    }
    for b in suite
        .api::<PodDisruptionBudget>(NAMESPACE)
        .list(&everything)
        .await?
    {
        note("PodDisruptionBudget", b.name_any(), b.resource_version());
    }
    Ok(versions)
}

/// The p50 and p99 of the leader's reconcile durations, from its
/// histogram's buckets (the upper bound of the bucket holding the rank).
fn quantiles(metrics: &str) -> anyhow::Result<(f64, f64)> {
    const HISTOGRAM: &str = "quiesce_operator_reconcile_duration_seconds";
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix(HISTOGRAM)?
                .strip_prefix("_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((
                le.parse().ok()?,
                count.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets
        .last()
        .map(|b| b.1)
        .context("no reconcile histogram")?;
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Ok((at(0.5), at(0.99)))
}

/// The API server's requests so far, from its own counters: all of them,
/// and the operator's, which the chart's FlowSchema singles out.
async fn api_requests(suite: &Suite) -> anyhow::Result<Requests> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let metrics = suite.client.request_text(request).await?;
    let sum = |prefix: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let operator = format!("flow_schema=\"{OPERATOR}\"");
    let requests = Requests {
        all: sum("apiserver_request_total{", ""),
        operator: sum(
            "apiserver_flowcontrol_dispatched_requests_total{",
            &operator,
        ),
    };
    check!(
        requests.operator > 0.0,
        "the API server counts no request of the FlowSchema {OPERATOR}"
    );
    Ok(requests)
}

/// Requests the API server served: of all clients, of the operator.
#[derive(Clone, Copy)]
struct Requests {
    all: f64,
    operator: f64,
}

impl std::ops::Sub for Requests {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            all: self.all - earlier.all,
            operator: self.operator - earlier.operator,
        }
    }
}

/// The replicas of each resource, from `QUIESCE_FLEET_REPLICAS`, or 0.
fn replicas() -> anyhow::Result<i32> {
    std::env::var("QUIESCE_FLEET_REPLICAS").map_or(Ok(0), |r| {
        r.trim()
            .parse()
            .with_context(|| format!("QUIESCE_FLEET_REPLICAS: {r:?} is not a count"))
    })
}

/// The fleet scenario, at each size in turn, with a standby operator to
/// take over; fails at the end with every goal that a size missed. The
/// release keeps its two replicas: after 10,000 resources the Deployment
/// controller's queue would hold a scale-down back for many minutes.
pub async fn fleet(suite: &Suite) -> anyhow::Result<Figures> {
    helm_release(suite, "upgrade", &install::values(suite, &["replicas=2"])).await?;
    let mut figures = Figures::default();
    let mut missed = Vec::new();
    for size in sizes()? {
        missed.extend(at(suite, size, &mut figures).await?);
    }
    check!(missed.is_empty(), "{}", missed.join("; "));
    Ok(figures)
}

/// One fleet of `size` resources; returns the goals it missed.
async fn at(suite: &Suite, size: usize, figures: &mut Figures) -> anyhow::Result<Vec<String>> {
    let goal = CONVERGE_GOAL_PER_10K
        .mul_f64(size as f64 / 10_000.0)
        .max(Duration::from_secs(10));
    // Long enough to measure a miss of the goal, not only to see it.
    let bound = (goal * 10).max(Duration::from_secs(600));
    suite.fresh_namespace(NAMESPACE).await?;
    let api: Api<InferenceDeployment> = suite.api(NAMESPACE);
    // The operator's memory, sampled all along (it runs on this node).
    let stop = CancellationToken::new();
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut peak = 0;
            while !stop.is_cancelled() {
                peak = peak.max(usage(OPERATOR, "run").rss_max);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peak
        }
    });
    let reconciles = |metrics: &str| {
        sample(
            metrics,
            "quiesce_operator_reconciles_total{result=\"applied\"}",
        )
    };
    let replicas = replicas()?;
    let requests_before = api_requests(suite).await?;
    let applied_before = reconciles(&leader_metrics(suite).await?)?;

    let started = Instant::now();
    let template = manifests::inference_deployment("fleet", replicas, &suite.images);
    stream::iter(0..size)
        .map(|i| {
            let mut resource = template.clone();
            resource.meta_mut().name = Some(format!("fleet-{i:05}"));
            let api = api.clone();
            async move { api.create(&PostParams::default(), &resource).await }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    until_converged(&api, size, bound, "after creation").await?;
    let converged_created = started.elapsed();
    let requests_created = api_requests(suite).await? - requests_before;
    let ready_created = until_ready(&api, size, replicas, bound, "pods ready", started).await?;

    let changed = Instant::now();
    let requests_before_change = api_requests(suite).await?;
    let patch = json!({"spec": {"drain": {"timeoutSeconds": 121}}});
    stream::iter(0..size)
        .map(|i| {
            let api = api.clone();
            let patch = patch.clone();
            async move {
                let name = format!("fleet-{i:05}");
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    until_converged(&api, size, bound, "after the drain change").await?;
    let converged_changed = changed.elapsed();
    let requests_changed = api_requests(suite).await? - requests_before_change;
    // The new drain settings roll every pod.
    let ready_changed = until_ready(&api, size, replicas, bound, "pods rolled", changed).await?;
    let busy = started.elapsed();
    let metrics = leader_metrics(suite).await?;
    let (p50, p99) = quantiles(&metrics)?;
    let applied = reconciles(&metrics)? - applied_before;
    let requests = api_requests(suite).await? - requests_before;

    // A new leader reconciles everything once: the idle resync. The fleet
    // must stand still, and the old leader must have caught up with it.
    until_standby(suite, bound).await?;
    let stopped = ControllerManagerStopped::stop()?;
    until_caught_up(suite, size, bound).await?;
    let before = versions(suite).await?;
    let old_leader = leader(suite).await?;
    let pods: Api<Pod> = suite.api(RELEASE_NAMESPACE);
    pods.delete(&old_leader, &DeleteParams::default()).await?;
    let deadline = Instant::now() + bound;
    loop {
        let new_leader = leader(suite).await?;
        if new_leader != old_leader {
            let passed = leader_metrics(suite).await.and_then(|metrics| {
                let count = |result: &str| {
                    sample(
                        &metrics,
                        &format!("quiesce_operator_reconciles_total{{result=\"{result}\"}}"),
                    )
                };
                Ok(count("unchanged")? + count("applied")?)
            });
            if passed.is_ok_and(|n| n as usize >= size) {
                break;
            }
        }
        check!(
            Instant::now() < deadline,
            "the new leader did not go over the fleet"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = versions(suite).await?;
    drop(stopped);
    let written = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    stop.cancel();
    let peak = sampler.await?;
    let met = converged_created <= goal && converged_changed <= goal;

    let per_resource = |r: Requests| format!("{:.1}", r.operator / size as f64);
    let mut rows = vec![
        ("replicas of each resource", replicas.to_string()),
        ("created", seconds(created)),
        (
            "converged after creation",
            format!("{} (goal {})", seconds(converged_created), seconds(goal)),
        ),
        (
            "converged after the drain change",
            format!("{} (goal {})", seconds(converged_changed), seconds(goal)),
        ),
        (
            "reconcile p50 / p99",
            format!("{p50} s / {p99} s (bucket bounds)"),
        ),
        (
            "operator API requests per resource: creation / drain change",
            format!(
                "{} / {}",
                per_resource(requests_created),
                per_resource(requests_changed)
            ),
        ),
        (
            "operator API requests per applied reconcile",
            format!(
                "{:.1} ({} requests / {applied} applied)",
                requests.operator / applied.max(1.0),
                requests.operator
            ),
        ),
        (
            "API server request rate, all clients",
            format!("{:.0}/s", requests.all / busy.as_secs_f64()),
        ),
        (
            "writes when a new leader went over the fleet",
            written.to_string(),
        ),
        (
            "operator peak RSS",
            format!("{:.0} MiB (goal 200)", peak as f64 / 1024.0),
        ),
    ];
    if let (Some(created), Some(changed)) = (ready_created, ready_changed) {
        rows.push(("every pod Ready after creation", seconds(created)));
        rows.push(("every pod rolled after the drain change", seconds(changed)));
    }
    for (label, value) in rows {
        // Printed at once too: a later size may fail, and the figures of
        // this one are the benchmark.
        eprintln!("    {size}: {label}: {value}");
        figures.add(format!("{size}: {label}"), value);
    }
    // The namespace controller deletes the fleet in the background: one
    // request that deletes 10,000 resources outlasts the API server's 60 s
    // request timeout.
    let namespaces: Api<Namespace> = Api::all(suite.client.clone());
    namespaces
        .delete(NAMESPACE, &DeleteParams::background())
        .await?;
    let mut missed = Vec::new();
    if written > 0 {
        missed.push(format!(
            "{size}: the new leader wrote {written} objects of a fleet with nothing to do"
        ));
    }
    if peak >= 200 * 1024 {
        missed.push(format!("{size}: the operator peaked at {peak} KiB"));
    }
    if !met {
        missed.push(format!(
            "{size}: converged slower than the goal of {}",
            seconds(goal)
        ));
    }
    Ok(missed)
}
