//! The InferenceDeployment most scenarios share (`qe2e/llm`, three
//! simulated engines), what they measure of it, and the drift scenario.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure as check};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use quiesce_api::InferenceDeployment;
use quiesce_api::render::labels::SELECTOR_LABEL;
use quiesce_protocol::contract::SIDECAR_CONTAINER_NAME;
use serde_json::json;

use crate::client::Classified;
use crate::cluster::manifests::{self, TOKEN_MS};
use crate::cluster::pods::{PodRecord, PodWatch, is_ready};
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{RELEASE_NAMESPACE, Suite, wait_for};
use crate::load::{Counts, RequestRecord};
use crate::load::{ideal_termination, natural_end};

/// Namespace of the shared workload.
pub const NAMESPACE: &str = "qe2e";
/// Its name (and its Service's).
pub const NAME: &str = "llm";
/// Replicas it normally runs.
pub const REPLICAS: i32 = 3;
/// How long a rollout or a scale of a few pods may take on a loaded
/// 2-core machine.
pub const SETTLE: Duration = Duration::from_secs(180);

/// The label selector of its pods.
pub fn selector() -> String {
    format!("{SELECTOR_LABEL}={NAME}")
}

/// The resource API of the shared namespace.
pub fn resources(suite: &Suite) -> Api<InferenceDeployment> {
    suite.api(NAMESPACE)
}

/// Makes sure the shared InferenceDeployment exists with `replicas` ready
/// pods of its current template and none terminating, and that its status
/// says so.
pub async fn ensure(suite: &Suite, replicas: i32) -> anyhow::Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(suite.client.clone());
    if namespaces.get_opt(NAMESPACE).await?.is_none() {
        suite.fresh_namespace(NAMESPACE).await?;
    }
    let resource = manifests::inference_deployment(NAME, replicas, &suite.images);
    suite.apply(NAMESPACE, &resource).await?;
    settled(suite, replicas).await
}

/// Waits until the shared resource reports `replicas` ready, up-to-date
/// pods for its current generation, and exactly that many pods exist.
pub async fn settled(suite: &Suite, replicas: i32) -> anyhow::Result<()> {
    let what = format!("{NAMESPACE}/{NAME} has {replicas} ready, up-to-date pods");
    wait_for(&resources(suite), NAME, SETTLE, &what, |resource| {
        resource.is_some_and(|r| {
            let status = r.status.as_ref();
            status.is_some_and(|s| {
                s.observed_generation == r.metadata.generation
                    && s.replicas == replicas
                    && s.ready_replicas == replicas
                    && s.updated_replicas == replicas
            })
        })
    })
    .await?;
    let pods = PodWatch::start(suite.api(NAMESPACE), &selector(), None).await?;
    pods.until(SETTLE, &what, |pods| {
        let alive: Vec<&PodRecord> = pods.iter().filter(|p| p.gone.is_none()).collect();
        alive.len() == replicas as usize
            && alive
                .iter()
                .all(|p| p.deleting.is_none() && is_ready(&p.pod))
    })
    .await?;
    Ok(())
}

/// Names of the pods that are up now (seen, not being deleted).
pub fn current_pods(watch: &PodWatch) -> BTreeSet<String> {
    watch
        .pods()
        .into_iter()
        .filter(|p| p.gone.is_none() && p.deleting.is_none())
        .map(|p| p.name)
        .collect()
}

/// Requests that did not complete: refused after every retry, aborted or
/// failed.
pub fn lost(records: &[RequestRecord]) -> usize {
    records
        .iter()
        .filter(|r| !matches!(r.outcome, Classified::Completed { .. }))
        .count()
}

/// `12 completed (3 after a 503), 0 rejected, 0 aborted, 0 failed`.
pub fn outcomes(records: &[RequestRecord]) -> String {
    let counts = Counts::of(records);
    let retried = records
        .iter()
        .filter(|r| r.attempts > 1 && matches!(r.outcome, Classified::Completed { .. }))
        .count();
    format!(
        "{} completed ({retried} after a 503), {} rejected, {} aborted, {} failed",
        counts.completed, counts.rejected, counts.aborted, counts.failed
    )
}

