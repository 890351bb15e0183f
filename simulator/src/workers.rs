//! Worker processes, the simulated engine's stand-in for tensor-parallel
//! GPU workers.
//!
//! The engine re-executes its own binary once per worker. Each worker
//! "loads its shard of the model" (sleeps for the start-up time), says
//! `ready`, then computes tokens on request. The pipes are the worker's
//! stdin and stdout, one line per message:
//!
//! | direction | line | meaning |
//! | --- | --- | --- |
//! | worker → engine | `ready` | loaded |
//! | engine → worker | `t <tag> <seed> <index>` | compute token `index` of the request with `seed` |
//! | worker → engine | `w <tag> <token_id>` | the answer, in request order |
//!
//! Life and death, as the vLLM shutdown RFC asks:
//! - only the engine acts on signals: a worker blocks SIGTERM and SIGINT
//!   (`forbid(unsafe_code)` rules out `signal(SIG_IGN)`; a blocked signal
//!   that is never unblocked has the same effect);
//! - a worker exits when its stdin reaches end-of-file (the engine's way to
//!   stop it, also when the engine dies), and `PR_SET_PDEATHSIG` kills it if
//!   the engine dies without closing the pipe;
//! - a worker that finds its stdout closed (`EPIPE`) exits quietly: the
//!   engine is going away, which is not an error (a signal during start-up
//!   must not make its workers crash on a broken pipe);
//! - the engine reaps every worker (`waitpid`, through `tokio::process`),
//!   and a worker that dies while the engine is not stopping it is reported
//!   as [`WorkerLost`], so the engine aborts its requests explicitly.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::tokens::{TOKEN_COUNT, token_id};

/// How to start a worker: the engine's own binary and the arguments that
/// select its worker mode; [`WorkerArgs::to_args`] is appended.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The program, normally `std::env::current_exe()`.
    pub program: PathBuf,
    /// Arguments before the worker's own, such as `["worker"]`.
    pub args: Vec<OsString>,
    /// How long each worker takes to load.
    pub load: Duration,
}

/// What a worker process is told on its command line.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerArgs {
    /// Its index among the engine's workers.
    pub index: usize,
    /// The engine's pid: a worker whose parent is already another process
    /// exits at once.
    pub parent_pid: u32,
    /// How long it takes to load.
    pub load: Duration,
}

impl WorkerArgs {
    /// `--index I --parent-pid P --load-seconds S`: the flags a binary's
    /// worker mode must accept.
    pub fn to_args(&self) -> Vec<OsString> {
        [
            "--index".to_owned(),
            self.index.to_string(),
            "--parent-pid".to_owned(),
            self.parent_pid.to_string(),
            "--load-seconds".to_owned(),
            self.load.as_secs_f64().to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }
}

/// A worker that died, or broke its pipe protocol, while the engine was not
/// stopping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLost {
    /// Its index.
    pub index: usize,
    /// Its pid.
    pub pid: u32,
    /// What happened, for logs.
    pub reason: String,
}

/// A worker could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start worker {index} ({program}): {source}")]
pub struct SpawnError {
    index: usize,
    program: String,
    source: io::Error,
}

/// A token could not be computed: its worker is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker {index} is gone")]
pub struct WorkerGone {
    /// The worker's index.
    pub index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadState {
    Loading,
    Ready,
    Gone,
}

#[derive(Debug)]
struct Job {
    seed: u64,
    index: u32,
    reply: oneshot::Sender<usize>,
}

/// Jobs written to a worker and not answered yet, in order. `closed` once
/// the worker's output ended: a job queued after that would never be
/// answered, so it is dropped instead (its caller sees [`WorkerGone`]).
#[derive(Debug, Default)]
struct Pending {
    closed: bool,
    queue: VecDeque<(u64, oneshot::Sender<usize>)>,
}

#[derive(Debug)]
struct Shared {
    /// Set by [`WorkerPool::shutdown`]: from then on a worker's exit is
    /// expected and its pipes may break.
    tearing_down: AtomicBool,
    /// Cancelled to close every worker's stdin.
    close: CancellationToken,
    /// Cancelled to SIGKILL the workers that did not exit in time.
    kill: CancellationToken,
    lost: mpsc::UnboundedSender<WorkerLost>,
}

impl Shared {
    fn tearing_down(&self) -> bool {
        self.tearing_down.load(Ordering::Acquire)
    }

