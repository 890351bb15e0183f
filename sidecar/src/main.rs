//! `quiesce-sidecar`: `serve` runs the sidecar, `drain` is the preStop hook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use quiesce_protocol::contract::{DEFAULT_HEALTH_PATH, DEFAULT_SIDECAR_PORT};
use quiesce_protocol::{DEFAULT_HEARTBEAT_INTERVAL, DrainRequest, SOCKET_ENV};
use quiesce_sidecar::{coordinator, drain_client, http, install, poller, socket};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(
    version,
    about = "Drains an inference engine before Kubernetes stops it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: the socket for the engine and the preStop hook, and
    /// the HTTP endpoints /live, /ready, /metrics and /status.
    // A flag given twice takes its last value, so wrappers can append overrides.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Drain the engine and wait until it is done (the engine's preStop hook).
    Drain(DrainArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Unix socket to listen on, in a volume shared with the engine.
    #[arg(long, env = SOCKET_ENV)]
    socket: PathBuf,
    /// Address of the HTTP endpoints.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_SIDECAR_PORT)))]
    listen: SocketAddr,
    /// Copy this executable into DIR, for the engine's preStop hook.
    #[arg(long, value_name = "DIR")]
    install_dir: Option<PathBuf>,
    /// How the sidecar follows the engine.
    #[arg(long, value_enum, default_value_t = Adapter::Protocol)]
    adapter: Adapter,
    /// The engine's HTTP address inside the pod, for the vllm, sglang and
    /// http adapters.
    #[arg(long, value_name = "http://IP:PORT", required_if_eq_any = [("adapter", "vllm"), ("adapter", "sglang"), ("adapter", "trtllm"), ("adapter", "http")])]
    engine_url: Option<String>,
    /// The engine's health endpoint (stock engines).
    #[arg(long, default_value = DEFAULT_HEALTH_PATH)]
    health_path: String,
    /// The engine's Prometheus endpoint. Default: /metrics for vllm and
    /// sglang, /prometheus/metrics for trtllm.
    #[arg(long)]
    metrics_path: Option<String>,
    /// Stock engines: how long one request to the engine may take
    /// (SGLang's /health takes over a second by design).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    poll_timeout_ms: u64,
    /// Stock engines: time between two looks while a drain waits for the
    /// engine to be idle.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    drain_poll_interval_ms: u64,
    /// Stock engines: idle looks in a row, after admission stopped, that end
    /// a drain.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    idle_samples: u32,
    /// Stock engines: how long /health may fail while no drain was asked
    /// before the engine counts as dead and /live fails.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    unhealthy_grace_seconds: Duration,
    /// How often the engine must report, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_INTERVAL.as_millis() as u64, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    heartbeat_interval_ms: u64,
    /// On SIGTERM, how long to wait at most for a drain still in progress.
    #[arg(long, default_value = "3600", value_parser = parse_seconds)]
    max_exit_wait_seconds: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Adapter {
    /// The engine speaks the quiesce protocol on the socket.
    Protocol,
    /// A stock vLLM: health, vllm:num_requests_* metrics and /load over HTTP.
    Vllm,
    /// A stock SGLang: health, /v1/loads and its metrics over HTTP.
    Sglang,
    /// A stock trtllm-serve: health and /prometheus/metrics over HTTP.
    Trtllm,
    /// Any HTTP server: health only.
    Http,
}

impl Adapter {
    fn stock(self) -> Option<poller::StockEngine> {
        match self {
            Self::Protocol => None,
            Self::Vllm => Some(poller::StockEngine::Vllm),
            Self::Sglang => Some(poller::StockEngine::Sglang),
            Self::Trtllm => Some(poller::StockEngine::Trtllm),
            Self::Http => Some(poller::StockEngine::Http),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct DrainArgs {
    /// The sidecar's Unix socket.
    #[arg(long, env = SOCKET_ENV)]
    socket: PathBuf,
    /// Seconds the engine keeps admitting requests while load balancers catch up.
    #[arg(long, value_parser = parse_seconds)]
    propagation_seconds: Duration,
    /// Seconds in-flight requests get to finish, after the propagation delay.
    #[arg(long, value_parser = parse_seconds)]
    timeout_seconds: Duration,
    /// Seconds aborted requests get to receive their abort responses.
    #[arg(long, value_parser = parse_seconds)]
    abort_grace_seconds: Duration,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} must be a non-negative number of seconds"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match cli.command {
        Command::Drain(args) => {
            let request = DrainRequest {
                propagation: args.propagation_seconds,
                timeout: args.timeout_seconds,
                abort_grace: args.abort_grace_seconds,
            };
            runtime.block_on(drain_client::run(args.socket, request));
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            init_logging(args.log_format);
            match runtime.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let poll_target = match (args.adapter.stock(), &args.engine_url) {
        (Some(engine), Some(url)) => Some(poller::PollTarget {
            engine,
            addr: poller::parse_engine_url(url).map_err(anyhow::Error::msg)?,
            health_path: args.health_path.clone(),
            metrics_path: engine.default_metrics_path().map(|default| {
                args.metrics_path
                    .clone()
                    .unwrap_or_else(|| default.to_owned())
            }),
            interval: Duration::from_millis(args.heartbeat_interval_ms),
            drain_interval: Duration::from_millis(args.drain_poll_interval_ms),
            timeout: Duration::from_millis(args.poll_timeout_ms),
            idle_samples: args.idle_samples,
            unhealthy_grace: args.unhealthy_grace_seconds,
        }),
        _ => None,
    };
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    if let Some(dir) = &args.install_dir {
        let path = install::install_self(dir)
            .with_context(|| format!("installing the drain client into {}", dir.display()))?;
        tracing::info!(path = %path.display(), "drain client installed");
    }
    let listener = socket::bind(&args.socket)?;
    let http_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;

    let listen = http_listener
        .local_addr()
        .context("reading the HTTP address")?;
    let heartbeat = Duration::from_millis(args.heartbeat_interval_ms);
    let window = heartbeat * quiesce_protocol::LIVENESS_MISSED_HEARTBEATS;
    let window = poll_target
        .as_ref()
        .map_or(window, |target| window.max(target.liveness_window()));
    let coordinator = coordinator::Coordinator::with_liveness_window(heartbeat, window);
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(socket::serve(
        listener,
        coordinator.clone(),
        poll_target.is_none(),
        cancel.clone(),
        tasks.clone(),
    ));
    let poller = poll_target.map(|target| {
        let coordinator = coordinator.clone();
        tokio::spawn(async move { poller::run(target, &coordinator.engine).await })
    });
    let observer = tokio::spawn(coordinator::observe(coordinator.clone()));
    tasks.spawn(quiesce_http::serve(
        http_listener,
        http::router(coordinator.clone()),
        quiesce_http::Limits::default(),
        cancel.clone().cancelled_owned(),
    ));
    tracing::info!(socket = %args.socket.display(), %listen, "sidecar serving");

    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    tokio::select! {
        () = coordinator.wait_before_exit(args.max_exit_wait_seconds) => {}
        _ = terminate.recv() => tracing::warn!("second signal: exiting at once"),
        _ = interrupt.recv() => tracing::warn!("second signal: exiting at once"),
    }
    cancel.cancel();
    observer.abort();
    if let Some(poller) = poller {
        poller.abort();
    }
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    if let Err(e) = std::fs::remove_file(&args.socket) {
        tracing::warn!(error = %e, "could not remove the socket file");
    }
    tracing::info!("sidecar stopped");
    Ok(())
}
