//! The sidecar's socket server, in process, on a real Unix socket: each
//! input is what one client sends. Whatever it is, the server answers or
//! closes that connection, and then still welcomes a well-behaved engine.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use quiesce_protocol::{ClientMessage, FrameReader, Hello, Role, ServerMessage, write_frame};
use quiesce_sidecar::coordinator::Coordinator;
use quiesce_sidecar::socket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Server {
    runtime: tokio::runtime::Runtime,
    path: std::path::PathBuf,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = std::env::temp_dir().join(format!("quiesce-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a socket directory");
        let path = dir.join("quiesce.sock");
        let listener = runtime
            .block_on(async { socket::bind(&path) })
            .expect("bind");
        let coordinator: Arc<Coordinator> = Coordinator::new(Duration::from_millis(100));
        runtime.spawn(socket::serve(
            listener,
            coordinator,
            true,
            CancellationToken::new(),
            TaskTracker::new(),
        ));
        Server { runtime, path }
    })
}

/// A well-behaved engine says hello and is welcomed.
async fn welcomed(path: &std::path::Path) -> bool {
    let Ok(stream) = UnixStream::connect(path).await else {
        return false;
    };
    let (read, mut write) = stream.into_split();
    let hello = ClientMessage::Hello(Hello::new(Role::Drain, "fuzz"));
    if write_frame(&mut write, &hello).await.is_err() {
        return false;
    }
    let mut reader = FrameReader::new(read);
    let answer = tokio::time::timeout(Duration::from_secs(5), reader.read::<ServerMessage>()).await;
    matches!(answer, Ok(Ok(Some(ServerMessage::Welcome(_)))))
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    server.runtime.block_on(async {
        let mut stream = UnixStream::connect(&server.path).await.expect("connect");
        let _ = stream.write_all(data).await;
        let _ = stream.shutdown().await;
        // The server answers and closes, or waits for more: either way it
        // must not hold this test for long, nor stop serving.
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_millis(200), stream.read_to_end(&mut sink)).await;
        drop(stream);
        assert!(
            welcomed(&server.path).await,
            "the sidecar stopped welcoming clients"
        );
    });
});
