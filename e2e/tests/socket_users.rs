//! The socket across container users, as a real kubelet sets them up: the
//! sidecar and the engine run as different non-root users, and the engine
//! reaches the socket only through the pod's shared group (fsGroup), which
//! the kubelet adds to every container's supplementary groups.
//!
//! Switching users needs root (and util-linux's `setpriv`); elsewhere the
//! test says so and checks only what it can.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use quiesce_e2e::client::get_status;
use quiesce_e2e::pair::{spawn_engine, spawn_sidecar};
use quiesce_testkit::bins;
use quiesce_testkit::process::Process;

const PROMPT: Duration = Duration::from_secs(10);
/// The sidecar's user and the pod's fsGroup, as the operator renders them.
const SIDECAR_USER: u32 = 65532;
const FS_GROUP: u32 = 65532;

fn can_switch_users() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    match Command::new("setpriv").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("setpriv (util-linux) is not installed".into()),
    }
}

/// `setpriv` as the kubelet would start a container: this uid and gid, and
/// only the supplementary groups given.
fn as_user(uid: u32, gid: u32, groups: &[u32], program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.arg(format!("--groups={}", list.join(",")));
    }
    command.arg("--").arg(program);
    command
}

/// An emptyDir as the kubelet prepares it with fsGroup: world-traversable,
/// owned by the group, setgid so new files inherit the group.
fn shared_volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), None, Some(nix::unistd::Gid::from_raw(FS_GROUP))).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o2777)).unwrap();
    dir
}

async fn start_sidecar(volume: &Path) -> (Process, std::net::SocketAddr) {
    let program = as_user(SIDECAR_USER, SIDECAR_USER, &[], &bins::sidecar());
    spawn_sidecar(program, &volume.join("quiesce.sock"), &[]).await
}

async fn start_engine(volume: &Path, uid: u32, groups: &[u32]) -> Process {
    let mut program = as_user(uid, uid, groups, &bins::engine());
    program.env("QUIESCE_SOCKET", volume.join("quiesce.sock"));
    spawn_engine(program, &["--workers", "0"]).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reaches_the_socket_through_the_shared_group_only() {
    if let Err(why) = can_switch_users() {
        eprintln!("SKIPPED: cannot run the containers as different users here ({why})");
        return;
    }
    let volume = shared_volume();
    let (mut sidecar, http) = start_sidecar(volume.path()).await;
    let socket = std::fs::metadata(volume.path().join("quiesce.sock")).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o660);
    assert_eq!(socket.uid(), SIDECAR_USER);
    assert_eq!(socket.gid(), FS_GROUP, "the socket inherits the fsGroup");

    // A user outside the group is refused by the kernel, and says so.
    let mut outsider = start_engine(volume.path(), 1001, &[]).await;
    let line = outsider
        .wait_for_line("cannot reach the sidecar", PROMPT)
        .await
        .unwrap();
    assert!(line.contains("ermission denied"), "{line}");
    assert_eq!(get_status(http, "/ready", PROMPT).await, Some(503));
    outsider.signal(nix::sys::signal::Signal::SIGTERM);
    outsider.wait(PROMPT).await.expect("exits");

    // The engine's user, with the fsGroup as a supplementary group, connects.
    let mut engine = start_engine(volume.path(), 1000, &[FS_GROUP]).await;
    let deadline = Instant::now() + PROMPT;
    while get_status(http, "/ready", PROMPT).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}\n{}",
            engine.logs(),
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(engine.wait(PROMPT).await.and_then(|s| s.code()), Some(0));
    sidecar.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sidecar.wait(PROMPT).await.and_then(|s| s.code()), Some(0));
}
