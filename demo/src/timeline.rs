//! The picture: a self-contained SVG timeline with one lane per strategy
//! and, in each lane, one row per pod, on a common time axis (seconds since
//! that strategy's rollout started).
//!
//! A row shows the pod's phases (starting, serving, terminating, its
//! preStop hook inside), when it was Ready (a thin line: readiness keeps
//! moving while the pod terminates), SIGTERM, exit and SIGKILL markers, the
//! ideal termination time, the requests it had in flight (a step line), and
//! a tick for every request that ended badly on it (aborted, failed,
//! rejected).

use std::fmt::Write as _;
use std::time::Instant;

use crate::comparison::StrategyRun;
use crate::report::{StrategySummary, short_name};
use quiesce_e2e::client::Classified;
use quiesce_e2e::pod::{PodEvent, PodReport};

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 64.0;
const LANE_HEADER: f64 = 40.0;
const ROW: f64 = 42.0;
const LANE_GAP: f64 = 26.0;
const LEGEND: f64 = 84.0;

const STARTING: &str = "#c9ced6";
const SERVING: &str = "#4caf6e";
const TERMINATING: &str = "#f0b45a";
const PRE_STOP: &str = "#7e57c2";
const READY_LINE: &str = "#1b5e20";
const IN_FLIGHT: &str = "#37474f";
const IDEAL: &str = "#1e63c7";
const ABORTED: &str = "#ef6c00";
const FAILED: &str = "#d32f2f";
const REJECTED: &str = "#8d8d8d";

/// Escapes text for XML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Seconds of `at` since `epoch`, negative before it.
fn since(epoch: Instant, at: Instant) -> f64 {
    if at >= epoch {
        at.duration_since(epoch).as_secs_f64()
    } else {
        -epoch.duration_since(at).as_secs_f64()
    }
}

/// The last moment a run shows.
fn run_end(run: &StrategyRun) -> f64 {
    let events = run
        .old
        .iter()
        .chain(&run.new)
        .flat_map(|p| p.events.iter().map(|(at, _)| *at));
    let requests = run.requests.iter().map(|r| r.ended);
    events
        .chain(requests)
        .map(|at| since(run.epoch, at))
        .fold(0.0, f64::max)
}

struct Scale {
    t_max: f64,
}

impl Scale {
    fn x(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, self.t_max);
        LEFT + t / self.t_max * (WIDTH - LEFT - RIGHT)
    }
}

