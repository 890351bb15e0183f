//! Short versions of the demo's scenarios (docs/demo.md): a rolling
//! restart under load with real sidecar and engine processes run by the
//! local pod runner, behind the balancer with its propagation delay.
//!
//! Each test checks the outcome of every request, the termination of every
//! replaced pod, and that no process of any pod (containers and preStop
//! hooks) is left; a harness error (a pod that fails, a process left
//! behind) fails the run itself.

use std::time::Duration;

use quiesce_demo::comparison::{self, StrategyRun};
use quiesce_demo::report::summarize;
use quiesce_demo::strategy::{Scenario, Strategy};
use quiesce_e2e::client::Classified;
use quiesce_e2e::load::{Counts, LoadConfig};
use quiesce_e2e::pod::{PodEvent, project_images};

/// A small, quick world: 20 ms tokens, requests of 0.2 to 2.4 s, a 1 s
/// propagation delay.
fn scenario(replicas: usize, lengths: &str, rate: f64) -> Scenario {
    Scenario {
        replicas,
        propagation_seconds: 1,
        drain_timeout_seconds: 4,
        abort_grace_seconds: 1,
        exit_margin_seconds: 1,
        token_interval: Duration::from_millis(20),
        engine_startup: Duration::from_millis(500),
        load: LoadConfig {
            rate,
            concurrency: 32,
            lengths: lengths.parse().expect("a valid mix"),
            seed: 7,
            retries: 0,
        },
        ..Scenario::default()
    }
}

async fn run(strategy: Strategy, scenario: &Scenario) -> StrategyRun {
    let images = project_images();
    let mut runs = comparison::run_all(&[strategy], scenario, &images, None)
        .await
        .unwrap_or_else(|e| panic!("the harness failed: {e}"));
    let run = runs.pop().expect("one run");
    for pod in run.old.iter().chain(&run.new) {
        assert!(
            pod.orphans.is_empty(),
            "{} left processes: {:?}",
            pod.name,
            pod.orphans
        );
        assert!(pod.failure.is_none(), "{}: {:?}", pod.name, pod.failure);
        assert!(pod.gone().is_some(), "{} is not gone", pod.name);
    }
    assert_eq!(run.old.len(), scenario.replicas);
    assert_eq!(run.new.len(), scenario.replicas);
    run
}

