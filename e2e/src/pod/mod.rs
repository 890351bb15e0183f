//! A local pod runner: runs a `PodTemplateSpec` with real processes, in
//! the order and with the termination sequence of a real kubelet.
//!
//! Fidelity to the kubelet (Kubernetes 1.32, as measured on a real one; the
//! cluster suite, docs/e2e.md, runs the same pods on it):
//! - Start: native sidecars first, each holding the next container back
//!   until its startup probe has passed; plain init containers one after
//!   the other; then the main containers together.
//! - Probes: one worker per probe, ticking at its period from pod creation;
//!   readiness and liveness wait for the startup probe; a container is
//!   probed for readiness at once when it has started; probes keep running
//!   while the pod terminates, so readiness moves (the sidecar's `/ready`
//!   turns 503 when the drain starts). The pod is Ready when every running
//!   container is (a container without a readiness probe once started).
//! - Deletion: the pod is marked terminating at once (load balancers see
//!   it); each main container with a preStop exec hook runs it (a real
//!   process with the container's environment) and gets SIGTERM when it
//!   returns, the others get SIGTERM at once; the grace period counts from
//!   the deletion, across the hook; a container still running when it ends
//!   is SIGKILLed, with at least 2 s after its SIGTERM (the kubelet's
//!   minimum); the native sidecars get SIGTERM only once every main
//!   container has exited, in reverse order, and SIGKILL at the grace end
//!   too. SIGKILL takes the container's whole process group, as the kubelet
//!   kills the container's cgroup.
//!
//! Not modelled: container restarts (a container that exits unexpectedly,
//! or fails its startup or liveness probe while the pod runs, fails the pod
//! with its logs: the demo and the tests treat it as a harness error), the
//! kubelet's own latencies (it sends SIGTERM about 0.5 s after the deletion;
//! here at once), users and groups (every process runs as the current user),
//! read-only mounts.

mod event;
mod kubelet;
pub mod plan;
pub mod probe;

pub use self::event::{EventSink, PodEvent, PodEventRecord, PodReport, PodStatus};
pub use self::kubelet::MINIMUM_GRACE;

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use quiesce_testkit::bins;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::kubelet::Kubelet;
use self::plan::{Images, PlanError, PortMap, plan_pod, pod_ports};

/// The simulated engine's image, as an InferenceDeployment names it.
pub const ENGINE_IMAGE: &str = concat!(
    "ghcr.io/quiesce-dev/quiesce-engine:",
    env!("CARGO_PKG_VERSION")
);

/// The project's images mapped to the locally built binaries: the sidecar
/// image the operator renders by default, and [`ENGINE_IMAGE`].
pub fn project_images() -> Images {
    Images::new()
        .with(quiesce_api::render::DEFAULT_SIDECAR_IMAGE, bins::sidecar())
        .with(ENGINE_IMAGE, bins::engine())
}

/// Why a pod could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The template cannot run locally.
    #[error("pod {pod}: {source}")]
    Plan {
        /// The pod.
        pod: String,
        /// The problem.
        source: PlanError,
    },
    /// Its directory or ports could not be set up.
    #[error("pod {pod}: {what}: {source}")]
    Setup {
        /// The pod.
        pod: String,
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// A running pod. Dropping it deletes it (its processes are killed when the
/// runtime stops at the latest).
pub struct LocalPod {
    name: String,
    ports: PortMap,
    status: watch::Receiver<PodStatus>,
    delete: CancellationToken,
    task: Option<JoinHandle<PodReport>>,
}

impl LocalPod {
    /// Creates the pod: its volumes, its ports, and a kubelet task that
    /// starts its containers. Must be called inside a Tokio runtime.
    pub fn start(
        name: impl Into<String>,
        template: &PodTemplateSpec,
        images: &Images,
        sink: Option<EventSink>,
    ) -> Result<Self, PodError> {
        let name = name.into();
        let setup = |what| {
            let pod = name.clone();
            move |source| PodError::Setup { pod, what, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("qpod-")
            .tempdir()
            .map_err(setup("creating its directory"))?;
        let ports = PortMap::allocate(&pod_ports(template)).map_err(setup("picking ports"))?;
        let plan =
            plan_pod(template, images, dir.path(), &ports).map_err(|source| PodError::Plan {
                pod: name.clone(),
                source,
            })?;
        for volume in plan.volumes.values() {
            std::fs::create_dir_all(volume).map_err(setup("creating an emptyDir"))?;
        }
        let (status_tx, status) = watch::channel(PodStatus::default());
        let delete = CancellationToken::new();
        let kubelet = Kubelet::new(name.clone(), plan, dir, status_tx, sink);
        let task = tokio::spawn(kubelet.run(delete.clone()));
        Ok(Self {
            name,
            ports,
            status,
            delete,
            task: Some(task),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the pod's `port` is reachable from the host.
    pub fn address(&self, port: i32) -> Option<SocketAddr> {
        self.ports.address(port)
    }

    /// Its status now.
    pub fn status(&self) -> PodStatus {
        *self.status.borrow()
    }

    /// A receiver of its status changes.
    pub fn watch(&self) -> watch::Receiver<PodStatus> {
        self.status.clone()
    }

    /// Deletes the pod: the kubelet's termination sequence starts. Idempotent.
    pub fn delete(&self) {
        self.delete.cancel();
    }

    /// Whether it was deleted (its status may not say so yet).
    pub fn is_deleted(&self) -> bool {
        self.delete.is_cancelled()
    }

    /// Waits until its status satisfies `pred`, at most `within`.
    pub async fn wait_until(
        &mut self,
        pred: impl Fn(&PodStatus) -> bool,
        within: Duration,
    ) -> Result<PodStatus, String> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(within, status.wait_for(|s| pred(s) || s.gone)).await;
        let reached = match waited {
            Ok(Ok(status)) => Some(*status),
            Ok(Err(_)) => Some(self.status()),
            Err(_) => None,
        };
        match reached {
            Some(status) if pred(&status) => Ok(status),
            Some(_) => Err(format!("pod {} is gone", self.name)),
            None => Err(format!(
                "pod {}: condition not reached within {within:?} (status {:?})",
                self.name,
                self.status()
            )),
        }
    }

    /// Waits for the pod to be gone and returns its report. Delete it first,
    /// or this waits as long as it runs.
    pub async fn finished(mut self) -> PodReport {
        let task = self.task.take().expect("finished is called once");
        match task.await {
            Ok(report) => report,
            Err(e) => PodReport {
                name: self.name.clone(),
                events: Vec::new(),
                orphans: Vec::new(),
                failure: Some(format!("its kubelet task failed: {e}")),
                logs: Vec::new(),
            },
        }
    }
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        self.delete.cancel();
    }
}
