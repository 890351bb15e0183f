//! The operator at a platform team's scale: many InferenceDeployments with
//! `replicas: 0` (a Deployment, a Service and a PDB each, no pods), then a
//! change of the drain timeout of all of them, then a restart of the
//! operator, whose first pass over everything must write nothing. A
//! benchmark: `QUIESCE_FLEET_SIZES=100,1000,10000 quiesce-cluster
//! --only helm-install,fleet` (docs/operator.md gives the curve), and with
//! `QUIESCE_FLEET_REPLICAS=1` each resource runs a pod, whose Ready and
//! whose rollout after the change are timed too.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure as check};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use quiesce_api::InferenceDeployment;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::endurance::usage;
use super::install::OPERATOR;
use super::workload::{leader, leader_metrics, sample};
use crate::cluster::manifests;
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{RELEASE_NAMESPACE, Suite};

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
/// pod template; returns the time since `since`, or `None` without pods.
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
        })
    })
    .await?;
    Ok(Some(since.elapsed()))
}

/// Waits until the Deployment controller has seen every Deployment's
/// generation.
async fn deployments_settled(suite: &Suite, size: usize, within: Duration) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = suite.api(NAMESPACE);
    until_observed(
        &deployments,
        size,
        within,
        "Deployments settled",
        |d: &Deployment| {
            d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
        },
    )
    .await
}

/// The resourceVersion of every owned object of the fleet.
async fn versions(suite: &Suite) -> anyhow::Result<BTreeMap<String, String>> {
    let everything = ListParams::default();
    let mut versions = BTreeMap::new();
    let mut note = |kind: &str, name: String, version: Option<String>| {
        versions.insert(format!("{kind}/{name}"), version.unwrap_or_default());
    };
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

/// The fleet scenario, at each size in turn.
pub async fn fleet(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    for size in sizes()? {
        at(suite, size, &mut figures).await?;
    }
    Ok(figures)
}

/// One fleet of `size` resources.
async fn at(suite: &Suite, size: usize, figures: &mut Figures) -> anyhow::Result<()> {
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

    // A restarted operator reconciles everything once: the idle resync.
    // Its Deployments must be settled first, or the Deployment controller's
    // own status writes would count.
    deployments_settled(suite, size, bound).await?;
    let before = versions(suite).await?;
    let old_leader = leader(suite).await?;
    let pods: Api<Pod> = suite.api(RELEASE_NAMESPACE);
    pods.delete(&old_leader, &DeleteParams::default()).await?;
    let deadline = Instant::now() + bound;
    loop {
        let new_leader = leader(suite).await?;
        if new_leader != old_leader {
            // A pod the kubelet has not yet reported an IP for cannot be
            // proxied to ("address not allowed"): ask again.
            let unchanged = leader_metrics(suite).await.and_then(|metrics| {
                sample(
                    &metrics,
                    "quiesce_operator_reconciles_total{result=\"unchanged\"}",
                )
            });
            if unchanged.is_ok_and(|n| n as usize >= size) {
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
    suite.delete_namespace(NAMESPACE).await?;
    check!(
        written == 0,
        "the new leader wrote {written} objects of a fleet with nothing to do"
    );
    check!(peak < 200 * 1024, "the operator peaked at {peak} KiB");
    check!(
        met,
        "{size} resources converged slower than the goal of {}",
        seconds(goal)
    );
    Ok(())
}
