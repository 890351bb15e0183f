//! Measures the simulated engine: how closely streamed tokens follow
//! `--token-interval-ms`, and how long an idle engine takes from SIGTERM to
//! exit. Prints the figures; asserts nothing.
//!
//! ```sh
//! cargo build -p quiesce-sim               # the engine binary it runs
//! cargo run -p quiesce-sim --example pacing [-- STREAMS TOKENS INTERVAL_MS]
//! ```
//!
//! Defaults: 8 concurrent streams of 200 tokens at 10 ms, one worker. The
//! engine binary is `quiesce-engine` next to the example's target directory,
//! or `QUIESCE_ENGINE_BIN`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Ask, Engine, SLOW, spawn_request};
use nix::sys::signal::Signal;
use quiesce_sim::verify::Outcome;

fn arg(position: usize, default: u32) -> u32 {
    std::env::args()
        .nth(position)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let streams = arg(1, 8);
    let tokens = arg(2, 200);
    let interval_ms = arg(3, 10);
    println!("engine: {}", common::engine_binary().display());

    // Pacing: gaps between consecutive tokens of each stream, as the client
    // sees them (HTTP, SSE parsing and verification included).
    let interval = interval_ms.to_string();
    let engine = Engine::start(&[
        "--startup-seconds",
        "0.2",
        "--token-interval-ms",
        &interval,
        "--workers",
        "1",
    ])
    .await;
    engine.wait_ready().await;
    let started = Instant::now();
    let requests: Vec<_> = (0..streams)
        .map(|i| spawn_request(engine.addr, Ask::stream(&format!("pacing {i}"), tokens)))
        .collect();
    let mut gaps = Vec::new();
    for request in requests {
        let record = request.finish().await;
        assert_eq!(
            record.outcome,
            Ok(Outcome::Completed { tokens }),
            "a stream failed"
        );
        gaps.extend(record.token_times.windows(2).map(|w| millis(w[1] - w[0])));
    }
    let elapsed = started.elapsed();
    let target = f64::from(interval_ms);
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let mut deviations: Vec<f64> = gaps.iter().map(|g| (g - target).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let mean_deviation = deviations.iter().sum::<f64>() / deviations.len() as f64;
    println!(
        "pacing: {streams} streams x {tokens} tokens at {interval_ms} ms: {} gaps, mean gap {mean_gap:.3} ms, \
         |gap - interval| mean {mean_deviation:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
         {:.0} tokens/s overall",
        gaps.len(),
        percentile(&deviations, 50.0),
        percentile(&deviations, 99.0),
        deviations.last().copied().unwrap_or(f64::NAN),
        f64::from(streams * tokens) / elapsed.as_secs_f64(),
    );
    let mut engine = engine;
    engine.signal(Signal::SIGTERM);
    engine.wait_exit(SLOW).await;

    // Idle shutdown: SIGTERM to exit (workers reaped), for 0, 1 and 2 workers.
    for workers in ["0", "1", "2"] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut engine =
                Engine::start(&["--startup-seconds", "0.1", "--workers", workers]).await;
            engine.wait_ready().await;
            let signalled = Instant::now();
            engine.signal(Signal::SIGTERM);
            let status = engine.wait_exit(SLOW).await;
            times.push(millis(signalled.elapsed()));
            assert!(status.success(), "the engine failed: {status}");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "idle shutdown with {workers} worker(s), 5 runs: median {:.1} ms, max {:.1} ms (SIGTERM to exit, polled every 1 ms)",
            percentile(&times, 50.0),
            times.last().copied().unwrap_or(f64::NAN),
        );
    }
}
