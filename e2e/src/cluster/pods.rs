//! What happens to the pods of one workload, as a watch sees it: when each
//! pod appeared, became ready, was marked for deletion and was gone, by the
//! suite's clock, and the log of one of its containers, followed to its end
//! (a pod's logs vanish with the pod).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, LogParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One pod's life.
#[derive(Clone, Debug)]
pub struct PodRecord {
    /// Its name.
    pub name: String,
    /// When the watch first saw it.
    pub seen: Instant,
    /// When it first had the condition Ready.
    pub ready: Option<Instant>,
    /// When the watch first saw its deletion timestamp.
    pub deleting: Option<Instant>,
    /// When the watch saw it gone.
    pub gone: Option<Instant>,
    /// The pod as last seen.
    pub pod: Pod,
    /// The followed container's log so far, each line starting with the
    /// kubelet's RFC 3339 timestamp.
    pub log: Vec<String>,
    /// Whether the log was followed to its end (the container exited).
    pub log_ended: bool,
}

impl PodRecord {
    /// The first log line containing every one of `needles`.
    pub fn log_line(&self, needles: &[&str]) -> Option<&str> {
        self.log
            .iter()
            .map(String::as_str)
            .find(|line| needles.iter().all(|n| line.contains(n)))
    }

    /// How long its drain took, as its sidecar logged it.
    pub fn drain_elapsed(&self) -> Option<Duration> {
        self.log_line(&["drain finished"])?
            .split_whitespace()
            .find_map(|word| word.strip_prefix("elapsed_ms=")?.parse().ok())
            .map(Duration::from_millis)
    }

    /// From deletion to gone.
    pub fn termination(&self) -> Option<Duration> {
        Some(self.gone?.saturating_duration_since(self.deleting?))
    }

    /// Exit codes of its containers that were killed (137: SIGKILL).
    pub fn killed_containers(&self) -> Vec<String> {
        container_statuses(&self.pod)
            .filter(|c| {
                let terminated = c.state.as_ref().and_then(|s| s.terminated.as_ref());
                terminated.is_some_and(|t| t.exit_code == 137)
            })
            .map(|c| c.name.clone())
            .collect()
    }
}

/// The time a log line of [`PodRecord::log`] was written, from its
/// kubelet timestamp.
pub fn log_time(line: &str) -> Option<SystemTime> {
    let stamp: k8s_openapi::jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
    Some(stamp.into())
}

/// Whether `pod` has the condition Ready.
pub fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

type Records = Arc<Mutex<BTreeMap<String, PodRecord>>>;

/// A running watch of the pods matching a label selector.
pub struct PodWatch {
    records: Records,
    changes: watch::Receiver<u64>,
    task: JoinHandle<()>,
    /// The same moment on both clocks, to turn the records' instants into
    /// wall-clock times comparable with log timestamps.
    epoch: (Instant, SystemTime),
}

