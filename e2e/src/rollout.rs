//! A rolling update as the Deployment controller does it: surge new pods
//! while keeping enough available ones, delete old pods as new ones become
//! available. A terminating pod counts neither as active nor as available
//! (its ReplicaSet no longer counts it), so the next new pod is created
//! while the previous old one is still draining, as in a real cluster.

use std::time::{Duration, Instant};

use crate::pod::LocalPod;

/// `replicas` and the rolling-update bounds, as counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutSpec {
    /// Desired pods.
    pub replicas: usize,
    /// Pods allowed above `replicas`.
    pub max_surge: usize,
    /// Pods allowed below `replicas` available.
    pub max_unavailable: usize,
}

/// Pods of one revision: active (created and not terminating) and
/// available (active and ready).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revision {
    /// Created and not terminating.
    pub active: usize,
    /// Active and ready.
    pub available: usize,
}

/// What the controller does next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// New pods to create.
    pub create: usize,
    /// Old pods to delete.
    pub delete: usize,
}

/// One reconciliation of the Deployment controller's rolling update.
pub fn plan_step(spec: RolloutSpec, old: Revision, new: Revision) -> Step {
    let ceiling = spec.replicas + spec.max_surge;
    let create = ceiling
        .saturating_sub(old.active + new.active)
        .min(spec.replicas.saturating_sub(new.active));
    let floor = spec.replicas.saturating_sub(spec.max_unavailable);
    let delete = (old.available + new.available)
        .saturating_sub(floor)
        .min(old.active);
    Step { create, delete }
}

/// A finished rollout.
pub struct Rolled {
    /// The old pods, all gone.
    pub old: Vec<LocalPod>,
    /// The new pods, running.
    pub new: Vec<LocalPod>,
    /// When the controller would call the rollout complete: every new pod
    /// available and no old pod active.
    pub completed: Instant,
    /// When the last old pod was gone.
    pub old_gone: Instant,
}

/// Why a rollout did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A new pod could not be created.
    #[error("creating a new pod: {0}")]
    NewPod(String),
    /// A pod failed while the rollout ran.
    #[error("pod {0} failed during the rollout")]
    PodFailed(String),
    /// It took too long.
    #[error("the rollout did not finish within {within:?}: {state}")]
    Timeout {
        /// The bound.
        within: Duration,
        /// Where it stood.
        state: String,
    },
}

/// How often the controller looks at the pods (a real one reacts to watch
/// events within milliseconds).
const RESYNC: Duration = Duration::from_millis(10);

/// Replaces `old` by new pods made by `make_new(index)`, at most `within`.
/// On error the pods are returned too, for their reports.
pub async fn roll(
    spec: RolloutSpec,
    old: Vec<LocalPod>,
    mut make_new: impl FnMut(usize) -> Result<LocalPod, String>,
    within: Duration,
) -> Result<Rolled, (RolloutError, Vec<LocalPod>)> {
    let deadline = Instant::now() + within;
    let mut new: Vec<LocalPod> = Vec::new();
    let mut completed = None;
    loop {
        let now = Instant::now();
        if let Some(failed) = old.iter().chain(&new).find(|p| p.status().failed) {
            let name = failed.name().to_owned();
            return Err((
                RolloutError::PodFailed(name),
                old.into_iter().chain(new).collect(),
            ));
        }
        let old_side = revision(&old);
        let new_side = revision(&new);
        if completed.is_none() && old_side.active == 0 && new_side.available == spec.replicas {
            completed = Some(now);
        }
        if let Some(completed) = completed
            && old.iter().all(|p| p.status().gone)
        {
            return Ok(Rolled {
                old,
                new,
                completed,
                old_gone: now,
            });
        }
        let step = plan_step(spec, old_side, new_side);
        for _ in 0..step.create {
            match make_new(new.len()) {
                Ok(pod) => new.push(pod),
                Err(e) => {
                    return Err((
                        RolloutError::NewPod(e),
                        old.into_iter().chain(new).collect(),
                    ));
                }
            }
        }
        for _ in 0..step.delete {
            if let Some(victim) = pick_victim(&old) {
                old[victim].delete();
            }
        }
        if now >= deadline {
            let state = format!(
                "old pods {old_side:?}, new pods {new_side:?}, replicas {}",
                spec.replicas
            );
            let all = old.into_iter().chain(new).collect();
            return Err((RolloutError::Timeout { within, state }, all));
        }
        tokio::time::sleep(RESYNC).await;
    }
}

