//! Framing: a 4-byte big-endian body length, then that many bytes of UTF-8
//! JSON holding one message.

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ErrorCode, MAX_FRAME_LEN};

const LEN_PREFIX: usize = 4;

/// Why a frame could not be read or written.
///
/// After an error while reading, the connection is out of step with the
/// peer: send an error frame if [`FrameError::error_code`] gives a code, then
/// close the connection. A message refused by [`encode_frame`] or
/// [`write_frame`] leaves the connection intact, since nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A frame announced or needed more than [`MAX_FRAME_LEN`] bytes.
    #[error(
        "frame of {len} bytes exceeds the protocol limit of {MAX_FRAME_LEN} bytes \
         (is the peer speaking the quiesce protocol?)"
    )]
    TooLarge {
        /// The announced (when reading) or encoded (when writing) body length.
        len: usize,
    },
    /// A frame announced a length of 0.
    #[error("received a frame of length 0; every frame must carry one JSON object")]
    Empty,
    /// The connection closed in the middle of a frame.
    #[error(
        "connection closed in the middle of a frame \
         (the peer crashed or closed the socket early)"
    )]
    Truncated,
    /// The body is not a valid message (bad UTF-8 or JSON, unknown type,
    /// missing or mistyped field), or the message could not be encoded.
    #[error("frame is not a valid protocol message: {0}")]
    Malformed(#[source] serde_json::Error),
}

impl FrameError {
    /// The code of the error frame to send to the peer before closing, or
    /// `None` when the peer cannot receive it (the connection is broken or
    /// already closed).
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::TooLarge { .. } => Some(ErrorCode::FrameTooLarge),
            Self::Empty | Self::Malformed(_) => Some(ErrorCode::BadFrame),
            Self::Io(_) | Self::Truncated => None,
        }
    }
}

/// Encodes one message as a complete frame: length prefix and JSON body.
///
/// Fails with [`FrameError::TooLarge`] if the body would exceed
/// [`MAX_FRAME_LEN`].
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0; LEN_PREFIX];
    serde_json::to_writer(&mut frame, msg).map_err(FrameError::Malformed)?;
    let len = frame.len() - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len })?;
    frame[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

/// Writes one message as one frame and flushes the writer.
///
/// A message whose body would exceed [`MAX_FRAME_LEN`] is refused with
/// [`FrameError::TooLarge`] before anything is written. Not cancellation safe:
/// if the future is dropped midway, part of the frame may have been sent, and
/// the connection must be closed.
pub async fn write_frame<W, T>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize + ?Sized,
{
    let frame = encode_frame(msg)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame and decodes its message.
///
/// Returns `Ok(None)` when the connection closes cleanly between frames. A
/// length above [`MAX_FRAME_LEN`] is refused before the body is read or
/// allocated. Not cancellation safe: dropping the future midway loses the bytes
/// read so far. That is fine under a timeout after which the connection is
/// closed (such as the handshake); in a `select!` loop, use a [`FrameReader`].
pub async fn read_frame<R, T>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    FrameReader::new(reader).read().await
}

/// Reads frames from a stream, keeping a partly read frame across calls so
/// that [`FrameReader::read`] is cancellation safe. It never reads past the
/// end of the current frame.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    prefix: [u8; LEN_PREFIX],
    prefix_filled: usize,
    /// The body being read, sized to its announced length once the prefix is
    /// complete; empty before that (a valid frame is never empty).
    body: Vec<u8>,
    body_filled: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader, such as the read half of a Unix stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            prefix: [0; LEN_PREFIX],
            prefix_filled: 0,
            body: Vec::new(),
            body_filled: 0,
        }
    }

    /// Reads the next frame and decodes its message; see [`read_frame`] for
    /// the results.
    ///
    /// Cancellation safe: if the future is dropped before it completes (in a
    /// `select!` branch that lost), no data is lost and the next call
    /// continues the same frame. After an error the stream is out of step
    /// with the peer; close the connection.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let result = self.read_body().await.and_then(|body| match body {
            None => Ok(None),
            Some(body) => serde_json::from_slice(body)
                .map(Some)
                .map_err(FrameError::Malformed),
        });
        if !matches!(result, Ok(None)) {
            self.prefix_filled = 0;
            self.body.clear();
            self.body_filled = 0;
        }
        result
    }

    /// Fills the prefix, then the body; `None` on EOF at a frame boundary.
    async fn read_body(&mut self) -> Result<Option<&[u8]>, FrameError> {
        while self.prefix_filled < LEN_PREFIX {
            match read_some(&mut self.inner, &mut self.prefix[self.prefix_filled..]).await? {
                0 if self.prefix_filled == 0 => return Ok(None),
                0 => return Err(FrameError::Truncated),
                n => self.prefix_filled += n,
            }
        }
        if self.body.is_empty() {
            let len = usize::try_from(u32::from_be_bytes(self.prefix)).unwrap_or(usize::MAX);
            if len == 0 {
                return Err(FrameError::Empty);
            }
            if len > MAX_FRAME_LEN {
                return Err(FrameError::TooLarge { len });
            }
            self.body.resize(len, 0);
        }
        while self.body_filled < self.body.len() {
            match read_some(&mut self.inner, &mut self.body[self.body_filled..]).await? {
                0 => return Err(FrameError::Truncated),
                n => self.body_filled += n,
            }
        }
        Ok(Some(&self.body))
    }
}

