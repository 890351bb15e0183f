//! Worker processes of the real `quiesce-engine` binary: a lost worker
//! aborts in-flight requests and ends the engine with exit code 3; workers
//! ignore signals; a signal at any moment of start-up leaves no orphan, no
//! hang and no broken pipe (seed 003).

mod common;

use std::time::Duration;

use common::{Ask, Engine, RUNNING, SLOW, proc_stat, request, spawn_request, wait_metric};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quiesce_sim::verify::Outcome;

const LOST: &str = "lost a worker: aborting every request and exiting";

/// The engine's worker pids, once it has started `n` of them.
async fn workers(engine: &Engine, n: usize) -> Vec<i32> {
    engine
        .wait_record("worker started", |_| {
            engine.records_with("worker started").len() >= n
        })
        .await;
    let mut children = engine.children();
    children.sort_unstable();
    let mut logged: Vec<i32> = engine
        .logged_workers()
        .into_iter()
        .map(|p| p as i32)
        .collect();
    logged.sort_unstable();
    assert_eq!(
        children, logged,
        "the engine's children are its logged workers"
    );
    children
}

#[tokio::test]
async fn a_lost_worker_aborts_in_flight_requests_and_exits_3() {
    let mut engine = Engine::start(&[
        "--startup-seconds",
        "0.2",
        "--token-interval-ms",
        "10",
        "--workers",
        "2",
        "--shutdown-timeout",
        "60",
    ])
    .await;
    engine.wait_ready().await;
    let pids = workers(&engine, 2).await;
    let mut streams: Vec<_> = (0..3)
        .map(|i| spawn_request(engine.addr, Ask::stream(&format!("doomed {i}"), 2000)))
        .collect();
    for stream in &mut streams {
        stream.wait_tokens(2).await;
    }
    let whole = spawn_request(engine.addr, Ask::whole("doomed whole", 2000));
    wait_metric(engine.addr, RUNNING, 4.0).await;

    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).expect("kill a worker");
    for stream in streams {
        let record = stream.finish().await;
        assert!(
            matches!(record.outcome, Ok(Outcome::Aborted { tokens }) if tokens >= 2),
            "{:?}",
            record.outcome
        );
    }
    assert_eq!(
        whole.finish().await.outcome,
        Ok(Outcome::Aborted { tokens: 0 })
    );
    let status = engine.wait_exit(SLOW).await;
    assert_eq!(status.code(), Some(3), "stderr:\n{}", engine.stderr());
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[LOST]);
    let lost = engine.records_with(LOST);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["pid"], pids[0]);
}

#[tokio::test]
async fn a_worker_lost_during_start_up_ends_the_engine_with_3() {
    let mut engine = Engine::start(&["--startup-seconds", "30", "--workers", "2"]).await;
    let pids = workers(&engine, 2).await;
    kill(Pid::from_raw(pids[1]), Signal::SIGKILL).expect("kill a worker");
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(3));
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[LOST]);
}

#[tokio::test]
async fn workers_ignore_sigterm_and_sigint() {
    let mut engine = Engine::start(&[
        "--startup-seconds",
        "0.2",
        "--token-interval-ms",
        "5",
        "--workers",
        "2",
    ])
    .await;
    engine.wait_ready().await;
    let pids = workers(&engine, 2).await;
    for &pid in &pids {
        kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    }
    // Both workers still compute tokens (round robin uses each).
    let record = request(engine.addr, &Ask::stream("still here", 10)).await;
    assert_eq!(record.outcome, Ok(Outcome::Completed { tokens: 10 }));
    for &pid in &pids {
        let worker = proc_stat(pid).expect("the worker survived the signals");
        assert_ne!(worker.state, 'Z');
    }
    engine.signal(Signal::SIGTERM);
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

/// Seed 003: a signal while the engine starts (spawning workers, loading)
/// must stop it promptly and cleanly, whatever the moment. Delays count from
/// the `starting` line, printed once the signal handlers are installed
/// (before that the kernel's default action applies to any process).
#[tokio::test]
async fn signals_during_start_up_never_orphan_hang_or_break_pipes() {
    let delays_ms = [0, 1, 2, 4, 7, 10, 15, 25, 50, 100, 150, 200, 250, 300, 400];
    for delay in delays_ms {
        let mut engine = Engine::spawn(
            &[
                "--startup-seconds",
                "0.3",
                "--workers",
                "2",
                "--token-interval-ms",
                "5",
            ],
            &[],
        );
        engine.wait_log("starting").await;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        engine.signal(Signal::SIGTERM);
        let status = engine.wait_exit(SLOW).await;
        assert_eq!(
            status.code(),
            Some(0),
            "delay {delay} ms; stderr:\n{}",
            engine.stderr()
        );
        engine.assert_no_survivors();
        engine.assert_clean_stderr(&[]);
    }
}

/// An engine killed outright cannot reap anything: its workers must still
/// die (parent-death signal, end-of-file on their pipe), not linger.
#[tokio::test]
async fn workers_die_with_a_killed_engine() {
    let mut engine = Engine::start(&["--startup-seconds", "0.2", "--workers", "2"]).await;
    engine.wait_ready().await;
    let pids = workers(&engine, 2).await;
    engine.signal(Signal::SIGKILL);
    engine.wait_exit(SLOW).await;
    let deadline = std::time::Instant::now() + SLOW;
    for pid in pids {
        // Gone, or a zombie of whichever process adopted it: either way dead.
        while proc_stat(pid).is_some_and(|p| p.state != 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "worker {pid} outlived its killed engine"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
