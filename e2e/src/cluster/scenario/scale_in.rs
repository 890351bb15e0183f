//! Which pod a scale-in removes: 3 pods, long streams on two of them (sent
//! to their pod IPs), the third idle; scale to 2. Under `IdleFirst` the
//! idle pod must go, at once and aborting nothing. The same under
//! `Default`, in the same run, shows what the ReplicaSet controller's own
//! choice costs.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure as check};
use kube::api::Api;
use quiesce_api::render::labels::SELECTOR_LABEL;
use quiesce_api::{DrainSpec, InferenceDeployment, ScaleInPolicy};
use quiesce_protocol::contract::{DEFAULT_SIDECAR_PORT, SIDECAR_CONTAINER_NAME};
use tokio::task::JoinHandle;

use super::workload::{SETTLE, drained, gone, leader_metrics, nothing_lost, outcomes, sample};
use crate::client::{Ask, Classified, Finished, complete};
use crate::cluster::manifests::{self, ENGINE_PORT};
use crate::cluster::pods::{PodRecord, PodWatch, is_ready};
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{Suite, wait_for};
use crate::load::{Load, LoadConfig};
use crate::pair::load_reaches;

const NAMESPACE: &str = "qe2e-scale-in";
const NAME: &str = "pick";
/// Streams per busy pod.
const STREAMS: usize = 2;
/// Tokens per stream: 20 s at 20 ms a token, well beyond the drain's
/// deadline (8 s), so a busy pod that is removed aborts them.
const STREAM_TOKENS: u32 = 1000;

/// A drain whose deadline is 8 s after the deletion: a busy pod removed
/// aborts its streams then, an idle one goes after the propagation delay.
fn drain() -> DrainSpec {
    DrainSpec {
        propagation_seconds: 2,
        timeout_seconds: 6,
        abort_grace_seconds: 5,
        exit_margin_seconds: 5,
    }
}

fn resource(suite: &Suite, replicas: i32, policy: ScaleInPolicy) -> InferenceDeployment {
    let mut resource = manifests::inference_deployment(NAME, replicas, &suite.images);
    resource.spec.drain = drain();
    resource.spec.scale_in.policy = policy;
    resource
}

/// What one scale-in from 3 to 2 did.
struct Run {
    policy: ScaleInPolicy,
    idle: String,
    removed: PodRecord,
    /// Streams of the pods kept, and of the pod removed.
    kept_streams: Vec<Finished>,
    removed_streams: Vec<Finished>,
    /// The largest status.drainingReplicas seen while the pod drained.
    draining_seen: i32,
}

impl Run {
    fn aborted(streams: &[Finished]) -> usize {
        streams
            .iter()
            .filter(|s| !matches!(s.outcome, Classified::Completed { .. }))
            .count()
    }

    fn describe(&self) -> String {
        let role = if self.removed.name == self.idle {
            "the idle pod"
        } else {
            "a busy pod"
        };
        let streams = |s: &[Finished]| {
            let completed = s.len() - Self::aborted(s);
            format!("{completed} completed, {} not", Self::aborted(s))
        };
        let drain = self
            .removed
            .drain_elapsed()
            .map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
        format!(
            "removed {role} {}: drain {drain}, pod gone after {}; its streams: {}; the kept \
             pods' streams: {}",
            self.removed.name,
            seconds(self.removed.termination().unwrap_or_default()),
            if self.removed_streams.is_empty() {
                "none".to_owned()
            } else {
                streams(&self.removed_streams)
            },
            streams(&self.kept_streams),
        )
    }
}

pub async fn scale_in(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    suite.fresh_namespace(NAMESPACE).await?;
    let mut runs = Vec::new();
    for policy in [ScaleInPolicy::IdleFirst, ScaleInPolicy::Default] {
        let run = scale_in_once(suite, policy).await?;
        figures.add(policy.as_str(), run.describe());
        runs.push(run);
    }
    let read = OperatorCounts::read(suite).await?;
    figures.add(
        "reading 3 pods' loads (operator, in the cluster)",
        format!(
            "{:.1} ms on average over {} scale-ins",
            1000.0 * read.load_read_seconds / read.load_reads,
            read.load_reads
        ),
    );
    let gpu_seconds: Vec<String> = runs
        .iter()
        .map(|run| {
            format!(
                "{} {:.1} s, {} aborted",
                run.policy.as_str(),
                run.removed.termination().unwrap_or_default().as_secs_f64(),
                Run::aborted(&run.removed_streams) + Run::aborted(&run.kept_streams)
            )
        })
        .collect();
    figures.add("GPU-seconds spent draining", gpu_seconds.join("; "));
    let draining = runs.iter().map(|r| r.draining_seen).max().unwrap_or(0);
    figures.add(
        "status.drainingReplicas while a pod drained",
        format!("{draining}"),
    );
    check!(
        draining >= 1,
        "status.drainingReplicas never counted the draining pod"
    );
    for policy in [ScaleInPolicy::IdleFirst, ScaleInPolicy::Default] {
        race(suite, policy, &mut figures).await?;
    }
    suite.delete_namespace(NAMESPACE).await?;

    let idle_first = &runs[0];
    check!(
        idle_first.removed.name == idle_first.idle,
        "IdleFirst removed {} instead of the idle pod {}",
        idle_first.removed.name,
        idle_first.idle
    );
    let lost = Run::aborted(&idle_first.kept_streams) + Run::aborted(&idle_first.removed_streams);
    check!(lost == 0, "IdleFirst: {lost} streams did not complete");
    // Idle, its drain ends as the propagation delay does; a busy one would
    // hold it to the deadline.
    let drain = drain();
    let propagation = Duration::from_secs(drain.propagation_seconds as u64);
    let deadline = propagation + Duration::from_secs(drain.timeout_seconds as u64);
    let drained_in = idle_first.removed.drain_elapsed().unwrap_or(deadline);
    check!(
        drained_in < propagation + Duration::from_secs(3),
        "IdleFirst: the idle pod's drain took {drained_in:?}"
    );
    let took = idle_first.removed.termination().unwrap_or_default();
    check!(
        took < deadline,
        "IdleFirst: the idle pod took {} to go, as long as a busy one",
        seconds(took)
    );
    Ok(figures)
}