/// Renders the runs (with their summaries, in the same order) as an SVG
/// document. `subtitle` describes the scenario.
pub fn render(runs: &[StrategyRun], summaries: &[StrategySummary], subtitle: &str) -> String {
    let t_max = runs.iter().map(run_end).fold(1.0, f64::max).ceil();
    let scale = Scale { t_max };
    let max_in_flight = runs
        .iter()
        .flat_map(|run| {
            run.old
                .iter()
                .chain(&run.new)
                .map(move |pod| peak_in_flight(run, &pod.name))
        })
        .max()
        .unwrap_or(1)
        .max(1);
    let lanes_height: f64 = runs
        .iter()
        .map(|run| LANE_HEADER + ROW * (run.old.len() + run.new.len()) as f64 + LANE_GAP)
        .sum();
    let height = TOP + lanes_height + LEGEND;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = if runs.iter().any(|r| r.scale_in.is_some()) {
        "Rolling restart under load: three ways to stop a pod. Scale-in: which pod goes"
    } else {
        "Rolling restart under load: three ways to stop a pod"
    };
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="17" font-weight="bold">{title}</text>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="44" fill="#555">{}</text>"##,
        esc(subtitle)
    );

    // Grid: a line every 5 s (every 10 s on long runs), across all lanes.
    let step = if t_max > 90.0 { 10.0 } else { 5.0 };
    let grid_bottom = TOP + lanes_height - LANE_GAP;
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let x = scale.x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{grid_bottom:.1}" stroke="#e3e3e3"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#777">{t:.0} s</text>"##,
            grid_bottom + 14.0
        );
        t += step;
    }

    let mut y = TOP;
    for (run, summary) in runs.iter().zip(summaries) {
        let pods = run.old.len() + run.new.len();
        let lane_height = LANE_HEADER + ROW * pods as f64;
        let _ = writeln!(
            svg,
            r#"<g class="lane" data-strategy="{}">"#,
            esc(summary.name)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="4" y="{y:.1}" width="{:.1}" height="{lane_height:.1}" fill="none" stroke="#bbb" rx="6"/>"##,
            WIDTH - 8.0
        );
        let c = &summary.requests;
        // A rollout's lane marks where the load stops; a scale-in's, the scale.
        let (marker, took) = match run.scale_in {
            Some(_) => (
                "scale 3 → 2",
                format!(
                    "removed pod gone {:.1} s after the scale",
                    summary.rollout_seconds
                ),
            ),
            None => (
                "load stops",
                format!("rollout {:.1} s", summary.rollout_seconds),
            ),
        };
        let _ = writeln!(
            svg,
            r#"<text x="12" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
            y + 18.0,
            esc(summary.name)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="13">{} completed · {} rejected · <tspan fill="{ABORTED}">{} aborted</tspan> · <tspan fill="{FAILED}">{} failed</tspan> · {took}</text>"##,
            LEFT + 40.0,
            y + 18.0,
            c.completed,
            c.rejected,
            c.aborted,
            c.failed,
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            LEFT + 40.0,
            y + 33.0,
            esc(&summary.settings)
        );
        // Where the load stopped (what follows is the cleanup of the new
        // pods), or where the scale-in began.
        let stop_x = scale.x(since(run.epoch, run.load_stopped));
        let _ = writeln!(
            svg,
            r##"<line x1="{stop_x:.1}" y1="{:.1}" x2="{stop_x:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="6,4"/>"##,
            y + LANE_HEADER - 6.0,
            y + lane_height
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#555" font-size="11">{marker}</text>"##,
            stop_x + 4.0,
            y + LANE_HEADER - 2.0
        );
        let mut row_y = y + LANE_HEADER;
        for pod in run.old.iter().chain(&run.new) {
            let ideal = summary
                .pods
                .iter()
                .find(|p| p.name == pod.name)
                .and_then(|p| p.ideal_seconds);
            draw_pod(&mut svg, &scale, run, pod, ideal, row_y, max_in_flight);
            row_y += ROW;
        }
        let _ = writeln!(svg, "</g>");
        y += lane_height + LANE_GAP;
    }
    draw_legend(&mut svg, y + 6.0, max_in_flight);
    let _ = writeln!(svg, "</svg>");
    svg
}

/// The most requests `pod` had in flight at once.
fn peak_in_flight(run: &StrategyRun, pod: &str) -> usize {
    let steps = in_flight_steps(run, pod);
    steps.iter().map(|(_, n)| *n).max().unwrap_or(0)
}

/// `(time, requests in flight from then on)` for `pod`.
fn in_flight_steps(run: &StrategyRun, pod: &str) -> Vec<(f64, usize)> {
    let mut changes: Vec<(f64, i64)> = Vec::new();
    for r in run
        .requests
        .iter()
        .filter(|r| r.pod.as_deref() == Some(pod))
    {
        if r.proxy_error.is_some() || r.outcome == Classified::Rejected {
            continue;
        }
        changes.push((since(run.epoch, r.started), 1));
        changes.push((since(run.epoch, r.ended), -1));
    }
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut level: i64 = 0;
    changes
        .into_iter()
        .map(|(t, delta)| {
            level += delta;
            (t, usize::try_from(level).unwrap_or(0))
        })
        .collect()
}

