//! `quiesce-bench`: how fast the drain reacts, and what the sidecar costs.
//!
//! Prints figures; asserts nothing about them (timing goals belong in a
//! report, not in tests that flake on a busy machine):
//! - drain request → `/ready` 503;
//! - last in-flight completion → preStop client exit;
//! - sidecar RSS idle and under 1,000 probe requests per second;
//! - `/ready` latency p50 and p99 under that load.
//!
//! `cargo run --release -p quiesce-e2e --bin quiesce-bench`

use std::time::{Duration, Instant};

use clap::Parser;
use quiesce_e2e::client::get_status;
use quiesce_e2e::pair::{PROMPT, Pair};
use quiesce_protocol::{
    ClientMessage, DrainRequest, FrameReader, Hello, Role, ServerMessage, write_frame,
};

#[derive(Parser)]
#[command(about = "Measures the drain's reaction times and the sidecar's footprint")]
struct Args {
    /// Drains to measure for each latency.
    #[arg(long, default_value_t = 10)]
    drains: usize,
    /// Probe requests per second for the load figures.
    #[arg(long, default_value_t = 1000)]
    probes_per_second: u64,
    /// Seconds of probe load.
    #[arg(long, default_value_t = 5)]
    probe_seconds: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "quiesce-bench: {} drains per figure, {} probes/s for {} s",
        args.drains, args.probes_per_second, args.probe_seconds
    );

    let mut unready = Vec::new();
    let mut release = Vec::new();
    for _ in 0..args.drains {
        unready.push(drain_to_unready().await?);
        release.push(last_request_to_release().await?);
    }
    report("drain request -> /ready 503", &mut unready);
    report(
        "last in-flight completion -> preStop client exit",
        &mut release,
    );

    let pair = Pair::start().await;
    let sidecar = pair.sidecar.pid();
    // Let start-up allocations settle before reading the idle figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(sidecar)?;
    let (mut latencies, peak) =
        probe_load(&pair, args.probes_per_second, args.probe_seconds).await?;
    println!(
        "{:<50} {:>8.1} MiB",
        "sidecar RSS idle",
        idle as f64 / 1024.0
    );
    println!(
        "{:<50} {:>8.1} MiB ({} probes)",
        format!("sidecar RSS peak at {} probes/s", args.probes_per_second),
        peak as f64 / 1024.0,
        latencies.len()
    );
    report("/ready latency under load", &mut latencies);
    pair.stop().await;
    Ok(())
}

/// Sends a drain request over the socket and polls `/ready` until it fails.
async fn drain_to_unready() -> anyhow::Result<Duration> {
    let pair = Pair::start().await;
    let stream = tokio::net::UnixStream::connect(&pair.socket).await?;
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    write_frame(
        &mut write,
        &ClientMessage::Hello(Hello::new(Role::Drain, "bench")),
    )
    .await?;
    let Some(ServerMessage::Welcome(_)) = reader.read().await? else {
        anyhow::bail!("no welcome");
    };
    let request = DrainRequest {
        propagation: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        abort_grace: Duration::from_secs(1),
    };
    let sent = Instant::now();
    write_frame(&mut write, &ClientMessage::Drain(request)).await?;
    while get_status(pair.sidecar_http, "/ready", PROMPT).await != Some(503) {
        anyhow::ensure!(sent.elapsed() < PROMPT, "/ready never failed");
    }
    let latency = sent.elapsed();
    while let Some(message) = reader.read::<ServerMessage>().await? {
        if let ServerMessage::DrainResult(_) = message {
            break;
        }
    }
    pair.stop().await;
    Ok(latency)
}

/// Streams one request, drains, and times the preStop client's exit after
/// the request's last byte.
async fn last_request_to_release() -> anyhow::Result<Duration> {
    let pair = Pair::start().await;
    let stream = pair.stream(50);
    pair.wait_in_flight(1).await;
    let mut client = pair.drain_client(0.0, 30.0, 5.0);
    let finished = stream.await?;
    let exit = loop {
        if let Some(status) = client.try_exit() {
            break (Instant::now(), status);
        }
        anyhow::ensure!(
            finished.ended.elapsed() < PROMPT,
            "the drain client did not return"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    anyhow::ensure!(exit.1.success(), "drain client failed: {}", client.logs());
    pair.stop().await;
    Ok(exit.0.saturating_duration_since(finished.ended))
}

/// Probes `/ready` at `rate` per second (a new connection each, as the
/// kubelet does) for `seconds`; returns the latencies and the peak RSS.
async fn probe_load(pair: &Pair, rate: u64, seconds: u64) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending = tokio::task::JoinSet::new();
    let mut latencies = Vec::new();
    let mut peak = 0;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut sampled = Instant::now();
    while Instant::now() < end {
        ticker.tick().await;
        let addr = pair.sidecar_http;
        pending.spawn(async move {
            let start = Instant::now();
            get_status(addr, "/ready", PROMPT)
                .await
                .map(|_| start.elapsed())
        });
        while let Some(done) = pending.try_join_next() {
            latencies.extend(done?);
        }
        if sampled.elapsed() >= Duration::from_millis(100) {
            peak = peak.max(rss_kib(pair.sidecar.pid())?);
            sampled = Instant::now();
        }
    }
    while let Some(done) = pending.join_next().await {
        latencies.extend(done?);
    }
    Ok((latencies, peak.max(rss_kib(pair.sidecar.pid())?)))
}

fn rss_kib(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<50} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
}
