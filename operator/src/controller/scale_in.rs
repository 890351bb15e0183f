//! Idle-first scale-in: when the replica count goes down, the idlest pods go
//! first.
//!
//! The ReplicaSet controller picks the pods to delete, and among Ready pods
//! it deletes those with the lowest `controller.kubernetes.io/pod-deletion-cost`
//! first. Before it lowers the Deployment's replicas, the reconcile reads
//! each Ready pod's load from its sidecar (`GET /load` on the pod IP, all
//! pods at once, each with [`LOAD_TIMEOUT`]) and sets that annotation from
//! it: in-flight and queued requests cost [`REQUEST_COST`] each, a KV
//! transfer [`KV_TRANSFER_COST`], and a pod whose load cannot be read costs
//! [`UNKNOWN_COST`], as the busiest. Every scale-in annotates every Ready
//! pod afresh, so no cost outlives the scale-in it was sampled for.
//!
//! The race: load moves between the sample and the deletion (a stream may
//! start on the idle pod a moment later). After the scale-in,
//! [`follow`] reads the removed pods' load again as they start draining,
//! and the kept pods', and counts each removed pod that turned out busier
//! than one kept (`quiesce_operator_scale_in_mischosen_total`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::future::join_all;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use quiesce_protocol::contract::{LOAD_PATH, SIDECAR_CONTAINER_NAME, SIDECAR_PORT_NAME};
use quiesce_protocol::{LoadReport, MAX_LOAD_REPORT_LEN, Work};
use serde_json::json;
use tokio::net::TcpStream;

use quiesce_api::render::labels::selector_string;

/// The annotation the ReplicaSet controller orders Ready pods by.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// When quiesce sampled the load behind the cost: marks the costs it set.
pub const LOAD_SAMPLED_ANNOTATION: &str = "quiesce.dev/load-sampled-at";

/// Cost of one request in flight or queued.
pub const REQUEST_COST: i32 = 100;
/// Cost of one pending KV transfer: a decode peer waits on it.
pub const KV_TRANSFER_COST: i32 = 1000;
/// Cost of a pod whose load is unknown, and the cap of every cost.
pub const UNKNOWN_COST: i32 = 1_000_000;

/// How long the operator waits for one sidecar's load report: a sidecar
/// answers from memory in well under a millisecond.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`follow`] waits for the ReplicaSet controller to delete the
/// pods of a scale-in.
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod the ReplicaSet controller may remove: Ready and not deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The pod's name.
    pub name: String,
    /// Its sidecar's HTTP address, if the pod has an IP and the port.
    pub sidecar: Option<SocketAddr>,
}

/// A pod's load as read from its sidecar, or why it is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLoad {
    /// The pod's name.
    pub name: String,
    /// Its work, or why it could not be read.
    pub load: Result<Work, String>,
}

impl PodLoad {
    /// The pod's deletion cost.
    pub fn cost(&self) -> i32 {
        deletion_cost(self.load.as_ref().ok())
    }

    /// The load in a few words, for events and logs.
    pub fn describe(&self) -> String {
        match &self.load {
            Ok(work) => {
                let mut text = format!("{} in flight, {} queued", work.in_flight, work.queued);
                if work.kv_transfers > 0 {
                    text.push_str(&format!(", {} KV transfers", work.kv_transfers));
                }
                text
            }
            Err(why) => format!("load unknown: {why}"),
        }
    }
}

/// The cost of a pod with `work`, or of one whose work is unknown (`None`).
pub fn deletion_cost(work: Option<&Work>) -> i32 {
    let Some(work) = work else {
        return UNKNOWN_COST;
    };
    let requests = i64::from(work.in_flight) + i64::from(work.queued);
    let cost = requests * i64::from(REQUEST_COST)
        + i64::from(work.kv_transfers) * i64::from(KV_TRANSFER_COST);
    i32::try_from(cost.min(i64::from(UNKNOWN_COST))).unwrap_or(UNKNOWN_COST)
}

/// Sorts `loads` in the order the pods should go: cheapest first, by name
/// among equals (the ReplicaSet controller breaks ties its own way).
pub fn idlest_first(loads: &mut [PodLoad]) {
    loads.sort_by(|a, b| a.cost().cmp(&b.cost()).then_with(|| a.name.cmp(&b.name)));
}

/// The pods of `pods` a scale-in may remove.
pub fn candidates(pods: &[Pod]) -> Vec<Candidate> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && is_ready(pod))
        .map(|pod| Candidate {
            name: pod.metadata.name.clone().unwrap_or_default(),
            sidecar: sidecar_address(pod),
        })
        .collect()
}

fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// The pod IP and the sidecar container's named port.
fn sidecar_address(pod: &Pod) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let spec = pod.spec.as_ref()?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)?;
    let port = sidecar
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(SIDECAR_PORT_NAME))?;
    Some(SocketAddr::new(
        ip,
        u16::try_from(port.container_port).ok()?,
    ))
}

/// Reads one sidecar's load report.
pub async fn read_load(addr: SocketAddr, timeout: Duration) -> Result<Work, String> {
    let report = tokio::time::timeout(timeout, fetch_report(addr))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??;
    report.work().ok_or_else(|| {
        report
            .unknown
            .unwrap_or_else(|| "incomplete report".to_owned())
    })
}

async fn fetch_report(addr: SocketAddr) -> Result<LoadReport, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    // Ends with the sender, when this function returns.
    tokio::spawn(connection);
    let request = hyper::Request::get(LOAD_PATH)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_LOAD_REPORT_LEN)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("not a load report: {e}"))
}

/// Reads the load of every candidate at once.
pub async fn read_loads(candidates: &[Candidate]) -> Vec<PodLoad> {
    join_all(candidates.iter().map(|candidate| async move {
        let load = match candidate.sidecar {
            Some(addr) => read_load(addr, LOAD_TIMEOUT).await,
            None => Err("no pod IP or sidecar port".to_owned()),
        };
        PodLoad {
            name: candidate.name.clone(),
            load,
        }
    }))
    .await
}

/// The merge patch that sets a pod's cost, or (`None`) removes the cost
/// quiesce set.
pub fn cost_patch(cost: Option<i32>, sampled_at: Timestamp) -> serde_json::Value {
    match cost {
        Some(cost) => json!({"metadata": {"annotations": {
            DELETION_COST_ANNOTATION: cost.to_string(),
            LOAD_SAMPLED_ANNOTATION: sampled_at.to_string(),
        }}}),
        None => json!({"metadata": {"annotations": {
            DELETION_COST_ANNOTATION: null,
            LOAD_SAMPLED_ANNOTATION: null,
        }}}),
    }
}

/// Whether quiesce set `pod`'s deletion cost.
pub fn has_our_cost(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(LOAD_SAMPLED_ANNOTATION))
}

/// The pods of the InferenceDeployment `name`.
pub async fn list_pods(pods: &Api<Pod>, name: &str) -> kube::Result<Vec<Pod>> {
    let params = ListParams::default().labels(&selector_string(name));
    Ok(pods.list(&params).await?.items)
}

/// Applies `patches` (pod name, merge patch) at once; the first error wins.
pub async fn patch_pods(
    pods: &Api<Pod>,
    patches: Vec<(String, serde_json::Value)>,
) -> kube::Result<()> {
    let params = PatchParams::default();
    let patches: Vec<_> = patches
        .into_iter()
        .map(|(name, patch)| (name, Patch::Merge(patch)))
        .collect();
    let results = join_all(
        patches
            .iter()
            .map(|(name, patch)| pods.patch(name, &params, patch)),
    )
    .await;
    results.into_iter().try_for_each(|r| r.map(drop))
}

/// What a scale-in looked like once the pods were deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The removed pods, with their load as they began to drain.
    pub removed: Vec<PodLoad>,
    /// The kept pods, with their load at the same moment.
    pub kept: Vec<PodLoad>,
}

impl Outcome {
    /// Removed pods that were busier than a kept one: the ReplicaSet
    /// controller had no costs to go by (policy Default), or the load moved
    /// between the sample and the deletion.
    pub fn mischosen(&self) -> usize {
        let Some(idlest_kept) = self.kept.iter().map(PodLoad::cost).min() else {
            return 0;
        };
        self.removed
            .iter()
            .filter(|pod| pod.cost() > idlest_kept)
            .count()
    }
}

