//! The Unix socket: binding it safely, and serving the engine (the native
//! protocol adapter) and the preStop drain client.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::stat::{Mode, umask};
use quiesce_protocol::{
    ClientMessage, DrainRequest, ErrorCode, FrameError, FrameReader, HANDSHAKE_TIMEOUT, Hello,
    Progress, ProtocolError, Role, ServerMessage, Welcome, negotiate, write_frame,
};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::{Coordinator, DrainState};
use crate::engine::EngineCommand;

/// Mode of the socket: the engine's user reaches it through the pod's shared
/// group (fsGroup); nobody else can.
pub const SOCKET_MODE: u32 = 0o660;

/// Errors of [`bind`].
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the path.
    #[error("{0} is in use by a live process (another sidecar?); refusing to replace it")]
    InUse(String),
    /// A directory is in the way.
    #[error("{0} is a directory; point --socket at a file path")]
    IsDirectory(String),
    /// Any other I/O failure.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// What failed.
        source: io::Error,
    },
}

/// Listens on `path` with mode [`SOCKET_MODE`]. A stale socket (or any other
/// file) left by a previous run is replaced; a symlink is removed, never
/// followed; a path where a live process answers is left alone.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    let io_error = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e)),
        Ok(meta) if meta.is_dir() => return Err(BindError::IsDirectory(shown)),
        Ok(meta) => {
            if meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_ok()
            {
                return Err(BindError::InUse(shown));
            }
            tracing::info!(path = %shown, "replacing a stale file at the socket path");
            std::fs::remove_file(path).map_err(io_error)?;
        }
    }
    // Never let the socket exist with looser permissions, even for an instant.
    let previous = umask(Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    umask(previous);
    let listener = listener.map_err(io_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io_error)?;
    Ok(listener)
}

/// Accepts connections until `cancel` fires. Each connection is served by its
/// own task, tracked by `tasks`, so one bad client never affects another.
/// With `engines` false (a stock engine observed over HTTP), engine
/// connections are refused; drain clients are always served.
pub async fn serve(
    listener: UnixListener,
    coordinator: Arc<Coordinator>,
    engines: bool,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let coordinator = Arc::clone(&coordinator);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(error) = serve_connection(stream, &coordinator, engines, &cancel).await {
                tracing::warn!(%error, "socket connection closed with an error");
            }
        });
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the peer sent an error: {0}")]
    Peer(ProtocolError),
    #[error("refused: {0}")]
    Refused(ProtocolError),
}

struct Connection {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Connection {
    async fn send(&mut self, message: &ServerMessage) -> Result<(), FrameError> {
        write_frame(&mut self.writer, message).await
    }

    /// Tells the peer why it is being disconnected, as far as the stream
    /// still allows, and returns the error to log.
    async fn refuse(&mut self, error: ProtocolError) -> ConnectionError {
        let _ = self.send(&ServerMessage::Error(error.clone())).await;
        ConnectionError::Refused(error)
    }

