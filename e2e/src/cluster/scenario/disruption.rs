//! Pods removed by something other than a rollout: `kubectl scale`, a
//! HorizontalPodAutoscaler, the Eviction API (what `kubectl drain` and
//! cluster autoscalers use), and the deletion of the resource.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure as check};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quiesce_protocol::contract::SIDECAR_CONTAINER_NAME;
use serde_json::json;

use super::workload::{
    self, NAME, NAMESPACE, REPLICAS, SETTLE, current_pods, drained, gone, nothing_lost, outcomes,
    terminations,
};
use crate::cluster::manifests;
use crate::cluster::pods::PodWatch;
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{Suite, start_load, wait_for, wait_gone};

/// The shared workload's pods, watched with their sidecars' logs.
async fn watch_pods(suite: &Suite) -> anyhow::Result<PodWatch> {
    PodWatch::start(
        suite.api(NAMESPACE),
        &workload::selector(),
        Some(SIDECAR_CONTAINER_NAME),
    )
    .await
}

fn propagation() -> Duration {
    Duration::from_secs(manifests::drain().propagation_seconds as u64)
}

/// `kubectl scale infd/llm --replicas=N`: through the scale subresource.
async fn kubectl_scale(suite: &Suite, replicas: i32) -> anyhow::Result<()> {
    let replicas = format!("--replicas={replicas}");
    let resource = format!("infd/{NAME}");
    let args = [
        "scale",
        resource.as_str(),
        replicas.as_str(),
        "-n",
        NAMESPACE,
    ];
    suite.kubectl.run(&args).await.map(drop)
}

/// `kubectl scale infd/llm --replicas=1` from 3 under load: the two removed
/// pods drain and nothing is lost; then back to 3.
pub async fn scale(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    workload::ensure(suite, REPLICAS).await?;
    let watch = watch_pods(suite).await?;
    let before = current_pods(&watch);
    let load = start_load(suite.service_address(NAMESPACE, NAME).await?, 3);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    kubectl_scale(suite, 1).await?;
    let picked = watch
        .until(SETTLE, "two pods are picked for removal", |pods| {
            pods.iter().filter(|p| p.deleting.is_some()).count() == 2
        })
        .await?;
    let removing: BTreeSet<String> = picked
        .iter()
        .filter(|p| p.deleting.is_some())
        .map(|p| p.name.clone())
        .collect();
    let removed = gone(&watch, &removing, "the removed pods are gone").await?;
    let down = started.elapsed();
    let records = load.finish(SETTLE).await.map_err(anyhow::Error::msg)?;
    workload::settled(suite, 1).await?;
    figures.add("scale 3 -> 1 under load", outcomes(&records));
    figures.add(
        "removed pods: termination / ideal",
        terminations(&removed, &records, propagation()),
    );
    figures.add("scale-down complete", seconds(down));
    nothing_lost(&records, "the scale-down")?;
    drained(suite, NAMESPACE, &removed).await?;
    check!(
        removed.iter().all(|p| before.contains(&p.name)),
        "the scale-down removed pods that were not running before it"
    );

    let started = Instant::now();
    kubectl_scale(suite, REPLICAS).await?;
    workload::settled(suite, REPLICAS).await?;
    figures.add(
        "scale 1 -> 3",
        format!("3 of 3 Ready in {}", seconds(started.elapsed())),
    );
    Ok(figures)
}

/// An autoscaling/v2 HorizontalPodAutoscaler on the InferenceDeployment
/// reads its scale subresource (current replicas, no FailedGetScale) and
/// writes it: with minReplicas above the current count it scales up, and
/// the operator follows.
pub async fn autoscale(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    workload::ensure(suite, REPLICAS).await?;
    let hpas: Api<HorizontalPodAutoscaler> = suite.api(NAMESPACE);
    let target = REPLICAS + 1;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": NAME},
        "spec": {
            "scaleTargetRef": {"apiVersion": "quiesce.dev/v1alpha1", "kind": "InferenceDeployment", "name": NAME},
            "minReplicas": target,
            "maxReplicas": target,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        },
    }))?;
    let started = Instant::now();
    suite.apply(NAMESPACE, &hpa).await?;
    let resources = workload::resources(suite);
    wait_for(
        &resources,
        NAME,
        SETTLE,
        "the HPA scales the resource to its minimum",
        |r| r.is_some_and(|r| r.spec.replicas == target),
    )
    .await?;
    let scaled_in = started.elapsed();
    let able = |h: &HorizontalPodAutoscaler| {
        let conditions = h.status.as_ref().and_then(|s| s.conditions.as_ref());
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "AbleToScale")
            .cloned()
    };
    let scaled = wait_for(
        &hpas,
        NAME,
        Duration::from_secs(60),
        "the HPA reports AbleToScale",
        |h| h.and_then(able).is_some_and(|c| c.status == "True"),
    )
    .await?
    .context("the HPA is gone")?;
    let failed = suite.events(NAMESPACE, "FailedGetScale").await?;
    check!(
        failed.is_empty(),
        "FailedGetScale: {:?}",
        failed.first().and_then(|e| e.message.clone())
    );
    let status = scaled.status.clone().unwrap_or_default();
    figures.add(
        format!("HPA (minReplicas {target}) on the scale subresource"),
        format!(
            "scaled from {REPLICAS} to {target} in {}; status current {}, desired {}, AbleToScale {}",
            seconds(scaled_in),
            status.current_replicas.unwrap_or_default(),
            status.desired_replicas,
            able(&scaled).and_then(|c| c.reason).unwrap_or_default()
        ),
    );
    workload::settled(suite, target).await?;
    hpas.delete(NAME, &DeleteParams::default()).await?;
    // Gone before the count goes back, or the two would fight.
    wait_gone(&hpas, NAME, Duration::from_secs(30), "the HPA is gone").await?;
    workload::ensure(suite, REPLICAS).await?;
    Ok(figures)
}

