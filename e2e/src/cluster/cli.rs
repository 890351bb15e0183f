//! The command-line tools of the user's path, kubectl and helm, run against
//! the suite's cluster: what they print is what users see.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The longest any one command may take (`helm install --wait` included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// A tool and the kubeconfig it is pointed at.
#[derive(Clone, Debug)]
pub struct Tool {
    program: PathBuf,
    kubeconfig: Option<PathBuf>,
}

/// What a command printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Tool {
    /// `program` (a path, or a name on PATH), with `KUBECONFIG` set to
    /// `kubeconfig` when given.
    pub fn new(program: impl Into<PathBuf>, kubeconfig: Option<&Path>) -> Self {
        Self {
            program: program.into(),
            kubeconfig: kubeconfig.map(Path::to_path_buf),
        }
    }

    /// Runs it with `args` and `stdin`, whatever its exit status.
    pub async fn output(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(kubeconfig) = &self.kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let shown = self.shown(args);
        let mut child = command.spawn().with_context(|| {
            format!(
                "cannot run {shown}: is {} installed?",
                self.program.display()
            )
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
        }
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("{shown} took more than {COMMAND_TIMEOUT:?}"))??;
        Ok(Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs it with `args`; its standard output, or an error with what it
    /// printed on standard error.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_with_input(args, None).await
    }

    /// [`Tool::run`] with `stdin`.
    pub async fn run_with_input(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<String> {
        let output = self.output(args, stdin).await?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.shown(args),
                output.status,
                output.stderr.trim()
            );
        }
        Ok(output.stdout)
    }

    fn shown(&self, args: &[&str]) -> String {
        let name = self.program.file_name().unwrap_or(self.program.as_os_str());
        format!("`{} {}`", name.to_string_lossy(), args.join(" "))
    }
}
