//! The demo's scale-in: which pod goes when the replicas go from 3 to 2.
//!
//! Three quiesce pods start one after the other. Long streams run on the
//! two that became Ready last (sent to their own addresses, as requests
//! pinned to a pod); the oldest is idle. Then one pod is removed:
//!
//! - `Default`: the ReplicaSet controller's rule, blind to load (a pod not
//!   Ready first, then the one Ready most recently): here a busy pod, whose
//!   drain holds it for the rest of its streams;
//! - `IdleFirst`: the operator's rule: it reads every sidecar's `GET /load`
//!   (the same function the operator calls) and removes the idlest.

use std::time::{Duration, Instant};

use quiesce_api::ScaleInPolicy;
use quiesce_operator::controller::scale_in::{Candidate, idlest_first, list, read_loads};
use quiesce_protocol::contract::DEFAULT_SIDECAR_PORT;
use tokio::task::JoinHandle;

use crate::comparison::{HarnessError, ProgressSink, StrategyRun, note, pod_problems, pod_sink};
use crate::strategy::{ENGINE_PORT, Scenario, Strategy, scale_in_name as name};
use quiesce_e2e::client::{Ask, Finished, complete};
use quiesce_e2e::load::RequestRecord;
use quiesce_e2e::pair::load_reaches;
use quiesce_e2e::pod::LocalPod;
use quiesce_e2e::pod::plan::Images;
use quiesce_e2e::rollout::pick_victim;

/// The policies the demo compares, in the order they run.
pub const POLICIES: [ScaleInPolicy; 2] = [ScaleInPolicy::Default, ScaleInPolicy::IdleFirst];

/// Replicas before the scale-in; one goes.
const REPLICAS: usize = 3;
/// Streams on each busy pod.
const STREAMS: usize = 2;
/// How long the streams last, at the scenario's time per token: a busy pod
/// removed holds its GPU that long (or until the drain's deadline, which
/// aborts the rest), an idle one only for the propagation delay.
const STREAM_LENGTH: Duration = Duration::from_secs(8);
/// How long a pod may take to start, or to be seen busy.
const BOUND: Duration = Duration::from_secs(60);

fn pod_prefix(policy: ScaleInPolicy) -> &'static str {
    match policy {
        ScaleInPolicy::IdleFirst => "idle-first",
        ScaleInPolicy::Default => "default",
    }
}

fn harness(policy: ScaleInPolicy, message: impl Into<String>) -> HarnessError {
    HarnessError {
        strategy: name(policy),
        message: message.into(),
    }
}

