//! Retry delays of failed reconciles: exponential per object, bounded.
//!
//! A failure right after another waits twice as long, from
//! [`INITIAL_DELAY`] up to [`MAX_DELAY`]; a successful reconcile starts the
//! object over. An API server that is down is retried every five minutes at
//! most, not hammered; a one-off conflict is retried within seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use super::Stored;

/// Delay after the first failure.
pub const INITIAL_DELAY: Duration = Duration::from_secs(5);
/// Longest delay, reached after seven failures in a row.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The delay before the retry that follows the `failures`-th failure in a
/// row (counted from 1): `INITIAL_DELAY × 2^(failures − 1)`, at most
/// `MAX_DELAY`.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    INITIAL_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Failures in a row, per InferenceDeployment.
#[derive(Debug, Default)]
pub struct FailureBackoff {
    failures: Mutex<HashMap<ObjectRef<Stored>, u32>>,
}

impl FailureBackoff {
    /// Records a failure of `object` and returns how long to wait before
    /// the retry.
    pub fn failed(&self, object: &ObjectRef<Stored>) -> Duration {
        let mut failures = self.lock();
        let count = failures.entry(object.clone()).or_insert(0);
        *count = count.saturating_add(1);
        retry_delay(*count)
    }

    /// Forgets the failures of `object`: it reconciled.
    pub fn succeeded(&self, object: &ObjectRef<Stored>) {
        self.lock().remove(object);
    }

    /// Failures in a row of `object`.
    pub fn failures(&self, object: &ObjectRef<Stored>) -> u32 {
        self.lock().get(object).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Stored>, u32>> {
        // A panic while holding the lock leaves a consistent map.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_five_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(0), INITIAL_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_count_per_object_and_reset_on_success() {
        let backoff = FailureBackoff::default();
        let a = ObjectRef::new("a").within("ml");
        let b = ObjectRef::new("b").within("ml");
        assert_eq!(backoff.failed(&a), Duration::from_secs(5));
        assert_eq!(backoff.failed(&a), Duration::from_secs(10));
        assert_eq!(backoff.failed(&b), Duration::from_secs(5));
        assert_eq!(backoff.failures(&a), 2);
        backoff.succeeded(&a);
        assert_eq!(backoff.failures(&a), 0);
        assert_eq!(backoff.failed(&a), Duration::from_secs(5));
        assert_eq!(backoff.failures(&b), 1);
    }
}
