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
use super::scale_in::{Outcome, PodLoad, list};
use super::status::truncate;
use quiesce_api::ScaleInPolicy;
use quiesce_api::reason::Reason;

/// Normal event: the pods' drain settings (and so their grace period)
/// changed; the Deployment rolls the pods.
pub const DRAIN_SETTINGS_CHANGED: &str = "DrainSettingsChanged";

/// Normal event: a scale-in set the pods' deletion costs, idlest first.
pub const SCALING_IN: &str = "ScalingIn";
/// Normal event: the pods of a scale-in were removed; their load then.
pub const SCALED_IN: &str = "ScaledIn";
/// Warning event: the pods' deletion costs could not be set; the
/// ReplicaSet controller picks the pods to remove unaided.
pub const SCALE_IN_UNPREPARED: &str = "ScaleInUnprepared";
/// Action of the scale-in events.
pub const SCALE_IN_ACTION: &str = "ScaleIn";

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
    if new.reason == Reason::Reconciled {
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

fn scale_in_event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, MAX_NOTE_LEN)),
        action: SCALE_IN_ACTION.to_owned(),
        secondary: None,
    }
}

/// The Normal event of an idle-first scale-in from `from` to `to` replicas:
/// the pods expected to go (`going`) and the others, with their load.
pub fn scaling_in(from: i32, to: i32, going: &[PodLoad], staying: &[PodLoad]) -> Event {
    scale_in_event(
        EventType::Normal,
        SCALING_IN,
        format!(
            "replicas {from} -> {to}, idlest first: removing {}; keeping {}",
            list(going),
            list(staying)
        ),
    )
}

/// The Normal event once the pods of a scale-in are gone: which went, and
/// their load as they began to drain.
pub fn scaled_in(from: i32, to: i32, policy: ScaleInPolicy, outcome: &Outcome) -> Event {
    let mut note = format!(
        "replicas {from} -> {to} ({}): removed {}; kept {}",
        policy.as_str(),
        list(&outcome.removed),
        list(&outcome.kept)
    );
    match outcome.mischosen() {
        0 => {}
        n => note.push_str(&format!("; {n} removed pods were busier than a kept one")),
    }
    scale_in_event(EventType::Normal, SCALED_IN, note)
}

/// The Warning event of a scale-in whose deletion costs could not be set.
pub fn scale_in_unprepared(error: &str) -> Event {
    scale_in_event(
        EventType::Warning,
        SCALE_IN_UNPREPARED,
        format!(
            "could not set the pods' deletion costs ({error}); the ReplicaSet controller picks the \
             pods to remove. Does the operator's role grant list and patch on pods?"
        ),
    )
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

    #[test]
    fn a_scaled_in_event_names_the_pods_and_counts_the_mischosen() {
        let pod = |name: &str, in_flight| PodLoad {
            name: name.to_owned(),
            load: Ok(quiesce_protocol::Work {
                in_flight,
                ..Default::default()
            }),
        };
        let outcome = Outcome {
            removed: vec![pod("a", 2)],
            kept: vec![pod("b", 0)],
        };
        let event = scaled_in(2, 1, ScaleInPolicy::Default, &outcome);
        assert_eq!(event.reason, SCALED_IN);
        assert_eq!(
            event.note.as_deref(),
            Some(
                "replicas 2 -> 1 (Default): removed a (2 in flight, 0 queued); kept b (0 in \
                 flight, 0 queued); 1 removed pods were busier than a kept one"
            )
        );
    }
}
