//! A stock engine that does not speak the protocol (the simulated engine
//! standing in for vLLM, without QUIESCE_SOCKET), followed by the sidecar's
//! vllm adapter over HTTP: readiness from /health, in-flight work from
//! vllm:num_requests_running and vllm:num_requests_waiting.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use quiesce_e2e::bins;
use quiesce_e2e::client::{Classified, Completion, complete};
use quiesce_e2e::pair::{
    PROMPT, drain_client, spawn_engine, spawn_sidecar, status_json, wait_for_status,
};
use quiesce_e2e::process::Process;

struct StockPod {
    sidecar: Process,
    engine: Process,
    sidecar_http: SocketAddr,
    engine_http: SocketAddr,
    dir: tempfile::TempDir,
}

impl StockPod {
    /// `shutdown_timeout`: the engine's own drain after SIGTERM, which the
    /// operator sets to the abort grace for vLLM.
    async fn start(shutdown_timeout: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Command::new(bins::engine());
        engine.env_remove("QUIESCE_SOCKET");
        let args = ["--workers", "1", "--shutdown-timeout", shutdown_timeout];
        let (engine, engine_http) = spawn_engine(engine, &args).await;
        let url = format!("http://{engine_http}");
        let socket = dir.path().join("quiesce.sock");
        let stock = ["--adapter", "vllm", "--engine-url", &url];
        let (sidecar, sidecar_http) =
            spawn_sidecar(Command::new(bins::sidecar()), &socket, &stock).await;
        let pod = Self {
            sidecar,
            engine,
            sidecar_http,
            engine_http,
            dir,
        };
        pod.wait_ready(200).await;
        pod
    }

    async fn wait_ready(&self, status: u16) {
        wait_for_status(self.sidecar_http, "/ready", status, || self.sidecar.logs()).await;
    }

    fn drain_client(&self, propagation: f64, timeout: f64, grace: f64) -> Process {
        drain_client(
            &self.dir.path().join("quiesce.sock"),
            propagation,
            timeout,
            grace,
        )
    }

    fn stream(&self, tokens: u32) -> tokio::task::JoinHandle<quiesce_e2e::client::Finished> {
        let addr = self.engine_http;
        let completion = Completion {
            prompt: format!("stock {tokens}"),
            max_tokens: tokens,
            stream: true,
        };
        tokio::spawn(async move { complete(addr, &completion).await })
    }

    async fn wait_running(&self, running: u64) {
        let deadline = Instant::now() + PROMPT;
        while status_json(self.sidecar_http).await["in_flight"].as_u64() != Some(running) {
            assert!(
                Instant::now() < deadline,
                "the sidecar never saw {running} running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The kubelet after the preStop hook: SIGTERM to the engine, then the sidecar.
    async fn stop(mut self) {
        self.engine.signal(Signal::SIGTERM);
        assert_eq!(
            self.engine.wait(PROMPT).await.and_then(|s| s.code()),
            Some(0),
            "{}",
            self.engine.logs()
        );
        self.sidecar.signal(Signal::SIGTERM);
        assert_eq!(
            self.sidecar.wait(PROMPT).await.and_then(|s| s.code()),
            Some(0),
            "{}",
            self.sidecar.logs()
        );
        assert!(self.engine.survivors().is_empty() && self.sidecar.survivors().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_for_the_metrics_to_reach_zero() {
    let pod = StockPod::start("2").await;
    let stream = pod.stream(150);
    pod.wait_running(1).await;
    let mut client = pod.drain_client(0.3, 30.0, 2.0);
    pod.wait_ready(503).await;
    let finished = stream.await.unwrap();
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    let returned = Instant::now();
    assert_eq!(finished.outcome, Classified::Completed { tokens: 150 });
    assert!(status.success());
    assert!(client.logs().contains("drained after"), "{}", client.logs());
    // One poll interval of lag, plus a loaded machine.
    let lag = returned.duration_since(finished.ended);
    assert!(
        lag < Duration::from_secs(3),
        "returned {lag:?} after the last request"
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_the_engines_own_timeout_aborts_explicitly() {
    let pod = StockPod::start("1").await;
    // 2000 tokens at 10 ms: 20 s; the drain allows 0.5 s.
    let stream = pod.stream(2000);
    pod.wait_running(1).await;
    let mut client = pod.drain_client(0.2, 0.5, 1.0);
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    assert!(status.success());
    assert!(client.logs().contains("aborted after"), "{}", client.logs());
    // The kubelet's SIGTERM: vLLM-style, the engine aborts after its own
    // --shutdown-timeout (the abort grace) with explicit abort chunks.
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
async fn a_stock_engine_that_dies_ends_the_drain_as_engine_lost() {
    let mut pod = StockPod::start("30").await;
    let _stream = pod.stream(2000);
    pod.wait_running(1).await;
    let mut client = pod.drain_client(0.0, 60.0, 5.0);
    pod.wait_ready(503).await;
    pod.engine.signal(Signal::SIGKILL);
    assert!(client.wait(PROMPT).await.expect("returns").success());
    assert!(client.logs().contains("engine_lost"), "{}", client.logs());
}
