//! Rolling updates under streaming load through the Services' ClusterIPs:
//! quiesce beside a stock Deployment of the same engine, and quiesce while
//! its leading operator is killed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure as check};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quiesce_protocol::contract::SIDECAR_CONTAINER_NAME;
use serde_json::json;

use super::install::{self, OPERATOR};
use super::workload::{
    self, NAME, NAMESPACE, REPLICAS, SETTLE, current_pods, drained, gone, lost, nothing_lost,
    outcomes, terminations,
};
use crate::cluster::manifests::{self, STOCK_LABEL};
use crate::cluster::pods::{PodRecord, PodWatch, is_ready, log_time};
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{RELEASE_NAMESPACE, Suite, start_load, wait_for};

/// Name of the stock Deployment and its Service.
const STOCK: &str = "stock";
/// Load before the rollout starts, so that every old pod has work.
const WARM_UP: Duration = Duration::from_secs(3);
/// What "within about a second of its engine" allows on a loaded machine.
const READY_PACE_BOUND: Duration = Duration::from_millis(2500);

/// A workload whose pods a rollout replaces, watched from before it starts.
pub(super) struct Rolling {
    watch: PodWatch,
    old: BTreeSet<String>,
}

impl Rolling {
    pub(super) async fn start(
        pods: Api<Pod>,
        selector: &str,
        follow: &str,
    ) -> anyhow::Result<Self> {
        let watch = PodWatch::start(pods, selector, Some(follow)).await?;
        let old = current_pods(&watch);
        Ok(Self { watch, old })
    }

    /// Waits until every old pod is gone and `replicas` new ones are ready.
    pub(super) async fn finished(
        &self,
        replicas: usize,
        what: &str,
    ) -> anyhow::Result<Vec<PodRecord>> {
        let old = &self.old;
        self.watch
            .until(SETTLE, what, |pods| {
                let old_gone = pods
                    .iter()
                    .filter(|p| old.contains(&p.name))
                    .all(|p| p.gone.is_some());
                let new_ready = pods
                    .iter()
                    .filter(|p| !old.contains(&p.name) && p.gone.is_none() && p.deleting.is_none())
                    .filter(|p| is_ready(&p.pod))
                    .count();
                old_gone && new_ready == replicas
            })
            .await?;
        gone(&self.watch, old, what).await
    }

    /// When the last old pod was gone.
    fn last_gone(removed: &[PodRecord]) -> Option<Instant> {
        removed.iter().filter_map(|p| p.gone).max()
    }
}

/// Restarts the pods of a workload the way `kubectl rollout restart` does:
/// a new annotation on the pod template.
pub(super) fn restart_patch() -> anyhow::Result<serde_json::Value> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    Ok(json!({"spec": {"template": {"metadata": {"annotations": {
        "quiesce.dev/e2e-restarted-at": now.as_millis().to_string(),
    }}}}}))
}

/// quiesce and a stock Deployment, each 3 pods, each under the same load,
/// rolled at the same moment.
pub async fn rollout(suite: &Suite) -> anyhow::Result<Figures> {
    workload::ensure(suite, REPLICAS).await?;
    let (deployment, service) = manifests::stock(STOCK, REPLICAS, &suite.images);
    suite.apply(NAMESPACE, &deployment).await?;
    suite.apply(NAMESPACE, &service).await?;
    let deployments: Api<Deployment> = suite.api(NAMESPACE);
    wait_for(
        &deployments,
        STOCK,
        SETTLE,
        "the stock Deployment is available",
        |d| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.ready_replicas == Some(REPLICAS) && s.updated_replicas == Some(REPLICAS)
            })
        },
    )
    .await?;

    let pods: Api<Pod> = suite.api(NAMESPACE);
    let quiesce =
        Rolling::start(pods.clone(), &workload::selector(), SIDECAR_CONTAINER_NAME).await?;
    let stock = Rolling::start(pods, &format!("{STOCK_LABEL}={STOCK}"), "engine").await?;
    let quiesce_load = start_load(suite.service_address(NAMESPACE, NAME).await?, 1);
    let stock_load = start_load(suite.service_address(NAMESPACE, STOCK).await?, 1);
    tokio::time::sleep(WARM_UP).await;

    let started = Instant::now();
    let patch = restart_patch()?;
    workload::resources(suite)
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    deployments
        .patch(STOCK, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let replicas = REPLICAS as usize;
    let (quiesce_removed, stock_removed) = tokio::try_join!(
        quiesce.finished(replicas, "the quiesce rollout completes"),
        stock.finished(replicas, "the stock rollout completes"),
    )?;
    let quiesce_records = quiesce_load
        .finish(SETTLE)
        .await
        .map_err(anyhow::Error::msg)?;
    let stock_records = stock_load
        .finish(SETTLE)
        .await
        .map_err(anyhow::Error::msg)?;

    let propagation = Duration::from_secs(manifests::drain().propagation_seconds as u64);
    let mut figures = Figures::default();
    for (strategy, removed, records) in [
        ("quiesce", &quiesce_removed, &quiesce_records),
        ("stock", &stock_removed, &stock_records),
    ] {
        figures.add(format!("{strategy} requests"), outcomes(records));
        let end = Rolling::last_gone(removed).context("no old pod was removed")?;
        figures.add(
            format!("{strategy} rollout of {REPLICAS}"),
            seconds(end.saturating_duration_since(started)),
        );
        figures.add(
            format!("{strategy} termination / ideal"),
            terminations(removed, records, propagation),
        );
    }
    let pace = ready_pace(&quiesce.watch, &quiesce.old)?;
    figures.add("quiesce new pod Ready after its engine", pace.0);

    nothing_lost(&quiesce_records, "the quiesce rollout")?;
    drained(suite, NAMESPACE, &quiesce_removed).await?;
    check!(
        lost(&stock_records) > 0,
        "the stock Deployment lost nothing ({}): the comparison shows nothing",
        outcomes(&stock_records)
    );
    check!(
        pace.1 <= READY_PACE_BOUND,
        "a new pod became Ready {} after its engine",
        seconds(pace.1)
    );
    deployments.delete(STOCK, &DeleteParams::default()).await?;
    suite
        .api::<k8s_openapi::api::core::v1::Service>(NAMESPACE)
        .delete(STOCK, &DeleteParams::default())
        .await?;
    Ok(figures)
}

