//! Rolling restarts, one after the other, under sustained streaming load
//! through the Service: nothing is lost, no pod is SIGKILLed, no preStop
//! hook fails, and the operator's and the sidecars' memory and descriptors
//! stay flat from the first rollout to the last. A benchmark: run it with
//! `quiesce-cluster --only helm-install,endurance` (docs/e2e.md).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::ensure as check;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use quiesce_protocol::contract::SIDECAR_CONTAINER_NAME;
use quiesce_testkit::hostile::rss_and_fds;
use quiesce_testkit::process::processes;

use super::rollout::{Rolling, restart_patch};
use super::workload::{self, NAME, NAMESPACE, REPLICAS, SETTLE, drained, nothing_lost, outcomes};
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{Suite, start_load};

/// Rolling restarts in a row.
pub const ROLLOUTS: usize = 20;

/// Memory and descriptors of the processes that run `program subcommand`
/// on this node, where the cluster's containers run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// How many such processes run.
    pub processes: usize,
    /// The largest resident memory among them, KiB.
    pub rss_max: u64,
    /// The most descriptors one of them holds.
    pub fds_max: usize,
}

pub(super) fn usage(program: &str, subcommand: &str) -> Usage {
    let mut usage = Usage::default();
    for pid in running(program, &[subcommand]) {
        let (rss, fds) = rss_and_fds(pid);
        usage.processes += 1;
        usage.rss_max = usage.rss_max.max(rss);
        usage.fds_max = usage.fds_max.max(fds);
    }
    usage
}

/// The pids of the processes on this node whose program path ends with
/// `program` and whose arguments begin with `leading`.
pub(super) fn running(program: &str, leading: &[&str]) -> Vec<i32> {
    processes()
        .into_iter()
        .map(|process| process.pid)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = cmdline.split(|b| *b == 0);
            args.next().is_some_and(|a| a.ends_with(program.as_bytes()))
                && leading.iter().all(|l| args.next() == Some(l.as_bytes()))
        })
        .collect()
}

/// [`ROLLOUTS`] rolling restarts of 3 pods under load.
pub async fn endurance(suite: &Suite) -> anyhow::Result<Figures> {
    workload::ensure(suite, REPLICAS).await?;
    let pods: Api<Pod> = suite.api(NAMESPACE);
    let load = start_load(suite.service_address(NAMESPACE, NAME).await?, 7);
    let mut table =
        String::from("rollout  seconds  operator RSS KiB / fds  sidecar RSS KiB / fds (max)\n");
    let mut first = None;
    let mut last = None;
    let started = Instant::now();
    for rollout in 1..=ROLLOUTS {
        let rolling =
            Rolling::start(pods.clone(), &workload::selector(), SIDECAR_CONTAINER_NAME).await?;
        let begun = Instant::now();
        workload::resources(suite)
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(&restart_patch()?),
            )
            .await?;
        let removed = rolling
            .finished(REPLICAS as usize, &format!("rollout {rollout} completes"))
            .await?;
        drained(suite, NAMESPACE, &removed).await?;
        let took = begun.elapsed();
        let operator = usage("quiesce-operator", "run");
        let sidecars = usage("quiesce-sidecar", "serve");
        check!(
            operator.processes > 0,
            "no quiesce-operator process on this node"
        );
        check!(
            sidecars.processes > 0,
            "no quiesce-sidecar process on this node"
        );
        let _ = writeln!(
            table,
            "{rollout:>7}  {:>7.1}  {:>10} / {:<9}  {:>10} / {}",
            took.as_secs_f64(),
            operator.rss_max,
            operator.fds_max,
            sidecars.rss_max,
            sidecars.fds_max
        );
        first.get_or_insert((operator, sidecars));
        last = Some((operator, sidecars));
    }
    let records = load.finish(SETTLE).await.map_err(anyhow::Error::msg)?;
    eprint!("{table}");

    let mut figures = Figures::default();
    figures.add("requests", outcomes(&records));
    figures.add(
        format!("{ROLLOUTS} rollouts of {REPLICAS}"),
        seconds(started.elapsed()),
    );
    let ((operator_first, sidecar_first), (operator_last, sidecar_last)) =
        (first.unwrap_or_default(), last.unwrap_or_default());
    figures.add(
        "operator RSS / fds, first and last rollout",
        format!(
            "{} / {} KiB, {} / {}",
            operator_first.rss_max,
            operator_last.rss_max,
            operator_first.fds_max,
            operator_last.fds_max
        ),
    );
    figures.add(
        "sidecar RSS / fds (max), first and last rollout",
        format!(
            "{} / {} KiB, {} / {}",
            sidecar_first.rss_max,
            sidecar_last.rss_max,
            sidecar_first.fds_max,
            sidecar_last.fds_max
        ),
    );
    nothing_lost(&records, "the rollouts")?;
    // Flat: a leak of a few KiB a rollout would show as growth here.
    for (what, first, last) in [
        ("the operator", operator_first, operator_last),
        ("the sidecars", sidecar_first, sidecar_last),
    ] {
        check!(
            last.rss_max <= first.rss_max + first.rss_max / 2,
            "{what}'s memory grew from {} to {} KiB",
            first.rss_max,
            last.rss_max
        );
        check!(
            last.fds_max <= first.fds_max + 8,
            "{what}'s descriptors grew from {} to {}",
            first.fds_max,
            last.fds_max
        );
    }
    Ok(figures)
}
