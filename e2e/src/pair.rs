//! A sidecar and the simulated engine that follows it, started directly as
//! processes: the smallest real pod, for drain tests and benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::bins;
use crate::client::{Completion, Finished, complete, get_status};
use crate::process::Process;

/// Generous bound for anything that should take well under a second: CI is
/// a loaded 2-core machine.
pub const PROMPT: Duration = Duration::from_secs(10);
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

impl Pair {
    /// A sidecar, then an engine that follows it, ready for traffic.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("quiesce.sock");
        let mut sidecar = Process::spawn(
            "sidecar",
            Command::new(bins::sidecar())
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--heartbeat-interval-ms",
                    "200",
                ])
                .arg("--socket")
                .arg(&socket),
        )
        .unwrap();
        let line = sidecar
            .wait_for_line("sidecar serving", PROMPT)
            .await
            .unwrap();
        let sidecar_http = field_addr(&line, "listen=");
        let mut engine = Process::spawn(
            "engine",
            Command::new(bins::engine())
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--startup-seconds",
                    "0.1",
                    "--workers",
                    "1",
                ])
                .args(["--token-interval-ms", &TOKEN_MS.to_string()])
                // Without the sidecar, SIGTERM would drain this long.
                .args(["--shutdown-timeout", "30"])
                .env("QUIESCE_SOCKET", &socket),
        )
        .unwrap();
        let line = engine.wait_for_line("listening", PROMPT).await.unwrap();
        let engine_http = field_addr(&line, "addr=");
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
        let deadline = Instant::now() + PROMPT;
        while self.ready().await != Some(status) {
            assert!(
                Instant::now() < deadline,
                "/ready never answered {status}:\n{}\n{}",
                self.sidecar.logs(),
                self.engine.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs the preStop drain client.
    pub fn drain_client(&self, propagation: f64, timeout: f64, grace: f64) -> Process {
        Process::spawn(
            "drain client",
            Command::new(bins::sidecar())
                .arg("drain")
                .arg("--socket")
                .arg(&self.socket)
                .args(["--propagation-seconds", &propagation.to_string()])
                .args(["--timeout-seconds", &timeout.to_string()])
                .args(["--abort-grace-seconds", &grace.to_string()]),
        )
        .unwrap()
    }

    /// Streams a completion of `tokens` tokens from the engine, in the background.
    pub fn stream(&self, tokens: u32) -> tokio::task::JoinHandle<Finished> {
        let addr = self.engine_http;
        let completion = Completion {
            prompt: format!("a request of {tokens} tokens"),
            max_tokens: tokens,
            stream: true,
        };
        tokio::spawn(async move { complete(addr, &completion).await })
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
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/status")
        .header(hyper::header::HOST, "sidecar")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}
