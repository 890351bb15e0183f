//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles and writes status.
//!
//! [`kube-lease-manager`](kube_lease_manager) holds the Lease: it creates it
//! when missing, takes it when free or expired, renews it before it expires
//! and releases it on shutdown (server-side apply, so two candidates cannot
//! both win). This module turns its state channel into "wait until I lead"
//! and "wait until I no longer lead".

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A leader that stops renewing loses the Lease after this long; a standby
/// then takes over.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// The leader renews this long before the Lease expires, which also bounds
/// the clock skew between nodes that the election tolerates.
pub const LEASE_GRACE_SECONDS: u64 = 5;
/// How long shutdown waits for the Lease to be released.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Lease is and who competes for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// This instance's identity, unique among the candidates (the pod name).
    pub identity: String,
}

/// Leader election could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use Lease {namespace}/{name} for leader election: {source}; check that the \
     namespace exists and that the operator may get, create and patch leases there \
     (docs/operator.md)"
)]
pub struct LeaderError {
    namespace: String,
    name: String,
    source: LeaseManagerError,
}

/// This instance's part in the election.
pub struct LeaderElection {
    state: watch::Receiver<bool>,
    /// Keeps the channel open when there is no election.
    _always: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<Result<LeaseManager, LeaseManagerError>>>,
}

impl LeaderElection {
    /// No election: this instance leads from the start and never stops.
    pub fn disabled() -> Self {
        let (sender, state) = watch::channel(true);
        Self {
            state,
            _always: Some(sender),
            task: None,
        }
    }

    /// Joins the election for the Lease of `settings`, creating it if needed.
    pub async fn start(client: Client, settings: &LeaseSettings) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await
            .map_err(|source| LeaderError {
                namespace: settings.namespace.clone(),
                name: settings.name.clone(),
                source,
            })?;
        let (state, task) = manager.watch().await;
        info!(
            lease = settings.name,
            namespace = settings.namespace,
            identity = settings.identity,
            "joined the leader election"
        );
        Ok(Self {
            state,
            _always: None,
            task: Some(task),
        })
    }

    /// Waits until this instance leads. `false` when the election ended
    /// instead (its task failed).
    pub async fn acquired(&mut self) -> bool {
        self.state.wait_for(|leader| *leader).await.is_ok()
    }

    /// Waits until this instance no longer leads (or the election ended).
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// A handle that tells, at any time, whether this instance leads.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.state.clone()
    }

    /// Leaves the election and releases the Lease if held, so that a
    /// standby takes over at once instead of after the Lease expires.
    pub async fn release(self) {
        let Self { state, task, .. } = self;
        // Closing the channel tells the lease manager to release and stop.
        drop(state);
        let Some(task) = task else { return };
        match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
            Ok(Ok(Ok(_))) => info!("left the leader election"),
            Ok(Ok(Err(error))) => warn!("cannot release the Lease: {error}"),
            Ok(Err(error)) => warn!("the leader election task failed: {error}"),
            Err(_) => warn!(
                "the Lease was not released within {}s; a standby takes over once it expires",
                RELEASE_TIMEOUT.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_an_election_this_instance_always_leads() {
        let mut election = LeaderElection::disabled();
        assert!(election.acquired().await);
        assert!(*election.watch().borrow());
        let lost = tokio::time::timeout(Duration::from_millis(20), election.lost()).await;
        assert!(lost.is_err(), "never loses");
        election.release().await;
    }
}
