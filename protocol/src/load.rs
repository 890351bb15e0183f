//! The sidecar's load report, `GET /load` on its HTTP port: what the pod is
//! working on, for whoever picks which pod to remove (the operator's
//! idle-first scale-in). Read-only, small and cheap: one look at the
//! sidecar's view of the engine.

use serde::{Deserialize, Serialize};

/// Largest load report a reader needs to accept, in bytes; a real one is
/// about 150.
pub const MAX_LOAD_REPORT_LEN: usize = 1024;

/// The body of `GET /load`.
///
/// The counts are `null` when the sidecar cannot see the engine's work: no
/// engine connected, an engine that stopped reporting, or a stock engine
/// whose metrics are missing. `unknown` then says why. Unknown is never zero:
/// a reader must treat such a pod as busy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests being processed.
    pub in_flight: Option<u32>,
    /// Requests admitted and waiting for capacity.
    pub queued: Option<u32>,
    /// Pending KV-cache transfers.
    pub kv_transfers: Option<u32>,
    /// A drain was requested, or the engine is draining.
    pub draining: bool,
    /// Milliseconds since the figures were sampled from the engine, on the
    /// sidecar's clock (relative, so clock skew between nodes is harmless).
    pub sample_age_ms: Option<u64>,
    /// Why the counts are unknown, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// The work of a pod, when it is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Requests being processed.
    pub in_flight: u32,
    /// Requests waiting for capacity.
    pub queued: u32,
    /// Pending KV-cache transfers.
    pub kv_transfers: u32,
}

impl LoadReport {
    /// The work, if every count is known.
    pub fn work(&self) -> Option<Work> {
        match (
            self.in_flight,
            self.queued,
            self.kv_transfers,
            &self.unknown,
        ) {
            (Some(in_flight), Some(queued), Some(kv_transfers), None) => Some(Work {
                in_flight,
                queued,
                kv_transfers,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_known_only_when_every_count_is() {
        let known: LoadReport = serde_json::from_str(
            r#"{"in_flight":2,"queued":1,"kv_transfers":0,"draining":false,"sample_age_ms":40}"#,
        )
        .unwrap();
        assert_eq!(
            known.work(),
            Some(Work {
                in_flight: 2,
                queued: 1,
                kv_transfers: 0
            })
        );
        let unknown: LoadReport = serde_json::from_str(
            r#"{"in_flight":null,"queued":null,"kv_transfers":null,"draining":false,"sample_age_ms":40,"unknown":"gauge_missing"}"#,
        )
        .unwrap();
        assert_eq!(unknown.work(), None);
        let partial = LoadReport {
            in_flight: Some(0),
            queued: None,
            kv_transfers: Some(0),
            ..LoadReport::default()
        };
        assert_eq!(partial.work(), None);
    }
}
