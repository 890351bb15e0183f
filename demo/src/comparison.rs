//! The comparison: for each strategy, a deployment of local pods behind the
//! balancer, sustained load, and a rolling restart (maxSurge 1,
//! maxUnavailable 0) that replaces every pod.
//!
//! The rollouts run one after the other (the machine has two cores, and a
//! busy machine would blur the timings); what costs no CPU overlaps: every
//! strategy's first pods start together at the beginning (idle pods wait
//! for their probes), and a strategy's tail (its last requests finishing,
//! its new pods deleted) runs while the next strategy's rollout starts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use quiesce_api::ScaleInPolicy;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::strategy::{ENGINE_PORT, Scenario, Strategy};
use quiesce_e2e::balancer::Balancer;
use quiesce_e2e::load::{Load, RequestRecord};
use quiesce_e2e::pod::plan::Images;
use quiesce_e2e::pod::{EventSink, LocalPod, PodEventRecord, PodReport};
use quiesce_e2e::rollout::{self, RolloutSpec};

/// How long pods may take to become ready: the rendered startup probe
/// checks every 10 s.
const STARTUP_BOUND: Duration = Duration::from_secs(60);

/// Load keeps running this long past the last stale-routing window.
const STALE_MARGIN: Duration = Duration::from_millis(500);

/// How often progress reports the request counts.
const COUNTS_EVERY: Duration = Duration::from_secs(5);

/// A line of progress.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Something happened to a pod (its name starts with the strategy's).
    Pod(PodEventRecord),
    /// A note about a strategy's run.
    Note {
        /// When.
        at: Instant,
        /// Which strategy.
        strategy: &'static str,
        /// What.
        text: String,
    },
}

/// Where progress goes.
pub type ProgressSink = mpsc::UnboundedSender<Progress>;

/// The run could not be carried out (as opposed to results that look bad).
#[derive(Debug, thiserror::Error)]
#[error("{strategy}: {message}")]
pub struct HarnessError {
    /// The strategy whose run failed.
    pub strategy: &'static str,
    /// What happened, with the pods' logs when they matter.
    pub message: String,
}

/// One strategy's finished run.
#[derive(Clone, Debug)]
pub struct StrategyRun {
    /// The strategy.
    pub strategy: Strategy,
    /// The policy, for a scale-in run ([`crate::scale_in`]) rather than a
    /// rollout.
    pub scale_in: Option<ScaleInPolicy>,
    /// Its termination settings, in words.
    pub settings: String,
    /// The propagation delay of the balancer.
    pub propagation: Duration,
    /// The engine's time per token.
    pub token_interval: Duration,
    /// When the load and the rollout started.
    pub epoch: Instant,
    /// When the Deployment controller would call the rollout complete.
    pub completed: Instant,
    /// When the last old pod was gone.
    pub old_gone: Instant,
    /// When the load stopped sending new requests.
    pub load_stopped: Instant,
    /// The pods the rollout replaced, in order of creation.
    pub old: Vec<PodReport>,
    /// The pods it created.
    pub new: Vec<PodReport>,
    /// Every request, by start time.
    pub requests: Vec<RequestRecord>,
}

impl StrategyRun {
    /// Its name in tables and lanes.
    pub fn name(&self) -> &'static str {
        match self.scale_in {
            None => self.strategy.name(),
            Some(policy) => crate::strategy::scale_in_name(policy),
        }
    }
}

/// A strategy's deployment, started but not rolled yet.
pub struct Prepared {
    strategy: Strategy,
    scenario: Scenario,
    template: PodTemplateSpec,
    images: Images,
    balancer: Balancer,
    pods: Vec<LocalPod>,
    pod_sink: Option<EventSink>,
    progress: Option<ProgressSink>,
}

/// A strategy whose rollout is done; its tail is still running.
pub struct Rolling {
    prepared: Prepared,
    load: Load,
    load_stopped: Instant,
    monitor: CancellationToken,
    monitor_task: JoinHandle<()>,
    epoch: Instant,
    rolled: rollout::Rolled,
}

fn harness(strategy: Strategy, message: impl Into<String>) -> HarnessError {
    HarnessError {
        strategy: strategy.name(),
        message: message.into(),
    }
}

/// Sends a note about `strategy` (a run's name) to `progress`.
pub fn note(progress: &Option<ProgressSink>, strategy: &'static str, text: impl Into<String>) {
    if let Some(progress) = progress {
        let _ = progress.send(Progress::Note {
            at: Instant::now(),
            strategy,
            text: text.into(),
        });
    }
}

/// Forwards a run's pod events to `progress`.
pub fn pod_sink(progress: &Option<ProgressSink>) -> Option<EventSink> {
    let progress = progress.clone()?;
    let (sink, mut events) = mpsc::unbounded_channel::<PodEventRecord>();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if progress.send(Progress::Pod(event)).is_err() {
                return;
            }
        }
    });
    Some(sink)
}

fn pod_name(strategy: Strategy, revision: &str, index: usize) -> String {
    format!("{}-{revision}-{}", strategy.name(), index + 1)
}