    fn report(&self, index: usize, pid: u32, reason: impl Into<String>) {
        if !self.tearing_down() {
            // The receiver lives as long as the engine; if it is gone, so is
            // everyone who would care.
            let _ = self.lost.send(WorkerLost {
                index,
                pid,
                reason: reason.into(),
            });
        }
    }
}

#[derive(Debug)]
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    state: watch::Receiver<LoadState>,
}

/// The engine's worker processes.
#[derive(Debug)]
pub struct WorkerPool {
    workers: Vec<Worker>,
    next: AtomicUsize,
    shared: Arc<Shared>,
    reapers: Mutex<JoinSet<()>>,
}

impl WorkerPool {
    /// Starts `count` workers; they load concurrently. Stops starting more
    /// once `stop` is cancelled (a signal during start-up). Losses are sent
    /// to `lost`.
    ///
    /// Call it from the engine's main thread (the future given to
    /// `Runtime::block_on`): `PR_SET_PDEATHSIG` fires when the *thread* that
    /// forked a worker exits, and runtime worker threads may come and go.
    pub async fn start(
        spec: &WorkerSpec,
        count: usize,
        stop: &CancellationToken,
        lost: mpsc::UnboundedSender<WorkerLost>,
    ) -> Result<Self, SpawnError> {
        let shared = Arc::new(Shared {
            tearing_down: AtomicBool::new(false),
            close: CancellationToken::new(),
            kill: CancellationToken::new(),
            lost,
        });
        let mut reapers = JoinSet::new();
        let mut workers = Vec::with_capacity(count);
        let mut failure = None;
        for index in 0..count {
            if stop.is_cancelled() {
                tracing::info!(
                    started = index,
                    "start-up interrupted: starting no more workers"
                );
                break;
            }
            match spawn_worker(spec, index, &shared, &mut reapers) {
                Ok(worker) => workers.push(worker),
                Err(source) => {
                    failure = Some(SpawnError {
                        index,
                        program: spec.program.display().to_string(),
                        source,
                    });
                    break;
                }
            }
        }
        let pool = Self {
            workers,
            next: AtomicUsize::new(0),
            shared,
            reapers: Mutex::new(reapers),
        };
        match failure {
            None => Ok(pool),
            Some(error) => {
                pool.shutdown(Duration::from_secs(2)).await;
                Err(error)
            }
        }
    }

    /// The number of workers started.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no worker was started.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Resolves once every worker has loaded, or fails as soon as one is
    /// gone.
    pub async fn ready(&self) -> Result<(), WorkerGone> {
        for (index, worker) in self.workers.iter().enumerate() {
            let mut state = worker.state.clone();
            match state.wait_for(|s| *s != LoadState::Loading).await {
                Ok(s) if *s == LoadState::Ready => {}
                _ => return Err(WorkerGone { index }),
            }
        }
        Ok(())
    }

