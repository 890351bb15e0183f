//! The real `quiesce-engine` binary under a sidecar (`QUIESCE_SOCKET`): it
//! reports its status, keeps admitting during propagation, follows Drain and
//! Abort, and after a drain waits for the kubelet's SIGTERM to exit. The
//! sidecar here is a fake speaking the real protocol crate.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Ask, Engine, FAST, SLOW, get, request, spawn_request};
use nix::sys::signal::Signal;
use quiesce_protocol::{
    Abort, ClientMessage, DrainRequest, EngineStatus, FrameReader, Phase, Role, ServerMessage,
    Welcome, write_frame,
};
use quiesce_sim::verify::Outcome;
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::watch;

/// A sidecar that accepts one engine connection.
struct FakeSidecar {
    path: PathBuf,
    listener: UnixListener,
}

/// The accepted engine connection.
struct EngineConnection {
    write: OwnedWriteHalf,
    status: watch::Receiver<Option<EngineStatus>>,
}

impl FakeSidecar {
    fn listen() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "quiesce-engine-test-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the fake sidecar");
        Self { path, listener }
    }

    fn socket(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    async fn accept(&self) -> EngineConnection {
        let (stream, _) = tokio::time::timeout(SLOW, self.listener.accept())
            .await
            .expect("the engine connects")
            .expect("accept");
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader::new(read);
        match reader.read::<ClientMessage>().await {
            Ok(Some(ClientMessage::Hello(hello))) => assert_eq!(hello.role, Role::Engine),
            other => panic!("expected hello, got {other:?}"),
        }
        let welcome = Welcome {
            version: 1,
            heartbeat_interval: Duration::from_millis(500),
            sidecar_version: "test".into(),
        };
        write_frame(&mut write, &ServerMessage::Welcome(welcome))
            .await
            .expect("welcome");
        let (status_tx, status) = watch::channel(None);
        tokio::spawn(async move {
            while let Ok(Some(message)) = reader.read::<ClientMessage>().await {
                match message {
                    ClientMessage::Status(status) => {
                        status_tx.send_replace(Some(status));
                    }
                    other => panic!("the engine sent {other:?}"),
                }
            }
        });
        EngineConnection { write, status }
    }
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl EngineConnection {
    async fn send(&mut self, message: ServerMessage) {
        write_frame(&mut self.write, &message)
            .await
            .expect("send to the engine");
    }

    async fn wait_phase(&mut self, phase: Phase) {
        let reached = tokio::time::timeout(
            SLOW,
            self.status
                .wait_for(|s| s.is_some_and(|s| s.phase == phase)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "the engine never reported {phase}; last {:?}",
            *self.status.borrow()
        );
    }
}

async fn engine_under(sidecar: &FakeSidecar) -> Engine {
    // --shutdown-timeout 0: only the sidecar's durations may govern here.
    Engine::start_with_env(&FAST, &[("QUIESCE_SOCKET", sidecar.socket())]).await
}

#[tokio::test]
async fn follows_the_sidecar_drain_then_exits_on_sigterm() {
    let sidecar = FakeSidecar::listen();
    let mut engine = engine_under(&sidecar).await;
    let mut connection = sidecar.accept().await;
    connection.wait_phase(Phase::Ready).await;
    let mut stream = spawn_request(engine.addr, Ask::stream("long", 150));
    stream.wait_tokens(1).await;

    let propagation = Duration::from_millis(1000);
    let drained_at = Instant::now();
    connection
        .send(ServerMessage::Drain(DrainRequest {
            propagation,
            timeout: Duration::from_secs(20),
            abort_grace: Duration::from_secs(1),
        }))
        .await;
    connection.wait_phase(Phase::Draining).await;
    assert_eq!(get(engine.addr, "/health").await.unwrap().status, 503);
    // During propagation the engine still admits (load balancers still
    // route to it); then it rejects. Every request is one or the other.
    let mut admitted = 0;
    let rejected_at = loop {
        match request(engine.addr, &Ask::whole("during the drain", 1))
            .await
            .outcome
        {
            Ok(Outcome::Completed { tokens: 1 }) => admitted += 1,
            Ok(Outcome::Rejected { code }) if code == "shutting_down" => {
                break drained_at.elapsed();
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        assert!(drained_at.elapsed() < SLOW, "never started rejecting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(admitted >= 1, "nothing was admitted during propagation");
    assert!(
        rejected_at >= propagation - Duration::from_millis(50),
        "rejected after {rejected_at:?}"
    );

    assert_eq!(
        stream.finish().await.outcome,
        Ok(Outcome::Completed { tokens: 150 })
    );
    connection.wait_phase(Phase::Stopped).await;
    // Stopped, but the kubelet has not sent SIGTERM yet: the engine waits.
    assert!(engine.is_running(), "the engine exited before its SIGTERM");
    assert_eq!(
        request(engine.addr, &Ask::stream("after the drain", 2))
            .await
            .outcome,
        Ok(Outcome::Rejected {
            code: "shutting_down".into()
        })
    );

    let signalled = Instant::now();
    engine.signal(Signal::SIGTERM);
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "a stopped engine exits at once"
    );
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn obeys_the_sidecar_abort() {
    let sidecar = FakeSidecar::listen();
    let mut engine = engine_under(&sidecar).await;
    let mut connection = sidecar.accept().await;
    connection.wait_phase(Phase::Ready).await;
    let mut stream = spawn_request(engine.addr, Ask::stream("long", 3000));
    stream.wait_tokens(1).await;

    connection
        .send(ServerMessage::Drain(DrainRequest {
            propagation: Duration::ZERO,
            timeout: Duration::from_secs(60),
            abort_grace: Duration::from_secs(5),
        }))
        .await;
    connection.wait_phase(Phase::Draining).await;
    let aborted_at = Instant::now();
    connection
        .send(ServerMessage::Abort(Abort {
            grace: Duration::from_secs(2),
        }))
        .await;
    let record = stream.finish().await;
    assert!(
        matches!(record.outcome, Ok(Outcome::Aborted { .. })),
        "{:?}",
        record.outcome
    );
    assert!(record.ended - aborted_at < Duration::from_secs(3));
    connection.wait_phase(Phase::Stopped).await;

    engine.signal(Signal::SIGTERM);
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&["the sidecar asks for an abort"]);
}
