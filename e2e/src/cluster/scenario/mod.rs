//! The scenarios of the cluster suite, in the order they run. Each returns
//! what it measured, or why it failed.

mod api;
mod disruption;
mod endurance;
mod fleet;
mod install;
mod pod;
mod rollout;
mod scale_in;
mod workload;

use super::Suite;
use super::report::Figures;

/// One scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `helm install` runs the operator under the chart's RBAC.
    HelmInstall,
    /// The API server judges the CRD: rules, messages, defaults, explain, columns.
    Crd,
    /// The examples that run with the simulated engine reach Ready.
    Examples,
    /// A pod as rendered, on a real kubelet, drains through its preStop hook.
    Pod,
    /// A rolling update under load, quiesce beside a stock Deployment.
    Rollout,
    /// Twenty rolling restarts in a row under load (a benchmark: only when
    /// named with --only).
    Endurance,
    /// Hand edits of the owned Deployment are reverted.
    Drift,
    /// `kubectl scale` down under load and back up.
    Scale,
    /// A scale-in removes the idle pod first (IdleFirst), beside Default.
    ScaleIn,
    /// A HorizontalPodAutoscaler drives the scale subresource.
    Autoscale,
    /// The Eviction API: one eviction allowed and drained, the next refused.
    Eviction,
    /// `helm upgrade` to two operators; the leader dies mid-rollout.
    Failover,
    /// Deleting the InferenceDeployment removes its objects; the pods drain.
    Delete,
    /// Thousands of resources with no pods, and a change of all of them (a
    /// benchmark: only when named with --only).
    Fleet,
    /// The operator never hit Forbidden; `helm uninstall` keeps only the CRD.
    Uninstall,
}

impl Scenario {
    /// Every scenario, in order.
    pub const ALL: [Self; 15] = [
        Self::HelmInstall,
        Self::Crd,
        Self::Examples,
        Self::Pod,
        Self::Rollout,
        Self::Endurance,
        Self::Drift,
        Self::Scale,
        Self::ScaleIn,
        Self::Autoscale,
        Self::Eviction,
        Self::Failover,
        Self::Delete,
        Self::Fleet,
        Self::Uninstall,
    ];

    /// Whether a run without --only includes it: not the benchmarks.
    pub fn by_default(self) -> bool {
        !matches!(self, Self::Endurance | Self::Fleet)
    }

    /// Its name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::HelmInstall => "helm-install",
            Self::Crd => "crd",
            Self::Examples => "examples",
            Self::Pod => "pod",
            Self::Rollout => "rollout",
            Self::Endurance => "endurance",
            Self::Drift => "drift",
            Self::Scale => "scale",
            Self::ScaleIn => "scale-in",
            Self::Autoscale => "autoscale",
            Self::Eviction => "eviction",
            Self::Failover => "failover",
            Self::Delete => "delete",
            Self::Fleet => "fleet",
            Self::Uninstall => "uninstall",
        }
    }

    /// What it proves, in a line.
    pub fn proves(self) -> &'static str {
        match self {
            Self::HelmInstall => {
                "helm install creates the CRD from crds/ and runs the operator in the cluster, Ready"
            }
            Self::Crd => {
                "the real API server rejects each invalid resource with its message, applies the \
                 defaults, explains the fields and prints the columns"
            }
            Self::Examples => "each example that can run without a GPU reaches Ready",
            Self::Pod => {
                "the pod has the native sidecar, the preStop hook and the grace period; the engine \
                 runs as another user than the sidecar and still drains"
            }
            Self::Rollout => {
                "a rolling update through the Service loses nothing with quiesce, and loses \
                 requests with a stock Deployment; new pods are Ready within a second of their engine"
            }
            Self::Endurance => {
                "twenty rolling restarts in a row under load lose nothing, SIGKILL nothing, fail no \
                 preStop hook, and leave the operator's and the sidecars' memory and descriptors flat"
            }
            Self::Drift => "a removed preStop hook or sidecar comes back; a resync writes nothing",
            Self::Scale => "scaling down under load drains the removed pods and loses nothing",
            Self::ScaleIn => {
                "IdleFirst removes the idle pod at once and aborts nothing; Default, beside it, \
                 picks blind"
            }
            Self::Autoscale => "an HPA reads and writes the scale subresource",
            Self::Eviction => {
                "an eviction the PDB allows drains and loses nothing; the next one gets 429"
            }
            Self::Failover => {
                "helm upgrade rolls the operator; with the leader killed mid-rollout, the standby \
                 takes the Lease and the rollout loses nothing"
            }
            Self::Delete => {
                "deleting the resource removes its objects by owner reference; the pods drain"
            }
            Self::Fleet => {
                "the operator converges on thousands of resources and a change of all of them, \
                 and a new leader's pass over them writes nothing"
            }
            Self::Uninstall => {
                "the operator's logs have no Forbidden (least privilege); helm uninstall leaves the CRD"
            }
        }
    }

    /// Runs it.
    pub async fn run(self, suite: &Suite) -> anyhow::Result<Figures> {
        match self {
            Self::HelmInstall => install::helm_install(suite).await,
            Self::Crd => api::crd(suite).await,
            Self::Examples => pod::examples(suite).await,
            Self::Pod => pod::pod(suite).await,
            Self::Rollout => rollout::rollout(suite).await,
            Self::Endurance => endurance::endurance(suite).await,
            Self::Drift => workload::drift(suite).await,
            Self::Scale => disruption::scale(suite).await,
            Self::ScaleIn => scale_in::scale_in(suite).await,
            Self::Autoscale => disruption::autoscale(suite).await,
            Self::Eviction => disruption::eviction(suite).await,
            Self::Failover => rollout::failover(suite).await,
            Self::Delete => disruption::delete(suite).await,
            Self::Fleet => fleet::fleet(suite).await,
            Self::Uninstall => install::uninstall(suite).await,
        }
    }
}
