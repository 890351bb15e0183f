//! Message types and their JSON shapes.
//!
//! Durations are [`Duration`]s in Rust and integer milliseconds on the wire
//! (fields ending in `_ms`); sub-millisecond parts are dropped when sending.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{MAX_NAME_LEN, SUPPORTED_VERSIONS};

/// A frame sent by a client (the engine or the drain client) to the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First frame of every connection: `{"type":"hello",...}`.
    Hello(Hello),
    /// Engine only: its current state, also its heartbeat: `{"type":"status",...}`.
    Status(EngineStatus),
    /// Drain client only, once after the handshake: start a drain
    /// (`{"type":"drain",...}`).
    Drain(DrainRequest),
    /// The client gives up on the connection and closes it: `{"type":"error",...}`.
    Error(ProtocolError),
}

/// A frame sent by the sidecar to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Accepts a [`Hello`]: `{"type":"welcome",...}`.
    Welcome(Welcome),
    /// To the engine: drain now (`{"type":"drain",...}`).
    Drain(DrainRequest),
    /// To the engine: abort everything now (`{"type":"abort",...}`).
    Abort(Abort),
    /// To the drain client: how the drain is going (`{"type":"progress",...}`).
    Progress(Progress),
    /// To the drain client, last frame: how the drain ended
    /// (`{"type":"drain_result",...}`).
    DrainResult(DrainReport),
    /// The sidecar refuses the connection or the last frame, and closes the
    /// connection: `{"type":"error",...}`.
    Error(ProtocolError),
}

/// What a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The inference engine (`"engine"`): one long-lived connection at a time.
    Engine,
    /// The preStop drain client (`"drain"`): one connection per drain.
    Drain,
}

/// The client's handshake frame.
///
/// Wire shape: `{"type":"hello","versions":[1],"role":"engine","name":"vllm","pid":42}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the client speaks, in any order.
    pub versions: Vec<u32>,
    /// What the client is.
    pub role: Role,
    /// Human-readable name for logs and metrics, such as `vllm`; at most
    /// [`MAX_NAME_LEN`] characters (a longer name makes the frame malformed).
    #[serde(deserialize_with = "bounded_name")]
    pub name: String,
    /// The client's process id, for logs; optional (omitted or `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Hello {
    /// A hello from this process: every version in [`SUPPORTED_VERSIONS`],
    /// this process's id, and `name` cut to [`MAX_NAME_LEN`] characters.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        let mut name = name.into();
        if let Some((cut, _)) = name.char_indices().nth(MAX_NAME_LEN) {
            name.truncate(cut);
        }
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            role,
            name,
            pid: Some(std::process::id()),
        }
    }
}

fn bounded_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(serde::de::Error::custom(format_args!(
            "name is {len} characters long; the limit is {MAX_NAME_LEN}"
        )));
    }
    Ok(name)
}

/// The sidecar's answer to an acceptable [`Hello`].
///
/// Wire shape: `{"type":"welcome","version":1,"heartbeat_interval_ms":1000,"sidecar_version":"0.1.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version chosen for this connection (see [`crate::negotiate`]).
    pub version: u32,
    /// How often the engine must send a status frame at the least; the drain
    /// client receives a progress frame at least this often. Sent as
    /// `heartbeat_interval_ms` (an integer that fits in 32 bits, never 0).
    #[serde(rename = "heartbeat_interval_ms", with = "heartbeat_millis")]
    pub heartbeat_interval: Duration,
    /// The sidecar's release, for logs (such as `0.1.0`).
    pub sidecar_version: String,
}

/// Where the engine is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading the model; not ready for requests (`"starting"`). The phase of
    /// a new engine.
    #[default]
    Starting,
    /// Serving requests (`"ready"`).
    Ready,
    /// Draining: still admitting during the propagation delay, then rejecting
    /// new requests while in-flight work finishes (`"draining"`).
    Draining,
    /// Aborting what is left with explicit abort responses (`"aborting"`).
    Aborting,
    /// Nothing left to do; the process may exit (`"stopped"`).
    Stopped,
}

impl Phase {
    /// The wire name, such as `"draining"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Aborting => "aborting",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine's state, sent on change and at least once per heartbeat
/// interval; each status frame replaces the previous one.
///
/// Wire shape: `{"type":"status","phase":"ready","in_flight":2,"queued":0,"kv_transfers":0}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Where the engine is in its life.
    pub phase: Phase,
    /// Requests being processed (admitted and not finished or aborted).
    pub in_flight: u32,
    /// Requests admitted but waiting for capacity.
    pub queued: u32,
    /// Pending KV-cache transfers (disaggregated prefill/decode) that must
    /// finish before the engine can stop.
    pub kv_transfers: u32,
}

