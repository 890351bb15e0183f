//! `quiesce-engine`: the simulated inference engine (see `docs/engine.md`).
//!
//! Exit codes: 0 stopped as asked, 1 start-up failure, 2 usage error,
//! 3 a worker process was lost.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use quiesce_engine::DrainRequest;
use quiesce_sim::config::{EngineConfig, parse_millis, parse_seconds};
use quiesce_sim::lifecycle;
use quiesce_sim::personality::{Personality, StockConfig};
use quiesce_sim::workers::{self, WorkerArgs, WorkerSpec};
use tracing_subscriber::EnvFilter;

/// A GPU-free stand-in for an OpenAI-compatible inference engine (vLLM), with
/// quiesce's graceful shutdown.
#[derive(Debug, Parser)]
// A flag given twice takes its last value, so wrappers can append overrides.
#[command(
    name = "quiesce-engine",
    version,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A worker process; started by the engine itself.
    #[command(hide = true)]
    Worker(WorkerCli),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to serve HTTP on (port 0: any free port; see the `listening`
    /// log line).
    #[arg(long, default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// The served model name.
    #[arg(long, default_value = "quiesce-sim")]
    model: String,
    /// This instance's name, sent with every answer in the
    /// x-quiesce-instance header. Default: the host name, which in
    /// Kubernetes is the pod's name.
    #[arg(long)]
    instance: Option<String>,
    /// Model load time in seconds: /health answers 503 until then.
    #[arg(long, value_parser = parse_seconds, default_value = "2")]
    startup_seconds: Duration,
    /// Time per output token, in milliseconds.
    #[arg(long, value_parser = parse_millis, default_value = "20")]
    token_interval_ms: Duration,
    /// Prefill time per prompt token (4 bytes of prompt), in milliseconds.
    #[arg(long, value_parser = parse_millis, default_value = "0.05")]
    prefill_ms_per_token: Duration,
    /// Most sequences generating at once; more requests wait in a queue.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_concurrency: u32,
    /// Worker processes computing the tokens (0: none, in-process).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    workers: u32,
    /// Without a sidecar: how long a SIGTERM drain lets in-flight requests
    /// finish before aborting them, in seconds (0: abort at once, as vLLM).
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    shutdown_timeout: Duration,
    /// Without a sidecar: how long a SIGTERM drain keeps admitting requests
    /// first, in seconds.
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    propagation_seconds: Duration,
    /// Without a sidecar: time for abort responses to reach clients, in
    /// seconds.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    abort_grace_seconds: Duration,
    /// Prefill role: each completed request leaves a KV transfer pending
    /// this long, in milliseconds (0: none).
    #[arg(long, value_parser = parse_millis, default_value = "0")]
    kv_transfer_ms: Duration,
    /// The largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens_limit: u32,
    /// The largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1..))]
    max_body_bytes: u32,
    /// Log format on stderr (filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The stock engine to play to the sidecar's HTTP adapters: its health,
    /// metrics and load endpoints, and what SIGTERM does (docs/engine.md).
    #[arg(long, value_enum, default_value_t = PersonalityArg::Quiesce)]
    personality: PersonalityArg,
    /// Answer /health this many milliseconds late, as an engine under load
    /// does (stock personalities).
    #[arg(long, value_parser = parse_millis, default_value = "0")]
    health_delay_ms: Duration,
    /// vLLM: count the HTTP requests in flight on /load.
    #[arg(long)]
    enable_server_load_tracking: bool,
    /// vLLM: no scheduler gauges on /metrics.
    #[arg(long)]
    disable_log_stats: bool,
    /// vLLM: stay up answering /health with 503 when the engine dies.
    #[arg(long, env = "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH",
          value_parser = clap::builder::BoolishValueParser::new())]
    keep_alive_on_engine_death: bool,
    /// SGLang: serve /metrics.
    #[arg(long)]
    enable_metrics: bool,
    /// SGLang: /health generates a token and answers after a second.
    #[arg(long, env = "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), default_value = "true")]
    health_generation: bool,
    /// SGLang: decode steps between two refreshes of its gauges.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    decode_log_interval: u32,
    /// TensorRT-LLM: serve /prometheus/metrics (its return_perf_metrics and
    /// enable_iter_perf_stats options).
    #[arg(long)]
    return_perf_metrics: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PersonalityArg {
    Quiesce,
    Vllm,
    Sglang,
    Trtllm,
}

impl From<PersonalityArg> for Personality {
    fn from(arg: PersonalityArg) -> Self {
        match arg {
            PersonalityArg::Quiesce => Self::Quiesce,
            PersonalityArg::Vllm => Self::Vllm,
            PersonalityArg::Sglang => Self::Sglang,
            PersonalityArg::Trtllm => Self::Trtllm,
        }
    }
}

#[derive(Debug, Args)]
struct WorkerCli {
    #[arg(long)]
    index: usize,
    #[arg(long)]
    parent_pid: u32,
    #[arg(long, value_parser = parse_seconds)]
    load_seconds: Duration,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Worker(worker)) => {
            init_logging(worker.log_format);
            workers::run_worker(&WorkerArgs {
                index: worker.index,
                parent_pid: worker.parent_pid,
                load: worker.load_seconds,
            })
        }
        None => serve(cli.serve),
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => {
            tracing::error!(%error, "cannot find the engine's own executable to start workers");
            return ExitCode::from(lifecycle::Exit::StartupFailed.code());
        }
    };
    let worker = WorkerSpec {
        program,
        args: vec![
            OsString::from("worker"),
            OsString::from("--log-format"),
            OsString::from(args.log_format.as_arg()),
        ],
        load: args.startup_seconds,
    };
    let personality = Personality::from(args.personality);
    let config = EngineConfig {
        listen: args.listen,
        model: args.model,
        instance: args.instance.unwrap_or_else(host_name),
        startup: args.startup_seconds,
        token_interval: args.token_interval_ms,
        prefill_per_token: args.prefill_ms_per_token,
        max_concurrency: args.max_concurrency as usize,
        workers: args.workers as usize,
        max_tokens_limit: args.max_tokens_limit,
        max_body_bytes: args.max_body_bytes as usize,
        local_drain: DrainRequest {
            propagation: args.propagation_seconds,
            timeout: personality.sigterm_timeout(args.shutdown_timeout),
            abort_grace: args.abort_grace_seconds,
        },
        kv_transfer: args.kv_transfer_ms,
        stock: StockConfig {
            personality,
            health_delay: args.health_delay_ms,
            vllm_server_load_tracking: args.enable_server_load_tracking,
            vllm_log_stats: !args.disable_log_stats,
            vllm_keep_alive_on_engine_death: args.keep_alive_on_engine_death,
            sglang_metrics: args.enable_metrics,
            sglang_health_generation: args.health_generation,
            sglang_decode_log_interval: args.decode_log_interval,
            trtllm_perf_metrics: args.return_perf_metrics,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(lifecycle::Exit::StartupFailed.code());
        }
    };
    // `block_on` polls `run` on this, the main thread, which outlives the
    // workers it forks (their parent-death signal is tied to it).
    let exit = runtime.block_on(lifecycle::run(config, worker));
    // Connection tasks that outlived the grace must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(exit.code())
}