    /// Asks a worker (round robin) for the vocabulary index of token `index`
    /// of the request with `seed`.
    pub async fn token(&self, seed: u64, index: u32) -> Result<usize, WorkerGone> {
        if self.workers.is_empty() {
            return Err(WorkerGone { index: 0 });
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let (reply, answer) = oneshot::channel();
        self.workers[k]
            .jobs
            .send(Job { seed, index, reply })
            .map_err(|_| WorkerGone { index: k })?;
        answer.await.map_err(|_| WorkerGone { index: k })
    }

    /// Stops every worker and reaps it: closes their stdin (they exit at
    /// end-of-file), waits up to `patience`, then SIGKILLs the rest and
    /// reaps them too. Losses are no longer reported.
    pub async fn shutdown(&self, patience: Duration) {
        self.shared.tearing_down.store(true, Ordering::Release);
        self.shared.close.cancel();
        let mut reapers = std::mem::take(&mut *self.reapers.lock().expect("reapers lock"));
        let all_exited = async { while reapers.join_next().await.is_some() {} };
        if tokio::time::timeout(patience, all_exited).await.is_err() {
            tracing::warn!(
                patience_ms = patience.as_millis() as u64,
                "workers did not exit after end-of-file on their pipe; killing them"
            );
            self.shared.kill.cancel();
            while reapers.join_next().await.is_some() {}
        }
    }
}

fn spawn_worker(
    spec: &WorkerSpec,
    index: usize,
    shared: &Arc<Shared>,
    reapers: &mut JoinSet<()>,
) -> io::Result<Worker> {
    let args = WorkerArgs {
        index,
        parent_pid: std::process::id(),
        load: spec.load,
    };
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .args(args.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        // Cannot happen with piped stdio; reap the child rather than leak it.
        reapers.spawn(reap(index, pid, child, shared.clone()));
        return Err(io::Error::other("the worker's pipes were not created"));
    };
    tracing::info!(worker = index, pid, "worker started");
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (jobs, queue) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(LoadState::Loading);
    tokio::spawn(write_jobs(
        index,
        pid,
        stdin,
        queue,
        pending.clone(),
        shared.clone(),
    ));
    tokio::spawn(read_answers(
        index,
        pid,
        stdout,
        pending,
        state_tx,
        shared.clone(),
    ));
    reapers.spawn(reap(index, pid, child, shared.clone()));
    Ok(Worker { jobs, state })
}

/// Most jobs written in one go.
const BATCH: usize = 256;

async fn write_jobs(
    index: usize,
    pid: u32,
    mut stdin: ChildStdin,
    mut queue: mpsc::UnboundedReceiver<Job>,
    pending: Arc<Mutex<Pending>>,
    shared: Arc<Shared>,
) {
    let mut tag = 0u64;
    let mut lines = String::new();
    loop {
        let first = tokio::select! {
            biased;
            () = shared.close.cancelled() => break,
            job = queue.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        lines.clear();
        {
            let mut pending = pending.lock().expect("pending lock");
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(job) = next {
                // A job for a worker whose output has ended is dropped: its
                // caller's reply channel closes and the request aborts.
                if !pending.closed {
                    tag += 1;
                    let _ = writeln!(lines, "t {tag} {} {}", job.seed, job.index);
                    pending.queue.push_back((tag, job.reply));
                }
                taken += 1;
                next = if taken < BATCH {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
        }
        if lines.is_empty() {
            continue;
        }
        let written = async {
            stdin.write_all(lines.as_bytes()).await?;
            stdin.flush().await
        };
        if written.await.is_err() {
            if shared.tearing_down() {
                tracing::debug!(
                    worker = index,
                    "the worker's input pipe closed during shutdown"
                );
            } else {
                shared.report(index, pid, "its input pipe closed");
            }
            break;
        }
    }
    // Dropping stdin closes the pipe: the worker reads end-of-file and exits.
}

enum Answer {
    Ready,
    Token { tag: u64, id: usize },
}

fn parse_answer(line: &str) -> Option<Answer> {
    let mut words = line.split_ascii_whitespace();
    match words.next()? {
        "ready" => Some(Answer::Ready),
        "w" => {
            let tag = words.next()?.parse().ok()?;
            let id = words.next()?.parse().ok().filter(|id| *id < TOKEN_COUNT)?;
            Some(Answer::Token { tag, id })
        }
        _ => None,
    }
}

async fn read_answers(
    index: usize,
    pid: u32,
    stdout: ChildStdout,
    pending: Arc<Mutex<Pending>>,
    state: watch::Sender<LoadState>,
    shared: Arc<Shared>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let reason = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break "its output pipe closed",
            Err(_) => break "its output pipe failed",
        };
        match parse_answer(&line) {
            Some(Answer::Ready) => {
                tracing::debug!(worker = index, "worker loaded");
                state.send_replace(LoadState::Ready);
            }
            Some(Answer::Token { tag, id }) => {
                let job = pending.lock().expect("pending lock").queue.pop_front();
                match job {
                    Some((expected, reply)) if expected == tag => {
                        // The request may have been aborted meanwhile.
                        let _ = reply.send(id);
                    }
                    _ => break "it answered out of order",
                }
            }
            None => break "it sent an unreadable line",
        }
    };
    {
        let mut pending = pending.lock().expect("pending lock");
        pending.closed = true;
        pending.queue.clear();
    }
    state.send_replace(LoadState::Gone);
    shared.report(index, pid, reason);
    // Keep reading to end-of-file, so that a worker that broke the protocol
    // never writes into a closed pipe.
    while let Ok(Some(_)) = lines.next_line().await {}
}

async fn reap(index: usize, pid: u32, mut child: Child, shared: Arc<Shared>) {
    let status = tokio::select! {
        status = child.wait() => status,
        () = shared.kill.cancelled() => {
            // Not reaped yet, so the pid is still this child's: no risk of
            // signalling a recycled pid.
            let _ = child.start_kill();
            child.wait().await
        }
    };
    match status {
        Ok(status) => {
            if !shared.tearing_down() {
                shared.report(index, pid, format!("it exited unexpectedly ({status})"));
            }
            tracing::info!(worker = index, pid, %status, "worker reaped");
        }
        Err(error) => tracing::error!(worker = index, pid, %error, "cannot wait for the worker"),
    }
}

/// The worker process: block SIGTERM and SIGINT, die with the engine, load,
/// then answer token requests until stdin ends. Returns its exit code: 0
/// when the engine closed the pipe (or is gone), 1 on a protocol error.
pub fn run_worker(args: &WorkerArgs) -> ExitCode {
    let index = args.index;
    // First thing, before any thread exists, so that every thread inherits
    // the mask: only the engine acts on signals.
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGTERM);
    blocked.add(Signal::SIGINT);
    if let Err(error) = blocked.thread_block() {
        tracing::error!(worker = index, %error, "cannot block SIGTERM and SIGINT");
        return ExitCode::FAILURE;
    }
    if let Err(error) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        tracing::error!(worker = index, %error, "cannot set the parent-death signal");
        return ExitCode::FAILURE;
    }
    // The engine may have died between fork and prctl: then no death signal
    // will ever come.
    if nix::unistd::getppid().as_raw().cast_unsigned() != args.parent_pid {
        tracing::debug!(worker = index, "the engine is already gone");
        return ExitCode::SUCCESS;
    }