/// A pod just deleted counts as terminating at once, before its kubelet
/// says so, as the API server's deletion timestamp does.
fn revision(pods: &[LocalPod]) -> Revision {
    let active: Vec<_> = pods
        .iter()
        .filter(|p| !p.is_deleted())
        .map(LocalPod::status)
        .filter(|s| !s.terminating && !s.gone)
        .collect();
    Revision {
        active: active.len(),
        available: active.iter().filter(|s| s.ready).count(),
    }
}

/// The ReplicaSet's choice when it scales down: a pod that is not ready
/// first, then the one ready most recently.
pub fn pick_victim(pods: &[LocalPod]) -> Option<usize> {
    pods.iter()
        .enumerate()
        .filter(|(_, p)| {
            let s = p.status();
            !p.is_deleted() && !s.terminating && !s.gone
        })
        .min_by_key(|(_, p)| {
            let s = p.status();
            (s.ready, std::cmp::Reverse(s.ready_since))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: RolloutSpec = RolloutSpec {
        replicas: 3,
        max_surge: 1,
        max_unavailable: 0,
    };

    fn side(active: usize, available: usize) -> Revision {
        Revision { active, available }
    }

    #[test]
    fn surge_one_unavailable_zero_replaces_one_pod_at_a_time() {
        // Start: three old pods, all ready: surge one new pod.
        assert_eq!(
            plan_step(SPEC, side(3, 3), side(0, 0)),
            Step {
                create: 1,
                delete: 0
            }
        );
        // Nothing more while it starts.
        assert_eq!(plan_step(SPEC, side(3, 3), side(1, 0)), Step::default());
        // It is available: one old pod may go.
        assert_eq!(
            plan_step(SPEC, side(3, 3), side(1, 1)),
            Step {
                create: 0,
                delete: 1
            }
        );
        // The old pod terminates and no longer counts: the next new pod
        // is created while it drains.
        assert_eq!(
            plan_step(SPEC, side(2, 2), side(1, 1)),
            Step {
                create: 1,
                delete: 0
            }
        );
        assert_eq!(
            plan_step(SPEC, side(2, 2), side(2, 2)),
            Step {
                create: 0,
                delete: 1
            }
        );
        assert_eq!(
            plan_step(SPEC, side(1, 1), side(2, 2)),
            Step {
                create: 1,
                delete: 0
            }
        );
        assert_eq!(
            plan_step(SPEC, side(1, 1), side(3, 3)),
            Step {
                create: 0,
                delete: 1
            }
        );
        assert_eq!(plan_step(SPEC, side(0, 0), side(3, 3)), Step::default());
    }

    #[test]
    fn an_unready_old_pod_is_not_counted_as_available() {
        assert_eq!(plan_step(SPEC, side(3, 2), side(1, 1)), Step::default());
    }

    #[test]
    fn max_unavailable_lets_the_controller_delete_before_surging() {
        let spec = RolloutSpec {
            replicas: 2,
            max_surge: 0,
            max_unavailable: 1,
        };
        assert_eq!(
            plan_step(spec, side(2, 2), side(0, 0)),
            Step {
                create: 0,
                delete: 1
            }
        );
        assert_eq!(
            plan_step(spec, side(1, 1), side(0, 0)),
            Step {
                create: 1,
                delete: 0
            }
        );
    }
}