/// Starts `strategy`'s deployment: its balancer and its first pods.
pub async fn prepare(
    strategy: Strategy,
    scenario: &Scenario,
    images: &Images,
    progress: Option<ProgressSink>,
) -> Result<Prepared, HarnessError> {
    let template = scenario
        .template(strategy)
        .map_err(|e| harness(strategy, e))?;
    let balancer = Balancer::start(scenario.balancer())
        .await
        .map_err(|e| harness(strategy, format!("starting the balancer: {e}")))?;
    let pod_sink = pod_sink(&progress);
    let mut prepared = Prepared {
        strategy,
        scenario: scenario.clone(),
        template,
        images: images.clone(),
        balancer,
        pods: Vec::new(),
        pod_sink,
        progress,
    };
    for i in 0..scenario.replicas {
        let pod = prepared.start_pod("old", i)?;
        prepared.pods.push(pod);
    }
    Ok(prepared)
}

impl Prepared {
    fn start_pod(&self, revision: &str, index: usize) -> Result<LocalPod, HarnessError> {
        let name = pod_name(self.strategy, revision, index);
        let pod = LocalPod::start(name, &self.template, &self.images, self.pod_sink.clone())
            .map_err(|e| harness(self.strategy, e.to_string()))?;
        let addr: SocketAddr = pod
            .address(ENGINE_PORT)
            .ok_or_else(|| harness(self.strategy, "the pod has no engine port"))?;
        self.balancer.track(pod.name(), addr, pod.watch());
        Ok(pod)
    }
}

/// Collects the reports of `pods` (deleting them first) into an error that
/// shows why they failed.
async fn failed_with_reports(
    strategy: Strategy,
    message: String,
    pods: Vec<LocalPod>,
    within: Duration,
) -> HarnessError {
    for pod in &pods {
        pod.delete();
    }
    let mut details = vec![message];
    for pod in pods {
        let name = pod.name().to_owned();
        match tokio::time::timeout(within, pod.finished()).await {
            Ok(report) => {
                if let Some(failure) = report.failure {
                    details.push(format!("pod {name}: {failure}"));
                }
            }
            Err(_) => details.push(format!("pod {name} did not stop within {within:?}")),
        }
    }
    harness(strategy, details.join("\n"))
}

/// Waits for the first pods, starts the load, and rolls every pod; returns
/// once the last old pod is gone.
pub async fn roll_out(mut prepared: Prepared) -> Result<Rolling, HarnessError> {
    let strategy = prepared.strategy;
    let stop_bound = grace_bound(&prepared.scenario, strategy);
    for i in 0..prepared.pods.len() {
        let waited = prepared.pods[i]
            .wait_until(|s| s.ready || s.failed, STARTUP_BOUND)
            .await;
        if let Err(e) = waited.and_then(|s| {
            if s.failed {
                Err("it failed".to_owned())
            } else {
                Ok(s)
            }
        }) {
            let message = format!("the first pods did not become ready: {e}");
            let pods = std::mem::take(&mut prepared.pods);
            return Err(failed_with_reports(strategy, message, pods, stop_bound).await);
        }
    }
    note(
        &prepared.progress,
        strategy.name(),
        format!(
            "{} pods ready; load starts, rolling restart (maxSurge 1, maxUnavailable 0): {}",
            prepared.pods.len(),
            prepared.scenario.describe(strategy)
        ),
    );
    let epoch = Instant::now();
    let load = Load::start(prepared.balancer.addr(), prepared.scenario.load.clone());
    let monitor = CancellationToken::new();
    let monitor_task = {
        let stats = load.stats();
        let stop = monitor.clone();
        let progress = prepared.progress.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(COUNTS_EVERY);
            every.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => note(
                        &progress,
                        strategy.name(),
                        format!("requests: {}; in flight {}", stats.counts(), stats.in_flight()),
                    ),
                }
            }
        })
    };
    let spec = RolloutSpec {
        replicas: prepared.scenario.replicas,
        max_surge: 1,
        max_unavailable: 0,
    };
    let old = std::mem::take(&mut prepared.pods);
    let within = (STARTUP_BOUND + stop_bound) * (spec.replicas as u32 + 1);
    // Requests matter until the last old pod stops getting new ones: once
    // it is deleted, stale routing to it lasts the propagation delay
    // (whether or not it is still there). After that only new pods get
    // requests: the load stops sending, while the old pods drain.
    let old_status: Vec<_> = old.iter().map(LocalPod::watch).collect();
    let propagation = prepared.scenario.balancer().propagation;
    let progress = prepared.progress.clone();
    let stop_sending = async {
        for mut status in old_status {
            let _ = status.wait_for(|s| s.terminating || s.gone).await;
        }
        tokio::time::sleep(propagation + STALE_MARGIN).await;
        load.stop_sending();
        note(
            &progress,
            strategy.name(),
            "every old pod deleted and out of the balancer: the load stops sending",
        );
        Instant::now()
    };
    let (rolled, load_stopped) = {
        let make_new = |i| prepared.start_pod("new", i).map_err(|e| e.message);
        let roll = rollout::roll(spec, old, make_new, within);
        tokio::pin!(roll, stop_sending);
        let mut load_stopped = None;
        let rolled = loop {
            tokio::select! {
                rolled = &mut roll => break rolled,
                at = &mut stop_sending, if load_stopped.is_none() => load_stopped = Some(at),
            }
        };
        let load_stopped = match (&rolled, load_stopped) {
            (_, Some(at)) => at,
            // Every old pod is gone, so this ends within the propagation delay.
            (Ok(_), None) => (&mut stop_sending).await,
            (Err(_), None) => {
                load.stop_sending();
                Instant::now()
            }
        };
        (rolled, load_stopped)
    };
    match rolled {
        Ok(rolled) => {
            note(
                &prepared.progress,
                strategy.name(),
                format!(
                    "rollout done in {:.1} s (last old pod gone)",
                    rolled.old_gone.duration_since(epoch).as_secs_f64()
                ),
            );
            Ok(Rolling {
                prepared,
                load,
                load_stopped,
                monitor,
                monitor_task,
                epoch,
                rolled,
            })
        }
        Err((error, pods)) => {
            monitor.cancel();
            let _ = load.finish(Duration::from_secs(1)).await;
            Err(failed_with_reports(strategy, error.to_string(), pods, stop_bound).await)
        }
    }
}