impl PodWatch {
    /// Starts watching the pods of `api` that match `selector`, following
    /// the log of their container `follow`. Returns once the first list is
    /// in.
    pub async fn start(
        api: Api<Pod>,
        selector: &str,
        follow: Option<&str>,
    ) -> anyhow::Result<Self> {
        let records: Records = Arc::default();
        let (notify, changes) = watch::channel(0u64);
        let config = watcher::Config::default().labels(selector);
        let mut events = watcher::watcher(api.clone(), config)
            .default_backoff()
            .boxed();
        let follow = follow.map(str::to_owned);
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(&records);
        let task = tokio::spawn(async move {
            let mut listed_tx = Some(listed_tx);
            let notify = Arc::new(notify);
            let mut followed = std::collections::HashSet::new();
            while let Ok(Some(event)) = events.try_next().await {
                let now = Instant::now();
                match event {
                    Event::Apply(pod) | Event::InitApply(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        // Once the container has started: before, the log
                        // API refuses to stream it.
                        let started = follow.as_deref().filter(|c| container_started(&pod, c));
                        record_pod(&shared, pod, now);
                        if let Some(container) = started
                            && followed.insert(name.clone())
                        {
                            let follower = LogFollower {
                                api: api.clone(),
                                records: Arc::clone(&shared),
                                notify: Arc::clone(&notify),
                            };
                            tokio::spawn(follower.follow(name, container.to_owned()));
                        }
                    }
                    Event::Delete(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        if let Some(record) = shared.lock().expect("pods lock").get_mut(&name) {
                            record.deleting.get_or_insert(now);
                            record.gone = Some(now);
                            record.pod = pod;
                        }
                    }
                    Event::InitDone => {
                        if let Some(tx) = listed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Init => {}
                }
                notify.send_modify(|n| *n += 1);
            }
        });
        tokio::time::timeout(Duration::from_secs(30), listed)
            .await
            .context("the first list of pods took more than 30 s")?
            .context("the pod watch ended before its first list")?;
        Ok(Self {
            records,
            changes,
            task,
            epoch: (Instant::now(), SystemTime::now()),
        })
    }

    /// The wall-clock time of `instant`.
    pub fn wall_time(&self, instant: Instant) -> SystemTime {
        let (base, wall) = self.epoch;
        if instant >= base {
            wall + (instant - base)
        } else {
            wall - (base - instant)
        }
    }

    /// Every pod seen so far, by name.
    pub fn pods(&self) -> Vec<PodRecord> {
        self.records
            .lock()
            .expect("pods lock")
            .values()
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the pods seen so far; fails after
    /// `within` saying that `what` did not happen.
    pub async fn until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[PodRecord]) -> bool,
    ) -> anyhow::Result<Vec<PodRecord>> {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let pods = self.pods();
            if done(&pods) {
                return Ok(pods);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the pod watch ended while waiting until {what}"),
                Err(_) => bail!(
                    "{what} did not happen within {within:?}; pods: {}",
                    describe(&pods)
                ),
            }
        }
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Names, readiness and deletion of `pods`, for failure messages.
pub fn describe(pods: &[PodRecord]) -> String {
    let items: Vec<String> = pods
        .iter()
        .map(|p| {
            let state = match (p.gone, p.deleting, p.ready) {
                (Some(_), _, _) => "gone",
                (None, Some(_), _) => "terminating",
                (None, None, Some(_)) if is_ready(&p.pod) => "ready",
                _ => "not ready",
            };
            format!("{} {state}", p.name)
        })
        .collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn record_pod(records: &Records, pod: Pod, now: Instant) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut records = records.lock().expect("pods lock");
    let record = records.entry(name.clone()).or_insert_with(|| PodRecord {
        name,
        seen: now,
        ready: None,
        deleting: None,
        gone: None,
        pod: pod.clone(),
        log: Vec::new(),
        log_ended: false,
    });
    if is_ready(&pod) {
        record.ready.get_or_insert(now);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        record.deleting.get_or_insert(now);
    }
    record.pod = pod;
}

/// The statuses of every container of `pod`, init containers included.
fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    let lists = status.into_iter().flat_map(|s| {
        s.container_statuses
            .iter()
            .chain(&s.init_container_statuses)
    });
    lists.flatten()
}

fn container_started(pod: &Pod, container: &str) -> bool {
    container_statuses(pod)
        .filter(|c| c.name == container)
        .any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
}

struct LogFollower {
    api: Api<Pod>,
    records: Records,
    notify: Arc<watch::Sender<u64>>,
}

impl LogFollower {
    /// Appends the lines of `container`'s log to the pod's record until the
    /// container exits.
    async fn follow(self, pod: String, container: String) {
        let params = LogParams {
            container: Some(container),
            follow: true,
            timestamps: true,
            ..LogParams::default()
        };
        let Ok(stream) = self.api.log_stream(&pod, &params).await else {
            return;
        };
        let mut lines = stream.lines();
        while let Some(Ok(line)) = lines.next().await {
            if let Some(record) = self.records.lock().expect("pods lock").get_mut(&pod) {
                record.log.push(line);
            }
            self.notify.send_modify(|n| *n += 1);
        }
        if let Some(record) = self.records.lock().expect("pods lock").get_mut(&pod) {
            record.log_ended = true;
        }
        self.notify.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_is_dated_by_its_kubelet_timestamp() {
        let line =
            "2026-12-01T21:34:20.971974990Z 2026-12-01T21:34:20.971545Z  INFO readiness changed";
        let time = log_time(line).unwrap();
        let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since_epoch.as_secs(), 1_796_160_860);
        assert_eq!(since_epoch.subsec_nanos(), 971_974_990);
        assert_eq!(log_time("no timestamp here"), None);
    }
}
