//! Shutdown of the real `quiesce-engine` binary without a sidecar: SIGTERM
//! drains, the timeout aborts explicitly, a second signal aborts at once,
//! new requests are rejected, KV transfers hold the drain open. Every
//! request's outcome is checked, and no process is left behind.

mod common;

use std::time::{Duration, Instant};

use common::{
    Ask, Engine, FAST, InFlight, RUNNING, SLOW, get, metric, request, spawn_request, wait_metric,
};
use nix::sys::signal::Signal;
use quiesce_sim::verify::Outcome;

/// Starts an engine with fast timing plus `extra` flags, and waits until it
/// is ready.
async fn ready_engine(extra: &[&str]) -> Engine {
    let mut args = FAST.to_vec();
    args.extend(extra);
    let engine = Engine::start(&args).await;
    engine.wait_ready().await;
    engine
}

/// Starts `n` streams of `tokens` tokens and waits until each has produced
/// its first token (they are in flight, not queued).
async fn streams_in_flight(engine: &Engine, n: usize, tokens: u32) -> Vec<InFlight> {
    let mut streams = Vec::new();
    for i in 0..n {
        streams.push(spawn_request(
            engine.addr,
            Ask::stream(&format!("stream {i}"), tokens),
        ));
    }
    for stream in &mut streams {
        stream.wait_tokens(1).await;
    }
    streams
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_and_rejects_new_requests() {
    let mut engine = ready_engine(&["--shutdown-timeout", "20"]).await;
    let streams = streams_in_flight(&engine, 3, 60).await;
    let whole = spawn_request(engine.addr, Ask::whole("whole", 40));
    wait_metric(engine.addr, RUNNING, 4.0).await;

    engine.signal(Signal::SIGTERM);
    engine.wait_phase("draining").await;
    // Rejected before any work: 503, Retry-After, OpenAI body.
    let late = common::post(
        engine.addr,
        "/v1/completions",
        &serde_json::json!({"prompt": "late"}),
    )
    .await;
    assert_eq!(late.status, 503);
    assert_eq!(late.header(hyper::header::RETRY_AFTER), Some("1"));
    let body = late.json();
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    assert_eq!(
        request(engine.addr, &Ask::chat("late chat", 5, true))
            .await
            .outcome,
        Ok(Outcome::Rejected {
            code: "shutting_down".into()
        })
    );
    assert_eq!(get(engine.addr, "/health").await.unwrap().status, 503);

    let mut last_end = Instant::now();
    for stream in streams {
        let record = stream.finish().await;
        assert_eq!(record.outcome, Ok(Outcome::Completed { tokens: 60 }));
        last_end = last_end.max(record.ended);
    }
    assert_eq!(
        whole.finish().await.outcome,
        Ok(Outcome::Completed { tokens: 40 })
    );
    let status = engine.wait_exit(SLOW).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", engine.stderr());
    assert!(
        last_end.elapsed() < SLOW,
        "the drain ended as soon as the work did, not at the timeout"
    );
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn shutdown_timeout_zero_aborts_at_once_with_abort_responses() {
    // --shutdown-timeout defaults to 0, as in vLLM.
    let mut engine = ready_engine(&[]).await;
    let streams = streams_in_flight(&engine, 2, 2000).await;
    let mut chat = spawn_request(engine.addr, Ask::chat("chat", 2000, true));
    chat.wait_tokens(1).await;
    let whole = spawn_request(engine.addr, Ask::whole("whole", 2000));
    // The non-streaming request is in flight once the gauge counts it.
    wait_metric(engine.addr, RUNNING, 4.0).await;

    let signalled = Instant::now();
    engine.signal(Signal::SIGTERM);
    for stream in streams.into_iter().chain([chat]) {
        let record = stream.finish().await;
        assert!(
            matches!(record.outcome, Ok(Outcome::Aborted { tokens }) if tokens >= 1),
            "{:?}",
            record.outcome
        );
    }
    assert_eq!(
        whole.finish().await.outcome,
        Ok(Outcome::Aborted { tokens: 0 })
    );
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "abort at once took {took:?}");
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn a_timeout_shorter_than_the_stream_ends_it_with_an_abort_chunk() {
    let mut engine = ready_engine(&["--shutdown-timeout", "0.3"]).await;
    let mut streams = streams_in_flight(&engine, 2, 1000).await;
    let mut short = spawn_request(engine.addr, Ask::stream("short", 5));
    short.wait_tokens(1).await;
    streams[0].wait_tokens(3).await;

    let signalled = Instant::now();
    engine.signal(Signal::SIGTERM);
    // The short stream fits in the timeout; the long ones do not.
    assert_eq!(
        short.finish().await.outcome,
        Ok(Outcome::Completed { tokens: 5 })
    );
    for stream in streams {
        let record = stream.finish().await;
        let Ok(Outcome::Aborted { tokens }) = record.outcome else {
            panic!("expected an abort, got {:?}", record.outcome);
        };
        assert!((3..1000).contains(&tokens));
        let at = record.ended - signalled;
        assert!(
            at >= Duration::from_millis(250),
            "aborted after {at:?}, before the timeout"
        );
        assert!(at < SLOW, "aborted after {at:?}");
    }
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn a_second_signal_aborts_at_once() {
    let mut engine = ready_engine(&["--shutdown-timeout", "60"]).await;
    let streams = streams_in_flight(&engine, 2, 3000).await;

    engine.signal(Signal::SIGTERM);
    // Standard signals do not queue: wait until the first one was handled
    // before sending the second.
    engine.wait_phase("draining").await;
    let second = Instant::now();
    engine.signal(Signal::SIGINT);
    for stream in streams {
        let record = stream.finish().await;
        assert!(
            matches!(record.outcome, Ok(Outcome::Aborted { .. })),
            "{:?}",
            record.outcome
        );
    }
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the second signal took {took:?} to end the engine"
    );
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&["second signal: aborting in-flight requests"]);
}

#[tokio::test]
async fn kv_transfers_keep_the_drain_open() {
    let mut engine = ready_engine(&["--kv-transfer-ms", "700", "--shutdown-timeout", "20"]).await;
    let record = request(engine.addr, &Ask::whole("prefill", 3)).await;
    assert_eq!(record.outcome, Ok(Outcome::Completed { tokens: 3 }));
    let completed = record.ended;
    assert_eq!(
        metric(engine.addr, "quiesce_engine_kv_transfers").await,
        Some(1.0)
    );

    engine.signal(Signal::SIGTERM);
    engine.wait_phase("draining").await;
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    let held = completed.elapsed();
    assert!(
        held >= Duration::from_millis(650),
        "exited {held:?} after the request, before its KV transfer ended"
    );
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn an_abort_cancels_pending_kv_transfers() {
    let mut engine =
        ready_engine(&["--kv-transfer-ms", "60000", "--shutdown-timeout", "0.2"]).await;
    let record = request(engine.addr, &Ask::whole("prefill", 2)).await;
    assert_eq!(record.outcome, Ok(Outcome::Completed { tokens: 2 }));
    let signalled = Instant::now();
    engine.signal(Signal::SIGTERM);
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    assert!(signalled.elapsed() < SLOW);
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn an_idle_engine_exits_at_once() {
    let mut engine = ready_engine(&["--shutdown-timeout", "30", "--workers", "2"]).await;
    let signalled = Instant::now();
    engine.signal(Signal::SIGTERM);
    assert_eq!(engine.wait_exit(SLOW).await.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "an idle engine took {took:?} to exit"
    );
    engine.assert_no_survivors();
    assert_eq!(engine.records_with("worker reaped").len(), 2);
    engine.assert_clean_stderr(&[]);
}
