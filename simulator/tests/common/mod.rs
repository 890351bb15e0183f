//! Test harness for the simulated engine: runs the real binary in its own
//! process group, reads its JSON logs, sends real signals, reads the process
//! table, and speaks HTTP/1.1 (hyper client) with SSE parsing and
//! token-by-token verification ([`quiesce_sim::verify`]).
//!
//! Nothing here sleeps to synchronise: every wait polls for a condition
//! (a log line, a health status, a metric, an exit) with a deadline.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quiesce_sim::openai::Endpoint;
use quiesce_sim::tokens::chat_prompt;
use quiesce_sim::verify::{Expected, Outcome, SseDecoder, StreamCheck, check_response};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Generous bound for things that take well under a second on an idle
/// machine: CI is a loaded 2-core box.
pub const SLOW: Duration = Duration::from_secs(10);

/// How often waits poll.
const POLL: Duration = Duration::from_millis(5);

/// How often [`Engine::wait_exit`] polls: finely, since exit times are
/// measured with it.
const EXIT_POLL: Duration = Duration::from_millis(1);

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

/// A running `quiesce-engine` process.
pub struct Engine {
    child: Child,
    /// Its pid, also its process group (it is started as a group leader).
    pub pid: i32,
    /// The HTTP address from its `listening` log line.
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Set once the engine's stderr reached its end.
    stderr_closed: Arc<AtomicBool>,
    exited: Option<ExitStatus>,
    /// Its start time (clock ticks since boot): processes started earlier
    /// cannot be its descendants, even if a recycled pid makes their process
    /// group look like its own.
    started: u64,
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
        let mut command = Command::new(engine_binary());
        command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("QUIESCE_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that orphans are easy to find (they
            // keep the group) and cleanup cannot touch the test runner.
            .process_group(0);
        let mut child = command.spawn().expect("start quiesce-engine");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let closed = stderr_closed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
            closed.store(true, Ordering::Release);
        });
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let started = proc_stat(pid).map_or(0, |p| p.start);
        Self {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            stderr_closed,
            exited: None,
            started,
        }
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The JSON log records so far (worker lines included).
    pub fn records(&self) -> Vec<Value> {
        let lines = self.logs.lock().unwrap().clone();
        lines
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
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).expect("signal the engine");
    }

    /// The pids of the engine's live children, from the process table.
    pub fn children(&self) -> Vec<i32> {
        processes()
            .into_iter()
            .filter(|p| p.ppid == self.pid)
            .map(|p| p.pid)
            .collect()
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
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("check the engine");
        }
        self.exited.is_none()
    }

    /// Waits for the engine to exit within `within`; kills its group and
    /// fails the test if it does not (a hang).
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            self.wait_for_stderr_end().await;
            return status;
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the engine") {
                self.exited = Some(status);
                self.wait_for_stderr_end().await;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "the engine did not exit within {within:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Waits, briefly, until every line the engine wrote has been read: the
    /// checks after exit read its last lines ("worker reaped", "exiting").
    /// A survivor holding the pipe open makes this give up; the survivor
    /// check then says so.
    async fn wait_for_stderr_end(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.stderr_closed.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// After exit: no process is left in the engine's process group, none
    /// of its workers survives, and every worker it started was reaped.
    pub fn assert_no_survivors(&self) {
        assert!(self.exited.is_some(), "call wait_exit first");
        let survivors: Vec<Proc> = processes()
            .into_iter()
            .filter(|p| (p.pgrp == self.pid || p.ppid == self.pid) && p.start >= self.started)
            .collect();
        assert!(
            survivors.is_empty(),
            "processes left behind: {survivors:?}; stderr:\n{}",
            self.stderr()
        );
        let started = self.logged_workers();
        let reaped: Vec<i64> = self
            .records_with("worker reaped")
            .iter()
            .filter_map(|r| r["pid"].as_i64())
            .collect();
        for pid in &started {
            assert!(
                reaped.contains(pid),
                "worker {pid} was not reaped; stderr:\n{}",
                self.stderr()
            );
            assert!(
                proc_stat(*pid as i32).is_none(),
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

impl Drop for Engine {
    fn drop(&mut self) {
        // A failed test must not leave processes behind either.
        if self.exited.is_none() {
            let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One process from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Start time, in clock ticks since boot.
    pub start: u64,
    pub cmd: String,
}

/// `/proc/<pid>/stat`, or `None` if the process is gone.
pub fn proc_stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow
    // the last ')'.
    let close = stat.rfind(')')?;
    let cmd = stat.get(stat.find('(')? + 1..close)?.to_owned();
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    // Field 22 of stat; fields 6 to 21 lie between.
    let start = fields.nth(16)?.parse().ok()?;
    Some(Proc {
        pid,
        state,
        ppid,
        pgrp,
        start,
        cmd,
    })
}

/// Every process in the table.
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// A whole HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

fn header(
    response: &hyper::Response<hyper::body::Incoming>,
    name: hyper::header::HeaderName,
) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Sends a JSON request on a new connection; the answer's body is left to read.
async fn send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let mut sender = connect(addr).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Sends a request and reads the whole answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let response = send_json(addr, method, path, body).await?;
    let status = response.status().as_u16();
    let retry_after = header(&response, hyper::header::RETRY_AFTER);
    let content_type = header(&response, hyper::header::CONTENT_TYPE);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Reply {
        status,
        retry_after,
        content_type,
        body,
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    send(addr, "GET", path, Vec::new()).await
}

/// `POST path` with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    send(addr, "POST", path, body.to_string().into_bytes())
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Writes raw bytes on a fresh connection and reads until the server
/// closes it.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before reading everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads one gauge or counter sample (`name` including labels, as printed)
/// from `/metrics`.
pub async fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    let reply = get(addr, "/metrics").await.ok()?;
    reply.text().lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
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

/// A generation request as a test describes it.
#[derive(Debug, Clone)]
pub struct Ask {
    pub endpoint: Endpoint,
    pub prompt: String,
    pub max_tokens: u32,
    pub stream: bool,
}

impl Ask {
    /// A streaming completion.
    pub fn stream(prompt: &str, max_tokens: u32) -> Self {
        Self {
            endpoint: Endpoint::Completions,
            prompt: prompt.to_owned(),
            max_tokens,
            stream: true,
        }
    }

    /// A non-streaming completion.
    pub fn whole(prompt: &str, max_tokens: u32) -> Self {
        Self {
            stream: false,
            ..Self::stream(prompt, max_tokens)
        }
    }

    /// A chat completion with one user message.
    pub fn chat(content: &str, max_tokens: u32, stream: bool) -> Self {
        Self {
            endpoint: Endpoint::ChatCompletions,
            prompt: content.to_owned(),
            max_tokens,
            stream,
        }
    }

    fn path(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }

    fn body(&self) -> Value {
        match self.endpoint {
            Endpoint::Completions => json!({
                "model": "quiesce-sim", "prompt": self.prompt,
                "max_tokens": self.max_tokens, "stream": self.stream,
            }),
            Endpoint::ChatCompletions => json!({
                "model": "quiesce-sim",
                "messages": [{"role": "user", "content": self.prompt}],
                "max_tokens": self.max_tokens, "stream": self.stream,
            }),
        }
    }

    /// What the engine must answer.
    pub fn expected(&self) -> Expected {
        let prompt = match self.endpoint {
            Endpoint::Completions => self.prompt.clone(),
            Endpoint::ChatCompletions => chat_prompt([("user", self.prompt.as_str())]),
        };
        Expected {
            endpoint: self.endpoint,
            prompt,
            max_tokens: self.max_tokens,
        }
    }
}

/// How one request went.
#[derive(Debug, Clone)]
pub struct Record {
    /// The outcome, or what the engine did wrong.
    pub outcome: Result<Outcome, String>,
    /// When each verified token arrived.
    pub token_times: Vec<Instant>,
    /// When the response ended.
    pub ended: Instant,
}

/// A request in the background.
pub struct InFlight {
    tokens: watch::Receiver<u32>,
    task: tokio::task::JoinHandle<Record>,
}

impl InFlight {
    /// Waits until at least `n` tokens have arrived (and been verified).
    pub async fn wait_tokens(&mut self, n: u32) {
        let waited = tokio::time::timeout(SLOW, self.tokens.wait_for(|t| *t >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "fewer than {n} tokens within {SLOW:?}"
        );
    }

    /// Waits for the request to end.
    pub async fn finish(self) -> Record {
        tokio::time::timeout(SLOW * 2, self.task)
            .await
            .expect("the request did not end in time")
            .expect("the request task panicked")
    }
}

/// Starts `ask` in the background.
pub fn spawn_request(addr: SocketAddr, ask: Ask) -> InFlight {
    let (tokens_tx, tokens) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut token_times = Vec::new();
        let outcome = run_request(addr, &ask, &tokens_tx, &mut token_times).await;
        Record {
            outcome,
            token_times,
            ended: Instant::now(),
        }
    });
    InFlight { tokens, task }
}

/// Sends `ask` and waits for its record.
pub async fn request(addr: SocketAddr, ask: Ask) -> Record {
    spawn_request(addr, ask).finish().await
}

async fn run_request(
    addr: SocketAddr,
    ask: &Ask,
    tokens: &watch::Sender<u32>,
    token_times: &mut Vec<Instant>,
) -> Result<Outcome, String> {
    let response = send_json(
        addr,
        "POST",
        ask.path(),
        ask.body().to_string().into_bytes(),
    )
    .await?;
    let status = response.status().as_u16();
    let retry_after = header(&response, hyper::header::RETRY_AFTER);
    let event_stream =
        header(&response, hyper::header::CONTENT_TYPE).as_deref() == Some("text/event-stream");
    let expected = ask.expected();
    let mut body = response.into_body();
    if !(ask.stream && status == 200 && event_stream) {
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        return check_response(&expected, status, retry_after.as_deref(), &bytes)
            .map_err(|v| v.to_string());
    }
    let mut decoder = SseDecoder::new();
    let mut check = StreamCheck::new(expected);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("the stream broke after {} tokens: {e}", check.tokens()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for event in decoder.push(&data).map_err(|v| v.to_string())? {
            let before = check.tokens();
            check.event(&event).map_err(|v| v.to_string())?;
            if check.tokens() > before {
                token_times.push(Instant::now());
                tokens.send_replace(check.tokens());
            }
        }
    }
    if decoder.has_partial_event() {
        return Err(format!(
            "the stream ended inside an event after {} tokens",
            check.tokens()
        ));
    }
    check.finish().map_err(|v| v.to_string())
}
