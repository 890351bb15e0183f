//! Test harness: the real sidecar binary as a child process, a scripted
//! engine speaking the protocol over the real socket, and the real drain
//! client as another child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quiesce_protocol::{
    ClientMessage, EngineStatus, FrameReader, Hello, Phase, Role, ServerMessage, write_frame,
};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

pub const BIN: &str = env!("CARGO_BIN_EXE_quiesce-sidecar");

/// Generous bound for anything that should take well under a second: CI is a
/// loaded 2-core machine.
pub const PROMPT: Duration = Duration::from_secs(10);

/// A child process whose stderr is collected line by line.
pub struct Process {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set once stderr reached its end: every line is in `lines`.
    stderr_closed: Arc<AtomicBool>,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&stderr_closed);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
            closed.store(true, Ordering::Release);
        });
        Self {
            child,
            lines,
            stderr_closed,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("kill");
    }

    pub fn logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`, returning it.
    pub fn wait_for_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Every line written before exit is read once stderr ends.
                let drained = Instant::now() + Duration::from_secs(2);
                while !self.stderr_closed.load(Ordering::Acquire) && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(1));
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {within:?}; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `quiesce-sidecar serve`.
pub struct Sidecar {
    pub process: Process,
    pub socket: PathBuf,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts a sidecar with a 100 ms heartbeat (liveness window 0.5 s).
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("quiesce.sock");
        Self::start_at(dir, socket, extra)
    }

    pub fn start_at(dir: tempfile::TempDir, socket: PathBuf, extra: &[&str]) -> Self {
        let process = Process::spawn(
            Command::new(BIN)
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--heartbeat-interval-ms",
                    "100",
                ])
                .arg("--socket")
                .arg(&socket)
                .args(extra),
        );
        let line = process.wait_for_line("sidecar serving", PROMPT);
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
            dir,
        }
    }

    /// `GET path`: the status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_request(
            self.http,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    }

    /// Polls `path` until it answers `status`.
    pub fn wait_for_status(&self, path: &str, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (got, body) = self.get(path);
            if got == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} answered {got} {body:?}, wanted {status}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls a metric until `accept` holds (the observer updates counters
    /// at most one heartbeat after a change).
    pub fn wait_for_metric(&self, sample: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PROMPT;
        loop {
            let value = self.metric(sample);
            if accept(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed at {value}; logs:\n{}",
                self.process.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The value of one sample of `/metrics`, such as
    /// `quiesce_drains_total{result="drained"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
    }
}

/// Sends a raw HTTP/1.1 request and reads the whole response.
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the sidecar's HTTP port");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The drain client as the kubelet runs it.
pub fn drain_client(socket: &Path, propagation: f64, timeout: f64, grace: f64) -> Process {
    Process::spawn(
        Command::new(BIN)
            .arg("drain")
            .arg("--socket")
            .arg(socket)
            .args(["--propagation-seconds", &propagation.to_string()])
            .args(["--timeout-seconds", &timeout.to_string()])
            .args(["--abort-grace-seconds", &grace.to_string()]),
    )
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
