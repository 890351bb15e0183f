//! The sidecar as a real process: its socket, its HTTP endpoints, the drain
//! client, and what happens when any of them misbehaves or disappears.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{PROMPT, ScriptedEngine, Sidecar, drain_client};
use nix::sys::signal::Signal;
use quiesce_protocol::{ErrorCode, MAX_FRAME_LEN, Phase, ServerMessage};
use quiesce_testkit::hostile::assault;
use quiesce_testkit::process::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn error_code(message: Option<ServerMessage>) -> ErrorCode {
    match message {
        Some(ServerMessage::Error(e)) => e.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_liveness_follow_the_engine() {
    let sidecar = Sidecar::start(&[]).await;
    // No engine yet: the sidecar is live (the engine may be loading) but not ready.
    assert_eq!(sidecar.get("/live").await.0, 200);
    assert_eq!(
        sidecar.get("/ready").await,
        (503, "no engine connected\n".into())
    );

    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Starting, 0).await;
    sidecar.wait_for_status("/live", 200).await;
    assert_eq!(sidecar.get("/ready").await.0, 503);
    engine.report(Phase::Ready, 0).await;
    sidecar.wait_for_status("/ready", 200).await;

    // Silent for more than 5 heartbeats (5 x 100 ms): not live, not ready.
    sidecar.wait_for_status("/live", 503).await;
    assert_eq!(sidecar.get("/ready").await.0, 503);
    sidecar
        .wait_for_metric(
            "quiesce_readiness_transitions_total{ready=\"false\"}",
            |n| n == 1.0,
        )
        .await;
    // Heartbeats again: live and ready again.
    engine.report(Phase::Ready, 0).await;
    assert_eq!(sidecar.get("/live").await.0, 200);
    assert_eq!(sidecar.get("/ready").await.0, 200);
    // Each change of /ready was counted once.
    sidecar
        .wait_for_metric("quiesce_readiness_transitions_total{ready=\"true\"}", |n| {
            n == 2.0
        })
        .await;
    assert_eq!(
        sidecar
            .metric("quiesce_readiness_transitions_total{ready=\"false\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_right_after_the_engine_finishes() {
    let sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 2).await;
    sidecar.wait_for_status("/ready", 200).await;

    let mut client = drain_client(&sidecar.socket, 0.2, 60.0, 5.0);
    let drain = engine.heartbeat_until_frame(Phase::Ready, 2).await;
    let ServerMessage::Drain(request) = drain else {
        panic!("{drain:?}")
    };
    assert_eq!(request.propagation, Duration::from_millis(200));
    assert_eq!(request.timeout, Duration::from_secs(60));
    assert_eq!(request.abort_grace, Duration::from_secs(5));
    // /ready fails from the moment the drain was requested, before the
    // engine says anything.
    assert_eq!(sidecar.get("/ready").await, (503, "draining\n".into()));

    engine.report(Phase::Draining, 1).await;
    engine.report(Phase::Draining, 0).await;
    let stopped_at = Instant::now();
    engine.report(Phase::Stopped, 0).await;
    let status = client.expect_exit(PROMPT).await;
    let returned_after = stopped_at.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(client.logs().contains("drained after"), "{}", client.logs());
    assert!(
        returned_after < Duration::from_secs(3),
        "the preStop client took {returned_after:?} after the engine stopped"
    );
    assert_eq!(
        sidecar
            .metric("quiesce_drains_total{result=\"drained\"}")
            .await,
        1.0
    );
    assert_eq!(sidecar.metric("quiesce_drain_in_progress").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_sends_abort_and_the_drain_reports_aborted() {
    let sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 3).await;
    let requested = Instant::now();
    let mut client = drain_client(&sidecar.socket, 0.2, 0.5, 2.0);
    assert!(matches!(
        engine.heartbeat_until_frame(Phase::Ready, 3).await,
        ServerMessage::Drain(_)
    ));
    // The engine keeps working past the deadline: the sidecar orders an abort.
    let abort = engine.heartbeat_until_frame(Phase::Draining, 3).await;
    let ServerMessage::Abort(abort) = abort else {
        panic!("{abort:?}")
    };
    assert!(
        requested.elapsed() >= Duration::from_millis(700),
        "abort before propagation + timeout"
    );
    assert_eq!(abort.grace, Duration::from_secs(2));
    engine.report(Phase::Aborting, 3).await;
    engine.report(Phase::Stopped, 0).await;
    assert!(client.expect_exit(PROMPT).await.success());
    assert!(client.logs().contains("aborted after"), "{}", client.logs());
    assert_eq!(
        sidecar
            .metric("quiesce_drains_total{result=\"aborted\"}")
            .await,
        1.0
    );
    assert_eq!(sidecar.metric("quiesce_requests_aborted_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_ignores_abort_is_given_up_on_after_the_grace() {
    let sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 1).await;
    let started = Instant::now();
    let mut client = drain_client(&sidecar.socket, 0.0, 0.3, 0.5);
    assert!(matches!(
        engine.heartbeat_until_frame(Phase::Ready, 1).await,
        ServerMessage::Drain(_)
    ));
    assert!(matches!(
        engine.heartbeat_until_frame(Phase::Draining, 1).await,
        ServerMessage::Abort(_)
    ));
    // No answer to the abort: the drain still ends at timeout + grace.
    let wait = async {
        loop {
            engine.report(Phase::Draining, 1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let exited = async {
        let status = client.expect_exit(PROMPT).await;
        (status, client.logs())
    };
    let (status, logs) = tokio::select! {
        result = exited => result,
        () = wait => unreachable!(),
    };
    assert!(status.success());
    assert!(logs.contains("aborted after"), "{logs}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "gave up after {took:?}, before timeout + grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_lost_mid_drain_ends_the_drain_at_once() {
    let sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 1).await;
    let mut client = drain_client(&sidecar.socket, 0.0, 60.0, 5.0);
    assert!(matches!(
        engine.heartbeat_until_frame(Phase::Ready, 1).await,
        ServerMessage::Drain(_)
    ));
    engine.report(Phase::Draining, 1).await;
    let lost_at = Instant::now();
    drop(engine);
    assert!(client.expect_exit(PROMPT).await.success());
    assert!(
        lost_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        lost_at.elapsed()
    );
    assert!(client.logs().contains("engine_lost"), "{}", client.logs());
    assert_eq!(
        sidecar
            .metric("quiesce_drains_total{result=\"engine_lost\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_without_engine_waits_the_propagation_delay_in_the_client() {
    let sidecar = Sidecar::start(&[]).await;
    let started = Instant::now();
    let mut client = drain_client(&sidecar.socket, 0.6, 60.0, 5.0);
    assert!(client.expect_exit(PROMPT).await.success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "returned after {took:?}"
    );
    assert!(client.logs().contains("no_engine"), "{}", client.logs());
    assert_eq!(
        sidecar
            .metric("quiesce_drains_total{result=\"no_engine\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_client_without_a_sidecar_waits_the_propagation_delay_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut client = drain_client(&dir.path().join("missing.sock"), 0.5, 60.0, 5.0);
    assert!(client.expect_exit(PROMPT).await.success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "returned after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "returned after {took:?}");
    assert!(
        client.logs().contains("cannot reach the sidecar"),
        "{}",
        client.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_mid_drain_releases_the_client() {
    let mut sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 1).await;
    let started = Instant::now();
    let mut client = drain_client(&sidecar.socket, 0.4, 60.0, 5.0);
    assert!(matches!(
        engine.heartbeat_until_frame(Phase::Ready, 1).await,
        ServerMessage::Drain(_)
    ));
    engine.report(Phase::Draining, 1).await;
    sidecar.process.signal(Signal::SIGKILL);
    sidecar.process.expect_exit(PROMPT).await;
    // The engine sees its sidecar go away.
    assert!(engine.is_closed().await);
    assert!(client.expect_exit(PROMPT).await.success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "returned before the propagation delay: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_is_refused_with_a_clear_error() {
    let sidecar = Sidecar::start(&[]).await;
    let mut first = ScriptedEngine::connect(&sidecar.socket).await;
    first.report(Phase::Ready, 0).await;
    let (mut second, answer) = ScriptedEngine::connect_with(&sidecar.socket, vec![1]).await;
    let ServerMessage::Error(error) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(error.code, ErrorCode::EngineAlreadyConnected);
    assert!(
        error.message.contains("another engine"),
        "{}",
        error.message
    );
    assert!(
        second.next().await.is_none(),
        "the refused connection is closed"
    );
    // The first engine is unaffected.
    first.report(Phase::Ready, 0).await;
    sidecar.wait_for_status("/ready", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_gets_a_clear_error() {
    let sidecar = Sidecar::start(&[]).await;
    let (mut engine, answer) = ScriptedEngine::connect_with(&sidecar.socket, vec![7, 9]).await;
    let ServerMessage::Error(error) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(error.code, ErrorCode::UnsupportedVersion);
    assert!(
        error.message.contains('1') && error.message.contains('7'),
        "{}",
        error.message
    );
    assert!(engine.next().await.is_none());
    // A correct engine still connects.
    let mut good = ScriptedEngine::connect(&sidecar.socket).await;
    good.report(Phase::Ready, 0).await;
    sidecar.wait_for_status("/ready", 200).await;
}

/// Sends raw bytes as a client's first frame and returns the sidecar's answer.
async fn send_raw(
    socket: &std::path::Path,
    bytes: &[u8],
    then_close: bool,
) -> Option<ServerMessage> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if then_close {
        stream.shutdown().await.unwrap();
    }
    let mut reader = quiesce_protocol::FrameReader::new(stream);
    tokio::time::timeout(PROMPT, reader.read())
        .await
        .expect("an answer or a close")
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 0).await;
    sidecar.wait_for_status("/ready", 200).await;

    let body = b"{not json";
    let mut malformed = (body.len() as u32).to_be_bytes().to_vec();
    malformed.extend_from_slice(body);
    assert_eq!(
        error_code(send_raw(&sidecar.socket, &malformed, false).await),
        ErrorCode::BadFrame
    );

    let oversized = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert_eq!(
        error_code(send_raw(&sidecar.socket, &oversized, false).await),
        ErrorCode::FrameTooLarge
    );

    let huge = u32::MAX.to_be_bytes();
    assert_eq!(
        error_code(send_raw(&sidecar.socket, &huge, false).await),
        ErrorCode::FrameTooLarge
    );

    assert_eq!(
        error_code(send_raw(&sidecar.socket, &[0, 0, 0, 0], false).await),
        ErrorCode::BadFrame
    );

    // Truncated: a length promising 100 bytes, 3 bytes, then EOF.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(b"{\"t");
    assert_eq!(send_raw(&sidecar.socket, &truncated, true).await, None);

    // A valid frame of the wrong kind first.
    let status = br#"{"type":"status","phase":"ready","in_flight":0,"queued":0,"kv_transfers":0}"#;
    let mut wrong = (status.len() as u32).to_be_bytes().to_vec();
    wrong.extend_from_slice(status);
    assert_eq!(
        error_code(send_raw(&sidecar.socket, &wrong, false).await),
        ErrorCode::UnexpectedMessage
    );

    // An engine that sends garbage after its handshake loses its own connection only.
    let mut bad_engine = UnixStream::connect(&sidecar.socket).await.unwrap();
    bad_engine
        .write_all(&((MAX_FRAME_LEN * 4) as u32).to_be_bytes())
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PROMPT, bad_engine.read_to_end(&mut sink)).await;

    // Through all of it the sidecar kept serving.
    engine.report(Phase::Ready, 0).await;
    assert_eq!(sidecar.get("/ready").await.0, 200);
    assert_eq!(sidecar.get("/live").await.0, 200);
    assert!(
        sidecar.process.logs().contains("frame"),
        "errors are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let sidecar = Sidecar::start(&[]).await;
    let stream = UnixStream::connect(&sidecar.socket).await.unwrap();
    let mut reader = quiesce_protocol::FrameReader::new(stream);
    let answer = tokio::time::timeout(Duration::from_secs(15), reader.read::<ServerMessage>())
        .await
        .expect("the sidecar answers a silent client")
        .expect("well-formed");
    assert_eq!(error_code(answer), ErrorCode::HandshakeTimeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_not_world_writable() {
    let sidecar = Sidecar::start(&[]).await;
    let meta = std::fs::metadata(&sidecar.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("quiesce.sock");
    // A socket nobody listens on, as a killed sidecar leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    let sidecar = Sidecar::start_at(dir, socket, &[]).await;
    assert!(sidecar.process.logs().contains("replacing a stale file"));
    assert!(std::os::unix::net::UnixStream::connect(&sidecar.socket).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_the_socket_path_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let socket = dir.path().join("quiesce.sock");
    std::os::unix::fs::symlink(&target, &socket).unwrap();
    let sidecar = Sidecar::start_at(dir, socket, &[]).await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    let meta = std::fs::symlink_metadata(&sidecar.socket).unwrap();
    assert!(meta.file_type().is_socket());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_stolen() {
    let first = Sidecar::start(&[]).await;
    let mut second = Process::spawn(
        "second sidecar",
        std::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--socket"])
            .arg(&first.socket),
    )
    .unwrap();
    let status = second.expect_exit(PROMPT).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        second.logs().contains("in use by a live process"),
        "{}",
        second.logs()
    );
    assert!(std::os::unix::net::UnixStream::connect(&first.socket).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_read_only_and_bounded() {
    let sidecar = Sidecar::start(&[]).await;
    for path in ["/live", "/ready", "/metrics", "/status", "/load"] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        assert_eq!(sidecar.raw_status(&request).await, 405, "POST {path}");
    }
    assert_eq!(sidecar.get("/drain").await.0, 404);
    // A client announcing a huge body gets an answer without the sidecar reading it.
    let huge = "POST /ready HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n";
    assert_eq!(sidecar.raw_status(huge).await, 405);
    assert_eq!(sidecar.get("/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_describe_the_sidecar() {
    let sidecar = Sidecar::start(&[]).await;
    let (code, body) = sidecar.get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "quiesce_engine_phase{phase=\"unknown\"} 1",
        "quiesce_engine_in_flight_requests",
        "quiesce_engine_queued_requests",
        "quiesce_drain_duration_seconds_bucket",
        "quiesce_drains_total{result=\"drained\"} 0",
        "quiesce_requests_aborted_total",
        "quiesce_readiness_transitions_total",
        "quiesce_drains_not_started_total",
        "quiesce_build_info{version=",
        "# EOF",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    let (code, status) = sidecar.get("/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["ready"], false);
    assert_eq!(status["engine_connected"], false);
    assert_eq!(status["drain"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_dir_gets_an_executable_copy_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let sidecar = Sidecar::start(&["--install-dir", bin.to_str().unwrap()]).await;
    let installed = bin.join("quiesce-sidecar");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(common::BIN).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let no_leftovers: Vec<_> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        no_leftovers,
        vec![std::ffi::OsString::from("quiesce-sidecar")]
    );
    // The copy works as a drain client.
    let status = std::process::Command::new(&installed)
        .arg("drain")
        .arg("--socket")
        .arg(&sidecar.socket)
        .args([
            "--propagation-seconds",
            "0",
            "--timeout-seconds",
            "1",
            "--abort-grace-seconds",
            "1",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_sidecar_waits_for_a_draining_engine() {
    let mut sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    // The engine got SIGTERM first and drains by itself.
    engine.report(Phase::Draining, 1).await;
    sidecar.wait_for_status("/ready", 503).await;
    sidecar.process.signal(Signal::SIGTERM);
    sidecar
        .process
        .wait_for_line("waiting for the drain to end", PROMPT)
        .await
        .unwrap();
    assert!(
        sidecar.process.try_exit().is_none(),
        "exited while the engine drains"
    );
    // The sidecar keeps serving the engine meanwhile.
    engine.report(Phase::Draining, 0).await;
    assert_eq!(sidecar.get("/live").await.0, 200);
    let stopped_at = Instant::now();
    engine.report(Phase::Stopped, 0).await;
    let status = sidecar.process.expect_exit(PROMPT).await;
    assert_eq!(status.code(), Some(0));
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    assert!(
        !sidecar.socket.exists(),
        "the socket file is removed on exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_without_any_drain_is_reported_loudly() {
    let mut sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 4).await;
    sidecar.wait_for_status("/ready", 200).await;
    sidecar.process.signal(Signal::SIGTERM);
    assert_eq!(sidecar.process.expect_exit(PROMPT).await.code(), Some(0));
    let logs = sidecar.process.logs();
    assert!(logs.contains("no drain was ever requested"), "{logs}");
    assert!(logs.contains("FailedPreStopHook"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_engine_sidecar_refuses_protocol_engines_clearly() {
    // Nothing listens on port 1: the stock engine is not up yet.
    let sidecar =
        Sidecar::start(&["--adapter", "vllm", "--engine-url", "http://127.0.0.1:1"]).await;
    let (mut engine, answer) = ScriptedEngine::connect_with(&sidecar.socket, vec![1]).await;
    let ServerMessage::Error(error) = answer else {
        panic!("{answer:?}")
    };
    assert!(error.message.contains("over HTTP"), "{}", error.message);
    assert!(engine.is_closed().await);
    assert_eq!(
        sidecar.get("/ready").await,
        (503, "no engine connected\n".into())
    );
    assert_eq!(
        sidecar.get("/live").await.0,
        200,
        "a stock engine that is still loading is live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_adapter_needs_the_engine_url() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--adapter", "sglang", "--socket"])
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--engine-url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_the_engines_work_or_that_it_is_unknown() {
    let sidecar = Sidecar::start(&[]).await;
    let load = async || -> serde_json::Value {
        serde_json::from_str(&sidecar.get("/load").await.1).unwrap()
    };
    assert_eq!(load().await["unknown"], "no_engine");
    assert_eq!(load().await["in_flight"], serde_json::Value::Null);

    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 2).await;
    sidecar
        .wait_for_metric("quiesce_engine_in_flight_requests", |n| n == 2.0)
        .await;
    let report = load().await;
    assert_eq!(report["in_flight"], 2, "{report}");
    assert_eq!(report["queued"], 0, "{report}");
    assert_eq!(report["draining"], false, "{report}");
    assert!(
        report["sample_age_ms"].as_u64().unwrap() < 10_000,
        "{report}"
    );
    assert!(report.get("unknown").is_none(), "{report}");

    let drain = common::drain_client(&sidecar.socket, 5.0, 5.0, 1.0);
    sidecar.wait_for_status("/ready", 503).await;
    assert_eq!(load().await["draining"], true);
    drop(drain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_stays_bounded_and_probes_keep_answering() {
    let sidecar = Sidecar::start(&[]).await;
    let mut engine = ScriptedEngine::connect(&sidecar.socket).await;
    engine.report(Phase::Ready, 0).await;
    sidecar.wait_for_status("/ready", 200).await;
    let heartbeat = tokio::spawn(async move {
        loop {
            engine.report(Phase::Ready, 0).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let seen = assault(sidecar.process.pid(), sidecar.http, "/ready", 3000).await;
    heartbeat.abort();
    eprintln!("the sidecar under hostile HTTP: {seen}");
    // Within the server's 256 connections, the sidecar's 64 MiB memory
    // limit, and the kubelet's 1 s probe timeout.
    assert!(seen.fds_max <= seen.fds_before + 256 + 8, "{seen}");
    assert!(seen.rss_max < 64 * 1024, "{seen}");
    assert!(seen.probe_max < Duration::from_secs(1), "{seen}");
    // Nothing changed the drain.
    assert_eq!(sidecar.metric("quiesce_drain_in_progress").await, 0.0);
    let status: serde_json::Value = serde_json::from_str(&sidecar.get("/status").await.1).unwrap();
    assert_eq!(status["drain"], serde_json::Value::Null, "{status}");
}