fn draw_pod(
    svg: &mut String,
    scale: &Scale,
    run: &StrategyRun,
    pod: &PodReport,
    ideal: Option<f64>,
    y: f64,
    max_in_flight: usize,
) {
    let at = |t: Instant| since(run.epoch, t);
    let flight_top = y + 2.0;
    let flight_height = 16.0;
    let ready_y = y + 21.0;
    let bar_y = y + 24.0;
    let bar_height = 11.0;
    let tick_y = bar_y + bar_height + 1.0;
    let _ = writeln!(svg, r#"<g class="pod" data-pod="{}">"#, esc(&pod.name));
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        LEFT - 8.0,
        bar_y + 10.0,
        esc(short_name(run.strategy.name(), &pod.name))
    );
    let created = pod.created().map(at).unwrap_or(0.0);
    let ready = pod.ready().map(at);
    let deleted = pod.deleted().map(at);
    let gone = pod.gone().map(at).unwrap_or(scale.t_max);
    let mut rect = |from: f64, to: f64, color: &str, y: f64, h: f64| {
        let (x1, x2) = (scale.x(from), scale.x(to));
        if x2 > x1 {
            let _ = writeln!(
                svg,
                r#"<rect x="{x1:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
                x2 - x1
            );
        }
    };
    let serving_from = ready.unwrap_or(deleted.unwrap_or(gone));
    let serving_to = deleted.unwrap_or(gone);
    rect(
        created,
        serving_from.min(serving_to),
        STARTING,
        bar_y,
        bar_height,
    );
    if ready.is_some() {
        rect(serving_from, serving_to, SERVING, bar_y, bar_height);
    }
    if let Some(deleted) = deleted {
        rect(deleted, gone, TERMINATING, bar_y, bar_height);
    }
    // The preStop hook, inside the terminating bar.
    let hook_start = pod
        .first(|e| matches!(e, PodEvent::PreStopStarted { .. }))
        .map(at);
    let hook_end = pod
        .first(|e| {
            matches!(
                e,
                PodEvent::PreStopEnded { .. } | PodEvent::PreStopTimedOut { .. }
            )
        })
        .map(at);
    if let Some(start) = hook_start {
        rect(
            start,
            hook_end.unwrap_or(gone),
            PRE_STOP,
            bar_y + 3.0,
            bar_height - 6.0,
        );
    }
    // Ready: a thin line over the bar while the pod's Ready condition holds.
    let mut ready_since = None;
    for (t, event) in &pod.events {
        match event {
            PodEvent::Ready => ready_since = Some(at(*t)),
            PodEvent::NotReady | PodEvent::Gone => {
                if let Some(from) = ready_since.take() {
                    rect(from, at(*t), READY_LINE, ready_y, 2.0);
                }
            }
            _ => {}
        }
    }
    // Markers: SIGTERM (a dark notch), exits (dots), SIGKILL (a red cross).
    for (t, event) in &pod.events {
        let x = scale.x(at(*t));
        match event {
            PodEvent::SigTerm { .. } => {
                let _ = writeln!(
                    svg,
                    r##"<path d="M{:.1},{:.1} l4,-6 h-8 z" fill="#111"><title>SIGTERM</title></path>"##,
                    x, bar_y
                );
            }
            PodEvent::Exited { container, status } => {
                let _ = writeln!(
                    svg,
                    r##"<circle cx="{x:.1}" cy="{:.1}" r="3" fill="#111"><title>{} exited ({})</title></circle>"##,
                    bar_y + bar_height / 2.0,
                    esc(container),
                    esc(status)
                );
            }
            PodEvent::SigKill { .. } => {
                let (cy, r) = (bar_y + bar_height / 2.0, 6.0);
                let _ = writeln!(
                    svg,
                    r#"<path d="M{:.1},{:.1} l{},{} M{:.1},{:.1} l{},{}" stroke="{FAILED}" stroke-width="3"><title>SIGKILL</title></path>"#,
                    x - r,
                    cy - r,
                    2.0 * r,
                    2.0 * r,
                    x - r,
                    cy + r,
                    2.0 * r,
                    -2.0 * r
                );
            }
            _ => {}
        }
    }
    if let (Some(deleted), Some(ideal)) = (deleted, ideal) {
        let x = scale.x(deleted + ideal);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{IDEAL}" stroke-width="2" stroke-dasharray="3,2"><title>ideal termination: {ideal:.1} s</title></line>"#,
            bar_y - 4.0,
            bar_y + bar_height + 4.0
        );
    }
    // Requests in flight, as a step line in the band above the bar.
    let steps = in_flight_steps(run, &pod.name);
    if !steps.is_empty() {
        let level_y =
            |n: usize| flight_top + flight_height * (1.0 - n as f64 / max_in_flight as f64);
        let mut points = format!("{:.1},{:.1}", scale.x(steps[0].0), level_y(0));
        let mut level = 0;
        for (t, n) in &steps {
            let x = scale.x(*t);
            let _ = write!(
                points,
                " {x:.1},{:.1} {x:.1},{:.1}",
                level_y(level),
                level_y(*n)
            );
            level = *n;
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{points}" fill="none" stroke="{IN_FLIGHT}" stroke-width="1.2"/>"#
        );
    }
    // A tick for every request that ended badly on this pod.
    for r in run
        .requests
        .iter()
        .filter(|r| r.pod.as_deref() == Some(pod.name.as_str()))
    {
        let (color, what) = match &r.outcome {
            Classified::Completed { .. } => continue,
            Classified::Aborted { .. } => (ABORTED, "aborted".to_owned()),
            Classified::Failed(why) => (FAILED, format!("failed: {why}")),
            Classified::Rejected => (REJECTED, "rejected".to_owned()),
        };
        let x = scale.x(at(r.ended));
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{tick_y:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.5"><title>request {} ({} tokens) {}</title></line>"#,
            tick_y + 6.0,
            r.id,
            r.max_tokens,
            esc(&what)
        );
    }
    // How many requests ended badly on it, beside its end.
    let mine = run
        .requests
        .iter()
        .filter(|r| r.pod.as_deref() == Some(pod.name.as_str()));
    let (mut aborted, mut failed) = (0, 0);
    for r in mine {
        match r.outcome {
            Classified::Aborted { .. } => aborted += 1,
            Classified::Failed(_) => failed += 1,
            _ => {}
        }
    }
    let mut parts = Vec::new();
    if aborted > 0 {
        parts.push(format!(
            r#"<tspan fill="{ABORTED}">{aborted} aborted</tspan>"#
        ));
    }
    if failed > 0 {
        parts.push(format!(r#"<tspan fill="{FAILED}">{failed} failed</tspan>"#));
    }
    if !parts.is_empty() {
        let end = pod
            .events
            .iter()
            .map(|(t, _)| at(*t))
            .chain(
                run.requests
                    .iter()
                    .filter(|r| r.pod.as_deref() == Some(pod.name.as_str()))
                    .map(|r| at(r.ended)),
            )
            .fold(0.0, f64::max);
        // A white halo keeps the counts legible over the ideal's line.
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" font-weight="bold" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            scale.x(end) + 8.0,
            bar_y + 10.0,
            parts.join(" · ")
        );
    }
    let _ = writeln!(svg, "</g>");
}

