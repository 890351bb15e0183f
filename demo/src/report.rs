//! What a comparison run shows: requests by outcome, the rollout's length,
//! and each replaced pod's termination time beside its ideal.
//!
//! The ideal termination of a pod is what a perfect drain would take: keep
//! serving for the propagation delay (load balancers still send requests
//! until then), then stop admitting and finish exactly the requests that
//! are in flight at that moment, not a moment longer. So it is the
//! propagation delay plus the longest remaining time, at the end of the
//! propagation delay, of the requests the pod had admitted by then. A
//! request's natural end is when it ended if it completed, and otherwise
//! when it would have (its start plus its tokens times the time per
//! token). It is the same yardstick for every strategy: a pod that stops
//! sooner lost requests, one that stops later wasted time.

use std::fmt::Write as _;
use std::time::Duration;

use quiesce_api::ScaleInPolicy;
use serde::Serialize;

use crate::comparison::StrategyRun;
use quiesce_e2e::load::{Counts, RequestRecord, ideal_termination, natural_end};
use quiesce_e2e::pod::PodEvent;

/// A replaced pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodSummary {
    /// Its name.
    pub name: String,
    /// From deletion to gone.
    pub termination_seconds: Option<f64>,
    /// The ideal (see the module's doc).
    pub ideal_seconds: Option<f64>,
    /// Whether a container was SIGKILLed.
    pub killed: bool,
    /// How long its preStop hook ran.
    pub pre_stop_seconds: Option<f64>,
    /// Requests that reached it.
    pub requests: usize,
}

/// One strategy's results.
#[derive(Clone, Debug, Serialize)]
pub struct StrategySummary {
    /// `stock`, `fixed-sleep` or `quiesce`; `scale-in IdleFirst` or
    /// `scale-in Default` for a scale-in.
    pub name: &'static str,
    /// The scale-in policy, for a scale-in run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_in: Option<&'static str>,
    /// Its termination settings.
    pub settings: String,
    /// Requests by outcome.
    pub requests: Counts,
    /// Requests the balancer retried on another pod (after a 503 with
    /// `Retry-After`, or a refused connection when that is switched on).
    pub retried: usize,
    /// Failed requests that the balancer sent to a pod that had already
    /// exited (stale routing during the propagation delay).
    pub refused: usize,
    /// From the start of the rollout to the last old pod gone (for a
    /// scale-in: from the scale to the removed pod gone).
    pub rollout_seconds: f64,
    /// From the start of the rollout to when the Deployment would call it
    /// complete (terminating pods do not count there).
    pub complete_seconds: f64,
    /// The replaced pods.
    pub pods: Vec<PodSummary>,
}

/// Summarizes a run.
pub fn summarize(run: &StrategyRun) -> StrategySummary {
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let pods = run
        .old
        .iter()
        .map(|pod| {
            let served: Vec<&RequestRecord> = run
                .requests
                .iter()
                .filter(|r| r.pod.as_deref() == Some(pod.name.as_str()))
                .filter(|r| natural_end(r, run.token_interval).is_some())
                .collect();
            let ideal = pod.deleted().map(|deleted| {
                let work = served
                    .iter()
                    .filter_map(|r| Some((r.started, natural_end(r, run.token_interval)?)));
                ideal_termination(run.propagation, deleted, work)
            });
            let pre_stop = pod
                .first(|e| matches!(e, PodEvent::PreStopStarted { .. }))
                .zip(pod.first(|e| {
                    matches!(
                        e,
                        PodEvent::PreStopEnded { .. } | PodEvent::PreStopTimedOut { .. }
                    )
                }))
                .map(|(start, end)| secs(end.saturating_duration_since(start)));
            PodSummary {
                name: pod.name.clone(),
                termination_seconds: pod.termination().map(secs),
                ideal_seconds: ideal.map(secs),
                killed: pod.killed(),
                pre_stop_seconds: pre_stop,
                requests: served.len(),
            }
        })
        .collect();
    StrategySummary {
        name: run.name(),
        scale_in: run.scale_in.map(ScaleInPolicy::as_str),
        settings: run.settings.clone(),
        requests: Counts::of(&run.requests),
        retried: run.requests.iter().filter(|r| r.attempts > 1).count(),
        refused: run
            .requests
            .iter()
            .filter(|r| r.proxy_error.as_deref() == Some(quiesce_e2e::balancer::CONNECT_ERROR))
            .count(),
        rollout_seconds: secs(run.old_gone.saturating_duration_since(match run.scale_in {
            Some(_) => run.load_stopped,
            None => run.epoch,
        })),
        complete_seconds: secs(run.completed.saturating_duration_since(run.epoch)),
        pods,
    }
}

/// The JSON document of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// One entry per strategy, in the order they ran.
    pub strategies: Vec<StrategySummary>,
}

/// A short pod name for tables: `old-2` for `quiesce-old-2`.
pub fn short_name<'a>(strategy: &str, pod: &'a str) -> &'a str {
    pod.strip_prefix(strategy)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(pod)
}

/// The table printed at the end of a run: the rollouts, then the
/// scale-ins.
pub fn table(summaries: &[StrategySummary]) -> String {
    let (scale_ins, rollouts): (Vec<_>, Vec<_>) = summaries
        .iter()
        .cloned()
        .partition(|s| s.scale_in.is_some());
    let mut out = rollout_table(&rollouts);
    if !scale_ins.is_empty() {
        out.push_str(&scale_in_table(&scale_ins));
    }
    out
}

