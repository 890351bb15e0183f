//! A sidecar and the simulated engine that follows it, started directly as
//! processes: the smallest real pod, for drain tests and benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use quiesce_testkit::bins;
use quiesce_testkit::http::{self, get_status, wait_for_status};
use quiesce_testkit::process::Process;

use quiesce_operator::controller::scale_in::read_load;

use crate::client::{Ask, Finished, complete};

pub use quiesce_testkit::PROMPT;
/// Time per output token of the engine.
pub const TOKEN_MS: u64 = 10;

/// A running sidecar and engine.
pub struct Pair {
    /// The sidecar process.
    pub sidecar: Process,
    /// The engine process.
    pub engine: Process,
    /// The socket between them.
    pub socket: PathBuf,
    /// The sidecar's HTTP address (`/ready`, `/status`, ...).
    pub sidecar_http: SocketAddr,
    /// The engine's OpenAI address.
    pub engine_http: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The address after `key` in a log line.
pub fn field_addr(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// Starts `quiesce-sidecar serve` on `socket` (heartbeat 200 ms) through
/// `program` (the binary, or a wrapper such as `setpriv ... -- sidecar`);
/// returns it once it serves, with its HTTP address.
pub async fn spawn_sidecar(
    mut program: Command,
    socket: &Path,
    extra: &[&str],
) -> (Process, SocketAddr) {
    let mut sidecar = Process::spawn(
        "sidecar",
        program
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval-ms",
                "200",
            ])
            .arg("--socket")
            .arg(socket)
            .args(extra),
    )
    .unwrap();
    let line = sidecar
        .wait_for_line("sidecar serving", PROMPT)
        .await
        .unwrap();
    (sidecar, field_addr(&line, "listen="))
}

/// Starts the simulated engine (listening on a free port, quick start-up)
/// through `program` with `extra` arguments; returns it once it listens,
/// with its HTTP address. `QUIESCE_SOCKET` is whatever `program` sets.
pub async fn spawn_engine(mut program: Command, extra: &[&str]) -> (Process, SocketAddr) {
    let mut engine = Process::spawn(
        "engine",
        program
            .args(["--listen", "127.0.0.1:0", "--startup-seconds", "0.1"])
            .args(["--token-interval-ms", &TOKEN_MS.to_string()])
            .args(extra),
    )
    .unwrap();
    let line = engine.wait_for_line("listening", PROMPT).await.unwrap();
    (engine, field_addr(&line, "addr="))
}

/// Streams a completion of `tokens` tokens from the engine at `addr`, in
/// the background.
pub fn stream(addr: SocketAddr, tokens: u32) -> tokio::task::JoinHandle<Finished> {
    let completion = Ask::stream(&format!("a request of {tokens} tokens"), tokens);
    tokio::spawn(async move { complete(addr, &completion).await })
}

/// Runs the preStop drain client against `socket`.
pub fn drain_client(socket: &Path, propagation: f64, timeout: f64, grace: f64) -> Process {
    bins::drain_client(&bins::sidecar(), socket, propagation, timeout, grace)
}

impl Pair {
    /// A sidecar, then an engine that follows it, ready for traffic.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("quiesce.sock");
        let (sidecar, sidecar_http) =
            spawn_sidecar(Command::new(bins::sidecar()), &socket, &[]).await;
        let mut engine = Command::new(bins::engine());
        engine.env("QUIESCE_SOCKET", &socket);
        // Without the sidecar, SIGTERM would drain for --shutdown-timeout.
        let args = ["--workers", "1", "--shutdown-timeout", "30"];
        let (engine, engine_http) = spawn_engine(engine, &args).await;
        let pod = Self {
            sidecar,
            engine,
            socket,
            sidecar_http,
            engine_http,
            _dir: dir,
        };
        pod.wait_ready(200).await;
        pod
    }

    /// What `/ready` answers.
    pub async fn ready(&self) -> Option<u16> {
        get_status(self.sidecar_http, "/ready", PROMPT).await
    }

    /// Polls `/ready` until it answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let logs = || format!("{}\n{}", self.sidecar.logs(), self.engine.logs());
        wait_for_status(self.sidecar_http, "/ready", status, logs).await;
    }

    /// Runs the preStop drain client.
    pub fn drain_client(&self, propagation: f64, timeout: f64, grace: f64) -> Process {
        drain_client(&self.socket, propagation, timeout, grace)
    }

    /// Streams a completion of `tokens` tokens from the engine, in the background.
    pub fn stream(&self, tokens: u32) -> tokio::task::JoinHandle<Finished> {
        stream(self.engine_http, tokens)
    }

    /// Waits until the engine reports `in_flight` requests to the sidecar.
    pub async fn wait_in_flight(&self, in_flight: u64) {
        let deadline = Instant::now() + PROMPT;
        loop {
            let status = status_json(self.sidecar_http).await;
            if status["in_flight"].as_u64() == Some(in_flight) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "in flight stayed at {}",
                status["in_flight"]
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The kubelet's end of it: SIGTERM to the engine, then to the sidecar;
    /// both exit 0 and leave nothing behind.
    pub async fn stop(mut self) {
        self.engine.signal(Signal::SIGTERM);
        let engine = self
            .engine
            .wait(PROMPT)
            .await
            .expect("the engine exits after SIGTERM");
        assert_eq!(engine.code(), Some(0), "{}", self.engine.logs());
        self.sidecar.signal(Signal::SIGTERM);
        let sidecar = self
            .sidecar
            .wait(PROMPT)
            .await
            .expect("the sidecar exits after SIGTERM");
        assert_eq!(sidecar.code(), Some(0), "{}", self.sidecar.logs());
        for process in [&self.engine, &self.sidecar] {
            assert_eq!(
                process.survivors(),
                Vec::<String>::new(),
                "{} left processes",
                process.name()
            );
            assert!(
                !process.logs().contains("Broken pipe"),
                "{}",
                process.logs()
            );
            assert!(!process.logs().contains("panicked"), "{}", process.logs());
        }
    }
}

/// The sidecar's `/status`.
pub async fn status_json(addr: SocketAddr) -> serde_json::Value {
    http::get(addr, "/status")
        .await
        .unwrap_or_else(|e| panic!("GET /status: {e}"))
        .json()
}

/// Waits (at most `within`) until the sidecar at `addr` reports
/// `in_flight` requests: what the operator's scale-in would read.
pub async fn load_reaches(
    addr: SocketAddr,
    in_flight: u32,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let load = read_load(addr, Duration::from_secs(1)).await;
        if load.as_ref().is_ok_and(|w| w.in_flight == in_flight) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "its sidecar never reported {in_flight} in flight: {load:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
