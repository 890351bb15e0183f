//! Each HTTP adapter of the sidecar (`--adapter vllm|sglang|trtllm`) against
//! the simulated engine playing that engine (`--personality`), as real
//! processes: the engine does not speak the drain protocol, and the sidecar
//! follows it over its own health, metrics and load endpoints, with the
//! semantics and freshness that engine's source gives them (docs/engine.md).
//!
//! For every adapter:
//! - a request that starts less than one poll interval before the drain is
//!   not lost: the pod's whole stop (preStop drain, then SIGTERM) completes it;
//! - `/live` never fails for a healthy engine whose `/health` is slow;
//! - when the engine's work cannot be seen, the drain waits for its timeout,
//!   and the sidecar says so in `/status`, a metric and its log;
//! - a dead engine makes `/live` fail, so that the kubelet restarts it.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use quiesce_e2e::client::{Classified, get_status};
use quiesce_e2e::pair::{PROMPT, status_json};
use quiesce_e2e::stock_pod::{
    Flavor, SGLANG, SGLANG_WITHOUT_METRICS, StockPod, TRTLLM, TRTLLM_WITHOUT_PERF_METRICS, VLLM,
    VLLM_WITHOUT_LOG_STATS,
};
use quiesce_testkit::http;

/// A request the engine has received (its own count says so) before the
/// drain starts with no propagation delay: the sidecar's last look is older
/// than the request. The pod's whole stop completes it; vLLM and SGLang
/// keep the drain open until it is done, TensorRT-LLM (whose gauges move
/// only when a request finishes) may end the drain first, and its own
/// SIGTERM handling, which waits for every request, completes it.
async fn a_request_just_before_the_drain_is_not_lost(flavor: Flavor, drain_waits: bool) {
    let pod = StockPod::start(flavor, &[], &[]).await;
    // 150 tokens at 10 ms: 1.5 s.
    let tokens = 150;
    let stream = pod.stream(tokens);
    let deadline = Instant::now() + PROMPT;
    while pod.engine_requests("/v1/completions").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut client = pod.drain_client(0.0, 30.0, 2.0);
    let drained = client.wait(PROMPT).await.expect("the drain client returns");
    let drain_returned = Instant::now();
    assert!(drained.success(), "{}", client.logs());
    assert!(
        client.logs().contains("drained after"),
        "{}\n{}",
        client.logs(),
        pod.logs()
    );
    // The kubelet's SIGTERM follows the preStop hook.
    let mut pod = pod;
    pod.engine.signal(Signal::SIGTERM);
    let finished = stream.await.unwrap();
    assert_eq!(
        finished.outcome,
        Classified::Completed { tokens },
        "{}",
        pod.logs()
    );
    if drain_waits {
        assert!(
            drain_returned >= finished.ended,
            "the drain returned {:?} before the request ended",
            finished.ended.saturating_duration_since(drain_returned)
        );
        // A few looks of lag, plus a loaded machine.
        let lag = drain_returned.duration_since(finished.ended);
        assert!(
            lag < Duration::from_secs(3),
            "returned {lag:?} after the request"
        );
    }
    assert_eq!(
        pod.engine.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0),
        "{}",
        pod.logs()
    );
    pod.sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        pod.sidecar.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_a_request_just_before_the_drain_is_not_lost() {
    a_request_just_before_the_drain_is_not_lost(VLLM, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_a_request_just_before_the_drain_is_not_lost() {
    a_request_just_before_the_drain_is_not_lost(SGLANG, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trtllm_a_request_just_before_the_drain_is_not_lost() {
    a_request_just_before_the_drain_is_not_lost(TRTLLM, false).await;
}

/// `/live` and `/ready` stay 200 for 8 s (more than the sidecar's liveness
/// window) while every `/health` takes well over the poll interval.
async fn live_while_health_is_slow(flavor: Flavor, extra: &[&str], env: &[(&str, &str)]) {
    let flavor = Flavor {
        env: if env.is_empty() { flavor.env } else { &[] },
        ..flavor
    };
    let pod = StockPod::start(flavor, extra, &[]).await;
    let started = Instant::now();
    let mut looks = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let live = get_status(pod.sidecar_http, "/live", PROMPT).await;
        let ready = get_status(pod.sidecar_http, "/ready", PROMPT).await;
        assert_eq!(
            (live, ready),
            (Some(200), Some(200)),
            "after {:?}:\n{}",
            started.elapsed(),
            pod.logs()
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(looks > 20);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_live_never_fails_for_a_slow_healthy_engine() {
    live_while_health_is_slow(VLLM, &["--health-delay-ms", "1500"], &[]).await;
}

/// SGLang's own `/health`, generating a token, as stock images serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_live_never_fails_for_its_slow_health() {
    let default_env = [("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true")];
    live_while_health_is_slow(SGLANG, &["--health-delay-ms", "500"], &default_env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trtllm_live_never_fails_for_a_slow_healthy_engine() {
    live_while_health_is_slow(TRTLLM, &["--health-delay-ms", "1500"], &[]).await;
}

/// An idle engine whose work cannot be seen: the drain waits for its whole
/// timeout, and the sidecar says why in `/status`, `/load`, a metric and
/// its log.
async fn unknown_work_drains_to_the_timeout(flavor: Flavor, reason: &str) {
    let pod = StockPod::start(flavor, &[], &[]).await;
    let status = status_json(pod.sidecar_http).await;
    assert_eq!(status["work_unknown"], reason, "{status}");
    let load = http::get(pod.sidecar_http, "/load")
        .await
        .expect("GET")
        .json();
    assert_eq!(load["unknown"], reason, "{load}");
    assert_eq!(
        load["in_flight"],
        serde_json::Value::Null,
        "unknown is not 0: {load}"
    );
    let metrics = http::get(pod.sidecar_http, "/metrics")
        .await
        .expect("GET")
        .text();
    let series = format!("quiesce_engine_work_unknown{{reason=\"{reason}\"}} 1");
    assert!(metrics.contains(&series), "{metrics}");
    assert!(
        pod.sidecar
            .find_line("cannot see the engine's work")
            .is_some(),
        "{}",
        pod.logs()
    );
    let started = Instant::now();
    let mut client = pod.drain_client(0.0, 2.0, 1.0);
    assert!(client.wait(PROMPT).await.expect("returns").success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "an unseen engine drained in {took:?}"
    );
    assert!(client.logs().contains("aborted after"), "{}", client.logs());
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_without_log_stats_drains_to_the_timeout() {
    unknown_work_drains_to_the_timeout(VLLM_WITHOUT_LOG_STATS, "gauge_missing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_without_metrics_drains_to_the_timeout() {
    unknown_work_drains_to_the_timeout(SGLANG_WITHOUT_METRICS, "metrics_unavailable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trtllm_without_perf_metrics_drains_to_the_timeout() {
    unknown_work_drains_to_the_timeout(TRTLLM_WITHOUT_PERF_METRICS, "metrics_unavailable").await;
}

/// Kills the engine's worker process (its engine core): the engine dies.
/// `/live` must fail then, within the unhealthy grace (1 s here) and the
/// liveness window, so that the kubelet restarts the container.
async fn a_dead_engine_fails_live(flavor: Flavor, stays_up: bool) {
    let pod = StockPod::start(flavor, &[], &["--unhealthy-grace-seconds", "1"]).await;
    let line = pod.engine.find_line("worker started").expect("a worker");
    let worker: i32 = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("pid=")?.parse().ok())
        .expect("the worker's pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let failed_after = pod.wait_until("/live", 503, Duration::from_secs(20)).await;
    assert_eq!(
        get_status(pod.sidecar_http, "/ready", PROMPT).await,
        Some(503)
    );
    let mut pod = pod;
    if stays_up {
        assert!(
            pod.engine.try_exit().is_none(),
            "the engine stays up, dead:\n{}",
            pod.logs()
        );
        assert_eq!(
            get_status(pod.engine_http, "/health", PROMPT).await,
            Some(503)
        );
        assert!(
            pod.sidecar.find_line("it is dead, not draining").is_some(),
            "{}",
            pod.logs()
        );
    } else {
        let code = pod.engine.wait(PROMPT).await.and_then(|s| s.code());
        assert_eq!(code, Some(3), "the engine exits: a worker was lost");
    }
    assert!(failed_after < Duration::from_secs(20));
    pod.engine.signal(Signal::SIGTERM);
    pod.engine.wait(PROMPT).await.expect("the engine exits");
    pod.sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        pod.sidecar.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0)
    );
    assert!(pod.engine.survivors().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_kept_alive_after_its_engine_died_is_restarted() {
    let flavor = Flavor {
        env: &[("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "1")],
        ..VLLM
    };
    a_dead_engine_fails_live(flavor, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_whose_engine_died_is_restarted() {
    a_dead_engine_fails_live(SGLANG, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trtllm_whose_executor_died_is_restarted() {
    a_dead_engine_fails_live(TRTLLM, true).await;
}

/// TensorRT-LLM's JSON `/metrics` hands each statistic out once: the
/// sidecar reads its Prometheus page and never that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trtllm_adapter_never_takes_the_engines_statistics() {
    let pod = StockPod::start(TRTLLM, &[], &[]).await;
    let stream = pod.stream(100);
    assert!(matches!(
        stream.await.unwrap().outcome,
        Classified::Completed { .. }
    ));
    assert!(pod.engine_requests("/prometheus/metrics").await > 0);
    assert_eq!(pod.engine_requests("/metrics").await, 0);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_vllms_own_timeout_aborts_explicitly() {
    let pod = StockPod::start(VLLM, &[], &[]).await;
    // 2000 tokens at 10 ms: 20 s; the drain allows 0.5 s.
    let stream = pod.stream(2000);
    let mut client = pod.drain_client(0.2, 0.5, 1.0);
    assert!(
        client
            .wait(PROMPT)
            .await
            .expect("the drain client returns")
            .success()
    );
    assert!(client.logs().contains("aborted after"), "{}", client.logs());
    // The kubelet's SIGTERM: the engine aborts after its --shutdown-timeout
    // (the abort grace) with explicit abort chunks.
    let mut pod = pod;
    pod.engine.signal(Signal::SIGTERM);
    let finished = stream.await.unwrap();
    assert!(
        matches!(finished.outcome, Classified::Aborted { .. }),
        "{:?}",
        finished.outcome
    );
    assert_eq!(
        pod.engine.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0)
    );
    pod.sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        pod.sidecar.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_engine_killed_mid_drain_ends_it_as_engine_lost() {
    let mut pod = StockPod::start(VLLM, &[], &[]).await;
    let _stream = pod.stream(2000);
    let mut client = pod.drain_client(0.0, 60.0, 5.0);
    pod.wait_for("/ready", 503).await;
    pod.engine.signal(Signal::SIGKILL);
    assert!(client.wait(PROMPT).await.expect("returns").success());
    assert!(client.logs().contains("engine_lost"), "{}", client.logs());
}