/// The scale-ins: which pod went, how long its drain held it (the
/// GPU-seconds spent draining) and what was lost.
fn scale_in_table(summaries: &[StrategySummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<20} {:>9} {:>7} {:>6}   removed pod: drained for (GPU-seconds) / ideal (s)",
        "scale-in 3 -> 2", "completed", "aborted", "failed"
    );
    for s in summaries {
        let pods: Vec<String> = s
            .pods
            .iter()
            .map(|p| {
                format!(
                    "{} {} / {}",
                    p.name,
                    value(p.termination_seconds),
                    value(p.ideal_seconds)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>7} {:>6}   {}",
            s.name,
            s.requests.completed,
            s.requests.aborted,
            s.requests.failed,
            pods.join("   ")
        );
    }
    let _ = writeln!(out);
    for s in summaries {
        let _ = writeln!(out, "{:<20} {}", s.name, s.settings);
    }
    out
}

/// Seconds to a tenth, or `-` when unknown.
fn value(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn rollout_table(summaries: &[StrategySummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>8} {:>7} {:>6} {:>7} {:>8}   each replaced pod: termination / ideal (s)",
        "strategy", "completed", "rejected", "aborted", "failed", "retried", "rollout"
    );
    for s in summaries {
        let pods: Vec<String> = s
            .pods
            .iter()
            .map(|p| {
                format!(
                    "{} {} / {}{}",
                    short_name(s.name, &p.name),
                    value(p.termination_seconds),
                    value(p.ideal_seconds),
                    if p.killed { " KILLED" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>8} {:>7} {:>6} {:>7} {:>6.1} s   {}",
            s.name,
            s.requests.completed,
            s.requests.rejected,
            s.requests.aborted,
            s.requests.failed,
            s.retried,
            s.rollout_seconds,
            pods.join("   ")
        );
    }
    let _ = writeln!(out);
    for s in summaries {
        let _ = writeln!(out, "{:<12} {}", s.name, s.settings);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use quiesce_e2e::client::Classified;

    use super::*;

    #[test]
    fn the_ideal_is_propagation_plus_the_longest_tail_of_admitted_work() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let p = Duration::from_secs(2);
        // Deleted at 10 s: admission ends at 12 s.
        let work = [
            (at(3.0), at(11.0)),  // ended before: no tail
            (at(9.0), at(17.5)),  // 5.5 s left at 12 s
            (at(11.9), at(16.0)), // admitted during propagation: 4 s left
            (at(12.5), at(30.0)), // arrived after admission ended: not counted
        ];
        assert_eq!(
            ideal_termination(p, at(10.0), work),
            Duration::from_secs_f64(7.5)
        );
        // An idle pod: just the propagation delay.
        assert_eq!(ideal_termination(p, at(10.0), []), p);
    }

    fn record(outcome: Classified, proxy_error: Option<&str>) -> RequestRecord {
        let t0 = Instant::now();
        RequestRecord {
            id: 0,
            max_tokens: 100,
            started: t0,
            ended: t0 + Duration::from_secs(1),
            outcome,
            pod: Some("p".into()),
            attempts: 1,
            proxy_error: proxy_error.map(str::to_owned),
        }
    }

    #[test]
    fn natural_ends_count_work_that_reached_a_pod() {
        let interval = Duration::from_millis(20);
        let done = record(Classified::Completed { tokens: 100 }, None);
        assert_eq!(natural_end(&done, interval), Some(done.ended));
        let aborted = record(Classified::Aborted { tokens: 3 }, None);
        assert_eq!(
            natural_end(&aborted, interval),
            Some(aborted.started + Duration::from_secs(2))
        );
        let cut = record(Classified::Failed("reset".into()), None);
        assert!(natural_end(&cut, interval).is_some());
        let refused = record(Classified::Failed("502".into()), Some("connect"));
        assert_eq!(natural_end(&refused, interval), None);
        assert_eq!(
            natural_end(&record(Classified::Rejected, None), interval),
            None
        );
    }

    #[test]
    fn the_table_has_a_row_per_strategy_and_marks_kills() {
        let summary = StrategySummary {
            name: "quiesce",
            scale_in: None,
            settings: "rendered pod".into(),
            requests: Counts {
                completed: 10,
                rejected: 0,
                aborted: 1,
                failed: 0,
            },
            retried: 2,
            refused: 0,
            rollout_seconds: 33.25,
            complete_seconds: 30.0,
            pods: vec![PodSummary {
                name: "quiesce-old-1".into(),
                termination_seconds: Some(7.91),
                ideal_seconds: Some(7.9),
                killed: true,
                pre_stop_seconds: Some(7.8),
                requests: 4,
            }],
        };
        let text = table(std::slice::from_ref(&summary));
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("quiesce"), "{text}");
        assert!(row.contains("33.2 s") || row.contains("33.3 s"), "{text}");
        assert!(row.contains("old-1 7.9 / 7.9 KILLED"), "{text}");
        let scale_in = StrategySummary {
            name: "scale-in IdleFirst",
            scale_in: Some("IdleFirst"),
            ..summary.clone()
        };
        let text = table(&[summary.clone(), scale_in]);
        let scale_in_row = text
            .lines()
            .find(|l| l.starts_with("scale-in IdleFirst "))
            .unwrap();
        assert!(
            scale_in_row.contains("quiesce-old-1 7.9 / 7.9"),
            "the removed pod's drain: {text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("quiesce ")).count(),
            2,
            "one rollout row and its settings line: {text}"
        );
        let json = serde_json::to_value(Report {
            strategies: vec![summary],
        })
        .unwrap();
        assert_eq!(json["strategies"][0]["requests"]["aborted"], 1);
        assert_eq!(json["strategies"][0]["pods"][0]["ideal_seconds"], 7.9);
    }
}
