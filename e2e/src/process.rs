//! Child processes as a kubelet sees them: started in their own process
//! group, signalled, waited for with a bound, and checked in the process
//! table for anything they left behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A running child process whose stderr is collected line by line.
pub struct Process {
    child: Child,
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set once stderr reached its end: every line is in `lines`.
    stderr_closed: Arc<AtomicBool>,
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
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&stderr_closed);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
            closed.store(true, Ordering::Release);
        });
        let start_ticks = proc_stat(child.id() as i32).map_or(0, |p| p.start_ticks);
        Ok(Self {
            child,
            name: name.into(),
            lines,
            stderr_closed,
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

    /// Its stderr so far.
    pub fn logs(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }

    /// The first stderr line containing `needle`, if any yet.
    pub fn find_line(&self, needle: &str) -> Option<String> {
        let lines = self.lines.lock().expect("log lock");
        lines.iter().find(|line| line.contains(needle)).cloned()
    }

    /// Waits until a stderr line contains `needle`.
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

    /// Its exit status, if it has exited. Once it has, its last stderr
    /// lines are in [`Process::logs`] too.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
            if self.exit.is_some() {
                self.wait_for_stderr_end();
            }
        }
        self.exit
    }

    /// Waits, briefly, for the stderr reader to reach the end of the pipe. A
    /// child the process left behind may hold the pipe open: then give up.
    fn wait_for_stderr_end(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.stderr_closed.load(Ordering::Acquire) && Instant::now() < deadline {
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
