//! The local pod runner's termination sequence, with plain shell
//! containers: preStop first, SIGTERM when it returns, SIGKILL (of the
//! whole process group) when the grace period ends but no sooner than 2 s
//! after SIGTERM, the native sidecar stopped only after the main container
//! has exited, and nothing left behind.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use quiesce_e2e::pod::plan::Images;
use quiesce_e2e::pod::{LocalPod, PodEvent, PodReport};
use serde_json::json;

fn template(pre_stop: &str, grace: i64) -> PodTemplateSpec {
    serde_json::from_value(json!({
        "spec": {
            "initContainers": [{
                "name": "sidecar",
                "restartPolicy": "Always",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"],
            }],
            "containers": [{
                "name": "app",
                // Ignores SIGTERM, like an engine stuck in a long request;
                // its child ignores it too.
                "command": ["sh", "-c", "trap '' TERM; sleep 60 & wait"],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", pre_stop]}}},
            }],
            "terminationGracePeriodSeconds": grace,
        },
    }))
    .expect("a valid template")
}

fn at(report: &PodReport, pred: impl Fn(&PodEvent) -> bool) -> f64 {
    let deleted = report.deleted().expect("deleted");
    let when = report
        .first(pred)
        .unwrap_or_else(|| panic!("event missing: {:#?}", report.events));
    when.saturating_duration_since(deleted).as_secs_f64()
}

async fn run(pre_stop: &str, grace: i64) -> PodReport {
    let mut pod = LocalPod::start("p", &template(pre_stop, grace), &Images::new(), None)
        .expect("the pod starts");
    pod.wait_until(|s| s.ready, Duration::from_secs(10))
        .await
        .expect("ready");
    let deleted = Instant::now();
    pod.delete();
    let report = tokio::time::timeout(Duration::from_secs(20), pod.finished())
        .await
        .expect("the pod stops within its grace period and the minimum");
    assert!(report.deleted().unwrap() >= deleted);
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    report
}

fn near(value: f64, expected: f64) -> bool {
    (value - expected).abs() < 0.4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_the_hook_and_sigkill_gives_at_least_two_seconds() {
    // Grace 2 s, hook 0.5 s: SIGTERM at 0.5 s, then the kubelet's minimum
    // of 2 s beats the grace period's end: SIGKILL at 2.5 s.
    let report = run("sleep 0.5", 2).await;
    let hook_start = at(
        &report,
        |e| matches!(e, PodEvent::PreStopStarted { container } if container == "app"),
    );
    let hook_end = at(
        &report,
        |e| matches!(e, PodEvent::PreStopEnded { container, .. } if container == "app"),
    );
    let term = at(
        &report,
        |e| matches!(e, PodEvent::SigTerm { container } if container == "app"),
    );
    let kill = at(
        &report,
        |e| matches!(e, PodEvent::SigKill { container } if container == "app"),
    );
    assert!(near(hook_start, 0.0), "hook started at {hook_start}");
    assert!(near(hook_end, 0.5), "hook ended at {hook_end}");
    assert!(term >= hook_end && near(term, 0.5), "SIGTERM at {term}");
    assert!(near(kill, 2.5), "SIGKILL at {kill}");
    assert!(report.killed());

    // The sidecar gets SIGTERM only after the app has exited.
    let app_exit = at(
        &report,
        |e| matches!(e, PodEvent::Exited { container, status } if container == "app" && status == "SIGKILL"),
    );
    let sidecar_term = at(
        &report,
        |e| matches!(e, PodEvent::SigTerm { container } if container == "sidecar"),
    );
    let sidecar_exit = at(
        &report,
        |e| matches!(e, PodEvent::Exited { container, status } if container == "sidecar" && status == "exit 0"),
    );
    assert!(app_exit >= kill, "{app_exit} {kill}");
    assert!(sidecar_term >= app_exit, "{sidecar_term} {app_exit}");
    assert!(sidecar_exit >= sidecar_term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_outlives_the_grace_period_is_cut_off_at_its_end() {
    // Grace 1 s, hook 30 s: SIGTERM at 1 s, SIGKILL 2 s later.
    let report = run("sleep 30", 1).await;
    let timed_out = at(&report, |e| matches!(e, PodEvent::PreStopTimedOut { .. }));
    let term = at(
        &report,
        |e| matches!(e, PodEvent::SigTerm { container } if container == "app"),
    );
    let kill = at(
        &report,
        |e| matches!(e, PodEvent::SigKill { container } if container == "app"),
    );
    assert!(near(timed_out, 1.0), "{timed_out}");
    assert!(near(term, 1.0), "{term}");
    assert!(near(kill, 3.0), "{kill}");
    let gone = report
        .gone()
        .unwrap()
        .duration_since(report.deleted().unwrap());
    assert!(gone < Duration::from_secs(5), "{gone:?}");
}