impl EngineStatus {
    /// Whether nothing is left to finish: no request in flight or queued, no
    /// KV transfer pending.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.queued == 0 && self.kv_transfers == 0
    }
}

/// A drain request: from the drain client to the sidecar, and from the
/// sidecar to the engine.
///
/// The durations are relative to the moment the frame is received (sent, for
/// the sender), each side measuring with its own monotonic clock, so clocks
/// that differ between containers cannot break the deadlines.
///
/// Wire shape: `{"type":"drain","propagation_ms":5000,"timeout_ms":60000,"abort_grace_ms":5000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DrainRequest {
    /// How long the engine keeps admitting requests after receipt, while load
    /// balancers still route to the pod (`propagation_ms`).
    #[serde(rename = "propagation_ms", with = "millis")]
    pub propagation: Duration,
    /// How long in-flight work may take to finish, counted from the end of
    /// the propagation delay (`timeout_ms`). When it runs out, the engine
    /// aborts by itself, whether or not an abort frame arrives.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// How long aborted requests have to receive their abort responses before
    /// the engine reports `stopped` (`abort_grace_ms`).
    #[serde(rename = "abort_grace_ms", with = "millis")]
    pub abort_grace: Duration,
}

impl DrainRequest {
    /// Time from receipt until the engine aborts by itself if work is still
    /// left: `propagation + timeout`.
    pub fn abort_after(&self) -> Duration {
        self.propagation.saturating_add(self.timeout)
    }

    /// Longest a drain can take from receipt: `propagation + timeout +
    /// abort_grace`.
    pub fn max_duration(&self) -> Duration {
        self.abort_after().saturating_add(self.abort_grace)
    }
}

/// From the sidecar to the engine: abort everything now.
///
/// Wire shape: `{"type":"abort","grace_ms":5000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Abort {
    /// How long the engine has to deliver the abort responses before it
    /// reports `stopped` (`grace_ms`).
    #[serde(rename = "grace_ms", with = "millis")]
    pub grace: Duration,
}

/// From the sidecar to the drain client: the engine's state during a drain,
/// sent at least once per heartbeat interval.
///
/// Wire shape: `{"type":"progress","phase":"draining","in_flight":3,"queued":0,"kv_transfers":1,"elapsed_ms":1200}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Progress {
    /// The engine's last reported state (its fields appear at the top level
    /// of the frame).
    #[serde(flatten)]
    pub engine: EngineStatus,
    /// Time since the sidecar accepted the drain request (`elapsed_ms`).
    #[serde(rename = "elapsed_ms", with = "millis")]
    pub elapsed: Duration,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainResult {
    /// The engine finished all its work and reported `stopped` without
    /// aborting anything (`"drained"`).
    Drained,
    /// The drain timed out and the engine aborted what was left (`"aborted"`).
    Aborted,
    /// The engine's connection closed before it reported `stopped`
    /// (`"engine_lost"`).
    EngineLost,
    /// There was no engine to drain (`"no_engine"`).
    NoEngine,
}

impl DrainResult {
    /// The wire name, such as `"engine_lost"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drained => "drained",
            Self::Aborted => "aborted",
            Self::EngineLost => "engine_lost",
            Self::NoEngine => "no_engine",
        }
    }
}

impl fmt::Display for DrainResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// From the sidecar to the drain client, last frame before the sidecar closes
/// the connection: how the drain ended.
///
/// Wire shape: `{"type":"drain_result","result":"drained","elapsed_ms":5300}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DrainReport {
    /// How the drain ended.
    pub result: DrainResult,
    /// Time since the sidecar accepted the drain request (`elapsed_ms`).
    #[serde(rename = "elapsed_ms", with = "millis")]
    pub elapsed: Duration,
}

