//! `quiesce-adapter-bench`: how fast the sidecar's HTTP adapters end a
//! drain, and what their polling costs, against the simulated engine
//! playing vLLM, SGLang and TensorRT-LLM (`--personality`), with the
//! sidecar's production settings (a look a second, every 250 ms while a
//! drain waits, 3 idle looks in a row to end it).
//!
//! For each adapter, as the operator renders its engine:
//! - engine idle → drain returned: from the last byte of the last request
//!   to the preStop client's exit, median and max over `--drains` drains
//!   (two requests each, of 1 s and 0.3 s, both received before the drain
//!   starts with no propagation delay);
//! - the polling cost: the HTTP requests the engine serves the sidecar per
//!   second, idle and while a drain waits;
//! - with the metrics missing: how long a drain of an idle engine lasts,
//!   and why the sidecar says it cannot see the work.
//!
//! Prints figures; asserts nothing.
//!
//! `cargo run --release -p quiesce-e2e --bin quiesce-adapter-bench`

use std::time::{Duration, Instant};

use clap::Parser;
use quiesce_e2e::pair::{PROMPT, status_json};
use quiesce_e2e::stock_pod::{
    Flavor, SGLANG, SGLANG_WITHOUT_METRICS, StockPod, TRTLLM, TRTLLM_WITHOUT_PERF_METRICS, VLLM,
    VLLM_WITHOUT_LOG_STATS,
};
use quiesce_testkit::http;

#[derive(Parser)]
#[command(about = "Measures the stock-engine adapters' drain delay and polling cost")]
struct Args {
    /// Drains per adapter for the delay figures.
    #[arg(long, default_value_t = 20)]
    drains: usize,
    /// Seconds of polling to count, idle and draining.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// The sidecar's production heartbeat: one look a second.
const SIDECAR: &[&str] = &["--heartbeat-interval-ms", "1000"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let adapters = [
        (VLLM, VLLM_WITHOUT_LOG_STATS),
        (SGLANG, SGLANG_WITHOUT_METRICS),
        (TRTLLM, TRTLLM_WITHOUT_PERF_METRICS),
    ];
    println!(
        "quiesce-adapter-bench: {} drains per adapter, {} s of polling counted",
        args.drains, args.seconds
    );
    println!(
        "{:<8} {:>22} {:>10} {:>14} {:>18}   with the metrics missing",
        "adapter", "idle -> returned (p50)", "(max)", "polls idle", "polls draining"
    );
    for (flavor, blind) in adapters {
        let mut delays = Vec::new();
        for _ in 0..args.drains {
            delays.push(idle_to_return(flavor).await?);
        }
        delays.sort_by(f64::total_cmp);
        let (idle, draining) = polling_cost(flavor, args.seconds).await?;
        let blind = blind_drain(blind).await?;
        println!(
            "{:<8} {:>22} {:>10} {:>10.1} /s {:>14.1} /s   {blind}",
            flavor.adapter,
            shown(delays[delays.len() / 2]),
            shown(*delays.last().expect("at least one drain")),
            idle,
            draining
        );
    }
    Ok(())
}

fn shown(delay: f64) -> String {
    format!("{delay:.2} s")
}

/// Seconds from the engine's last byte to the drain client's exit
/// (negative: the drain returned first).
async fn idle_to_return(flavor: Flavor) -> anyhow::Result<f64> {
    let pod = StockPod::start(flavor, &[], SIDECAR).await;
    let long = pod.stream(100);
    let short = pod.stream(30);
    let deadline = Instant::now() + PROMPT;
    while pod.engine_requests("/v1/completions").await < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the requests never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut client = pod.drain_client(0.0, 30.0, 2.0);
    client
        .wait(PROMPT)
        .await
        .ok_or_else(|| anyhow::anyhow!("the drain never returned"))?;
    let returned = Instant::now();
    let mut pod = pod;
    // The kubelet's SIGTERM, for an engine whose drain ended early.
    pod.engine.signal(nix::sys::signal::Signal::SIGTERM);
    let ends = [long.await?.ended, short.await?.ended];
    let idle = ends.into_iter().max().expect("two requests");
    pod.stop().await;
    Ok(if returned >= idle {
        returned.duration_since(idle).as_secs_f64()
    } else {
        -idle.duration_since(returned).as_secs_f64()
    })
}

/// The engine's HTTP requests per second from the sidecar, idle and while a
/// drain waits for a long request.
async fn polling_cost(flavor: Flavor, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let pod = StockPod::start(flavor, &[], SIDECAR).await;
    let window = Duration::from_secs(seconds);
    let before = polls(&pod).await;
    tokio::time::sleep(window).await;
    let idle = (polls(&pod).await - before) as f64 / window.as_secs_f64();
    // Long enough to outlast the window: 100 tokens a second.
    let _stream = pod.stream(u32::try_from(seconds * 100 + 200)?);
    let mut client = pod.drain_client(0.0, 600.0, 1.0);
    let before = polls(&pod).await;
    tokio::time::sleep(window).await;
    let draining = (polls(&pod).await - before) as f64 / window.as_secs_f64();
    client.wait(PROMPT * 6).await;
    pod.stop().await;
    Ok((idle, draining))
}

/// What the sidecar asked of the engine so far.
async fn polls(pod: &StockPod) -> u64 {
    let stats = http::get(pod.engine_http, "/sim/stats")
        .await
        .expect("GET")
        .json();
    let requests = stats["requests"].as_object().cloned().unwrap_or_default();
    requests
        .iter()
        .filter(|(path, _)| !matches!(path.as_str(), "/sim/stats" | "/v1/completions"))
        .filter_map(|(_, count)| count.as_u64())
        .sum()
}

/// A drain of an idle engine whose work the sidecar cannot see, with a 3 s
/// timeout.
async fn blind_drain(flavor: Flavor) -> anyhow::Result<String> {
    let pod = StockPod::start(flavor, &[], SIDECAR).await;
    let why = status_json(pod.sidecar_http).await["work_unknown"].clone();
    let started = Instant::now();
    let mut client = pod.drain_client(0.0, 3.0, 1.0);
    client.wait(PROMPT).await;
    let took = started.elapsed();
    pod.stop().await;
    Ok(format!(
        "an idle drain lasts {:.1} s of a 3 s timeout; work_unknown: {why}",
        took.as_secs_f64()
    ))
}
