//! The Events the controller records on an InferenceDeployment. Pure
//! builders: the reconcile decides when, these decide what.
//!
//! Events mark changes, never a steady state: a Warning when the Degraded
//! condition takes a new reason or message, a Normal event when the drain
//! settings of the pods change. A reconcile that changes nothing records
//! nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType};

use super::plan::DrainChange;
use super::status::{RECONCILED, truncate};

/// Normal event: the pods' drain settings (and so their grace period)
/// changed; the Deployment rolls the pods.
pub const DRAIN_SETTINGS_CHANGED: &str = "DrainSettingsChanged";

/// Action of the events about the Deployment's pod template.
pub const ROLL_OUT_ACTION: &str = "RollOut";
/// Action of the events about a reconcile's outcome.
pub const RECONCILE_ACTION: &str = "Reconcile";

/// Event notes are limited to 1 kB.
pub const MAX_NOTE_LEN: usize = 1024;

/// The Normal event of a drain change.
pub fn drain_settings_changed(change: &DrainChange) -> Event {
    let seconds =
        |value: Option<i64>| value.map_or_else(|| "unset".to_owned(), |s| format!("{s}s"));
    Event {
        type_: EventType::Normal,
        reason: DRAIN_SETTINGS_CHANGED.to_owned(),
        note: Some(format!(
            "spec.drain changed: terminationGracePeriodSeconds {} -> {}; the Deployment replaces \
             the pods, and each old pod still drains with its old settings",
            seconds(change.old_grace_period_seconds),
            seconds(change.new_grace_period_seconds),
        )),
        action: ROLL_OUT_ACTION.to_owned(),
        secondary: None,
    }
}

/// The Warning event for a Degraded condition that changed from `old` to
/// `new`; `None` when it did not change or the resource is fine.
pub fn degraded_changed(old: Option<&Condition>, new: Option<&Condition>) -> Option<Event> {
    let new = new?;
    if new.reason == RECONCILED {
        return None;
    }
    if old.is_some_and(|old| old.reason == new.reason && old.message == new.message) {
        return None;
    }
    Some(Event {
        type_: EventType::Warning,
        reason: new.reason.clone(),
        note: Some(truncate(new.message.clone(), MAX_NOTE_LEN)),
        action: RECONCILE_ACTION.to_owned(),
        secondary: None,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn degraded(status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: "Degraded".to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_drain_change_names_both_grace_periods() {
        let event = drain_settings_changed(&DrainChange {
            old_grace_period_seconds: Some(140),
            new_grace_period_seconds: Some(215),
        });
        assert_eq!(event.type_, EventType::Normal);
        assert_eq!(event.reason, "DrainSettingsChanged");
        let note = event.note.unwrap();
        assert!(
            note.contains("terminationGracePeriodSeconds 140s -> 215s"),
            "{note}"
        );
    }

    #[test]
    fn only_a_new_problem_is_an_event() {
        let fine = degraded("False", "Reconciled", "ok");
        let invalid = degraded("True", "InvalidSpec", "spec.replicas: ...");
        let event = degraded_changed(Some(&fine), Some(&invalid)).unwrap();
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "InvalidSpec");
        assert_eq!(event.note.as_deref(), Some("spec.replicas: ..."));
        assert!(degraded_changed(None, Some(&invalid)).is_some());

        // The same problem again, recovery, nothing at all: no event.
        assert!(degraded_changed(Some(&invalid), Some(&invalid)).is_none());
        assert!(degraded_changed(Some(&invalid), Some(&fine)).is_none());
        assert!(degraded_changed(None, None).is_none());

        // A warning that appears is an event too.
        let warning = degraded("False", "GracePeriodExceedsAutoscalerLimit", "900 s");
        assert!(degraded_changed(Some(&fine), Some(&warning)).is_some());
    }

    #[test]
    fn notes_stay_within_the_event_limit() {
        let long = degraded("True", "ApplyFailed", &"x".repeat(5000));
        let note = degraded_changed(None, Some(&long)).unwrap().note.unwrap();
        assert!(note.len() <= MAX_NOTE_LEN);
    }
}