/// Why a side refuses a connection or a frame. Serialized as a snake_case
/// string; codes this version does not know read as [`ErrorCode::Unknown`], so
/// new codes can be added without a new protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client's [`Hello::versions`] share no version with the server
    /// (`"unsupported_version"`); the message lists the server's versions.
    UnsupportedVersion,
    /// An engine is already connected; only one engine connection at a time
    /// (`"engine_already_connected"`).
    EngineAlreadyConnected,
    /// A frame was not a valid message: bad length, bad JSON, unknown type,
    /// missing or mistyped field (`"bad_frame"`).
    BadFrame,
    /// A frame's announced length exceeded [`crate::MAX_FRAME_LEN`]
    /// (`"frame_too_large"`).
    FrameTooLarge,
    /// A valid message the receiver does not accept from this role or at this
    /// point of the conversation (`"unexpected_message"`).
    UnexpectedMessage,
    /// The [`Hello`] did not arrive within [`crate::HANDSHAKE_TIMEOUT`]
    /// (`"handshake_timeout"`).
    HandshakeTimeout,
    /// A code this version of the protocol does not know (read only; sent as
    /// `"unknown"`).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name, such as `"bad_frame"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::EngineAlreadyConnected => "engine_already_connected",
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnexpectedMessage => "unexpected_message",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error frame: the sender refuses the connection or the last frame and
/// closes the connection after sending it.
///
/// Wire shape: `{"type":"error","code":"engine_already_connected","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// What happened and what to do about it, for humans and logs.
    pub message: String,
}

impl ProtocolError {
    /// An error frame with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The refusal of a [`Hello`] whose versions share none with
    /// [`SUPPORTED_VERSIONS`]; the message lists both sides' versions.
    pub fn unsupported_version(client_versions: &[u32]) -> Self {
        Self::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol versions {client_versions:?}, \
                 this sidecar speaks {SUPPORTED_VERSIONS:?}; \
                 upgrade the older of the engine SDK and the sidecar"
            ),
        )
    }
}