/// Fails, quoting a few of them, when any request was lost.
pub fn nothing_lost(records: &[RequestRecord], during: &str) -> anyhow::Result<()> {
    let lost_count = lost(records);
    if lost_count > 0 {
        let examples: BTreeSet<String> = records
            .iter()
            .filter_map(|r| match &r.outcome {
                Classified::Completed { .. } => None,
                other => Some(format!("{other:?} on {}", r.pod.as_deref().unwrap_or("?"))),
            })
            .take(3)
            .collect();
        bail!(
            "{lost_count} of {} requests lost during {during} ({}); such as {examples:?}",
            records.len(),
            outcomes(records)
        );
    }
    Ok(())
}

/// The ideal termination of a removed pod (load::ideal_termination):
/// the propagation delay plus the longest rest of the requests it had
/// admitted by then.
pub fn ideal(
    pod: &PodRecord,
    records: &[RequestRecord],
    propagation: Duration,
) -> Option<Duration> {
    let deleted = pod.deleting?;
    let token = Duration::from_millis(TOKEN_MS);
    let work = records
        .iter()
        .filter(|r| r.pod.as_deref() == Some(pod.name.as_str()))
        .filter_map(|r| Some((r.started, natural_end(r, token)?)));
    Some(ideal_termination(propagation, deleted, work))
}

/// `5.3 / 4.9 s` for each removed pod: its termination beside its ideal.
pub fn terminations(
    removed: &[PodRecord],
    records: &[RequestRecord],
    propagation: Duration,
) -> String {
    let shown =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
    let each: Vec<String> = removed
        .iter()
        .map(|pod| {
            format!(
                "{} / {} s",
                shown(pod.termination()),
                shown(ideal(pod, records, propagation))
            )
        })
        .collect();
    each.join(", ")
}

/// Fails unless every one of `removed`, pods of `namespace`, drained
/// through its preStop hook: the sidecar's log shows a drain that started
/// and ended `drained`, the kubelet recorded no `FailedPreStopHook`, and no
/// container was SIGKILLed.
pub async fn drained(suite: &Suite, namespace: &str, removed: &[PodRecord]) -> anyhow::Result<()> {
    let failed_hooks = suite.events(namespace, "FailedPreStopHook").await?;
    for pod in removed {
        let failed = failed_hooks
            .iter()
            .find(|e| e.involved_object.name.as_deref() == Some(pod.name.as_str()));
        if let Some(event) = failed {
            bail!(
                "the preStop hook of pod {} failed, so it did not drain: {}",
                pod.name,
                event.message.as_deref().unwrap_or("")
            );
        }
        check!(
            pod.log_line(&["drain requested"]).is_some(),
            "pod {} stopped without a drain: its sidecar never logged one\n{}",
            pod.name,
            pod.log.join("\n")
        );
        check!(
            pod.log_line(&["drain finished", "result=drained"])
                .is_some(),
            "the drain of pod {} did not end drained:\n{}",
            pod.name,
            pod.log.join("\n")
        );
        let killed = pod.killed_containers();
        check!(killed.is_empty(), "pod {}: {killed:?} SIGKILLed", pod.name);
    }
    Ok(())
}

/// Waits until every pod of `names` is gone and its followed log read to
/// the end.
pub async fn gone(
    watch: &PodWatch,
    names: &BTreeSet<String>,
    what: &str,
) -> anyhow::Result<Vec<PodRecord>> {
    let pods = watch
        .until(SETTLE, what, |pods| {
            names.iter().all(|name| {
                pods.iter()
                    .any(|p| &p.name == name && p.gone.is_some() && p.log_ended)
            })
        })
        .await?;
    Ok(pods
        .into_iter()
        .filter(|p| names.contains(&p.name))
        .collect())
}