fn draw_legend(svg: &mut String, y: f64, max_in_flight: usize) {
    let _ = writeln!(svg, r#"<g class="legend">"#);
    let items: [(&str, &str, &str); 5] = [
        ("rect", STARTING, "starting (not ready yet)"),
        ("rect", SERVING, "running"),
        ("rect", TERMINATING, "terminating (deleted, until gone)"),
        ("hook", PRE_STOP, "preStop hook"),
        ("line", READY_LINE, "Ready condition"),
    ];
    let mut x = LEFT;
    for (kind, color, label) in items {
        match kind {
            "rect" => {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="22" height="11" fill="{color}"/>"#
                );
            }
            "hook" => {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{:.1}" width="22" height="5" fill="{color}"/>"#,
                    y + 3.0
                );
            }
            _ => {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{:.1}" width="22" height="2" fill="{color}"/>"#,
                    y + 4.0
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 28.0,
            y + 10.0,
            esc(label)
        );
        x += 250.0;
    }
    let y2 = y + 26.0;
    let _ = writeln!(
        svg,
        r##"<path d="M{:.1},{:.1} l4,-6 h-8 z" fill="#111"/><text x="{:.1}" y="{:.1}">SIGTERM</text>"##,
        LEFT + 11.0,
        y2 + 6.0,
        LEFT + 28.0,
        y2 + 10.0
    );
    let _ = writeln!(
        svg,
        r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#111"/><text x="{:.1}" y="{:.1}">container exit</text>"##,
        LEFT + 250.0 + 11.0,
        y2 + 6.0,
        LEFT + 250.0 + 28.0,
        y2 + 10.0
    );
    let _ = writeln!(
        svg,
        r#"<path d="M{:.1},{:.1} l12,12 M{:.1},{:.1} l12,-12" stroke="{FAILED}" stroke-width="3"/><text x="{:.1}" y="{:.1}">SIGKILL</text>"#,
        LEFT + 500.0 + 5.0,
        y2,
        LEFT + 500.0 + 5.0,
        y2 + 12.0,
        LEFT + 500.0 + 28.0,
        y2 + 10.0
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{IDEAL}" stroke-width="2" stroke-dasharray="3,2"/><text x="{:.1}" y="{:.1}">ideal termination (propagation + longest admitted request)</text>"#,
        LEFT + 750.0 + 11.0,
        y2 - 2.0,
        LEFT + 750.0 + 11.0,
        y2 + 14.0,
        LEFT + 750.0 + 28.0,
        y2 + 10.0
    );
    let y3 = y + 52.0;
    let _ = writeln!(
        svg,
        r#"<polyline points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="none" stroke="{IN_FLIGHT}" stroke-width="1.2"/><text x="{:.1}" y="{:.1}">requests in flight on the pod (full height: {max_in_flight})</text>"#,
        LEFT,
        y3 + 10.0,
        LEFT + 8.0,
        y3 + 10.0,
        LEFT + 8.0,
        y3,
        LEFT + 22.0,
        y3,
        LEFT + 28.0,
        y3 + 10.0
    );
    let ticks = [
        (ABORTED, "aborted (explicit)"),
        (FAILED, "failed (cut, refused)"),
        (REJECTED, "rejected (503, retryable)"),
    ];
    let mut x = LEFT + 500.0;
    for (color, label) in ticks {
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 11.0,
            y3 + 2.0,
            x + 11.0,
            y3 + 12.0,
            x + 22.0,
            y3 + 10.0,
            esc(label)
        );
        x += 200.0;
    }
    let _ = writeln!(svg, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::summarize;
    use crate::strategy::Strategy;
    use quiesce_e2e::load::RequestRecord;
    use std::time::Duration;

    fn pod(name: &str, t0: Instant, events: &[(f64, PodEvent)]) -> PodReport {
        PodReport {
            name: name.to_owned(),
            events: events
                .iter()
                .map(|(s, e)| (t0 + Duration::from_secs_f64(*s), e.clone()))
                .collect(),
            orphans: Vec::new(),
            failure: None,
            logs: Vec::new(),
        }
    }

    fn run(strategy: Strategy, t0: Instant) -> StrategyRun {
        let name = |rev: &str| format!("{}-{rev}-1", strategy.name());
        let old = pod(
            &name("old"),
            t0,
            &[
                (0.0, PodEvent::Created),
                (1.0, PodEvent::Ready),
                (11.0, PodEvent::Deleted),
                (
                    11.0,
                    PodEvent::PreStopStarted {
                        container: "engine".into(),
                    },
                ),
                (13.0, PodEvent::NotReady),
                (
                    16.0,
                    PodEvent::PreStopEnded {
                        container: "engine".into(),
                        status: "exit 0".into(),
                    },
                ),
                (
                    16.0,
                    PodEvent::SigTerm {
                        container: "engine".into(),
                    },
                ),
                (
                    16.1,
                    PodEvent::Exited {
                        container: "engine".into(),
                        status: "exit 0".into(),
                    },
                ),
                (
                    17.0,
                    PodEvent::SigKill {
                        container: "x<&>".into(),
                    },
                ),
                (17.1, PodEvent::Gone),
            ],
        );
        let new = pod(
            &name("new"),
            t0,
            &[
                (1.0, PodEvent::Created),
                (11.0, PodEvent::Ready),
                (20.0, PodEvent::Deleted),
                (22.0, PodEvent::Gone),
            ],
        );
        let request = |id, start: f64, end: f64, outcome| RequestRecord {
            id,
            max_tokens: 50,
            started: t0 + Duration::from_secs_f64(start),
            ended: t0 + Duration::from_secs_f64(end),
            outcome,
            pod: Some(name("old")),
            attempts: 1,
            proxy_error: None,
        };
        StrategyRun {
            strategy,
            scale_in: None,
            settings: "settings with <markup> & ampersands".into(),
            propagation: Duration::from_secs(2),
            token_interval: Duration::from_millis(20),
            epoch: t0 + Duration::from_secs(1),
            completed: t0 + Duration::from_secs(12),
            old_gone: t0 + Duration::from_secs_f64(17.1),
            load_stopped: t0 + Duration::from_secs(18),
            old: vec![old],
            new: vec![new],
            requests: vec![
                request(1, 2.0, 5.0, Classified::Completed { tokens: 50 }),
                request(2, 10.0, 15.0, Classified::Aborted { tokens: 3 }),
                request(3, 12.0, 12.5, Classified::Failed("cut <here>".into())),
            ],
        }
    }

    #[test]
    fn the_svg_is_well_formed_with_one_lane_per_strategy_and_a_row_per_pod() {
        let t0 = Instant::now();
        let runs: Vec<StrategyRun> = Strategy::ALL.iter().map(|s| run(*s, t0)).collect();
        let summaries: Vec<_> = runs.iter().map(summarize).collect();
        let svg = render(&runs, &summaries, "3 replicas & <stuff>");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let lanes: Vec<&str> = root
            .descendants()
            .filter(|n| n.attribute("class") == Some("lane"))
            .filter_map(|n| n.attribute("data-strategy"))
            .collect();
        assert_eq!(lanes, ["stock", "fixed-sleep", "quiesce"]);
        let pods = root
            .descendants()
            .filter(|n| n.attribute("class") == Some("pod"))
            .count();
        assert_eq!(pods, 6);
        let text: String = root
            .descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect();
        assert!(text.contains("SIGKILL"));
        assert!(text.contains("1 aborted"), "{text}");
        assert!(text.contains("settings with <markup> & ampersands"));
    }

    #[test]
    fn a_scale_in_gets_a_lane_of_its_own_marked_at_the_scale() {
        let t0 = Instant::now();
        let mut scale_in = run(Strategy::Quiesce, t0);
        scale_in.scale_in = Some(quiesce_api::ScaleInPolicy::IdleFirst);
        let runs = vec![run(Strategy::Quiesce, t0), scale_in];
        let summaries: Vec<_> = runs.iter().map(summarize).collect();
        let svg = render(&runs, &summaries, "");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let lanes: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("lane"))
            .filter_map(|n| n.attribute("data-strategy"))
            .collect();
        assert_eq!(lanes, ["quiesce", "scale-in IdleFirst"]);
        let text: String = doc
            .descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect();
        assert!(text.contains("Scale-in: which pod goes"), "{text}");
        assert!(text.contains("scale 3 → 2"), "{text}");
        // Scaled at 18 s, the removed pod gone at 17.1 s: 0 s after.
        assert!(
            text.contains("removed pod gone 0.0 s after the scale"),
            "{text}"
        );
    }

    #[test]
    fn in_flight_steps_rise_and_fall_with_requests() {
        let t0 = Instant::now();
        let run = run(Strategy::Quiesce, t0);
        let steps = in_flight_steps(&run, "quiesce-old-1");
        let levels: Vec<usize> = steps.iter().map(|(_, n)| *n).collect();
        assert_eq!(levels, [1, 0, 1, 2, 1, 0]);
        assert_eq!(peak_in_flight(&run, "quiesce-old-1"), 2);
    }
}