/// Runs the scale-in under `policy`; the pod removed is the run's only
/// "old" pod, the kept ones its "new" pods, deleted once their streams end.
pub async fn run(
    policy: ScaleInPolicy,
    scenario: &Scenario,
    images: &Images,
    progress: Option<ProgressSink>,
) -> Result<StrategyRun, HarnessError> {
    let template = scenario
        .template(Strategy::Quiesce)
        .map_err(|e| harness(policy, e))?;
    let sink = pod_sink(&progress);
    let mut pods: Vec<LocalPod> = Vec::new();
    for i in 0..REPLICAS {
        let pod_name = format!("{}-{}", pod_prefix(policy), i + 1);
        let mut pod = LocalPod::start(pod_name, &template, images, sink.clone())
            .map_err(|e| harness(policy, e.to_string()))?;
        let ready = pod.wait_until(|s| s.ready || s.failed, BOUND).await;
        pods.push(pod);
        if !ready.is_ok_and(|s| s.ready) {
            return Err(stop_all(policy, "a pod did not become ready", pods).await);
        }
    }
    let sidecar = |pod: &LocalPod| pod.address(i32::from(DEFAULT_SIDECAR_PORT));
    let tokens = (STREAM_LENGTH.as_secs_f64() / scenario.token_interval.as_secs_f64()) as u32;

    let epoch = Instant::now();
    let mut streams: Vec<(String, JoinHandle<Finished>)> = Vec::new();
    for pod in &pods[1..] {
        let Some(addr) = pod.address(ENGINE_PORT) else {
            return Err(stop_all(policy, "a pod has no engine port", pods).await);
        };
        for i in 0..STREAMS {
            let completion = Ask::stream(&format!("{} stream {i}", pod.name()), tokens);
            let stream = tokio::spawn(async move { complete(addr, &completion).await });
            streams.push((pod.name().to_owned(), stream));
        }
    }
    // Wait until the sidecars see the streams: what the operator reads.
    for (i, pod) in pods.iter().enumerate() {
        let wanted = if i == 0 { 0 } else { STREAMS as u32 };
        let reached = match sidecar(pod) {
            Some(addr) => load_reaches(addr, wanted, BOUND).await,
            None => Err("the pod has no sidecar port".to_owned()),
        };
        if let Err(e) = reached {
            let message = format!("pod {}: {e}", pod.name());
            return Err(stop_all(policy, message, pods).await);
        }
    }

    let scaled = Instant::now();
    let victim = match policy {
        ScaleInPolicy::Default => pick_victim(&pods),
        ScaleInPolicy::IdleFirst => {
            let candidates: Vec<Candidate> = pods
                .iter()
                .map(|pod| Candidate {
                    name: pod.name().to_owned(),
                    sidecar: sidecar(pod),
                })
                .collect();
            let mut loads = read_loads(&candidates).await;
            let read = scaled.elapsed();
            idlest_first(&mut loads);
            note(
                &progress,
                name(policy),
                format!(
                    "read {} loads in {:.1} ms; idlest first: {}",
                    loads.len(),
                    read.as_secs_f64() * 1000.0,
                    list(&loads)
                ),
            );
            pods.iter().position(|p| p.name() == loads[0].name)
        }
    };
    let Some(victim) = victim else {
        return Err(stop_all(policy, "no pod to remove", pods).await);
    };
    let removed = pods.remove(victim);
    let busy = if victim == 0 { "idle" } else { "busy" };
    note(
        &progress,
        name(policy),
        format!("scale 3 -> 2: removing {} ({busy})", removed.name()),
    );
    removed.delete();
    let stop_bound =
        Duration::from_secs(u64::try_from(scenario.quiesce_grace_seconds()).unwrap_or(0))
            + Duration::from_secs(15);
    let removed_report = match tokio::time::timeout(stop_bound, removed.finished()).await {
        Ok(report) => report,
        Err(_) => {
            return Err(stop_all(policy, "the removed pod did not stop", pods).await);
        }
    };
    let gone = removed_report.gone().unwrap_or_else(Instant::now);

    let mut requests = Vec::new();
    for (id, (pod, stream)) in streams.into_iter().enumerate() {
        let finished = match tokio::time::timeout(BOUND, stream).await {
            Ok(Ok(finished)) => finished,
            _ => return Err(stop_all(policy, "a stream did not end", pods).await),
        };
        requests.push(RequestRecord {
            id: id as u64,
            max_tokens: tokens,
            started: finished.started,
            ended: finished.ended,
            outcome: finished.outcome,
            pod: Some(pod),
            attempts: 1,
            proxy_error: None,
        });
    }
    for pod in &pods {
        pod.delete();
    }
    let mut kept = Vec::new();
    let mut problems = Vec::new();
    for pod in pods {
        let pod_name = pod.name().to_owned();
        match tokio::time::timeout(stop_bound, pod.finished()).await {
            Ok(report) => kept.push(report),
            Err(_) => problems.push(format!("pod {pod_name} did not stop")),
        }
    }
    for report in std::iter::once(&removed_report).chain(&kept) {
        problems.extend(pod_problems(report));
    }
    if !problems.is_empty() {
        return Err(harness(policy, problems.join("\n")));
    }
    let in_flight = if victim == 0 { 0 } else { STREAMS };
    Ok(StrategyRun {
        strategy: Strategy::Quiesce,
        scale_in: Some(policy),
        settings: format!(
            "spec.scaleIn.policy: {}; removed {} ({busy}, {in_flight} streams in flight), {}",
            policy.as_str(),
            removed_report.name,
            scenario.describe(Strategy::Quiesce)
        ),
        propagation: Duration::from_secs(u64::from(scenario.propagation_seconds)),
        token_interval: scenario.token_interval,
        epoch,
        completed: gone,
        old_gone: gone,
        load_stopped: scaled,
        old: vec![removed_report],
        new: kept,
        requests,
    })
}

/// Deletes `pods` and returns `message` as the run's error, with the pods'
/// failures.
async fn stop_all(
    policy: ScaleInPolicy,
    message: impl Into<String>,
    pods: Vec<LocalPod>,
) -> HarnessError {
    let mut details = vec![message.into()];
    for pod in &pods {
        pod.delete();
    }
    for pod in pods {
        let pod_name = pod.name().to_owned();
        match tokio::time::timeout(BOUND, pod.finished()).await {
            Ok(report) => details.extend(pod_problems(&report)),
            Err(_) => details.push(format!("pod {pod_name} did not stop")),
        }
    }
    harness(policy, details.join("\n"))
}