/// Hand edits of the owned Deployment are reverted, and a reconcile with
/// nothing to do writes nothing.
pub async fn drift(suite: &Suite) -> anyhow::Result<Figures> {
    ensure(suite, REPLICAS).await?;
    let mut figures = Figures::default();
    let deployments: Api<Deployment> = suite.api(NAMESPACE);

    let versions = resource_versions(suite).await?;
    let before = reconciles(suite, "unchanged").await?;
    // A metadata-only change: the operator reconciles and finds nothing to do.
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let touch = json!({"metadata": {"annotations": {"quiesce.dev/e2e-touched": stamp.as_nanos().to_string()}}});
    resources(suite)
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&touch))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reconciles(suite, "unchanged").await? <= before {
        check!(
            Instant::now() < deadline,
            "the operator did not reconcile a touched resource within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = resource_versions(suite).await?;
    check!(
        versions == after,
        "a reconcile with nothing to do wrote: resourceVersions {versions:?} became {after:?}"
    );
    figures.add(
        "resync with nothing to do",
        "no write (same resourceVersions)",
    );

    // What `kubectl patch` users write: strategic merge patches, keyed by
    // container name.
    let edits = [
        (
            "removed preStop hook back after",
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "engine", "lifecycle": {"preStop": null}}
            ]}}}}),
        ),
        (
            "removed sidecar back after",
            json!({"spec": {"template": {"spec": {"initContainers": [
                {"name": SIDECAR_CONTAINER_NAME, "$patch": "delete"}
            ]}}}}),
        ),
    ];
    for (label, patch) in edits {
        let started = Instant::now();
        let edited = deployments
            .patch(NAME, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .with_context(|| format!("cannot patch the Deployment: {patch}"))?;
        check!(
            !has_drain_parts(&edited),
            "the patch {patch} removed nothing"
        );
        wait_for(&deployments, NAME, Duration::from_secs(10), label, |d| {
            d.is_some_and(has_drain_parts)
        })
        .await?;
        figures.add(label, seconds(started.elapsed()));
        // The edit started a rollout, which the revert turns back.
        settled(suite, REPLICAS).await?;
    }
    Ok(figures)
}

/// Whether the Deployment's pods get the engine's preStop hook and the
/// sidecar.
fn has_drain_parts(deployment: &Deployment) -> bool {
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref());
    pod.is_some_and(|pod| {
        let hook = pod.containers.iter().any(|c| {
            c.lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .is_some()
        });
        let sidecar = pod
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == SIDECAR_CONTAINER_NAME);
        hook && sidecar
    })
}

/// The resourceVersions of the resource's Deployment, Service and budget.
async fn resource_versions(suite: &Suite) -> anyhow::Result<[Option<String>; 3]> {
    Ok([
        suite
            .api::<Deployment>(NAMESPACE)
            .get(NAME)
            .await?
            .metadata
            .resource_version,
        suite
            .api::<Service>(NAMESPACE)
            .get(NAME)
            .await?
            .metadata
            .resource_version,
        suite
            .api::<PodDisruptionBudget>(NAMESPACE)
            .get(NAME)
            .await?
            .metadata
            .resource_version,
    ])
}

/// The leading operator's count of reconciles that ended with `result`, read
/// from its /metrics through the API server's pod proxy.
pub async fn reconciles(suite: &Suite, result: &str) -> anyhow::Result<u64> {
    let metrics = leader_metrics(suite).await?;
    let series = format!("quiesce_operator_reconciles_total{{result=\"{result}\"}}");
    sample(&metrics, &series).map(|n| n as u64)
}

/// The value of `series` in the OpenMetrics text `metrics`.
pub fn sample(metrics: &str, series: &str) -> anyhow::Result<f64> {
    quiesce_testkit::http::sample(metrics, series)
        .with_context(|| format!("no {series} in the operator's metrics"))
}

/// The /metrics of the operator pod that leads.
pub async fn leader_metrics(suite: &Suite) -> anyhow::Result<String> {
    let pod = leader(suite).await?;
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{pod}:8080/proxy/metrics"
    ))
    .body(Vec::new())?;
    Ok(suite.client.request_text(request).await?)
}

/// The name of the operator pod that holds the Lease, once one does (right
/// after a leader leaves, the Lease is free until a standby takes it).
pub async fn leader(suite: &Suite) -> anyhow::Result<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = suite.api(RELEASE_NAMESPACE);
    let pods: Api<Pod> = suite.api(RELEASE_NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lease = leases.get_opt(super::install::LEASE).await?;
        let holder = lease.and_then(|l| l.spec?.holder_identity);
        if let Some(holder) = holder {
            let alive = pods.get_opt(&holder).await?;
            if alive.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
                return Ok(holder);
            }
        }
        check!(
            Instant::now() < deadline,
            "no live operator pod took the Lease within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