fn failures(run: &StrategyRun) -> Vec<String> {
    run.requests
        .iter()
        .filter_map(|r| match &r.outcome {
            Classified::Failed(why) => Some(format!("request {} on {:?}: {why}", r.id, r.pod)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_loses_nothing_when_the_drain_covers_the_longest_request() {
    // Longest request 2.4 s, drain timeout 4 s.
    let scenario = scenario(2, "70:10-40,30:60-120", 8.0);
    let run = run(Strategy::Quiesce, &scenario).await;
    let counts = Counts::of(&run.requests);
    assert!(counts.completed > 20, "{counts}");
    assert_eq!(failures(&run), Vec::<String>::new());
    assert_eq!(counts.aborted, 0, "{counts}");
    let summary = summarize(&run);
    for pod in &summary.pods {
        assert!(!pod.killed, "{} was SIGKILLed", pod.name);
        let took = pod.termination_seconds.expect("terminated");
        let ideal = pod.ideal_seconds.expect("an ideal");
        // It keeps serving for the propagation delay, then stops as soon as
        // its last request is done.
        assert!(took >= 1.0, "{}: {took} s", pod.name);
        assert!(
            took <= ideal + 1.5,
            "{}: {took} s, ideal {ideal} s",
            pod.name
        );
    }
    // The drain ran through the preStop hook, not SIGTERM.
    for pod in &run.old {
        assert!(
            pod.first(|e| matches!(e, PodEvent::PreStopEnded { .. }))
                .is_some(),
            "{}: {:?}",
            pod.name,
            pod.events
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_aborts_explicitly_what_outlives_a_short_drain() {
    // Requests of 2 to 3 s against a 1 s drain timeout.
    let mut scenario = scenario(1, "1:100-150", 6.0);
    scenario.drain_timeout_seconds = 1;
    let run = run(Strategy::Quiesce, &scenario).await;
    let counts = Counts::of(&run.requests);
    assert!(counts.aborted > 0, "{counts}");
    assert_eq!(failures(&run), Vec::<String>::new());
    assert!(!summarize(&run).pods.iter().any(|p| p.killed));
    let old = &run.old[0].name;
    for request in &run.requests {
        if let Classified::Aborted { .. } = request.outcome {
            assert_eq!(
                request.pod.as_ref(),
                Some(old),
                "only the drained pod aborts"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_aborts_in_flight_requests_and_fails_those_routed_to_a_dead_pod() {
    let scenario = scenario(1, "1:20-100", 15.0);
    let run = run(Strategy::Stock, &scenario).await;
    let counts = Counts::of(&run.requests);
    let old = &run.old[0];
    // SIGTERM with --shutdown-timeout 0: what was in flight is aborted
    // explicitly (a final abort chunk), not cut.
    assert!(counts.aborted > 0, "{counts}");
    assert!(counts.failed > 0, "{counts}");
    assert!(counts.failed + counts.aborted > 0);
    // The pod exits at once, but the balancer routes to it for the
    // propagation delay: those connections are refused. Nothing else fails.
    let deleted = old.deleted().expect("the old pod was deleted");
    for request in &run.requests {
        if let Classified::Failed(why) = &request.outcome {
            assert_eq!(request.pod.as_ref(), Some(&old.name), "{why}");
            assert_eq!(request.proxy_error.as_deref(), Some("connect"), "{why}");
            assert!(
                request.started >= deleted,
                "refused before the deletion: {why}"
            );
        }
    }
    assert!(!old.killed());
}

/// The demo's scale-in (3 to 2 pods, streams on the two pods Ready last):
/// `Default` removes the pod Ready most recently, a busy one, whose streams
/// outlive the 5 s drain and are aborted at the deadline; `IdleFirst`
/// reads the sidecars' loads and removes the idle pod after the
/// propagation delay, and every stream completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_first_removes_the_idle_pod_and_default_a_busy_one() {
    use quiesce_api::ScaleInPolicy;
    use quiesce_demo::scale_in;

    let scenario = scenario(3, "1:50-50", 0.0);
    let images = project_images();
    let mut runs = Vec::new();
    for policy in scale_in::POLICIES {
        let run = scale_in::run(policy, &scenario, &images, None)
            .await
            .unwrap_or_else(|e| panic!("the harness failed: {e}"));
        for pod in run.old.iter().chain(&run.new) {
            assert!(pod.orphans.is_empty(), "{}: {:?}", pod.name, pod.orphans);
            assert!(pod.gone().is_some(), "{} is not gone", pod.name);
        }
        assert_eq!((run.old.len(), run.new.len()), (1, 2));
        runs.push((policy, run));
    }
    for (policy, run) in &runs {
        let removed = &run.old[0];
        let counts = Counts::of(&run.requests);
        let took = removed.termination().expect("the removed pod terminated");
        assert_eq!(counts.failed, 0, "{policy:?}: {:?}", failures(run));
        assert!(
            removed
                .first(|e| matches!(e, PodEvent::PreStopEnded { .. }))
                .is_some()
        );
        match policy {
            ScaleInPolicy::Default => {
                assert_eq!(removed.name, "default-3", "the pod Ready most recently");
                assert_eq!(counts.aborted, 2, "its streams outlive the drain");
                assert!(
                    took >= Duration::from_secs(5),
                    "held to the deadline: {took:?}"
                );
            }
            ScaleInPolicy::IdleFirst => {
                assert_eq!(removed.name, "idle-first-1", "the idle pod");
                assert_eq!(counts.completed, 4, "every stream completes");
                assert!(
                    took >= Duration::from_secs(1),
                    "served its propagation delay"
                );
                assert!(
                    took < Duration::from_secs(5),
                    "not held like a busy pod: {took:?}"
                );
            }
        }
    }
}