/// Waits (at most [`FOLLOW_TIMEOUT`]) until `count` of `before`'s pods are
/// deleted, as `deleted_now` tells from the pod watch, then reads the load
/// of the removed pods and of the kept ones.
pub async fn follow(
    before: Vec<Candidate>,
    count: usize,
    deleted_now: impl Fn() -> Vec<String>,
) -> Option<Outcome> {
    let started = Instant::now();
    let removed = loop {
        let deleted = deleted_now();
        let removed: Vec<&Candidate> = before
            .iter()
            .filter(|c| deleted.contains(&c.name))
            .collect();
        if removed.len() >= count {
            break removed
                .into_iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>();
        }
        if started.elapsed() > FOLLOW_TIMEOUT {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let loads = read_loads(&before).await;
    let (removed, kept) = loads
        .into_iter()
        .partition(|pod| removed.contains(&pod.name));
    Some(Outcome { removed, kept })
}

/// `name (load)` for each pod, for an event note.
pub fn list(loads: &[PodLoad]) -> String {
    if loads.is_empty() {
        return "none".to_owned();
    }
    loads
        .iter()
        .map(|pod| format!("{} ({})", pod.name, pod.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(in_flight: u32, queued: u32, kv_transfers: u32) -> Work {
        Work {
            in_flight,
            queued,
            kv_transfers,
        }
    }

    fn pod(name: &str, load: Result<Work, String>) -> PodLoad {
        PodLoad {
            name: name.to_owned(),
            load,
        }
    }

    #[test]
    fn cost_grows_with_work_and_unknown_is_the_busiest() {
        assert_eq!(deletion_cost(Some(&work(0, 0, 0))), 0);
        assert_eq!(deletion_cost(Some(&work(2, 1, 0))), 300);
        assert_eq!(deletion_cost(Some(&work(0, 0, 1))), KV_TRANSFER_COST);
        assert_eq!(deletion_cost(None), UNKNOWN_COST);
        assert_eq!(
            deletion_cost(Some(&work(u32::MAX, u32::MAX, u32::MAX))),
            UNKNOWN_COST
        );
    }

    #[test]
    fn the_idlest_go_first_and_unknown_last() {
        let mut loads = vec![
            pod("a", Err("no answer within 1000 ms".to_owned())),
            pod("b", Ok(work(3, 0, 0))),
            pod("c", Ok(work(0, 0, 0))),
            pod("d", Ok(work(0, 0, 1))),
            pod("e", Ok(work(0, 0, 0))),
        ];
        idlest_first(&mut loads);
        let order: Vec<_> = loads.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(order, ["c", "e", "b", "d", "a"]);
        assert_eq!(
            list(&loads[..1]),
            "c (0 in flight, 0 queued)",
            "the event names the pod and its load"
        );
        assert_eq!(loads[3].describe(), "0 in flight, 0 queued, 1 KV transfers");
        assert_eq!(
            loads[4].describe(),
            "load unknown: no answer within 1000 ms"
        );
    }

    #[test]
    fn a_removed_pod_busier_than_a_kept_one_was_mischosen() {
        let outcome = |removed, kept| Outcome { removed, kept };
        let idle = || pod("idle", Ok(work(0, 0, 0)));
        let busy = || pod("busy", Ok(work(2, 0, 0)));
        assert_eq!(outcome(vec![idle()], vec![busy()]).mischosen(), 0);
        assert_eq!(outcome(vec![busy()], vec![idle()]).mischosen(), 1);
        assert_eq!(outcome(vec![busy()], vec![]).mischosen(), 0);
        let unknown = pod("gone", Err("connect: refused".to_owned()));
        assert_eq!(outcome(vec![unknown], vec![busy()]).mischosen(), 1);
    }

    fn ready_pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
        let yaml = format!(
            "metadata: {{name: {name}}}\n\
             spec:\n  initContainers:\n  - name: {SIDECAR_CONTAINER_NAME}\n    \
             ports: [{{name: {SIDECAR_PORT_NAME}, containerPort: 9090}}]\n  \
             containers: [{{name: engine}}]\n\
             status:\n  phase: Running\n  conditions: [{{type: Ready, status: '{}'}}]\n",
            if ready { "True" } else { "False" }
        );
        let mut pod: Pod = serde_saphyr::from_str(&yaml).unwrap();
        let status = pod.status.as_mut().unwrap();
        status.pod_ip = ip.map(str::to_owned);
        if deleting {
            pod.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
            );
        }
        pod
    }

    #[test]
    fn candidates_are_the_ready_pods_not_deleted_with_their_sidecar_address() {
        let pods = [
            ready_pod("a", Some("10.0.0.7"), true, false),
            ready_pod("b", Some("10.0.0.8"), false, false),
            ready_pod("c", Some("10.0.0.9"), true, true),
            ready_pod("d", None, true, false),
        ];
        assert_eq!(
            candidates(&pods),
            [
                Candidate {
                    name: "a".to_owned(),
                    sidecar: Some("10.0.0.7:9090".parse().unwrap()),
                },
                Candidate {
                    name: "d".to_owned(),
                    sidecar: None,
                },
            ]
        );
    }

    #[test]
    fn a_cost_patch_sets_both_annotations_or_removes_them() {
        let at: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        assert_eq!(
            cost_patch(Some(300), at),
            json!({"metadata": {"annotations": {
                DELETION_COST_ANNOTATION: "300",
                LOAD_SAMPLED_ANNOTATION: "2026-12-02T10:00:00Z",
            }}})
        );
        assert_eq!(
            cost_patch(None, at)["metadata"]["annotations"][DELETION_COST_ANNOTATION],
            serde_json::Value::Null
        );
    }
}
