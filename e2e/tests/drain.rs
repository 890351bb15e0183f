//! The drain across real processes: the sidecar, the simulated engine (the
//! SDK's reference integration) and the preStop drain client, over the real
//! socket, with real HTTP streams and real signals.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use quiesce_e2e::client::{Ask, Classified, complete};
use quiesce_e2e::pair::{PROMPT, Pair, spawn_engine, spawn_sidecar};
use quiesce_testkit::bins;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_right_after_the_last_request() {
    let pod = Pair::start().await;
    // 150 tokens at 10 ms: about 1.5 s of streaming.
    let stream = pod.stream(150);
    pod.wait_in_flight(1).await;
    let requested = Instant::now();
    let mut client = pod.drain_client(0.3, 60.0, 5.0);
    pod.wait_ready(503).await;
    let unready_after = requested.elapsed();

    // After the propagation delay, new requests are refused before any work.
    let finished = stream.await.unwrap();
    let late = complete(pod.engine_http, &Ask::stream("late", 5)).await;
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    let returned = Instant::now();

    assert_eq!(finished.outcome, Classified::Completed { tokens: 150 });
    assert_eq!(late.outcome, Classified::Rejected);
    assert!(status.success(), "{}", client.logs());
    assert!(client.logs().contains("drained after"), "{}", client.logs());
    let after_last = returned.duration_since(finished.ended);
    assert!(
        after_last < Duration::from_secs(3),
        "returned {after_last:?} after the last request ended"
    );
    assert!(
        requested.elapsed() < Duration::from_secs(20),
        "waited for the timeout"
    );
    assert!(
        unready_after < Duration::from_secs(3),
        "/ready failed only after {unready_after:?}"
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_engine_drains_in_the_propagation_delay() {
    let pod = Pair::start().await;
    let requested = Instant::now();
    let mut client = pod.drain_client(0.8, 60.0, 5.0);
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    let took = requested.elapsed();
    assert!(status.success());
    assert!(client.logs().contains("drained after"), "{}", client.logs());
    assert!(
        took >= Duration::from_millis(800),
        "returned before the propagation delay: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_aborts_explicitly_and_the_engine_exits() {
    let pod = Pair::start().await;
    // 2000 tokens at 10 ms would take 20 s; the drain allows 1 s.
    let long = pod.stream(2000);
    let short = pod.stream(20);
    pod.wait_in_flight(2).await;
    let mut client = pod.drain_client(0.2, 1.0, 2.0);
    let long = long.await.unwrap();
    let short = short.await.unwrap();
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    assert!(status.success());
    assert_eq!(short.outcome, Classified::Completed { tokens: 20 });
    let Classified::Aborted { tokens } = long.outcome else {
        panic!("{:?}", long.outcome)
    };
    assert!(
        tokens > 0 && tokens < 2000,
        "aborted after {tokens} verified tokens"
    );
    assert!(client.logs().contains("aborted after"), "{}", client.logs());
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_drain_ends_the_drain_at_once() {
    let mut pod = Pair::start().await;
    let stream = pod.stream(1000);
    pod.wait_in_flight(1).await;
    let mut client = pod.drain_client(0.0, 60.0, 5.0);
    pod.wait_ready(503).await;
    pod.engine.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    assert!(status.success());
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
    assert!(client.logs().contains("engine_lost"), "{}", client.logs());
    // The killed engine's stream is a failure, and the harness sees it as one.
    assert!(matches!(
        stream.await.unwrap().outcome,
        Classified::Failed(_)
    ));
    pod.engine.wait(PROMPT).await.expect("killed");
    // SIGKILL reaches the engine only: its worker notices and exits by itself.
    let deadline = Instant::now() + PROMPT;
    while !pod.engine.survivors().is_empty() {
        assert!(
            Instant::now() < deadline,
            "orphans: {:?}",
            pod.engine.survivors()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pod.sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        pod.sidecar.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_mid_drain_leaves_the_engine_draining_on_its_own() {
    let mut pod = Pair::start().await;
    // About 2 s of streaming, well within the 30 s drain timeout.
    let stream = pod.stream(200);
    pod.wait_in_flight(1).await;
    let mut client = pod.drain_client(0.2, 30.0, 5.0);
    pod.wait_ready(503).await;
    pod.sidecar.signal(Signal::SIGKILL);
    let status = client.wait(PROMPT).await.expect("the drain client returns");
    assert!(status.success());
    // The kubelet now sends SIGTERM: the engine keeps draining (the first
    // signal does not abort) and exits once the stream is complete.
    pod.engine.signal(Signal::SIGTERM);
    let finished = stream.await.unwrap();
    assert_eq!(finished.outcome, Classified::Completed { tokens: 200 });
    let exit = pod
        .engine
        .wait(PROMPT)
        .await
        .expect("the engine exits after its drain");
    assert_eq!(exit.code(), Some(0), "{}", pod.engine.logs());
    assert_eq!(pod.engine.survivors(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reports_a_version_the_sidecar_refuses() {
    use quiesce_protocol::{ClientMessage, FrameReader, ProtocolError, ServerMessage, write_frame};
    // A sidecar from the future, which speaks only version 2.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("future.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let mut program = Command::new(bins::engine());
    program.env("QUIESCE_SOCKET", &socket);
    let (mut engine, _) = spawn_engine(program, &["--workers", "0"]).await;
    let (stream, _) = tokio::time::timeout(PROMPT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (read, mut write) = stream.into_split();
    let hello = FrameReader::new(read)
        .read::<ClientMessage>()
        .await
        .unwrap();
    let Some(ClientMessage::Hello(hello)) = hello else {
        panic!("{hello:?}")
    };
    assert_eq!(hello.versions, [1]);
    let refusal = ProtocolError::unsupported_version(&hello.versions);
    write_frame(&mut write, &ServerMessage::Error(refusal))
        .await
        .unwrap();
    let line = engine
        .wait_for_line("unsupported_version", PROMPT)
        .await
        .unwrap();
    assert!(line.contains("refused"), "{line}");
    engine.signal(Signal::SIGTERM);
    assert_eq!(engine.wait(PROMPT).await.and_then(|s| s.code()), Some(0));
}

/// Starts a new sidecar on the pod's socket, as the kubelet restarts a
/// crashed native sidecar.
async fn restart_sidecar(pair: &mut Pair) {
    pair.sidecar.signal(Signal::SIGKILL);
    pair.sidecar.wait(PROMPT).await.expect("killed");
    let (sidecar, http) = spawn_sidecar(Command::new(bins::sidecar()), &pair.socket, &[]).await;
    pair.sidecar = sidecar;
    pair.sidecar_http = http;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reconnects_to_a_restarted_sidecar() {
    let mut pair = Pair::start().await;
    restart_sidecar(&mut pair).await;
    assert!(
        pair.sidecar.logs().contains("replacing a stale file"),
        "{}",
        pair.sidecar.logs()
    );
    // The engine finds the new sidecar within its reconnect back-off (5 s at most).
    pair.wait_ready(200).await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_adopts_the_drain_in_progress() {
    let mut pair = Pair::start().await;
    let stream = pair.stream(300);
    pair.wait_in_flight(1).await;
    // SIGTERM straight to the engine (no preStop): it drains by itself.
    pair.engine.signal(Signal::SIGTERM);
    restart_sidecar(&mut pair).await;
    let deadline = Instant::now() + PROMPT;
    loop {
        let status = quiesce_e2e::pair::status_json(pair.sidecar_http).await;
        if status["phase"] == "draining" {
            assert_eq!(status["ready"], false);
            break;
        }
        assert!(Instant::now() < deadline, "never saw the drain: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pair.ready().await, Some(503));
    assert_eq!(
        stream.await.unwrap().outcome,
        Classified::Completed { tokens: 300 }
    );
    let exit = pair
        .engine
        .wait(PROMPT)
        .await
        .expect("the engine exits after its drain");
    assert_eq!(exit.code(), Some(0));
    pair.sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        pair.sidecar.wait(PROMPT).await.and_then(|s| s.code()),
        Some(0)
    );
}
