//! Test harness: the real sidecar binary as a child process, a scripted
//! engine speaking the protocol over the real socket, and the real drain
//! client as another child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quiesce_protocol::{
    ClientMessage, EngineStatus, FrameReader, Hello, Phase, Role, ServerMessage, write_frame,
};
pub use quiesce_testkit::PROMPT;
use quiesce_testkit::http;
use quiesce_testkit::process::Process;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

pub const BIN: &str = env!("CARGO_BIN_EXE_quiesce-sidecar");

/// A running `quiesce-sidecar serve`.
pub struct Sidecar {
    pub process: Process,
    pub socket: PathBuf,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts a sidecar with a 100 ms heartbeat (liveness window 0.5 s).
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("quiesce.sock");
        Self::start_at(dir, socket, extra).await
    }

    pub async fn start_at(dir: tempfile::TempDir, socket: PathBuf, extra: &[&str]) -> Self {
        let mut process = Process::spawn(
            "sidecar",
            Command::new(BIN)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .args(["--heartbeat-interval-ms", "100"])
                .arg("--socket")
                .arg(&socket)
                .args(extra),
        )
        .expect("spawn the sidecar");
        let line = process
            .wait_for_line("sidecar serving", PROMPT)
            .await
            .unwrap();
        let http = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .expect("listen= in the serving line")
            .parse()
            .unwrap();
        Self {
            process,
            socket,
            http,
            _dir: dir,
        }
    }

    /// `GET path`: the status code and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let reply = http::get(self.http, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (reply.status, reply.text())
    }

    /// Polls `path` until it answers `status`.
    pub async fn wait_for_status(&self, path: &str, status: u16) {
        http::wait_for_status(self.http, path, status, || self.process.logs()).await;
    }

    /// Polls a metric until `accept` holds (the observer updates counters
    /// at most one heartbeat after a change).
    pub async fn wait_for_metric(&self, sample: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PROMPT;
        loop {
            let value = self.metric(sample).await;
            if accept(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed at {value}; logs:\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one sample of `/metrics`, such as
    /// `quiesce_drains_total{result="drained"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        http::sample(&body, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
    }

    /// Sends a raw HTTP/1.1 request: the status code of the answer.
    pub async fn raw_status(&self, request: &str) -> u16 {
        http::raw_status(&http::raw_exchange(self.http, request.as_bytes()).await)
    }
}

/// The drain client as the kubelet runs it.
pub fn drain_client(socket: &Path, propagation: f64, timeout: f64, grace: f64) -> Process {
    quiesce_testkit::bins::drain_client(Path::new(BIN), socket, propagation, timeout, grace)
}

/// A scripted engine: the test decides every frame it sends.
pub struct ScriptedEngine {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl ScriptedEngine {
    /// Connects and says hello; returns the engine and the sidecar's answer.
    pub async fn connect_with(socket: &Path, versions: Vec<u32>) -> (Self, ServerMessage) {
        let stream = UnixStream::connect(socket)
            .await
            .expect("connect to the socket");
        let (read, mut writer) = stream.into_split();
        let mut hello = Hello::new(Role::Engine, "scripted");
        hello.versions = versions;
        write_frame(&mut writer, &ClientMessage::Hello(hello))
            .await
            .unwrap();
        let mut engine = Self {
            reader: FrameReader::new(read),
            writer,
        };
        let answer = engine.next().await.expect("an answer to hello");
        (engine, answer)
    }

    pub async fn connect(socket: &Path) -> Self {
        let (engine, answer) = Self::connect_with(socket, vec![1]).await;
        assert!(matches!(answer, ServerMessage::Welcome(_)), "{answer:?}");
        engine
    }

    pub async fn report(&mut self, phase: Phase, in_flight: u32) {
        let status = EngineStatus {
            phase,
            in_flight,
            queued: 0,
            kv_transfers: 0,
        };
        write_frame(&mut self.writer, &ClientMessage::Status(status))
            .await
            .unwrap();
    }

    /// The next frame from the sidecar, `None` when it closed the connection.
    pub async fn next(&mut self) -> Option<ServerMessage> {
        tokio::time::timeout(PROMPT, self.reader.read())
            .await
            .expect("a frame from the sidecar in time")
            .expect("a well-formed frame")
    }

    /// Whether the sidecar closed (or reset) the connection.
    pub async fn is_closed(&mut self) -> bool {
        let read = tokio::time::timeout(PROMPT, self.reader.read::<ServerMessage>());
        matches!(read.await.expect("an answer in time"), Ok(None) | Err(_))
    }

    /// Keeps heartbeating `status` until a frame arrives, and returns it.
    pub async fn heartbeat_until_frame(&mut self, phase: Phase, in_flight: u32) -> ServerMessage {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.report(phase, in_flight).await;
            let read = tokio::time::timeout(
                Duration::from_millis(50),
                self.reader.read::<ServerMessage>(),
            );
            if let Ok(frame) = read.await {
                return frame
                    .expect("well-formed")
                    .expect("the sidecar closed the connection");
            }
            assert!(Instant::now() < deadline, "no frame from the sidecar");
        }
    }
}
