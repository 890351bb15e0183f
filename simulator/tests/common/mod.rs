//! Test harness for the simulated engine: the real binary as a child
//! process of the test kit ([`quiesce_testkit`]), its JSON logs read as
//! records, and the kit's HTTP and verifying OpenAI clients.
//!
//! Nothing here sleeps to synchronise: every wait polls for a condition
//! (a log line, a health status, a metric, an exit) with a deadline.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
pub use quiesce_testkit::PROMPT as SLOW;
pub use quiesce_testkit::http::{Reply, fetch as send, get, raw_exchange};
pub use quiesce_testkit::openai::{Ask, InFlight, Record, request, spawn_request};
use quiesce_testkit::process::Process;
pub use quiesce_testkit::process::proc_stat;
use serde_json::Value;

/// Flags for an engine that starts and streams fast, with one worker.
pub const FAST: [&str; 6] = [
    "--startup-seconds",
    "0.2",
    "--token-interval-ms",
    "10",
    "--workers",
    "1",
];

/// How often waits poll.
const POLL: Duration = Duration::from_millis(5);

/// The engine binary: Cargo's for tests; for the example, `QUIESCE_ENGINE_BIN`
/// or `quiesce-engine` in the target directory the example runs from.
pub fn engine_binary() -> std::path::PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_quiesce-engine") {
        return path.into();
    }
    if let Some(path) = std::env::var_os("QUIESCE_ENGINE_BIN") {
        return path.into();
    }
    // target/<profile>/examples/pacing -> target/<profile>/quiesce-engine
    let exe = std::env::current_exe().expect("the current executable");
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("a target directory");
    profile_dir.join("quiesce-engine")
}

/// A running `quiesce-engine` process, in its own process group.
pub struct Engine {
    process: Process,
    /// Its pid, also its process group.
    pub pid: i32,
    /// The HTTP address from its `listening` log line.
    pub addr: SocketAddr,
}

impl Engine {
    /// Starts the engine with `args` (after `--listen 127.0.0.1:0
    /// --log-format json`) and waits for its `listening` line.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`Engine::start`], with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut engine = Self::spawn(args, env);
        let listening = engine.wait_log("listening").await;
        engine.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {listening}"));
        engine
    }

    /// Starts the engine without waiting for anything.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let process = Process::spawn(
            "quiesce-engine",
            Command::new(engine_binary())
                .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
                .args(args)
                .env("RUST_LOG", "info")
                .env_remove("QUIESCE_SOCKET")
                .envs(env.iter().copied()),
        )
        .expect("start quiesce-engine");
        Self {
            pid: process.pid(),
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> String {
        self.process.logs()
    }

    /// The JSON log records so far (worker lines included).
    pub fn records(&self) -> Vec<Value> {
        self.process
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
    /// The records whose message is `message`.
    pub fn records_with(&self, message: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["message"] == message)
            .collect()
    }

    /// Waits for a record matching `predicate`.
    pub async fn wait_record(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SLOW;
        loop {
            if let Some(record) = self.records().into_iter().find(&predicate) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "no log record {what} within {SLOW:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for a record whose message is `message`.
    pub async fn wait_log(&self, message: &str) -> Value {
        self.wait_record(message, |r| r["message"] == message).await
    }

    /// Waits for the engine's phase to become `phase`.
    pub async fn wait_phase(&self, phase: &str) {
        self.wait_record(&format!("phase -> {phase}"), |r| {
            r["message"] == "phase changed" && r["to"] == phase
        })
        .await;
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + SLOW;
        loop {
            if let Ok(reply) = get(self.addr, "/health").await
                && reply.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {SLOW:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `signal` to the engine process (not its group).
    pub fn signal(&mut self, signal: Signal) {
        self.process.signal(signal);
    }

    /// The pids of the engine's live children, from the process table.
    pub fn children(&self) -> Vec<i32> {
        self.process.children()
    }

    /// The worker pids the engine logged.
    pub fn logged_workers(&self) -> Vec<i64> {
        self.records_with("worker started")
            .iter()
            .filter_map(|r| r["pid"].as_i64())
            .collect()
    }

    /// Whether the engine is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.process.try_exit().is_none()
    }

    /// Waits for the engine to exit within `within`; fails the test (and
    /// kills its group) if it does not: a hang.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.process.expect_exit(within).await
    }

    /// After exit: no process is left in the engine's process group, and
    /// every worker it started was reaped.
    pub fn assert_no_survivors(&mut self) {
        assert!(!self.is_running(), "call wait_exit first");
        let survivors = self.process.survivors();
        assert!(
            survivors.is_empty(),
            "processes left behind: {survivors:?}; stderr:\n{}",
            self.stderr()
        );
        let reaped: Vec<i64> = self
            .records_with("worker reaped")
            .iter()
            .filter_map(|r| r["pid"].as_i64())
            .collect();
        for pid in self.logged_workers() {
            assert!(
                reaped.contains(&pid),
                "worker {pid} was not reaped; stderr:\n{}",
                self.stderr()
            );
            assert!(
                proc_stat(pid as i32).is_none(),
                "worker {pid} is still alive"
            );
        }
    }
    /// Stderr must show no broken pipe, no panic, no error (beyond those
    /// listed in `allowed`).
    pub fn assert_clean_stderr(&self, allowed: &[&str]) {
        let stderr = self.stderr();
        for bad in ["Broken pipe", "broken pipe", "EPIPE", "panicked"] {
            assert!(!stderr.contains(bad), "stderr mentions {bad:?}:\n{stderr}");
        }
        for record in self.records() {
            if record["level"] == "ERROR" || record["level"] == "WARN" {
                let message = record["message"].as_str().unwrap_or_default();
                assert!(
                    allowed.contains(&message),
                    "unexpected {record}\nstderr:\n{stderr}"
                );
            }
        }
    }
}

/// `POST path` with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    send(addr, "POST", path, body.to_string().into_bytes())
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Reads one gauge or counter sample (`name` including labels, as printed)
/// from `/metrics`.
pub async fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    let reply = get(addr, "/metrics").await.ok()?;
    quiesce_testkit::http::sample(&reply.text(), sample)
}

/// Waits until `/metrics` shows `sample` at `value`.
pub async fn wait_metric(addr: SocketAddr, sample: &str, value: f64) {
    let deadline = Instant::now() + SLOW;
    loop {
        let seen = metric(addr, sample).await;
        if seen == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never reached {value}; last {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The running-requests gauge as the engine prints it.
pub const RUNNING: &str = "vllm:num_requests_running{model_name=\"quiesce-sim\"}";

/// The waiting-requests gauge as the engine prints it.
pub const WAITING: &str = "vllm:num_requests_waiting{model_name=\"quiesce-sim\"}";