/// Three pods of the policy, streams on the two last by name, scale to 2.
async fn scale_in_once(suite: &Suite, policy: ScaleInPolicy) -> anyhow::Result<Run> {
    let resources: Api<InferenceDeployment> = suite.api(NAMESPACE);
    suite.apply(NAMESPACE, &resource(suite, 3, policy)).await?;
    let selector = format!("{SELECTOR_LABEL}={NAME}");
    let watch = PodWatch::start(
        suite.api(NAMESPACE),
        &selector,
        Some(SIDECAR_CONTAINER_NAME),
    )
    .await?;
    let pods = watch
        .until(SETTLE, "3 pods are Ready", |pods| {
            let up: Vec<_> = pods.iter().filter(|p| p.gone.is_none()).collect();
            up.len() == 3 && up.iter().all(|p| p.deleting.is_none() && is_ready(&p.pod))
        })
        .await?;
    let mut up: Vec<(String, IpAddr)> = pods
        .iter()
        .filter(|p| p.gone.is_none())
        .map(|p| Ok((p.name.clone(), pod_ip(p)?)))
        .collect::<anyhow::Result<_>>()?;
    up.sort();
    let idle = up[0].0.clone();
    let busy = &up[1..];

    let streams: Vec<(String, JoinHandle<Finished>)> = busy
        .iter()
        .flat_map(|(name, ip)| {
            let addr = SocketAddr::new(*ip, ENGINE_PORT);
            (0..STREAMS).map(move |i| {
                let completion = Ask::stream(&format!("scale-in {i}"), STREAM_TOKENS);
                (
                    name.clone(),
                    tokio::spawn(async move { complete(addr, &completion).await }),
                )
            })
        })
        .collect();
    // The operator reads the same reports: wait until they show the streams.
    for (name, ip) in &up {
        let wanted = if *name == idle { 0 } else { STREAMS as u32 };
        let sidecar = SocketAddr::new(*ip, DEFAULT_SIDECAR_PORT);
        load_reaches(sidecar, wanted, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("pod {name}: {e}"))?;
    }

    let draining_seen = Arc::new(AtomicI32::new(0));
    let draining = tokio::spawn(follow_draining(resources.clone(), draining_seen.clone()));
    let replicas = "--replicas=2";
    let target = format!("infd/{NAME}");
    suite
        .kubectl
        .run(&["scale", &target, replicas, "-n", NAMESPACE])
        .await?;
    let picked = watch
        .until(SETTLE, "a pod is picked for removal", |pods| {
            pods.iter().any(|p| p.deleting.is_some())
        })
        .await?;
    let removed_name = picked
        .iter()
        .find(|p| p.deleting.is_some())
        .map(|p| p.name.clone())
        .context("no pod deleted")?;
    let removed = gone(
        &watch,
        &BTreeSet::from([removed_name.clone()]),
        "the removed pod is gone",
    )
    .await?
    .remove(0);
    draining.abort();
    let draining_seen = draining_seen.load(Ordering::Relaxed);

    let mut kept_streams = Vec::new();
    let mut removed_streams = Vec::new();
    for (pod, stream) in streams {
        let finished = tokio::time::timeout(SETTLE, stream)
            .await
            .context("a stream did not end")??;
        if pod == removed_name {
            removed_streams.push(finished);
        } else {
            kept_streams.push(finished);
        }
    }
    if policy == ScaleInPolicy::IdleFirst {
        let going = suite.events(NAMESPACE, "ScalingIn").await?;
        let named = going.iter().any(|e| {
            e.message
                .as_deref()
                .is_some_and(|note| note.contains(&format!("removing {idle} (0 in flight")))
        });
        check!(
            named,
            "no ScalingIn event names {idle} as the pod to remove: {going:?}"
        );
    }
    if removed_name == idle {
        drained(suite, NAMESPACE, std::slice::from_ref(&removed)).await?;
    }
    let resource = resources.get(NAME).await?;
    check!(
        resource.spec.replicas == 2,
        "the resource has {} replicas",
        resource.spec.replicas
    );
    wait_for(&resources, NAME, SETTLE, "2 pods are Ready", |r| {
        r.and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.ready_replicas == 2 && s.replicas == 2)
    })
    .await?;
    Ok(Run {
        policy,
        idle,
        removed,
        kept_streams,
        removed_streams,
        draining_seen,
    })
}

