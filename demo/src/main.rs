//! `quiesce-demo`: a rolling restart under load, three ways to stop a pod
//! side by side, then a scale-in from 3 to 2 pods under each
//! `spec.scaleIn.policy`, with real processes, signals and HTTP
//! (docs/demo.md).
//!
//! Prints progress on stderr, a table on stdout, and writes a timeline SVG.
//! Exits 0 when the comparison ran (whatever its numbers), 1 on a harness
//! error, 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use quiesce_demo::comparison::{self, Progress};
use quiesce_demo::report::{self, Report};
use quiesce_demo::strategy::{DEFAULT_LENGTHS, FixedSleepRecipe, Scenario, Strategy, seconds};
use quiesce_demo::{scale_in, timeline};
use quiesce_e2e::balancer::Policy;
use quiesce_e2e::load::{LengthMix, LoadConfig};
use quiesce_e2e::pod::{PodEvent, project_images};
use quiesce_testkit::bins;

/// Rolling restart of an inference deployment under streaming load, with
/// three shutdown strategies (stock, fixed-sleep, quiesce), run locally
/// with real processes.
#[derive(Debug, Parser)]
#[command(name = "quiesce-demo", version)]
struct Cli {
    /// Replicas of each deployment.
    #[arg(long, default_value_t = defaults().replicas as u32, value_parser = clap::value_parser!(u32).range(1..=8))]
    replicas: u32,
    /// Request arrivals per second (open loop); 0: a closed loop of
    /// --concurrency clients.
    #[arg(long, default_value_t = defaults().load.rate)]
    rate: f64,
    /// Most requests in flight (open loop), or clients (closed loop).
    #[arg(long, default_value_t = defaults().load.concurrency as u32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Request lengths in tokens: WEIGHT:MIN-MAX,... (short chat turns to
    /// long generations).
    #[arg(long, default_value = DEFAULT_LENGTHS)]
    lengths: LengthMix,
    /// Time per output token, in milliseconds.
    #[arg(long, default_value_t = defaults().token_interval.as_secs_f64() * 1000.0)]
    token_interval_ms: f64,
    /// The engine's model load time, in seconds.
    #[arg(long, default_value_t = defaults().engine_startup.as_secs_f64())]
    startup_seconds: f64,
    /// Endpoint propagation delay (the balancer's and quiesce's
    /// drain.propagationSeconds), whole seconds.
    #[arg(long, default_value_t = defaults().propagation_seconds)]
    propagation_seconds: u32,
    /// quiesce's drain.timeoutSeconds: in-flight requests get this long.
    #[arg(long, default_value_t = defaults().drain_timeout_seconds)]
    drain_timeout_seconds: u32,
    /// quiesce's drain.abortGraceSeconds.
    #[arg(long, default_value_t = defaults().abort_grace_seconds)]
    abort_grace_seconds: u32,
    /// quiesce's drain.exitMarginSeconds.
    #[arg(long, default_value_t = defaults().exit_margin_seconds)]
    exit_margin_seconds: u32,
    /// Demo seconds per real-world second, applied to the baselines'
    /// published numbers below.
    #[arg(long, default_value_t = defaults().time_scale)]
    time_scale: f64,
    /// fixed-sleep: preStop sleep, real-world seconds (before --time-scale).
    #[arg(long, default_value_t = defaults().recipe.sleep_seconds)]
    fixed_sleep_seconds: f64,
    /// fixed-sleep: the engine's --shutdown-timeout, real-world seconds.
    #[arg(long, default_value_t = defaults().recipe.shutdown_timeout_seconds)]
    fixed_shutdown_timeout_seconds: f64,
    /// fixed-sleep: terminationGracePeriodSeconds, real-world seconds.
    #[arg(long, default_value_t = defaults().recipe.grace_seconds)]
    fixed_grace_seconds: f64,
    /// stock: terminationGracePeriodSeconds, real-world seconds
    /// (Kubernetes' default).
    #[arg(long, default_value_t = defaults().stock_grace_seconds)]
    stock_grace_seconds: f64,
    /// Do not retry a 503 with Retry-After on another pod.
    #[arg(long)]
    no_retry_rejected: bool,
    /// Retry a refused connection once on another pod (kube-proxy does not).
    #[arg(long)]
    retry_refused: bool,
    /// How the balancer picks a pod.
    #[arg(long, value_enum, default_value_t = PolicyArg::RoundRobin)]
    policy: PolicyArg,
    /// Seed of request lengths and arrival times.
    #[arg(long, default_value_t = defaults().load.seed)]
    seed: u64,
    /// Skip the scale-in comparison (Default against IdleFirst) that
    /// follows the rollouts.
    #[arg(long)]
    no_scale_in: bool,
    /// Strategies to run, in order (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "stock,fixed-sleep,quiesce", value_parser = parse_strategy)]
    strategies: Vec<Strategy>,
    /// Where to write timeline.svg and summary.txt (default:
    /// target/quiesce-demo/ of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The flags' defaults are the scenario's.
fn defaults() -> Scenario {
    Scenario::default()
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyArg {
    RoundRobin,
    LeastOutstanding,
}

fn parse_strategy(name: &str) -> Result<Strategy, String> {
    Strategy::from_name(name)
        .ok_or_else(|| format!("unknown strategy {name:?}: expected stock, fixed-sleep or quiesce"))
}

fn positive(name: &str, value: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        value.is_finite() && value >= 0.0,
        "--{name} must be a finite, non-negative number, got {value}"
    );
    Ok(value)
}

impl Cli {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        anyhow::ensure!(
            !self.strategies.is_empty(),
            "--strategies needs at least one"
        );
        for (i, strategy) in self.strategies.iter().enumerate() {
            anyhow::ensure!(
                !self.strategies[..i].contains(strategy),
                "--strategies names {} twice",
                strategy.name()
            );
        }
        let token_interval = positive("token-interval-ms", self.token_interval_ms)?;
        anyhow::ensure!(token_interval > 0.0, "--token-interval-ms must be above 0");
        Ok(Scenario {
            replicas: self.replicas as usize,
            propagation_seconds: self.propagation_seconds,
            drain_timeout_seconds: self.drain_timeout_seconds,
            abort_grace_seconds: self.abort_grace_seconds,
            exit_margin_seconds: self.exit_margin_seconds,
            token_interval: Duration::from_secs_f64(token_interval / 1000.0),
            engine_startup: Duration::from_secs_f64(positive(
                "startup-seconds",
                self.startup_seconds,
            )?),
            load: LoadConfig {
                rate: positive("rate", self.rate)?,
                concurrency: self.concurrency as usize,
                lengths: self.lengths.clone(),
                seed: self.seed,
                retries: 0,
            },
            time_scale: positive("time-scale", self.time_scale)?,
            recipe: FixedSleepRecipe {
                sleep_seconds: positive("fixed-sleep-seconds", self.fixed_sleep_seconds)?,
                shutdown_timeout_seconds: positive(
                    "fixed-shutdown-timeout-seconds",
                    self.fixed_shutdown_timeout_seconds,
                )?,
                grace_seconds: positive("fixed-grace-seconds", self.fixed_grace_seconds)?,
            },
            stock_grace_seconds: positive("stock-grace-seconds", self.stock_grace_seconds)?,
            retry_rejected: !self.no_retry_rejected,
            retry_refused: self.retry_refused,
            policy: match self.policy {
                PolicyArg::RoundRobin => Policy::RoundRobin,
                PolicyArg::LeastOutstanding => Policy::LeastOutstanding,
            },
        })
    }
}

