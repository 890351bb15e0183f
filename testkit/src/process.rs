//! Child processes as a kubelet sees them: started in their own process
//! group, signalled, waited for with a bound, and checked in the process
//! table for anything they left behind.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A running child process whose output (stdout and stderr, interleaved as
/// they arrive) is collected line by line.
pub struct Process {
    child: Child,
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
    /// How many of its two pipes reached their end: at 2, every line is in
    /// `lines`.
    pipes_closed: Arc<AtomicUsize>,
    /// Start time in clock ticks since boot: processes started earlier cannot
    /// be its descendants, even if a recycled pid puts them in its group.
    start_ticks: u64,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` as the leader of a new process group.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> std::io::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let pipes_closed = Arc::new(AtomicUsize::new(0));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        collect_lines(stdout, &lines, &pipes_closed);
        collect_lines(stderr, &lines, &pipes_closed);
        let start_ticks = proc_stat(child.id() as i32).map_or(0, |p| p.start_ticks);
        Ok(Self {
            child,
            name: name.into(),
            lines,
            pipes_closed,
            start_ticks,
            exit: None,
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The name given at spawn, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `signal` to the process (not its group), if it still runs.
    pub fn signal(&mut self, signal: Signal) {
        if self.try_exit().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
        }
    }

    /// Sends SIGKILL to every process of its group, as the kubelet's SIGKILL
    /// of a container kills every process in the container's cgroup. Only
    /// while the leader runs or a member it started survives, so that a
    /// recycled group id is never signalled.
    pub fn kill_group(&mut self) {
        if self.try_exit().is_none() || !self.survivors().is_empty() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        }
    }

    /// Its output so far.
    pub fn logs(&self) -> String {
        self.lines().join("\n")
    }

    /// Its output lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// The first output line containing `needle`, if any yet.
    pub fn find_line(&self, needle: &str) -> Option<String> {
        let lines = self.lines.lock().expect("log lock");
        lines.iter().find(|line| line.contains(needle)).cloned()
    }

    /// Waits until an output line contains `needle`.
    pub async fn wait_for_line(
        &mut self,
        needle: &str,
        within: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.find_line(needle) {
                return Ok(line);
            }
            if let Some(status) = self.try_exit() {
                return Err(format!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.logs()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} logged no {needle:?} within {within:?}:\n{}",
                    self.name,
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Its exit status, if it has exited. Once it has, its last output
    /// lines are in [`Process::logs`] too.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
            if self.exit.is_some() {
                self.wait_for_output_end();
            }
        }
        self.exit
    }

    /// Waits, briefly, for the readers to reach the end of the pipes. A
    /// child the process left behind may hold them open: then give up.
    fn wait_for_output_end(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.pipes_closed.load(Ordering::Acquire) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for it to exit, at most `within`; `None` if it still runs.
    pub async fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The pids of its live children, from the process table.
    pub fn children(&self) -> Vec<i32> {
        processes()
            .into_iter()
            .filter(|p| p.ppid == self.pid() && p.start_ticks >= self.start_ticks)
            .map(|p| p.pid)
            .collect()
    }

    /// Waits for it to exit; after `within`, a hang, panics with its logs
    /// (and, dropped, the process is killed with its group).
    pub async fn expect_exit(&mut self, within: Duration) -> ExitStatus {
        match self.wait(within).await {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {within:?}:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// Processes of its group still alive (excluding zombies): after it
    /// exited, these are orphans.
    pub fn survivors(&self) -> Vec<String> {
        processes()
            .into_iter()
            .filter(|p| p.pgrp == self.pid() && p.start_ticks >= self.start_ticks && p.state != 'Z')
            .map(|p| format!("{} ({}, state {})", p.pid, p.comm, p.state))
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Whatever happened, leave nothing behind.
        if self.try_exit().is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Appends every line of `pipe` to `lines` on a thread of its own, and
/// counts the pipe in `closed` at its end.
fn collect_lines(
    pipe: impl Read + Send + 'static,
    lines: &Arc<Mutex<Vec<String>>>,
    closed: &Arc<AtomicUsize>,
) {
    let (lines, closed) = (Arc::clone(lines), Arc::clone(closed));
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().expect("log lock").push(line);
        }
        closed.fetch_add(1, Ordering::Release);
    });
}

/// One line of `/proc/<pid>/stat`.
#[derive(Clone, Debug)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Command name.
    pub comm: String,
    /// State letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Start time, clock ticks since boot.
    pub start_ticks: u64,
}

/// `/proc/<pid>/stat`, or `None` if the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces: split at the last ')'.
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    Some(ProcStat {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Every process in the table.
pub fn processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(proc_stat)
        .collect()
}