/// Scale-ins of the race: 3 -> 2 -> 3, this many times per policy.
const CYCLES: usize = 4;

/// The race: load moves between the operator's sample and the deletion.
/// Under load through the Service, scales 3 -> 2 -> 3 [`CYCLES`] times
/// under `policy` and takes, from the operator's own metrics, the requests
/// in flight on each removed pod as it began to drain and how many removed
/// pods were busier than a kept one: under IdleFirst the race, under
/// Default the blind choice.
async fn race(suite: &Suite, policy: ScaleInPolicy, figures: &mut Figures) -> anyhow::Result<()> {
    let resources: Api<InferenceDeployment> = suite.api(NAMESPACE);
    let settle = async |replicas: i32| {
        let what = format!("{replicas} pods Ready, none draining");
        wait_for(&resources, NAME, SETTLE, &what, |r| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.replicas == replicas && s.ready_replicas == replicas && s.draining_replicas == 0
            })
        })
        .await
    };
    suite.apply(NAMESPACE, &resource(suite, 3, policy)).await?;
    settle(3).await?;
    let before = OperatorCounts::read(suite).await?;
    // Requests end well within the drain's 8 s deadline: 0.5 to 3 s.
    let config = LoadConfig {
        rate: 8.0,
        concurrency: 64,
        lengths: "60:25-75,40:100-150".parse().expect("a valid mix"),
        seed: 11,
        retries: 3,
    };
    let load = Load::start(suite.service_address(NAMESPACE, NAME).await?, config);
    let target = format!("infd/{NAME}");
    for _ in 0..CYCLES {
        for replicas in [2, 3] {
            let replicas_flag = format!("--replicas={replicas}");
            let args = [
                "scale",
                target.as_str(),
                replicas_flag.as_str(),
                "-n",
                NAMESPACE,
            ];
            suite.kubectl.run(&args).await?;
            settle(replicas).await?;
        }
    }
    let records = load.finish(SETTLE).await.map_err(anyhow::Error::msg)?;
    nothing_lost(&records, "the scale-ins under load")?;
    // The operator records a scale-in once it has read the loads after the
    // deletion: wait for all of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let now = OperatorCounts::read(suite).await?;
        if now.removed >= before.removed + CYCLES as f64 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let removed = after.removed - before.removed;
    check!(
        removed >= CYCLES as f64,
        "the operator followed {removed} of {CYCLES} scale-ins"
    );
    figures.add(
        format!("{} under load through the Service", policy.as_str()),
        format!(
            "{CYCLES} scale-ins 3 -> 2: removed pods had {:.1} requests in flight on average as \
             they began to drain; {} of {CYCLES} were busier than a kept pod; {}",
            (after.removed_in_flight - before.removed_in_flight) / removed,
            after.mischosen - before.mischosen,
            outcomes(&records)
        ),
    );
    Ok(())
}

/// The operator's scale-in figures, from its metrics.
struct OperatorCounts {
    load_reads: f64,
    load_read_seconds: f64,
    removed: f64,
    removed_in_flight: f64,
    mischosen: f64,
}

impl OperatorCounts {
    async fn read(suite: &Suite) -> anyhow::Result<Self> {
        let metrics = leader_metrics(suite).await?;
        let sample = |series: &str| sample(&metrics, series);
        Ok(Self {
            load_reads: sample("quiesce_operator_scale_in_load_read_duration_seconds_count")?,
            load_read_seconds: sample("quiesce_operator_scale_in_load_read_duration_seconds_sum")?,
            removed: sample("quiesce_operator_scale_in_removed_in_flight_count")?,
            removed_in_flight: sample("quiesce_operator_scale_in_removed_in_flight_sum")?,
            mischosen: sample("quiesce_operator_scale_in_mischosen_total")?,
        })
    }
}

fn pod_ip(pod: &PodRecord) -> anyhow::Result<IpAddr> {
    let ip = pod.pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
    ip.with_context(|| format!("pod {} has no IP", pod.name))?
        .parse()
        .with_context(|| format!("pod {}'s IP", pod.name))
}

/// Keeps `seen` at the largest status.drainingReplicas of the resource,
/// until aborted.
async fn follow_draining(resources: Api<InferenceDeployment>, seen: Arc<AtomicI32>) {
    loop {
        if let Ok(resource) = resources.get(NAME).await {
            let draining = resource.status.map_or(0, |s| s.draining_replicas);
            seen.fetch_max(draining, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
