//! The project's binaries, built on first use by the cargo that runs us, so
//! that `cargo test -p quiesce-e2e` and `cargo run -p quiesce-e2e` work on a
//! fresh clone without a separate build step.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::Process;
use std::sync::OnceLock;

/// Where the workspace keeps its build output.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Builds the sidecar and the simulated engine in this build's profile, once
/// per process, and returns the directory that holds them.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let release = !cfg!(debug_assertions);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args([
                "build",
                "--quiet",
                "--bin",
                "quiesce-sidecar",
                "--bin",
                "quiesce-engine",
            ])
            .env("CARGO_TARGET_DIR", target_dir());
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build of the sidecar and engine failed"
        );
        target_dir().join(if release { "release" } else { "debug" })
    })
}

/// Path of `quiesce-sidecar`.
pub fn sidecar() -> PathBuf {
    built().join("quiesce-sidecar")
}

/// Path of `quiesce-engine`, the simulated engine.
pub fn engine() -> PathBuf {
    built().join("quiesce-engine")
}

/// The preStop drain client, `program drain` (the sidecar binary), against
/// `socket`, as the kubelet runs the hook the operator renders.
pub fn drain_client(
    program: &Path,
    socket: &Path,
    propagation: f64,
    timeout: f64,
    grace: f64,
) -> Process {
    Process::spawn(
        "drain client",
        Command::new(program)
            .arg("drain")
            .arg("--socket")
            .arg(socket)
            .args(["--propagation-seconds", &propagation.to_string()])
            .args(["--timeout-seconds", &timeout.to_string()])
            .args(["--abort-grace-seconds", &grace.to_string()]),
    )
    .expect("spawn the drain client")
}
