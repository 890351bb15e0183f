//! The engine's connection to its quiesce sidecar: reports the engine's
//! status, obeys Drain and Abort, and reconnects when the sidecar restarts.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use quiesce_protocol::{
    ClientMessage, EngineStatus, FrameError, FrameReader, HANDSHAKE_TIMEOUT, Hello, Phase,
    ProtocolError, Role, SOCKET_ENV, ServerMessage, reconnect_backoff, write_frame,
};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

/// Counter changes closer together than this are sent as one status frame;
/// phase changes are sent at once.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Keeps `shutdown` connected to the sidecar at `socket` for the life of the
/// process. `name` identifies the engine in the sidecar's logs.
pub fn spawn(shutdown: Shutdown, socket: PathBuf, name: impl Into<String>) -> JoinHandle<()> {
    let name = name.into();
    tokio::spawn(async move { stay_connected(shutdown, socket, name).await })
}

/// Like [`spawn`], with the socket path from `QUIESCE_SOCKET`; `None` when the
/// variable is unset or empty (no sidecar: signals alone drive the drain).
pub fn spawn_from_env(shutdown: Shutdown, name: impl Into<String>) -> Option<JoinHandle<()>> {
    let socket = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty())?;
    Some(spawn(shutdown, PathBuf::from(socket), name))
}

/// Why a session with the sidecar ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no welcome within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    HandshakeTimeout,
    #[error("the sidecar refused the engine: {0}")]
    Refused(ProtocolError),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the sidecar closed the connection")]
    Closed,
}

async fn stay_connected(shutdown: Shutdown, socket: PathBuf, name: String) {
    let mut attempt = 0u32;
    let mut warned = false;
    loop {
        let mut welcomed = false;
        let error = session(&shutdown, &socket, &name, &mut welcomed).await;
        if welcomed {
            attempt = 0;
            warned = false;
            tracing::warn!(%error, "lost the sidecar; reconnecting");
        } else if !warned {
            tracing::warn!(%error, socket = %socket.display(), "cannot reach the sidecar; retrying");
            warned = true;
        }
        tokio::time::sleep(jittered(reconnect_backoff(attempt))).await;
        attempt = attempt.saturating_add(1);
    }
}

/// A duration between half of `bound` and `bound`, so that engines restarted
/// together do not reconnect in lockstep.
fn jittered(bound: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fraction = f64::from(nanos % 1000) / 1000.0;
    bound.mul_f64(0.5 + fraction / 2.0)
}

async fn session(
    shutdown: &Shutdown,
    socket: &PathBuf,
    name: &str,
    welcomed: &mut bool,
) -> SessionError {
    match run_session(shutdown, socket, name, welcomed).await {
        Ok(()) => SessionError::Closed,
        Err(e) => e,
    }
}

async fn run_session(
    shutdown: &Shutdown,
    socket: &PathBuf,
    name: &str,
    welcomed: &mut bool,
) -> Result<(), SessionError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)?
        .map_err(SessionError::Connect)?;
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    write_frame(
        &mut write,
        &ClientMessage::Hello(Hello::new(Role::Engine, name)),
    )
    .await?;
    let welcome =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read::<ServerMessage>()).await {
            Err(_) => return Err(SessionError::HandshakeTimeout),
            Ok(Ok(Some(ServerMessage::Welcome(welcome)))) => welcome,
            Ok(Ok(Some(ServerMessage::Error(e)))) => return Err(SessionError::Refused(e)),
            Ok(Ok(Some(_))) => return Err(SessionError::Unexpected("expected welcome")),
            Ok(Ok(None)) => return Err(SessionError::Closed),
            Ok(Err(e)) => return Err(e.into()),
        };
    *welcomed = true;
    tracing::info!(version = welcome.version, "connected to the sidecar");

    let mut changes = shutdown.subscribe();
    let mut heartbeat = tokio::time::interval(welcome.heartbeat_interval);
    let mut last_sent: Option<(EngineStatus, Instant)> = None;
    let mut pending = true;
    loop {
        let now = Instant::now();
        let status = shutdown.status();
        let due = match last_sent {
            None => true,
            Some((sent, _)) if sent.phase != status.phase => true,
            Some((_, at)) => pending && now >= at + COALESCE,
        };
        if due {
            // An abort can finish before this loop runs again: report that it
            // happened, or the sidecar would take the drain for a clean one.
            let skipped_abort = status.phase == Phase::Stopped
                && shutdown.aborted().is_cancelled()
                && last_sent.is_none_or(|(sent, _)| sent.phase != Phase::Aborting);
            if skipped_abort {
                let aborting = EngineStatus {
                    phase: Phase::Aborting,
                    ..status
                };
                write_frame(&mut write, &ClientMessage::Status(aborting)).await?;
            }
            write_frame(&mut write, &ClientMessage::Status(status)).await?;
            last_sent = Some((status, now));
            pending = false;
        }
        let flush_at = last_sent.map_or(now, |(_, at)| at + COALESCE);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_ok() {
                    pending = true;
                }
            }
            () = tokio::time::sleep_until(flush_at.into()), if pending => {}
            _ = heartbeat.tick() => {
                // A status frame is also the heartbeat.
                last_sent = None;
            }
            frame = reader.read::<ServerMessage>() => match frame? {
                Some(ServerMessage::Drain(request)) => {
                    tracing::info!(
                        propagation_ms = request.propagation.as_millis() as u64,
                        timeout_ms = request.timeout.as_millis() as u64,
                        "the sidecar asks for a drain"
                    );
                    shutdown.drain(request);
                }
                Some(ServerMessage::Abort(abort)) => {
                    tracing::warn!("the sidecar asks for an abort");
                    shutdown.abort(abort.grace);
                }
                Some(ServerMessage::Error(e)) => return Err(SessionError::Refused(e)),
                Some(_) => return Err(SessionError::Unexpected("a frame meant for a drain client")),
                None => return Ok(()),
            },
        }
    }
}