/// How long after its engine turned ready (the sidecar's log line) each new
/// pod became Ready: `median 0.6 s, max 0.9 s`, and the max.
fn ready_pace(watch: &PodWatch, old: &BTreeSet<String>) -> anyhow::Result<(String, Duration)> {
    let mut delays: Vec<Duration> = Vec::new();
    for pod in watch.pods().iter().filter(|p| !old.contains(&p.name)) {
        let engine_ready = pod
            .log_line(&["readiness changed", "ready=true"])
            .and_then(log_time)
            .with_context(|| {
                format!("the sidecar of {} never logged its engine ready", pod.name)
            })?;
        let ready = pod.ready.context("a new pod never became Ready")?;
        let ready = watch.wall_time(ready);
        delays.push(ready.duration_since(engine_ready).unwrap_or_default());
    }
    delays.sort();
    let median = delays.get(delays.len() / 2).copied().unwrap_or_default();
    let max = delays.last().copied().unwrap_or_default();
    Ok((
        format!("median {}, max {}", seconds(median), seconds(max)),
        max,
    ))
}

/// `helm upgrade` to two operator replicas with a changed log level rolls
/// the operator; then, in the middle of a rollout under load, the leading
/// operator pod is deleted: the standby takes the Lease, the rollout
/// completes, and nothing is lost.
pub async fn failover(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    workload::ensure(suite, REPLICAS).await?;
    let operators: Api<Deployment> = suite.api(RELEASE_NAMESPACE);
    let before = operators.get(OPERATOR).await?;
    let started = Instant::now();
    install::helm_release(
        suite,
        "upgrade",
        &install::values(suite, &["replicas=2", "logLevel=debug"]),
    )
    .await?;
    let after = operators.get(OPERATOR).await?;
    let generation = |d: &Deployment| d.metadata.generation;
    check!(
        generation(&after) > generation(&before),
        "helm upgrade did not change the operator's Deployment"
    );
    wait_for(
        &operators,
        OPERATOR,
        SETTLE,
        "both operators are Ready",
        |d| {
            d.is_some_and(|d| {
                let status = d.status.as_ref();
                status.is_some_and(|s| {
                    s.observed_generation == d.metadata.generation
                        && s.ready_replicas == Some(2)
                        && s.updated_replicas == Some(2)
                        && s.replicas == Some(2)
                })
            })
        },
    )
    .await?;
    figures.add(
        "helm upgrade (replicas=2, logLevel=debug)",
        format!(
            "operator rolled, 2 of 2 Ready in {}",
            seconds(started.elapsed())
        ),
    );

    let leader = workload::leader(suite).await?;
    let pods: Api<Pod> = suite.api(NAMESPACE);
    let rolling = Rolling::start(pods, &workload::selector(), SIDECAR_CONTAINER_NAME).await?;
    let load = start_load(suite.service_address(NAMESPACE, NAME).await?, 2);
    tokio::time::sleep(WARM_UP).await;
    // A drain change: the operator renders new pods (and records an event).
    let longer =
        json!({"spec": {"drain": {"timeoutSeconds": manifests::drain().timeout_seconds + 1}}});
    let resources = workload::resources(suite);
    resources
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&longer))
        .await?;
    // Mid-rollout: once the first old pod is being replaced.
    let old = rolling.old.clone();
    rolling
        .watch
        .until(SETTLE, "the rollout starts", |pods| {
            pods.iter()
                .any(|p| old.contains(&p.name) && p.deleting.is_some())
        })
        .await?;
    let killed_at = Instant::now();
    suite
        .api::<Pod>(RELEASE_NAMESPACE)
        .delete(&leader, &DeleteParams::default())
        .await?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = suite.api(RELEASE_NAMESPACE);
    let taken = wait_for(
        &leases,
        install::LEASE,
        Duration::from_secs(60),
        "a standby takes the Lease",
        |l| {
            l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref())
                .is_some_and(|holder| holder != leader)
        },
    )
    .await?;
    let new_leader = taken
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_default();
    figures.add(
        "leader deleted mid-rollout",
        format!(
            "{new_leader} took the Lease after {}",
            seconds(killed_at.elapsed())
        ),
    );
    let removed = rolling
        .finished(REPLICAS as usize, "the rollout completes")
        .await?;
    let records = load.finish(SETTLE).await.map_err(anyhow::Error::msg)?;
    // The new leader reports the finished rollout for the new generation.
    workload::settled(suite, REPLICAS).await?;
    figures.add("requests during the failover", outcomes(&records));
    nothing_lost(&records, "the rollout with a failover")?;
    drained(suite, NAMESPACE, &removed).await?;
    // Back to the suite's drain settings for what follows.
    workload::ensure(suite, REPLICAS).await?;
    Ok(figures)
}