/// Evicting one pod through the Eviction API is allowed by the
/// PodDisruptionBudget (maxUnavailable 1); the pod drains and nothing is
/// lost. Evicting a second one while the first is still gone is refused
/// with 429.
pub async fn eviction(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    workload::ensure(suite, REPLICAS).await?;
    let budgets: Api<PodDisruptionBudget> = suite.api(NAMESPACE);
    wait_for(
        &budgets,
        NAME,
        SETTLE,
        "the PDB allows one disruption",
        |b| {
            b.and_then(|b| b.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed == 1)
        },
    )
    .await?;
    let watch = watch_pods(suite).await?;
    let pods: Vec<String> = current_pods(&watch).into_iter().collect();
    let load = start_load(suite.service_address(NAMESPACE, NAME).await?, 4);
    tokio::time::sleep(Duration::from_secs(3)).await;

    check!(
        pods.len() == REPLICAS as usize,
        "expected {REPLICAS} pods, found {pods:?}"
    );
    // Through kubectl: kube's client retries a 429 until it passes, as
    // `kubectl drain` does every 5 s; the refusal itself is what to see.
    let first = evict(suite, &pods[0]).await?;
    check!(
        first.status.success(),
        "the eviction of {} was refused: {}",
        pods[0],
        first.stderr.trim()
    );
    let second = evict(suite, &pods[1]).await?;
    check!(
        !second.status.success() && second.stderr.contains("TooManyRequests"),
        "a second eviction beyond the PodDisruptionBudget was not refused with 429: {} {}",
        second.stdout.trim(),
        second.stderr.trim()
    );
    figures.add("second eviction", second.stderr.trim().to_owned());
    let evicted = BTreeSet::from([pods[0].clone()]);
    let removed = gone(&watch, &evicted, "the evicted pod is gone").await?;
    workload::settled(suite, REPLICAS).await?;
    let records = load.finish(SETTLE).await.map_err(anyhow::Error::msg)?;
    figures.add("first eviction", format!("allowed; {}", outcomes(&records)));
    figures.add(
        "evicted pod: termination / ideal",
        terminations(&removed, &records, propagation()),
    );
    nothing_lost(&records, "the eviction")?;
    drained(suite, NAMESPACE, &removed).await?;
    Ok(figures)
}

/// POSTs an Eviction of `pod`, as `kubectl drain` does.
async fn evict(suite: &Suite, pod: &str) -> anyhow::Result<crate::cluster::cli::Output> {
    let eviction = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": NAMESPACE},
    });
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}/eviction");
    suite
        .kubectl
        .output(
            &["create", "--raw", &path, "-f", "-"],
            Some(&eviction.to_string()),
        )
        .await
}

/// Disabling the Service and the budget makes the operator delete them;
/// deleting the InferenceDeployment makes the garbage collector delete the
/// Deployment and its pods by owner reference, and each pod drains.
pub async fn delete(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    workload::ensure(suite, REPLICAS).await?;
    let services: Api<Service> = suite.api(NAMESPACE);
    let budgets: Api<PodDisruptionBudget> = suite.api(NAMESPACE);
    let resources = workload::resources(suite);
    let disable =
        json!({"spec": {"service": {"enabled": false}, "disruptionBudget": {"enabled": false}}});
    resources
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&disable))
        .await?;
    wait_gone(
        &services,
        NAME,
        Duration::from_secs(30),
        "the operator deletes the disabled Service",
    )
    .await?;
    wait_gone(
        &budgets,
        NAME,
        Duration::from_secs(30),
        "the operator deletes the disabled budget",
    )
    .await?;
    figures.add("service and budget disabled", "deleted by the operator");

    let watch = watch_pods(suite).await?;
    let running = current_pods(&watch);
    let started = Instant::now();
    resources.delete(NAME, &DeleteParams::foreground()).await?;
    let removed = gone(&watch, &running, "the resource's pods are gone").await?;
    wait_for(&resources, NAME, SETTLE, "the resource is gone", |r| {
        r.is_none()
    })
    .await?;
    let deployments: Api<Deployment> = suite.api(NAMESPACE);
    check!(
        deployments.get_opt(NAME).await?.is_none(),
        "the Deployment outlived its InferenceDeployment"
    );
    drained(suite, NAMESPACE, &removed).await?;
    figures.add(
        "kubectl delete infd (foreground)",
        format!(
            "Deployment and {} pods gone in {}, each drained",
            removed.len(),
            seconds(started.elapsed())
        ),
    );
    suite.delete_namespace(NAMESPACE).await?;
    Ok(figures)
}
