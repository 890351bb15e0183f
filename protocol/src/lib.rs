//! The quiesce drain protocol: what the sidecar, the inference engine and the
//! preStop drain client say to each other over the pod's Unix socket.
//!
//! The sidecar is the server. It listens on a Unix stream socket whose path the
//! engine container finds in the environment variable [`SOCKET_ENV`]. Two kinds
//! of clients connect:
//!
//! - the engine ([`Role::Engine`]): one long-lived connection that reports
//!   [`EngineStatus`] and obeys [`ServerMessage::Drain`] and
//!   [`ServerMessage::Abort`];
//! - the drain client ([`Role::Drain`], `quiesce-sidecar drain`, the preStop
//!   hook): one connection per drain, which asks for a drain, follows its
//!   [`Progress`] and returns when the [`DrainReport`] arrives.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! JSON (see [`read_frame`], [`write_frame`] and [`FrameReader`]). Clients send
//! [`ClientMessage`]s, the sidecar sends [`ServerMessage`]s. The first frame of
//! every connection is a [`Hello`], answered by a [`Welcome`] or an error.
//!
//! [`contract`] holds what the operator renders into a pod and the sidecar
//! and the engine rely on (socket path, volume, ports, probe paths, users);
//! [`LoadReport`] is the sidecar's `GET /load`.
//!
//! `docs/protocol.md` in the repository describes the protocol for
//! implementers in other languages; this crate is its Rust implementation and
//! the two must agree.
//!
//! An engine's handshake:
//!
//! ```no_run
//! use quiesce_protocol::{
//!     ClientMessage, EngineStatus, FrameReader, HANDSHAKE_TIMEOUT, Hello, Phase, Role,
//!     SOCKET_ENV, ServerMessage, write_frame,
//! };
//!
//! # async fn engine() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = tokio::net::UnixStream::connect(std::env::var(SOCKET_ENV)?).await?;
//! let (rx, mut tx) = stream.into_split();
//! let mut rx = FrameReader::new(rx);
//! let hello = ClientMessage::Hello(Hello::new(Role::Engine, "my-engine"));
//! write_frame(&mut tx, &hello).await?;
//! let welcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, rx.read()).await?? {
//!     Some(ServerMessage::Welcome(welcome)) => welcome,
//!     Some(ServerMessage::Error(refusal)) => return Err(refusal.into()),
//!     other => return Err(format!("unexpected answer to hello: {other:?}").into()),
//! };
//! let status = EngineStatus { phase: Phase::Starting, in_flight: 0, queued: 0, kv_transfers: 0 };
//! write_frame(&mut tx, &ClientMessage::Status(status)).await?;
//! // Then: a status at least every `welcome.heartbeat_interval`, and obey
//! // `ServerMessage::Drain` and `ServerMessage::Abort` from `rx.read()`.
//! # let _ = welcome;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::time::Duration;

pub mod contract;
mod frame;
mod load;
mod message;

pub use contract::SOCKET_ENV;
pub use frame::{FrameError, FrameReader, encode_frame, read_frame, write_frame};
pub use load::{LoadReport, MAX_LOAD_REPORT_LEN, Work};
pub use message::{
    Abort, ClientMessage, DrainReport, DrainRequest, DrainResult, EngineStatus, ErrorCode, Hello,
    Phase, Progress, ProtocolError, Role, ServerMessage, Welcome,
};

/// The newest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every protocol version this crate speaks, oldest first.
///
/// A client lists the versions it speaks in [`Hello::versions`]; the server
/// picks the highest one both sides know (see [`negotiate`]).
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// Largest allowed frame body in bytes (64 KiB), not counting the 4-byte
/// length prefix.
///
/// A reader refuses a larger announced length before reading or allocating the
/// body; a writer refuses to send a larger frame.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Longest allowed [`Hello::name`], in Unicode scalar values (characters).
pub const MAX_NAME_LEN: usize = 128;

/// Heartbeat interval the sidecar announces in [`Welcome`] unless configured
/// otherwise. The engine sends a status frame at least this often.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);

/// How long either side waits for the handshake to complete.
///
/// The server closes a connection whose [`Hello`] has not arrived within this
/// time after accepting it (with [`ErrorCode::HandshakeTimeout`]); a client
/// gives up on a [`Welcome`] that has not arrived within this time after
/// connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Number of heartbeat intervals without any frame from the engine after which
/// the sidecar considers the engine not live.
pub const LIVENESS_MISSED_HEARTBEATS: u32 = 5;

/// Delay before the engine's first reconnection attempt (see
/// [`reconnect_backoff`]).
pub const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Upper bound of the engine's reconnection delay (see [`reconnect_backoff`]).
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Picks the protocol version for a connection: the highest version that both
/// the client (`client_versions`, in any order) and this crate
/// ([`SUPPORTED_VERSIONS`]) speak, or `None` when they share none.
///
/// ```
/// assert_eq!(quiesce_protocol::negotiate(&[1, 2]), Some(1));
/// assert_eq!(quiesce_protocol::negotiate(&[7]), None);
/// ```
pub fn negotiate(client_versions: &[u32]) -> Option<u32> {
    client_versions
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
}

/// Upper bound of the delay before reconnection attempt number `attempt`
/// (0 for the first attempt after a connection was lost or refused):
/// [`RECONNECT_BACKOFF_INITIAL`] doubled per attempt, capped at
/// [`RECONNECT_BACKOFF_MAX`].
///
/// Wait a uniformly random duration between half of this bound and the bound,
/// so that engines restarted together do not reconnect in lockstep. Start again
/// from attempt 0 after a [`Welcome`] arrives.
///
/// ```
/// use std::time::Duration;
/// use quiesce_protocol::reconnect_backoff;
/// assert_eq!(reconnect_backoff(0), Duration::from_millis(100));
/// assert_eq!(reconnect_backoff(3), Duration::from_millis(800));
/// assert_eq!(reconnect_backoff(30), Duration::from_secs(5));
/// ```
pub fn reconnect_backoff(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    RECONNECT_BACKOFF_INITIAL
        .saturating_mul(factor)
        .min(RECONNECT_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_picks_highest_common_version() {
        assert_eq!(negotiate(&[1]), Some(1));
        assert_eq!(negotiate(&[3, 1, 2]), Some(1));
    }

    #[test]
    fn negotiate_without_common_version() {
        assert_eq!(negotiate(&[2, 3]), None);
        assert_eq!(negotiate(&[0]), None);
        assert_eq!(negotiate(&[]), None);
    }

    #[test]
    fn reconnect_backoff_doubles_up_to_the_cap() {
        let ms: Vec<u128> = (0..8).map(|a| reconnect_backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(reconnect_backoff(u32::MAX), RECONNECT_BACKOFF_MAX);
    }

    #[test]
    fn liveness_window_is_five_seconds_by_default() {
        assert_eq!(
            DEFAULT_HEARTBEAT_INTERVAL * LIVENESS_MISSED_HEARTBEATS,
            Duration::from_secs(5)
        );
    }
}