/// One `read` call, retried on `Interrupted`; cancellation safe like
/// [`AsyncReadExt::read`].
async fn read_some<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf).await {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::{
        ClientMessage, DrainReport, DrainRequest, DrainResult, EngineStatus, Hello, Phase,
        Progress, ProtocolError, Role, ServerMessage, Welcome, negotiate,
    };

    fn ready(in_flight: u32) -> ClientMessage {
        ClientMessage::Status(EngineStatus {
            phase: Phase::Ready,
            in_flight,
            queued: 0,
            kv_transfers: 0,
        })
    }

    fn raw_frame(body: &[u8]) -> Vec<u8> {
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    /// An error frame whose body is exactly `len` bytes long.
    fn error_frame_of_len(len: usize) -> ServerMessage {
        let overhead = encode_frame(&ServerMessage::Error(ProtocolError::new(
            ErrorCode::BadFrame,
            "",
        )))
        .unwrap()
        .len()
            - LEN_PREFIX;
        ServerMessage::Error(ProtocolError::new(
            ErrorCode::BadFrame,
            "x".repeat(len - overhead),
        ))
    }

    async fn read_client(mut bytes: &[u8]) -> Result<Option<ClientMessage>, FrameError> {
        read_frame(&mut bytes).await
    }

    #[test]
    fn frame_bytes_are_pinned() {
        let frame = encode_frame(&ready(2)).unwrap();
        let hex: Vec<String> = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "00 00 00 4b 7b 22 74 79 70 65 22 3a 22 73 74 61 74 75 73 22 2c 22 70 68 61 73 \
             65 22 3a 22 72 65 61 64 79 22 2c 22 69 6e 5f 66 6c 69 67 68 74 22 3a 32 2c 22 \
             71 75 65 75 65 64 22 3a 30 2c 22 6b 76 5f 74 72 61 6e 73 66 65 72 73 22 3a 30 \
             7d"
        );
        assert_eq!(frame.len(), 4 + 0x4b);
    }

    #[tokio::test]
    async fn reads_frames_until_clean_eof() {
        let mut bytes = encode_frame(&ready(1)).unwrap();
        bytes.extend(encode_frame(&ready(2)).unwrap());
        let mut reader = FrameReader::new(&bytes[..]);
        assert_eq!(reader.read().await.unwrap(), Some(ready(1)));
        assert_eq!(reader.read().await.unwrap(), Some(ready(2)));
        assert_eq!(reader.read::<ClientMessage>().await.unwrap(), None);
        assert_eq!(reader.read::<ClientMessage>().await.unwrap(), None);
        assert!(read_client(&[]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_without_reading_the_body() {
        let len = MAX_FRAME_LEN + 1;
        let mut bytes = u32::try_from(len).unwrap().to_be_bytes().to_vec();
        bytes.extend(b"{\"type\":");
        let mut rest = &bytes[..];
        let err = read_frame::<_, ClientMessage>(&mut rest).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len: l } if l == len),
            "{err}"
        );
        assert_eq!(rest, b"{\"type\":", "the body must not be read");
        assert_eq!(err.error_code(), Some(ErrorCode::FrameTooLarge));

        // An HTTP client on the socket: "GET " read as a length.
        let err = read_client(b"GET / HTTP/1.1\r\n\r\n").await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 1_195_725_856 }));
        assert!(
            err.to_string()
                .contains("is the peer speaking the quiesce protocol?")
        );
    }

    #[tokio::test]
    async fn frame_of_exactly_the_limit_is_accepted() {
        let msg = error_frame_of_len(MAX_FRAME_LEN);
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(frame.len(), LEN_PREFIX + MAX_FRAME_LEN);
        let back: Option<ServerMessage> = read_frame(&mut &frame[..]).await.unwrap();
        assert_eq!(back, Some(msg));
    }

    #[tokio::test]
    async fn oversized_message_is_not_written() {
        let msg = error_frame_of_len(MAX_FRAME_LEN + 1);
        let mut sink = Vec::new();
        let err = write_frame(&mut sink, &msg).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME_LEN + 1));
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn zero_length_is_rejected() {
        let err = read_client(&[0, 0, 0, 0]).await.unwrap_err();
        assert!(matches!(err, FrameError::Empty), "{err}");
        assert_eq!(err.error_code(), Some(ErrorCode::BadFrame));
    }

    #[tokio::test]
    async fn truncated_length_prefix() {
        for cut in 1..LEN_PREFIX {
            let frame = encode_frame(&ready(1)).unwrap();
            let err = read_client(&frame[..cut]).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "{err}");
            assert_eq!(err.error_code(), None);
        }
    }

    #[tokio::test]
    async fn truncated_body() {
        let frame = encode_frame(&ready(1)).unwrap();
        for cut in [LEN_PREFIX, LEN_PREFIX + 1, frame.len() - 1] {
            let err = read_client(&frame[..cut]).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "{err}");
        }
    }

    #[tokio::test]
    async fn malformed_bodies_are_rejected() {
        for body in [
            &b"{\"type\":\"status\""[..],
            b"not json",
            b"[1,2]",
            b"{\"type\":\"status\"} trailing",
            b"{\"type\":\"hello\",\"versions\":[1],\"role\":\"engine\",\"name\":\"\xff\xfe\"}",
            b"{\"type\":\"welcome\",\"version\":1}",
        ] {
            let err = read_client(&raw_frame(body)).await.unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{err}");
            assert_eq!(err.error_code(), Some(ErrorCode::BadFrame));
            assert!(
                err.to_string()
                    .starts_with("frame is not a valid protocol message: ")
            );
        }
    }

    #[tokio::test]
    async fn unknown_fields_are_ignored_in_frames() {
        let body = br#"{"type":"status","phase":"ready","in_flight":1,"queued":0,"kv_transfers":0,"new":true}"#;
        assert_eq!(read_client(&raw_frame(body)).await.unwrap(), Some(ready(1)));
    }

    #[tokio::test]
    async fn reader_recovers_frame_after_cancellation() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx);
        let frame = encode_frame(&ready(7)).unwrap();
        for cut in [2, 10] {
            tx.write_all(&frame[..cut]).await.unwrap();
            // The read cannot finish; yield_now wins on its second poll and
            // drops the read future in the middle of the frame.
            tokio::select! {
                biased;
                msg = reader.read::<ClientMessage>() => panic!("read a partial frame: {msg:?}"),
                () = tokio::task::yield_now() => {}
            }
            tx.write_all(&frame[cut..]).await.unwrap();
            assert_eq!(reader.read().await.unwrap(), Some(ready(7)));
        }
    }

    /// A whole conversation between an engine and a minimal sidecar over an
    /// in-memory pipe small enough to split every frame.
    #[tokio::test]
    async fn engine_conversation_over_duplex() {
        let (engine_io, sidecar_io) = tokio::io::duplex(16);
        let drain = DrainRequest {
            propagation: Duration::from_millis(5),
            timeout: Duration::from_millis(50),
            abort_grace: Duration::from_millis(5),
        };

        let sidecar = tokio::spawn(async move {
            let (rx, mut tx) = tokio::io::split(sidecar_io);
            let mut rx = FrameReader::new(rx);
            let Some(ClientMessage::Hello(hello)) = rx.read().await.unwrap() else {
                panic!("first frame must be hello");
            };
            assert_eq!(hello.role, Role::Engine);
            let version = negotiate(&hello.versions).unwrap();
            let welcome = Welcome {
                version,
                heartbeat_interval: crate::DEFAULT_HEARTBEAT_INTERVAL,
                sidecar_version: "test".into(),
            };
            write_frame(&mut tx, &ServerMessage::Welcome(welcome))
                .await
                .unwrap();
            assert_eq!(rx.read().await.unwrap(), Some(ready(3)));
            write_frame(&mut tx, &ServerMessage::Drain(drain))
                .await
                .unwrap();
            let mut phases = Vec::new();
            while let Some(ClientMessage::Status(status)) = rx.read().await.unwrap() {
                phases.push(status.phase);
            }
            phases
        });

        let (rx, mut tx) = tokio::io::split(engine_io);
        let mut rx = FrameReader::new(rx);
        let hello = ClientMessage::Hello(Hello::new(Role::Engine, "sim"));
        write_frame(&mut tx, &hello).await.unwrap();
        let Some(ServerMessage::Welcome(welcome)) = rx.read().await.unwrap() else {
            panic!("expected welcome");
        };
        assert_eq!(welcome.version, 1);
        write_frame(&mut tx, &ready(3)).await.unwrap();
        assert_eq!(rx.read().await.unwrap(), Some(ServerMessage::Drain(drain)));
        for phase in [Phase::Draining, Phase::Stopped] {
            let status = EngineStatus {
                phase,
                in_flight: 0,
                queued: 0,
                kv_transfers: 0,
            };
            write_frame(&mut tx, &ClientMessage::Status(status))
                .await
                .unwrap();
        }
        // Closes the pipe's write side; dropping one half of a split would not.
        tx.shutdown().await.unwrap();
        let phases = tokio::time::timeout(Duration::from_secs(5), sidecar)
            .await
            .expect("the sidecar must see the engine close the connection")
            .unwrap();
        assert_eq!(phases, [Phase::Draining, Phase::Stopped]);
    }

    /// The drain client's side over a real Unix socket pair: drain, progress,
    /// result, then the sidecar closes.
    #[tokio::test]
    async fn drain_client_conversation_over_unix_socket() {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        let report = DrainReport {
            result: DrainResult::Drained,
            elapsed: Duration::from_millis(42),
        };
        let sidecar = tokio::spawn(async move {
            let (rx, mut tx) = server.into_split();
            let mut rx = FrameReader::new(rx);
            assert!(matches!(
                rx.read().await.unwrap(),
                Some(ClientMessage::Hello(Hello {
                    role: Role::Drain,
                    ..
                }))
            ));
            let welcome = Welcome {
                version: 1,
                heartbeat_interval: Duration::from_millis(250),
                sidecar_version: "test".into(),
            };
            write_frame(&mut tx, &ServerMessage::Welcome(welcome))
                .await
                .unwrap();
            let Some(ClientMessage::Drain(_)) = rx.read().await.unwrap() else {
                panic!("expected drain");
            };
            let progress = Progress {
                engine: EngineStatus {
                    phase: Phase::Draining,
                    in_flight: 1,
                    queued: 0,
                    kv_transfers: 0,
                },
                elapsed: Duration::from_millis(10),
            };
            for msg in [
                ServerMessage::Progress(progress),
                ServerMessage::DrainResult(report),
            ] {
                write_frame(&mut tx, &msg).await.unwrap();
            }
        });

        let (rx, mut tx) = client.into_split();
        let mut rx = FrameReader::new(rx);
        write_frame(
            &mut tx,
            &ClientMessage::Hello(Hello::new(Role::Drain, "prestop")),
        )
        .await
        .unwrap();
        assert!(matches!(
            rx.read().await.unwrap(),
            Some(ServerMessage::Welcome(_))
        ));
        let request = DrainRequest {
            propagation: Duration::ZERO,
            timeout: Duration::from_secs(1),
            abort_grace: Duration::ZERO,
        };
        write_frame(&mut tx, &ClientMessage::Drain(request))
            .await
            .unwrap();
        let mut received = Vec::new();
        while let Some(msg) = rx.read::<ServerMessage>().await.unwrap() {
            received.push(msg);
        }
        sidecar.await.unwrap();
        assert!(matches!(received[0], ServerMessage::Progress(_)));
        assert_eq!(received[1], ServerMessage::DrainResult(report));
        assert_eq!(received.len(), 2);
    }
}
