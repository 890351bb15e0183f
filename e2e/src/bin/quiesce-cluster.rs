//! `quiesce-cluster`: the cluster suite (docs/e2e.md). Runs the user's
//! whole path against the cluster of a kubeconfig, prints a table of
//! results and figures, and exits 1 when a scenario fails.
//!
//! Exit codes: 0 every scenario passed, 1 a scenario failed, 2 no cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use quiesce_e2e::cluster::cli::Tool;
use quiesce_e2e::cluster::report::{Figures, ScenarioResult, table};
use quiesce_e2e::cluster::scenario::Scenario;
use quiesce_e2e::cluster::{Images, NAMESPACE_LABEL, RELEASE, RELEASE_NAMESPACE, Suite};

/// The user's path on a real Kubernetes: images, helm install, the CRD,
/// pods, rollouts under load, scale, autoscale, eviction, drift, failover.
#[derive(Debug, Parser)]
#[command(name = "quiesce-cluster", version)]
struct Cli {
    /// Kubeconfig of the cluster (its current context). Needs admin rights:
    /// the suite installs the CRD, RBAC and namespaces.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Registry and path of the images: PREFIX/quiesce-operator:TAG,
    /// PREFIX/quiesce-sidecar:TAG, PREFIX/quiesce-engine:TAG.
    #[arg(
        long,
        env = "QUIESCE_E2E_IMAGE_PREFIX",
        default_value = "ghcr.io/quiesce-dev"
    )]
    image_prefix: String,
    /// Tag of the images.
    #[arg(long, env = "QUIESCE_E2E_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    image_tag: String,
    /// The helm 3 CLI.
    #[arg(long, env = "HELM", default_value = "helm")]
    helm: PathBuf,
    /// The kubectl CLI.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    kubectl: PathBuf,
    /// Run only these scenarios (in the suite's order; later ones expect
    /// the operator that helm-install installs).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Leave the namespaces and the release behind when a scenario fails,
    /// to look at them.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let suite = match connect(&cli).await {
        Ok(suite) => suite,
        Err(error) => {
            eprintln!("quiesce-cluster: no cluster to test: {error:#}");
            return ExitCode::from(2);
        }
    };
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| cli.only.contains(s) || (cli.only.is_empty() && s.by_default()))
        .collect();
    let started = Instant::now();
    let mut results = Vec::new();
    for scenario in scenarios {
        eprintln!("==> {}: {}", scenario.name(), scenario.proves());
        let begun = Instant::now();
        let outcome = scenario.run(&suite).await;
        let passed = outcome.is_ok();
        let (figures, error) = match outcome {
            Ok(figures) => (figures, None),
            Err(error) => (Figures::default(), Some(format!("{error:#}"))),
        };
        for figure in &figures.0 {
            eprintln!("    {}: {}", figure.label, figure.value);
        }
        if let Some(error) = &error {
            eprintln!("    FAILED: {error}");
        }
        results.push(ScenarioResult {
            name: scenario.name(),
            proves: scenario.proves(),
            passed,
            seconds: (begun.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            figures,
            error,
        });
        if !passed {
            break;
        }
    }
    let failed = results.iter().any(|r| !r.passed);
    if (!failed || !cli.keep)
        && let Err(error) = clean_up(&suite).await
    {
        eprintln!("quiesce-cluster: cleaning up: {error:#}");
    }
    println!("{}", table(&results, started.elapsed()));
    if let Some(path) = &cli.json {
        let written = serde_json::to_string_pretty(&results)
            .map_err(anyhow::Error::from)
            .and_then(|json| std::fs::write(path, json).map_err(Into::into));
        if let Err(error) = written {
            eprintln!("quiesce-cluster: cannot write {}: {error}", path.display());
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Suite> {
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    let server = config.cluster_url.clone();
    let client = Client::try_from(config)?;
    let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .with_context(|| format!("{server} did not answer within 10 s"))?
        .with_context(|| format!("cannot reach {server}"))?;
    eprintln!("cluster: Kubernetes {} at {server}", version.git_version);
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    Ok(Suite {
        client,
        kubectl: Tool::new(&cli.kubectl, cli.kubeconfig.as_deref()),
        helm: Tool::new(&cli.helm, cli.kubeconfig.as_deref()),
        images: Images {
            prefix: cli.image_prefix.clone(),
            tag: cli.image_tag.clone(),
        },
        repo: repo.canonicalize().unwrap_or(repo),
        operator_pods: Default::default(),
        installed: Default::default(),
    })
}

/// Deletes what the suite made: its namespaces, and its release if a
/// scenario failed before uninstalling it.
async fn clean_up(suite: &Suite) -> anyhow::Result<()> {
    let release = suite
        .helm
        .output(&["status", RELEASE, "-n", RELEASE_NAMESPACE], None)
        .await?;
    let mut release_left = release.status.success();
    if release_left && suite.installed.load(Ordering::Relaxed) {
        suite
            .helm
            .run(&["uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait"])
            .await?;
        release_left = false;
    }
    let namespaces: Api<Namespace> = Api::all(suite.client.clone());
    let ours = namespaces
        .list(&ListParams::default().labels(&format!("{NAMESPACE_LABEL}=true")))
        .await?;
    for namespace in ours.items {
        match namespace.metadata.name {
            // A release this run did not install keeps its namespace.
            Some(name) if name == RELEASE_NAMESPACE && release_left => {}
            Some(name) => drop(namespaces.delete(&name, &DeleteParams::default()).await?),
            None => {}
        }
    }
    Ok(())
}