/// `Duration` as integer milliseconds (u64), saturating.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A heartbeat interval as integer milliseconds (u32): saturating when
/// sending, at least 1 ms when receiving (0 would mean a busy loop).
mod heartbeat_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(serde::de::Error::custom(
                "heartbeat_interval_ms is 0; it must be at least 1",
            )),
            ms => Ok(Duration::from_millis(ms.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::json;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain_request() -> DrainRequest {
        DrainRequest {
            propagation: ms(5000),
            timeout: ms(60_000),
            abort_grace: ms(5000),
        }
    }

    fn client_messages() -> Vec<ClientMessage> {
        vec![
            ClientMessage::Hello(Hello {
                versions: vec![1],
                role: Role::Engine,
                name: "vllm".into(),
                pid: Some(42),
            }),
            ClientMessage::Hello(Hello {
                versions: vec![1, 2],
                role: Role::Drain,
                name: "prestop".into(),
                pid: None,
            }),
            ClientMessage::Status(EngineStatus {
                phase: Phase::Draining,
                in_flight: 7,
                queued: 1,
                kv_transfers: 2,
            }),
            ClientMessage::Drain(drain_request()),
            ClientMessage::Error(ProtocolError::new(ErrorCode::BadFrame, "nope")),
        ]
    }

    fn server_messages() -> Vec<ServerMessage> {
        vec![
            ServerMessage::Welcome(Welcome {
                version: 1,
                heartbeat_interval: ms(1000),
                sidecar_version: "0.1.0".into(),
            }),
            ServerMessage::Drain(drain_request()),
            ServerMessage::Abort(Abort { grace: ms(3000) }),
            ServerMessage::Progress(Progress {
                engine: EngineStatus {
                    phase: Phase::Aborting,
                    in_flight: 3,
                    queued: 0,
                    kv_transfers: 1,
                },
                elapsed: ms(1200),
            }),
            ServerMessage::DrainResult(DrainReport {
                result: DrainResult::EngineLost,
                elapsed: ms(5300),
            }),
            ServerMessage::Error(ProtocolError::unsupported_version(&[2])),
        ]
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(msg: &T) {
        let text = serde_json::to_string(msg).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, msg, "{text}");
    }

    fn assert_wire<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(msg: &T, wire: &str) {
        assert_eq!(serde_json::to_string(msg).unwrap(), wire);
        assert_eq!(&serde_json::from_str::<T>(wire).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips() {
        client_messages().iter().for_each(round_trip);
        server_messages().iter().for_each(round_trip);
        for phase in [
            Phase::Starting,
            Phase::Ready,
            Phase::Draining,
            Phase::Aborting,
            Phase::Stopped,
        ] {
            round_trip(&phase);
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
        for result in [
            DrainResult::Drained,
            DrainResult::Aborted,
            DrainResult::EngineLost,
            DrainResult::NoEngine,
        ] {
            round_trip(&result);
            assert_eq!(serde_json::to_value(result).unwrap(), result.as_str());
        }
        for code in [
            ErrorCode::UnsupportedVersion,
            ErrorCode::EngineAlreadyConnected,
            ErrorCode::BadFrame,
            ErrorCode::FrameTooLarge,
            ErrorCode::UnexpectedMessage,
            ErrorCode::HandshakeTimeout,
            ErrorCode::Unknown,
        ] {
            round_trip(&code);
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn wire_format_is_pinned() {
        assert_wire(
            &ClientMessage::Status(EngineStatus {
                phase: Phase::Ready,
                in_flight: 2,
                queued: 0,
                kv_transfers: 0,
            }),
            r#"{"type":"status","phase":"ready","in_flight":2,"queued":0,"kv_transfers":0}"#,
        );
        assert_wire(
            &client_messages()[0],
            r#"{"type":"hello","versions":[1],"role":"engine","name":"vllm","pid":42}"#,
        );
        assert_wire(
            &client_messages()[1],
            r#"{"type":"hello","versions":[1,2],"role":"drain","name":"prestop"}"#,
        );
        assert_wire(
            &ClientMessage::Drain(drain_request()),
            r#"{"type":"drain","propagation_ms":5000,"timeout_ms":60000,"abort_grace_ms":5000}"#,
        );
        assert_wire(
            &server_messages()[0],
            r#"{"type":"welcome","version":1,"heartbeat_interval_ms":1000,"sidecar_version":"0.1.0"}"#,
        );
        assert_wire(
            &ServerMessage::Drain(drain_request()),
            r#"{"type":"drain","propagation_ms":5000,"timeout_ms":60000,"abort_grace_ms":5000}"#,
        );
        assert_wire(&server_messages()[2], r#"{"type":"abort","grace_ms":3000}"#);
        assert_wire(
            &server_messages()[3],
            r#"{"type":"progress","phase":"aborting","in_flight":3,"queued":0,"kv_transfers":1,"elapsed_ms":1200}"#,
        );
        assert_wire(
            &server_messages()[4],
            r#"{"type":"drain_result","result":"engine_lost","elapsed_ms":5300}"#,
        );
        assert_wire(
            &ServerMessage::Error(ProtocolError::new(
                ErrorCode::EngineAlreadyConnected,
                "engine vllm (pid 42) is already connected",
            )),
            r#"{"type":"error","code":"engine_already_connected","message":"engine vllm (pid 42) is already connected"}"#,
        );
    }

    #[test]
    fn null_pid_reads_as_none() {
        let msg: ClientMessage = serde_json::from_value(
            json!({"type": "hello", "versions": [1], "role": "engine", "name": "x", "pid": null}),
        )
        .unwrap();
        assert!(matches!(msg, ClientMessage::Hello(Hello { pid: None, .. })));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let msg: ClientMessage = serde_json::from_value(json!({
            "type": "status", "phase": "draining", "in_flight": 1, "queued": 0,
            "kv_transfers": 0, "gpu_util": 0.9, "extra": {"nested": [1, 2]},
        }))
        .unwrap();
        assert_eq!(
            msg,
            ClientMessage::Status(EngineStatus {
                phase: Phase::Draining,
                in_flight: 1,
                queued: 0,
                kv_transfers: 0,
            })
        );
        let msg: ServerMessage = serde_json::from_value(json!({
            "type": "progress", "phase": "ready", "in_flight": 0, "queued": 0,
            "kv_transfers": 0, "elapsed_ms": 10, "later_field": "x",
        }))
        .unwrap();
        assert!(matches!(msg, ServerMessage::Progress(p) if p.elapsed == ms(10)));
    }

    #[test]
    fn unknown_type_is_an_error() {
        let err = serde_json::from_value::<ClientMessage>(json!({"type": "telemetry"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `telemetry`"), "{err}");
        // A server message is not a client message.
        assert!(
            serde_json::from_value::<ClientMessage>(json!({"type": "abort", "grace_ms": 1}))
                .is_err()
        );
        assert!(serde_json::from_value::<ServerMessage>(json!({"phase": "ready"})).is_err());
    }

    #[test]
    fn unknown_error_code_reads_as_unknown() {
        let msg: ServerMessage = serde_json::from_value(
            json!({"type": "error", "code": "quota_exceeded", "message": "m"}),
        )
        .unwrap();
        assert_eq!(
            msg,
            ServerMessage::Error(ProtocolError::new(ErrorCode::Unknown, "m"))
        );
    }

    #[test]
    fn unknown_enum_values_are_errors() {
        let status = json!({"type": "status", "phase": "sleeping", "in_flight": 0, "queued": 0, "kv_transfers": 0});
        assert!(serde_json::from_value::<ClientMessage>(status).is_err());
        let hello = json!({"type": "hello", "versions": [1], "role": "admin", "name": "x"});
        assert!(serde_json::from_value::<ClientMessage>(hello).is_err());
    }

    #[test]
    fn missing_or_mistyped_fields_are_errors() {
        for bad in [
            json!({"type": "status", "phase": "ready", "in_flight": 1, "queued": 0}),
            json!({"type": "status", "phase": "ready", "in_flight": -1, "queued": 0, "kv_transfers": 0}),
            json!({"type": "status", "phase": "ready", "in_flight": 1.5, "queued": 0, "kv_transfers": 0}),
            json!({"type": "drain", "propagation_ms": "5s", "timeout_ms": 1, "abort_grace_ms": 1}),
            json!({"type": "hello", "versions": 1, "role": "engine", "name": "x"}),
        ] {
            assert!(
                serde_json::from_value::<ClientMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn name_is_bounded_in_characters() {
        let hello = |name: String| json!({"type": "hello", "versions": [1], "role": "engine", "name": name});
        // 128 multi-byte characters are fine, 129 are not.
        assert!(serde_json::from_value::<ClientMessage>(hello("é".repeat(128))).is_ok());
        let err = serde_json::from_value::<ClientMessage>(hello("é".repeat(129)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("name is 129 characters long; the limit is 128"),
            "{err}"
        );
    }

    #[test]
    fn hello_new_fills_versions_and_pid_and_cuts_the_name() {
        let hello = Hello::new(Role::Engine, "é".repeat(200));
        assert_eq!(hello.versions, SUPPORTED_VERSIONS);
        assert_eq!(hello.pid, Some(std::process::id()));
        assert_eq!(hello.name.chars().count(), MAX_NAME_LEN);
        round_trip(&ClientMessage::Hello(hello));
    }

    #[test]
    fn durations_drop_sub_milliseconds_and_saturate() {
        let wire = |grace| serde_json::to_value(Abort { grace }).unwrap()["grace_ms"].clone();
        assert_eq!(wire(Duration::from_micros(2999)), 2);
        assert_eq!(wire(Duration::MAX), u64::MAX);
        let welcome = Welcome {
            version: 1,
            heartbeat_interval: Duration::from_secs(u64::from(u32::MAX)),
            sidecar_version: String::new(),
        };
        assert_eq!(
            serde_json::to_value(welcome).unwrap()["heartbeat_interval_ms"],
            u32::MAX
        );
    }

    #[test]
    fn zero_heartbeat_interval_is_an_error() {
        let welcome = json!({"type": "welcome", "version": 1, "heartbeat_interval_ms": 0, "sidecar_version": "x"});
        let err = serde_json::from_value::<ServerMessage>(welcome)
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat_interval_ms is 0"), "{err}");
    }

    #[test]
    fn drain_deadlines_are_relative_and_saturating() {
        let req = drain_request();
        assert_eq!(req.abort_after(), ms(65_000));
        assert_eq!(req.max_duration(), ms(70_000));
        let huge = DrainRequest {
            propagation: Duration::MAX,
            timeout: ms(1),
            abort_grace: ms(1),
        };
        assert_eq!(huge.max_duration(), Duration::MAX);
    }

    #[test]
    fn engine_status_idle() {
        let mut status = EngineStatus {
            phase: Phase::Draining,
            in_flight: 0,
            queued: 0,
            kv_transfers: 0,
        };
        assert!(status.is_idle());
        status.kv_transfers = 1;
        assert!(!status.is_idle());
    }

    #[test]
    fn protocol_error_tells_what_happened() {
        let err = ProtocolError::unsupported_version(&[2, 3]);
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert_eq!(
            err.to_string(),
            "unsupported_version: client speaks protocol versions [2, 3], this sidecar speaks [1]; upgrade the older of the \
             engine SDK and the sidecar"
        );
    }
}
