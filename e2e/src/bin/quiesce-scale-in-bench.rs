//! `quiesce-scale-in-bench`: how long the operator's idle-first scale-in
//! takes to read the pods' loads, for 3 pods and for 50.
//!
//! A cluster of this machine's size holds a few dozen real pods at most, so
//! the pods here are local: `--pods` real sidecar and simulated-engine
//! pairs on loopback, each sidecar serving `GET /load` as in a pod. The
//! reads are the operator's own ([`read_loads`]: every pod at once, a
//! connection each, 1 s timeout). Prints figures; asserts nothing.
//!
//! `cargo run --release -p quiesce-e2e --bin quiesce-scale-in-bench`

use std::time::{Duration, Instant};

use clap::Parser;
use quiesce_e2e::pair::Pair;
use quiesce_operator::controller::scale_in::{Candidate, read_loads};

#[derive(Parser)]
#[command(about = "Measures how long reading the pods' loads takes before a scale-in")]
struct Args {
    /// Pods (sidecar and engine pairs) to start.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Reads to measure for each size.
    #[arg(long, default_value_t = 20)]
    reads: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut pairs = Vec::new();
    for _ in 0..args.pods {
        let pair = Pair::start().await;
        pair.wait_ready(200).await;
        pairs.push(pair);
    }
    let candidates: Vec<Candidate> = pairs
        .iter()
        .enumerate()
        .map(|(i, pair)| Candidate {
            name: format!("pod-{i}"),
            sidecar: Some(pair.sidecar_http),
        })
        .collect();
    println!(
        "quiesce-scale-in-bench: {} local sidecar+engine pairs, {} reads per size",
        args.pods, args.reads
    );
    for size in [3, args.pods] {
        let size = size.min(candidates.len());
        let mut took = Vec::new();
        let mut unknown = 0;
        for _ in 0..args.reads {
            let started = Instant::now();
            let loads = read_loads(&candidates[..size]).await;
            took.push(started.elapsed());
            unknown += loads.iter().filter(|l| l.load.is_err()).count();
        }
        took.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{size:>3} pods: reading every load took p50 {:.2} ms, max {:.2} ms; unknown loads: {unknown}",
            ms(took[took.len() / 2]),
            ms(took[took.len() - 1])
        );
    }
    for pair in pairs {
        pair.stop().await;
    }
    Ok(())
}
