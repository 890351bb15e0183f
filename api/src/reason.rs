//! One vocabulary of reasons: the `reason` of every condition quiesce
//! writes, and the `reason` label of its failure metric. Each is a
//! PascalCase word, the convention of Kubernetes condition reasons.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// Why a condition is what it is, or why a reconcile failed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[doc = $doc])+ $name,)+
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &[Self] = &[$(Self::$name,)+];

            /// The reason as written in a condition or a metric label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)+
                }
            }
        }
    };
}

reasons! {
    /// Ready=True: every replica runs the current template and is available.
    AllReplicasReady,
    /// Ready=True: `spec.replicas` is 0 and no pod is left.
    ScaledToZero,
    /// Ready=False, Progressing=True: pods of an older template remain, or
    /// the Deployment controller has not yet seen the latest change.
    RollingOut,
    /// Ready=False, Progressing=True: pods are being added or removed.
    Scaling,
    /// Ready=False: the rollout is done but some replicas are not available
    /// (loading a model, crash-looping, unschedulable).
    ReplicasUnavailable,
    /// Ready=False, Progressing=False: there is no Deployment (yet).
    DeploymentNotFound,
    /// Progressing=False: the Deployment runs the current template everywhere.
    RolloutComplete,
    /// Progressing=False and Degraded=True: the Deployment made no progress
    /// within its `progressDeadlineSeconds` (the Deployment's own reason).
    ProgressDeadlineExceeded,
    /// Degraded=True, and a failure: the spec breaks a rule; nothing was
    /// applied (only a resource that bypassed the API server's validation
    /// can).
    InvalidSpec,
    /// Degraded=True, and a failure: the spec clashes with what quiesce
    /// injects; nothing was applied.
    Unrenderable,
    /// Degraded=True, and a failure: an object with the resource's name
    /// belongs to another controller; quiesce does not take it over.
    NotOwned,
    /// Degraded=True: the API server (or an admission webhook) refused or
    /// failed a write; retried with a backoff. The failure metric says which
    /// of the `Api…` reasons it was.
    ApplyFailed,
    /// Degraded=True: the Deployment cannot create pods (quota, Pod Security
    /// admission, ...), from its `ReplicaFailure` condition.
    ReplicaFailure,
    /// Degraded=False (a warning): user fields were kept where quiesce would
    /// have injected its own, or engine flags keep the sidecar from seeing
    /// the engine's work; the message lists them.
    Conflicts,
    /// Degraded=False (a warning): the grace period exceeds
    /// cluster-autoscaler's default `--max-graceful-termination-sec` (600 s),
    /// so its scale-downs cut drains short.
    GracePeriodExceedsAutoscalerLimit,
    /// Degraded=False: the objects match the spec.
    Reconciled,
    /// A failure: the API server answered 409 Conflict.
    ApiConflict,
    /// A failure: the API server refused the request as unauthorised (401,
    /// 403).
    ApiForbidden,
    /// A failure: the API server or an admission webhook rejected the
    /// request (another 4xx, such as 400, 404 or 422).
    ApiRejected,
    /// A failure: the API server failed or throttled (5xx, 429).
    ApiServerError,
    /// A failure: no answer from the API server (connection, TLS, timeout,
    /// bad body).
    ApiUnreachable,
}

impl Reason {
    /// Every reason a Degraded condition can carry, in priority order.
    pub const DEGRADED: [Self; 9] = [
        Self::InvalidSpec,
        Self::Unrenderable,
        Self::NotOwned,
        Self::ApplyFailed,
        Self::ProgressDeadlineExceeded,
        Self::ReplicaFailure,
        Self::Conflicts,
        Self::GracePeriodExceedsAutoscalerLimit,
        Self::Reconciled,
    ];

    /// Every reason a reconcile can fail for: the values of the failure
    /// metric's label.
    pub const FAILURES: [Self; 8] = [
        Self::InvalidSpec,
        Self::Unrenderable,
        Self::NotOwned,
        Self::ApiConflict,
        Self::ApiForbidden,
        Self::ApiRejected,
        Self::ApiServerError,
        Self::ApiUnreachable,
    ];
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition's `reason` is its [`Reason`] written out.
impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_pascal_case_words() {
        let unique: std::collections::BTreeSet<_> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(unique.len(), Reason::ALL.len());
        for reason in Reason::ALL {
            let word = reason.as_str();
            assert!(word.starts_with(|c: char| c.is_ascii_uppercase()), "{word}");
            assert!(word.chars().all(|c| c.is_ascii_alphanumeric()), "{word}");
        }
        assert_eq!(Reason::InvalidSpec.to_string(), "InvalidSpec");
    }
}