fn subtitle(scenario: &Scenario) -> String {
    let load = if scenario.load.rate > 0.0 {
        format!("{} requests/s (Poisson)", seconds(scenario.load.rate))
    } else {
        format!("{} clients back to back", scenario.load.concurrency)
    };
    format!(
        "{} replicas, maxSurge 1, maxUnavailable 0 · {load}, streaming, lengths {} tokens at {} ms/token · \
         endpoint propagation {} s · baselines time-scaled ×{}",
        scenario.replicas,
        scenario.load.lengths,
        seconds(scenario.token_interval.as_secs_f64() * 1000.0),
        scenario.propagation_seconds,
        seconds(scenario.time_scale)
    )
}

/// Whether a pod event is worth a progress line.
fn shown(event: &PodEvent) -> bool {
    !matches!(
        event,
        PodEvent::ContainerStarted { .. } | PodEvent::StartupProbePassed { .. }
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quiesce-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let scenario = cli.scenario()?;
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| bins::target_dir().join("quiesce-demo"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating the output directory {}", out.display()))?;
    let out = std::fs::canonicalize(&out).unwrap_or(out);

    let started = Instant::now();
    eprintln!("quiesce-demo: building the sidecar and the engine (once)...");
    let images = project_images();
    eprintln!("quiesce-demo: {}", subtitle(&scenario));
    for strategy in &cli.strategies {
        eprintln!("  {:<12} {}", strategy.name(), scenario.describe(*strategy));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let runs = runtime.block_on(async {
        let (progress, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                match line {
                    Progress::Pod(record) if shown(&record.event) => eprintln!(
                        "[{:6.1}s] {}: {}",
                        record.at.duration_since(started).as_secs_f64(),
                        record.pod,
                        record.event
                    ),
                    Progress::Pod(_) => {}
                    Progress::Note { at, strategy, text } => eprintln!(
                        "[{:6.1}s] {strategy}: {text}",
                        at.duration_since(started).as_secs_f64()
                    ),
                }
            }
        });
        let runs = async {
            let mut runs =
                comparison::run_all(&cli.strategies, &scenario, &images, Some(progress.clone()))
                    .await?;
            if !cli.no_scale_in {
                for policy in scale_in::POLICIES {
                    let progress = Some(progress.clone());
                    runs.push(scale_in::run(policy, &scenario, &images, progress).await?);
                }
            }
            drop(progress);
            Ok::<_, comparison::HarnessError>(runs)
        };
        // The pods' processes run in process groups of their own, out of
        // reach of the terminal's Ctrl-C: stop here instead, and let the
        // runtime's shutdown drop the pods, which kills their processes.
        let runs = tokio::select! {
            runs = runs => runs.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; every pod's processes were killed")),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
        runs
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let runs = runs?;

    let summaries: Vec<_> = runs.iter().map(report::summarize).collect();
    let table = report::table(&summaries);
    print!("{table}");
    let svg = timeline::render(&runs, &summaries, &subtitle(&scenario));
    let svg_path = out.join("timeline.svg");
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let summary_path = out.join("summary.txt");
    std::fs::write(&summary_path, &table)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    if let Some(path) = &cli.json {
        let report = Report {
            strategies: summaries,
        };
        let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
    }
    println!("timeline: {}", svg_path.display());
    println!("ran in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
