//! `quiesce-operator`: the operator binary and its offline tools.

mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quiesce_api::InferenceDeployment;
use quiesce_api::limits::AUTOSCALER_GRACE_PERIOD_SECONDS;
use quiesce_api::render::{self, DEFAULT_SIDECAR_IMAGE, RenderConfig};
use quiesce_api::{crd, rules};

#[derive(Parser)]
#[command(version, about = "Drain-aware InferenceDeployments for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: reconcile InferenceDeployments in the cluster of
    /// the in-cluster ServiceAccount or the current kubeconfig.
    Run(run::RunArgs),
    /// Print the InferenceDeployment CustomResourceDefinition as YAML.
    Crd,
    /// Check an InferenceDeployment file offline, as the API server would,
    /// and print its drain plan.
    Check {
        /// The InferenceDeployment manifest (YAML).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Print the objects the operator would apply for an InferenceDeployment
    /// file (Deployment, Service, PodDisruptionBudget), without a cluster.
    Render {
        /// The InferenceDeployment manifest (YAML).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Sidecar image for resources that do not set spec.sidecar.image.
        #[arg(long, env = "QUIESCE_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
        sidecar_image: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args).map(|()| ExitCode::SUCCESS),
        Command::Crd => {
            print!("{}", crd::to_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => check(&file),
        Command::Render {
            file,
            sidecar_image,
        } => render_file(&file, RenderConfig { sidecar_image }),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

fn read_resource(file: &Path) -> anyhow::Result<InferenceDeployment> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a valid InferenceDeployment", file.display()))
}

/// Prints the YAML stream on stdout and conflicts as warnings on stderr, so
/// that `render -f x.yaml | kubectl apply -f -` applies exactly the objects.
fn render_file(file: &Path, config: RenderConfig) -> anyhow::Result<ExitCode> {
    let resource = read_resource(file)?;
    let rendered = match render::render(&resource, &config) {
        Ok(rendered) => rendered,
        Err(error) => {
            eprintln!("{}: {error}", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    for conflict in &rendered.conflicts {
        eprintln!("warning: {conflict}");
    }
    print!(
        "{}",
        rendered.to_yaml().context("cannot serialize the objects")?
    );
    Ok(ExitCode::SUCCESS)
}

fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let resource = read_resource(file)?;
    let name = resource.metadata.name.as_deref().unwrap_or("<unnamed>");
    let spec = match rules::validate(&resource.spec) {
        Ok(spec) => spec,
        Err(violations) => {
            eprintln!("{}: InferenceDeployment {name} is invalid:", file.display());
            for violation in violations {
                eprintln!("  - {violation}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let drain = &spec.drain;
    let grace = spec.drain_plan().grace_period_seconds;
    println!("{}: InferenceDeployment {name} is valid", file.display());
    println!(
        "  engine   container {:?}, adapter {}, port {}",
        spec.engine.container_name, spec.engine.adapter, spec.engine.port
    );
    println!(
        "  drain    keep admitting {}s, then finish in-flight work within {}s, \
         then abort with {}s to deliver abort responses, then {}s to exit",
        drain.propagation_seconds,
        drain.timeout_seconds,
        drain.abort_grace_seconds,
        drain.exit_margin_seconds
    );
    println!("  pods     terminationGracePeriodSeconds: {grace}");
    if grace > AUTOSCALER_GRACE_PERIOD_SECONDS {
        println!(
            "  warning  the grace period exceeds {AUTOSCALER_GRACE_PERIOD_SECONDS}s, \
             cluster-autoscaler's default --max-graceful-termination-sec: \
             scale-downs would cut drains short"
        );
    }
    Ok(ExitCode::SUCCESS)
}
