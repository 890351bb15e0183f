//! `quiesce-operator run` (part of the binary, not the library): wires the
//! client, the admin server, leader election, the controller and signals.
//!
//! Start-up: logging, TLS provider, client, a check that the CRD is
//! installed, the admin server, the election; then ready. While this
//! instance holds the Lease the controller runs; when it loses the Lease the
//! controller stops and the instance stands by. On SIGTERM or SIGINT: not
//! ready at once, the controller finishes the reconciles in flight, the
//! Lease is released, the admin server stops. A second signal exits at once.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use kube::api::ListParams;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use quiesce_api::InferenceDeployment;
use quiesce_api::render::{DEFAULT_SIDECAR_IMAGE, RenderConfig};
use quiesce_operator::admin::{self, AdminState, Readiness};
use quiesce_operator::controller::{self, Context, FIELD_MANAGER, describe};
use quiesce_operator::leader::{LeaderElection, LeaseSettings};
use quiesce_operator::metrics::Metrics;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Flags of `quiesce-operator run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Watch InferenceDeployments in this namespace only (a Role there is
    /// enough). Default: every namespace (needs a ClusterRole).
    #[arg(long, env = "QUIESCE_NAMESPACE")]
    namespace: Option<String>,
    /// Sidecar image for resources that do not set spec.sidecar.image.
    #[arg(long, env = "QUIESCE_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    sidecar_image: String,
    /// Reconcile only while holding a Lease, so that several replicas can
    /// run with one active.
    #[arg(long, env = "QUIESCE_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "QUIESCE_LEASE_NAME", default_value = "quiesce-operator")]
    lease_name: String,
    /// Namespace of the Lease. Default: the operator's own namespace in a
    /// pod, the kubeconfig context's namespace outside one.
    #[arg(long, env = "QUIESCE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "QUIESCE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "QUIESCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// Runs the operator until a signal stops it.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    // kube's rustls needs a process-wide crypto provider; another one
    // installed first is fine too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(operate(args))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn operate(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context(
        "cannot configure a Kubernetes client: run in a pod with a ServiceAccount, or set \
         KUBECONFIG (or ~/.kube/config) to a cluster",
    )?;
    check_crd(&client, args.namespace.as_deref()).await?;

    let mut registry = Registry::with_prefix("quiesce_operator");
    let metrics = Metrics::register(&mut registry);
    let readiness = Arc::new(Readiness::default());
    let shutdown = CancellationToken::new();

    let listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    let state = AdminState {
        readiness: readiness.clone(),
        registry: Arc::new(registry),
    };
    let admin = tokio::spawn(admin::serve(
        listener,
        state,
        shutdown.clone().cancelled_owned(),
    ));
    info!(address = %args.admin_listen, "admin server listening");

    let signals = Signals::new().context("cannot install signal handlers")?;
    tokio::spawn(signals.watch(shutdown.clone(), readiness.clone()));

    let identity = identity();
    let mut election = if args.leader_elect {
        let settings = LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            identity: identity.clone(),
        };
        LeaderElection::start(client.clone(), &settings).await?
    } else {
        LeaderElection::disabled()
    };

    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: Some(identity),
    };
    let render_config = RenderConfig {
        sidecar_image: args.sidecar_image.clone(),
    };
    let ctx = Arc::new(Context::new(
        client,
        reporter,
        render_config,
        metrics.clone(),
    ));
    readiness.set(true);
    let scope = args.namespace.as_deref().unwrap_or("every namespace");
    info!(
        scope,
        leader_elect = args.leader_elect,
        "quiesce-operator started"
    );

    let mut election_ended = false;
    loop {
        let acquired = tokio::select! {
            () = shutdown.cancelled() => break,
            acquired = election.acquired() => acquired,
        };
        if !acquired {
            election_ended = true;
            break;
        }
        metrics.set_leader(true);
        info!("leading: reconciling InferenceDeployments");
        let stop = shutdown.child_token();
        let mut leadership = election.watch();
        let on_loss = stop.clone();
        let watch_loss = tokio::spawn(async move {
            let _ = leadership.wait_for(|leader| !*leader).await;
            on_loss.cancel();
        });
        controller::run(
            ctx.clone(),
            args.namespace.as_deref(),
            stop.cancelled_owned(),
        )
        .await;
        watch_loss.abort();
        metrics.set_leader(false);
        if shutdown.is_cancelled() {
            break;
        }
        warn!("lost the Lease: stopped reconciling, standing by");
    }

    readiness.set(false);
    election.release().await;
    shutdown.cancel();
    if let Err(error) = admin.await {
        error!("admin server task: {error}");
    }
    if election_ended {
        bail!("the leader election stopped; see the log above");
    }
    info!("stopped");
    Ok(())
}

/// Fails with what to do when the CRD is missing or not readable.
async fn check_crd(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let api: Api<InferenceDeployment> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the InferenceDeployment CRD is not installed: \
             kubectl apply --server-side -f crds/"
        ),
        Err(error) => bail!("cannot list InferenceDeployments: {}", describe(&error)),
    }
}

/// This instance's name in the Lease and in events: the pod name in a pod
/// (set POD_NAME from the downward API), else host and process id.
fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    format!("{host}-{}", std::process::id())
}

/// SIGTERM and SIGINT.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    /// The first signal starts a graceful shutdown; the second exits.
    async fn watch(mut self, shutdown: CancellationToken, readiness: Arc<Readiness>) {
        let name = self.next().await;
        info!(
            signal = name,
            "shutting down: finishing the reconciles in flight, then releasing the Lease"
        );
        readiness.set(false);
        shutdown.cancel();
        let name = self.next().await;
        warn!(signal = name, "second signal: exiting at once");
        std::process::exit(1);
    }
}
