//! A pod of a stock engine: the simulated engine playing vLLM, SGLang or
//! TensorRT-LLM (`--personality`, no drain protocol), and the sidecar
//! following it over HTTP with the matching adapter, as real processes. The
//! adapter tests (`tests/stock_engines.rs`) and `quiesce-adapter-bench` run
//! on it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::client::{Finished, get_status};
use crate::pair::{self, PROMPT, drain_client, spawn_engine, spawn_sidecar};
use quiesce_testkit::bins;
use quiesce_testkit::http;
use quiesce_testkit::process::Process;

/// One stock engine as the operator renders it, or with a flag changed.
#[derive(Clone, Copy, Debug)]
pub struct Flavor {
    /// The sidecar's `--adapter`.
    pub adapter: &'static str,
    /// The engine's flags.
    pub engine: &'static [&'static str],
    /// The engine's environment.
    pub env: &'static [(&'static str, &'static str)],
}

/// vLLM as quiesce renders it: load tracking on, `--shutdown-timeout` at
/// the abort grace.
pub const VLLM: Flavor = Flavor {
    adapter: "vllm",
    engine: &[
        "--personality",
        "vllm",
        "--enable-server-load-tracking",
        "--shutdown-timeout",
        "1",
    ],
    env: &[],
};
/// SGLang with metrics, and the cheap `/health` quiesce renders.
pub const SGLANG: Flavor = Flavor {
    adapter: "sglang",
    engine: &["--personality", "sglang", "--enable-metrics"],
    env: &[("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "false")],
};
/// trtllm-serve with its Prometheus gauges on.
pub const TRTLLM: Flavor = Flavor {
    adapter: "trtllm",
    engine: &["--personality", "trtllm", "--return-perf-metrics"],
    env: &[],
};

/// vLLM with `--disable-log-stats`: no gauges, so its work is unknown.
pub const VLLM_WITHOUT_LOG_STATS: Flavor = Flavor {
    engine: &[
        "--personality",
        "vllm",
        "--enable-server-load-tracking",
        "--disable-log-stats",
    ],
    ..VLLM
};
/// SGLang without `--enable-metrics`: its grammar queue is unseen.
pub const SGLANG_WITHOUT_METRICS: Flavor = Flavor {
    engine: &["--personality", "sglang"],
    ..SGLANG
};
/// trtllm-serve without `return_perf_metrics`: no Prometheus page.
pub const TRTLLM_WITHOUT_PERF_METRICS: Flavor = Flavor {
    engine: &["--personality", "trtllm"],
    ..TRTLLM
};

/// A running stock engine and its sidecar.
pub struct StockPod {
    /// The sidecar.
    pub sidecar: Process,
    /// The engine.
    pub engine: Process,
    /// The sidecar's HTTP address.
    pub sidecar_http: SocketAddr,
    /// The engine's HTTP address.
    pub engine_http: SocketAddr,
    dir: tempfile::TempDir,
}

impl StockPod {
    /// The engine with `extra` flags, and the sidecar following it with
    /// `sidecar_extra`; returns once the sidecar has seen the engine ready
    /// (or, for an engine that never becomes ready, has attached to it).
    pub async fn start(flavor: Flavor, extra: &[&str], sidecar_extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Command::new(bins::engine());
        engine.env_remove("QUIESCE_SOCKET");
        for (name, value) in flavor.env {
            engine.env(name, value);
        }
        let args: Vec<&str> = ["--workers", "1"]
            .into_iter()
            .chain(flavor.engine.iter().copied())
            .chain(extra.iter().copied())
            .collect();
        let (engine, engine_http) = spawn_engine(engine, &args).await;
        let url = format!("http://{engine_http}");
        let socket = dir.path().join("quiesce.sock");
        let stock: Vec<&str> = ["--adapter", flavor.adapter, "--engine-url", &url]
            .into_iter()
            .chain(sidecar_extra.iter().copied())
            .collect();
        let (sidecar, sidecar_http) =
            spawn_sidecar(Command::new(bins::sidecar()), &socket, &stock).await;
        let pod = Self {
            sidecar,
            engine,
            sidecar_http,
            engine_http,
            dir,
        };
        pod.wait_for("/ready", 200).await;
        pod
    }

    /// Both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "sidecar:\n{}\nengine:\n{}",
            self.sidecar.logs(),
            self.engine.logs()
        )
    }

    /// Polls the sidecar's `path` until it answers `status`, at most `within`.
    pub async fn wait_until(&self, path: &str, status: u16, within: Duration) -> Duration {
        let started = Instant::now();
        while get_status(self.sidecar_http, path, PROMPT).await != Some(status) {
            assert!(
                started.elapsed() < within,
                "{path} never answered {status}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// Polls the sidecar's `path` until it answers `status`.
    pub async fn wait_for(&self, path: &str, status: u16) {
        self.wait_until(path, status, PROMPT).await;
    }

    /// Runs the preStop drain client.
    pub fn drain_client(&self, propagation: f64, timeout: f64, grace: f64) -> Process {
        drain_client(
            &self.dir.path().join("quiesce.sock"),
            propagation,
            timeout,
            grace,
        )
    }

    /// Streams a completion of `tokens` tokens from the engine, in the
    /// background.
    pub fn stream(&self, tokens: u32) -> tokio::task::JoinHandle<Finished> {
        pair::stream(self.engine_http, tokens)
    }

    /// The engine's own count of HTTP requests on `path`.
    pub async fn engine_requests(&self, path: &str) -> u64 {
        let stats = http::get(self.engine_http, "/sim/stats")
            .await
            .expect("GET")
            .json();
        stats["requests"][path].as_u64().unwrap_or(0)
    }

    /// The kubelet after the preStop hook: SIGTERM to the engine, then to
    /// the sidecar; both exit 0 and leave nothing behind.
    pub async fn stop(mut self) {
        self.engine.signal(Signal::SIGTERM);
        let engine = self.engine.wait(PROMPT).await.and_then(|s| s.code());
        assert_eq!(engine, Some(0), "{}", self.logs());
        self.sidecar.signal(Signal::SIGTERM);
        let sidecar = self.sidecar.wait(PROMPT).await.and_then(|s| s.code());
        assert_eq!(sidecar, Some(0), "{}", self.logs());
        assert!(self.engine.survivors().is_empty() && self.sidecar.survivors().is_empty());
    }
}