/// How long a pod of `strategy` may take to stop, with room to spare.
fn grace_bound(scenario: &Scenario, strategy: Strategy) -> Duration {
    let grace = match strategy {
        Strategy::Stock => scenario.stock_grace_seconds(),
        Strategy::FixedSleep => scenario.fixed_grace_seconds(),
        Strategy::Quiesce => scenario.quiesce_grace_seconds(),
    };
    Duration::from_secs(u64::try_from(grace).unwrap_or(0)) + Duration::from_secs(15)
}

/// Stops the load once its requests are done, deletes the new pods, and
/// checks that every pod stopped cleanly and left no process behind.
pub async fn finish(rolling: Rolling) -> Result<StrategyRun, HarnessError> {
    let Rolling {
        prepared,
        load,
        load_stopped,
        monitor,
        monitor_task,
        epoch,
        rolled,
    } = rolling;
    let strategy = prepared.strategy;
    let scenario = &prepared.scenario;
    let in_flight_bound = scenario.longest_request() * 2 + Duration::from_secs(30);
    let records = load.finish(in_flight_bound).await;
    monitor.cancel();
    let _ = monitor_task.await;
    let stop_bound = grace_bound(scenario, strategy);
    for pod in &rolled.new {
        pod.delete();
    }
    let mut problems = Vec::new();
    let mut collect = async |pods: Vec<LocalPod>| {
        let mut reports = Vec::new();
        for pod in pods {
            let name = pod.name().to_owned();
            match tokio::time::timeout(stop_bound, pod.finished()).await {
                Ok(report) => reports.push(report),
                Err(_) => problems.push(format!("pod {name} did not stop within {stop_bound:?}")),
            }
        }
        reports
    };
    let old = collect(rolled.old).await;
    let new = collect(rolled.new).await;
    prepared.balancer.stop(Duration::from_secs(1)).await;
    for report in old.iter().chain(&new) {
        problems.extend(pod_problems(report));
    }
    let requests = match records {
        Ok(records) => records,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    if !problems.is_empty() {
        return Err(harness(strategy, problems.join("\n")));
    }
    note(
        &prepared.progress,
        strategy.name(),
        "done: every pod stopped, no process left",
    );
    Ok(StrategyRun {
        strategy,
        scale_in: None,
        settings: scenario.describe(strategy),
        propagation: Duration::from_secs(u64::from(scenario.propagation_seconds)),
        token_interval: scenario.token_interval,
        epoch,
        completed: rolled.completed,
        old_gone: rolled.old_gone,
        load_stopped,
        old,
        new,
        requests,
    })
}

/// What went wrong with a finished pod: its failure, the processes it left.
pub fn pod_problems(report: &PodReport) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(failure) = &report.failure {
        problems.push(format!("pod {}: {failure}", report.name));
    }
    if !report.orphans.is_empty() {
        problems.push(format!(
            "pod {} left processes behind: {}",
            report.name,
            report.orphans.join(", ")
        ));
    }
    problems
}

/// Runs `strategies` (see the module's doc for what overlaps).
pub async fn run_all(
    strategies: &[Strategy],
    scenario: &Scenario,
    images: &Images,
    progress: Option<ProgressSink>,
) -> Result<Vec<StrategyRun>, HarnessError> {
    let mut prepared = Vec::new();
    for &strategy in strategies {
        prepared.push(prepare(strategy, scenario, images, progress.clone()).await?);
    }
    let mut tails = Vec::new();
    for prepared in prepared {
        let strategy = prepared.strategy;
        let rolling = roll_out(prepared).await?;
        tails.push((strategy, tokio::spawn(finish(rolling))));
    }
    let mut runs = Vec::new();
    for (strategy, tail) in tails {
        let run = tail
            .await
            .map_err(|e| harness(strategy, format!("its tail task failed: {e}")))??;
        runs.push(run);
    }
    Ok(runs)
}
