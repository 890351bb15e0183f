//! What a resource's drain settings decide for every pod, computed once
//! from a validated spec ([`crate::rules::Validated`]): the grace period,
//! the drain hash that rolls the pods when a setting changes, and the
//! engine's preStop hook.

use quiesce_protocol::contract::{DRAIN_CLIENT_PATH, SOCKET_PATH};
use sha2::{Digest, Sha256};

use crate::DrainSpec;

/// The drain of a resource's pods, as rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainPlan {
    /// The pods' `terminationGracePeriodSeconds`.
    pub grace_period_seconds: i64,
    /// [`drain_hash`] of the settings.
    pub hash: String,
    /// The engine's preStop command.
    pub pre_stop: Vec<String>,
}

impl DrainPlan {
    /// The plan of `drain`.
    pub fn of(drain: &DrainSpec) -> Self {
        Self {
            grace_period_seconds: drain.termination_grace_period_seconds(),
            hash: drain_hash(drain),
            pre_stop: pre_stop_command(drain),
        }
    }
}

/// A stable hash of the drain settings: 16 hex digits of the SHA-256 of a
/// canonical string. It changes exactly when a drain setting changes, so
/// such a change rolls the pods and the new settings are visible on them.
/// (std's `DefaultHasher` may change between Rust releases, which would roll
/// every pod on an operator upgrade.)
pub fn drain_hash(drain: &DrainSpec) -> String {
    let canonical = format!(
        "propagationSeconds={}\ntimeoutSeconds={}\nabortGraceSeconds={}\nexitMarginSeconds={}\n",
        drain.propagation_seconds,
        drain.timeout_seconds,
        drain.abort_grace_seconds,
        drain.exit_margin_seconds,
    );
    Sha256::digest(canonical.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The engine's preStop hook: the drain client, copied into the shared
/// volume by the sidecar, asks the sidecar over the socket to drain and
/// returns when the drain is over.
pub fn pre_stop_command(drain: &DrainSpec) -> Vec<String> {
    [
        DRAIN_CLIENT_PATH,
        "drain",
        "--socket",
        SOCKET_PATH,
        "--propagation-seconds",
        &drain.propagation_seconds.to_string(),
        "--timeout-seconds",
        &drain.timeout_seconds.to_string(),
        "--abort-grace-seconds",
        &drain.abort_grace_seconds.to_string(),
    ]
    .map(str::to_owned)
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_hash_is_pinned_for_the_defaults() {
        // A change here rolls every pod of every cluster on an operator
        // upgrade: only change the canonical string deliberately.
        assert_eq!(drain_hash(&DrainSpec::default()), "250f02527ecdf4d9");
    }

    #[test]
    fn drain_hash_changes_with_each_drain_setting() {
        let base = DrainSpec::default();
        let edits: [fn(&mut DrainSpec); 4] = [
            |d| d.propagation_seconds += 1,
            |d| d.timeout_seconds += 1,
            |d| d.abort_grace_seconds += 1,
            |d| d.exit_margin_seconds += 1,
        ];
        for edit in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert_ne!(drain_hash(&changed), drain_hash(&base), "{changed:?}");
        }
        // Digits cannot slide from one field to the next.
        let a = DrainSpec {
            propagation_seconds: 1,
            timeout_seconds: 23,
            ..base.clone()
        };
        let b = DrainSpec {
            propagation_seconds: 12,
            timeout_seconds: 3,
            ..base
        };
        assert_ne!(drain_hash(&a), drain_hash(&b));
    }

    #[test]
    fn the_plan_of_the_defaults() {
        let plan = DrainPlan::of(&DrainSpec::default());
        assert_eq!(plan.grace_period_seconds, 140);
        assert_eq!(plan.hash, drain_hash(&DrainSpec::default()));
        assert_eq!(
            plan.pre_stop,
            [
                "/run/quiesce/bin/quiesce-sidecar",
                "drain",
                "--socket",
                "/run/quiesce/quiesce.sock",
                "--propagation-seconds",
                "5",
                "--timeout-seconds",
                "120",
                "--abort-grace-seconds",
                "5",
            ]
        );
    }
}