    /// Reports a broken frame to the peer before closing.
    async fn frame_error(&mut self, error: FrameError) -> ConnectionError {
        if let Some(code) = error.error_code() {
            let _ = self
                .send(&ServerMessage::Error(ProtocolError::new(
                    code,
                    error.to_string(),
                )))
                .await;
        }
        ConnectionError::Frame(error)
    }
}

async fn serve_connection(
    stream: UnixStream,
    coordinator: &Arc<Coordinator>,
    engines: bool,
    cancel: &CancellationToken,
) -> Result<(), ConnectionError> {
    let (read, writer) = stream.into_split();
    let mut conn = Connection {
        reader: FrameReader::new(read),
        writer,
    };
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.reader.read()).await {
        Err(_) => {
            let error = ProtocolError::new(
                ErrorCode::HandshakeTimeout,
                format!("no hello within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            );
            return Err(conn.refuse(error).await);
        }
        Ok(Err(e)) => return Err(conn.frame_error(e).await),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(ClientMessage::Hello(hello)))) => hello,
        Ok(Ok(Some(other))) => {
            let error = ProtocolError::new(
                ErrorCode::UnexpectedMessage,
                format!(
                    "the first frame must be a hello, got {}",
                    message_name(&other)
                ),
            );
            return Err(conn.refuse(error).await);
        }
    };
    let Some(version) = negotiate(&hello.versions) else {
        return Err(conn
            .refuse(ProtocolError::unsupported_version(&hello.versions))
            .await);
    };
    let welcome = ServerMessage::Welcome(Welcome {
        version,
        heartbeat_interval: coordinator.heartbeat_interval(),
        sidecar_version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    match hello.role {
        Role::Engine if !engines => {
            let error = ProtocolError::new(
                ErrorCode::UnexpectedMessage,
                "this sidecar follows the engine over HTTP (a stock-engine adapter); \
                 set spec.engine.adapter to protocol for an engine that speaks the protocol",
            );
            Err(conn.refuse(error).await)
        }
        Role::Engine => serve_engine(conn, coordinator, &hello, welcome, cancel).await,
        Role::Drain => serve_drain_client(conn, coordinator, welcome).await,
    }
}

fn message_name(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Hello(_) => "hello",
        ClientMessage::Status(_) => "status",
        ClientMessage::Drain(_) => "drain",
        ClientMessage::Error(_) => "error",
    }
}

/// The native protocol adapter: the engine reports its status, the sidecar
/// forwards Drain and Abort.
async fn serve_engine(
    mut conn: Connection,
    coordinator: &Coordinator,
    hello: &Hello,
    welcome: ServerMessage,
    cancel: &CancellationToken,
) -> Result<(), ConnectionError> {
    let Ok(mut attachment) = coordinator.engine.attach() else {
        let error = ProtocolError::new(
            ErrorCode::EngineAlreadyConnected,
            "another engine is connected to this sidecar; one pod has one engine",
        );
        return Err(conn.refuse(error).await);
    };
    conn.send(&welcome).await?;
    tracing::info!(name = %hello.name, pid = ?hello.pid, "engine connected");
    let result = loop {
        tokio::select! {
            frame = conn.reader.read::<ClientMessage>() => match frame {
                Ok(Some(ClientMessage::Status(status))) => attachment.report(status),
                Ok(Some(ClientMessage::Error(error))) => break Err(ConnectionError::Peer(error)),
                Ok(Some(other)) => {
                    let error = ProtocolError::new(
                        ErrorCode::UnexpectedMessage,
                        format!("an engine may not send {}", message_name(&other)),
                    );
                    break Err(conn.refuse(error).await);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(conn.frame_error(e).await),
            },
            Some(command) = attachment.commands.recv() => {
                let message = match command {
                    EngineCommand::Drain(request) => ServerMessage::Drain(request),
                    EngineCommand::Abort(abort) => ServerMessage::Abort(abort),
                };
                if let Err(e) = conn.send(&message).await {
                    break Err(e.into());
                }
            }
            () = cancel.cancelled() => break Ok(()),
        }
    };
    tracing::info!(name = %hello.name, "engine disconnected");
    result
}

/// The preStop client: one drain request, progress, then the result.
async fn serve_drain_client(
    mut conn: Connection,
    coordinator: &Arc<Coordinator>,
    welcome: ServerMessage,
) -> Result<(), ConnectionError> {
    conn.send(&welcome).await?;
    let request: DrainRequest =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.reader.read()).await {
            Ok(Ok(Some(ClientMessage::Drain(request)))) => request,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(conn.frame_error(e).await),
            Ok(Ok(Some(other))) => {
                let error = ProtocolError::new(
                    ErrorCode::UnexpectedMessage,
                    format!(
                        "a drain client must send drain, got {}",
                        message_name(&other)
                    ),
                );
                return Err(conn.refuse(error).await);
            }
            Err(_) => {
                let error = ProtocolError::new(
                    ErrorCode::HandshakeTimeout,
                    "no drain request after the handshake",
                );
                return Err(conn.refuse(error).await);
            }
        };
    let mut drain = coordinator.request_drain(request);
    let mut engine = coordinator.engine.subscribe();
    let mut ticker = tokio::time::interval(coordinator.heartbeat_interval());
    loop {
        let state = *drain.borrow_and_update();
        let started = match state {
            DrainState::Finished { report, .. } => {
                conn.send(&ServerMessage::DrainResult(report)).await?;
                return Ok(());
            }
            DrainState::Running { started, .. } => started,
            DrainState::Idle => Instant::now(),
        };
        let status = engine.borrow_and_update().status.unwrap_or_default();
        let progress = Progress {
            engine: status,
            elapsed: started.elapsed(),
        };
        conn.send(&ServerMessage::Progress(progress)).await?;
        tokio::select! {
            _ = drain.changed() => {}
            _ = engine.changed() => {}
            _ = ticker.tick() => {}
            // The client hung up: the drain goes on without it.
            frame = conn.reader.read::<ClientMessage>() => {
                if let Ok(Some(_)) = frame {
                    let error = ProtocolError::new(ErrorCode::UnexpectedMessage, "one drain request per connection");
                    return Err(conn.refuse(error).await);
                }
                return Ok(());
            }
        }
    }
}
