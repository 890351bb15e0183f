//! The operator at a platform team's scale: many InferenceDeployments with
//! `replicas: 0` (a Deployment, a Service and a PDB each, no pods), then a
//! change of the drain timeout of all of them, then a restart of the
//! operator, whose first pass over everything must write nothing. A
//! benchmark: `QUIESCE_FLEET_SIZES=100,1000,10000 quiesce-cluster
//! --only helm-install,fleet` (docs/operator.md gives the curve).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure as check};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use quiesce_api::InferenceDeployment;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::endurance::usage;
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

/// Waits until `size` objects of `api` have been `observed` (a status for
/// their current generation), at most `within`.
async fn until_observed<K>(
    api: &Api<K>,
    size: usize,
    within: Duration,
    what: &str,
    observed: impl Fn(&K) -> bool,
) -> anyhow::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + within;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let done = list.items.iter().filter(|o| observed(o)).count();
        if done >= size {
            return Ok(());
        }
        check!(
            Instant::now() < deadline,
            "{what}: {done} of {size} after {within:?}"
        );
        // Every poll lists the whole fleet: not too often.
        tokio::time::sleep(Duration::from_secs(2)).await;
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

/// The API server's requests so far, from its own counter.
async fn api_requests(suite: &Suite) -> anyhow::Result<f64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let metrics = suite.client.request_text(request).await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
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
                peak = peak.max(usage("quiesce-operator", "run").rss_max);
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
    let requests_before = api_requests(suite).await?;
    let applied_before = reconciles(&leader_metrics(suite).await?)?;

    let started = Instant::now();
    let template = manifests::inference_deployment("fleet", 0, &suite.images);
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

    let changed = Instant::now();
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

    let rows = [
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
            "API requests per applied reconcile",
            format!(
                "{:.1} (all clients' requests / {applied} applied)",
                requests / applied.max(1.0)
            ),
        ),
        (
            "API server request rate",
            format!("{:.0}/s", requests / busy.as_secs_f64()),
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