    // Reading stdin on its own thread lets the main thread wait for "a line
    // or end-of-file, with a timeout" without unsafe polling.
    let (lines_tx, lines) = std_mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    match lines.recv_timeout(args.load) {
        Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
            tracing::debug!(worker = index, "the engine stopped during loading");
            return ExitCode::SUCCESS;
        }
        Ok(line) => {
            tracing::error!(
                worker = index,
                line,
                "a request before the worker was ready"
            );
            return ExitCode::FAILURE;
        }
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        // EPIPE: the engine closed its end, it is going away.
        return ExitCode::SUCCESS;
    }
    while let Ok(mut line) = lines.recv() {
        loop {
            let Some(answer) = answer_line(&line) else {
                tracing::error!(worker = index, line, "an unreadable request");
                return ExitCode::FAILURE;
            };
            if out.write_all(answer.as_bytes()).is_err() {
                return ExitCode::SUCCESS;
            }
            // Answer everything already queued before flushing: one write
            // per batch, not per token.
            match lines.try_recv() {
                Ok(next) => line = next,
                Err(_) => break,
            }
        }
        if out.flush().is_err() {
            return ExitCode::SUCCESS;
        }
    }
    // End-of-file on stdin: the engine asks us to exit.
    tracing::debug!(worker = index, "the engine closed the pipe; exiting");
    ExitCode::SUCCESS
}

/// `t <tag> <seed> <index>` → `w <tag> <token_id>\n`.
fn answer_line(line: &str) -> Option<String> {
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "t" {
        return None;
    }
    let tag: u64 = words.next()?.parse().ok()?;
    let seed: u64 = words.next()?.parse().ok()?;
    let index: u32 = words.next()?.parse().ok()?;
    Some(format!("w {tag} {}\n", token_id(seed, index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_answers_what_the_token_function_says() {
        let seed = crate::tokens::prompt_seed("x");
        let answer = answer_line(&format!("t 9 {seed} 4")).unwrap();
        match parse_answer(answer.trim_end()) {
            Some(Answer::Token { tag: 9, id }) => assert_eq!(id, token_id(seed, 4)),
            _ => panic!("unexpected answer {answer:?}"),
        }
        assert!(answer_line("t 1 x 2").is_none());
        assert!(parse_answer("w 1 64").is_none(), "token ids are bounded");
    }

    #[test]
    fn worker_args_round_trip_as_flags() {
        let args = WorkerArgs {
            index: 1,
            parent_pid: 42,
            load: Duration::from_millis(250),
        };
        let flags: Vec<String> = args
            .to_args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            flags,
            [
                "--index",
                "1",
                "--parent-pid",
                "42",
                "--load-seconds",
                "0.25"
            ]
        );
    }
}
