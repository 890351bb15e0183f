//! The server against hostile clients, over real sockets: a flood of idle
//! connections, slowloris, idle keep-alive, oversized heads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use quiesce_http::{Limits, serve};
use quiesce_testkit::http::get_status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server(limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/live", get(|| async { "ok\n" }));
    tokio::spawn(serve(listener, router, limits, std::future::pending()));
    addr
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (such as a 431): keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_is_bounded_and_probes_are_answered() {
    let limits = Limits {
        max_connections: 64,
        ..Limits::default()
    };
    let addr = server(limits).await;
    let mut flood = Vec::new();
    for i in 0..600 {
        flood.push(TcpStream::connect(addr).await.unwrap());
        if i % 50 == 49 {
            // The probe is the newest connection: it evicts the oldest.
            let status = get_status(addr, "/live", Duration::from_secs(5)).await;
            assert_eq!(status, Some(200), "probe after {} idle connections", i + 1);
        }
    }
    // Every connection beyond the limit was closed by the server.
    let mut open = 0;
    for stream in &mut flood {
        if !closed_within(stream, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    assert!(
        open <= limits.max_connections,
        "{open} idle connections still open"
    );
    assert!(
        open > 0,
        "the newest idle connections stay open until their timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let addr = server(limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();
    // One header byte every 100 ms: the head never ends.
    let dripping = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), dripping).await;
    let held = started.elapsed();
    assert!(held >= limits.header_timeout, "closed after {held:?}");
    assert!(
        held < Duration::from_secs(10),
        "slowloris held the connection {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let addr = server(limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(10)).await);
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_refused_and_the_server_serves_on() {
    let addr = server(Limits::default()).await;
    for size in [20 * 1024, 1024 * 1024] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /live HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        // The server may close before it has read everything.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "a {size}-byte header got {answer:?}"
        );
        assert_eq!(
            get_status(addr, "/live", Duration::from_secs(5)).await,
            Some(200)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_methods_and_paths_get_errors() {
    let addr = server(Limits::default()).await;
    for (request, want) in [
        (
            "DELETE /live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            "GET /../../etc/passwd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "BREW /live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405",
        ),
        ("GET /live HTTP/9.9\r\n\r\n", "HTTP/1.1 400"),
        ("\x00\x01\x02garbage\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let answer = quiesce_testkit::http::raw_exchange(addr, request.as_bytes()).await;
        assert!(answer.starts_with(want), "{request:?} got {answer:?}");
    }
    assert_eq!(
        get_status(addr, "/live", Duration::from_secs(5)).await,
        Some(200)
    );
}
