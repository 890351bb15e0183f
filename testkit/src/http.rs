//! A small HTTP/1.1 client: one connection per request, every connect
//! bounded as real clients bound it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::PROMPT;

/// How long a request waits for a connection. Through a Service, a
/// connection sent to a pod that is already gone hangs until the kernel
/// gives up, minutes later.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `method path` with `body` (JSON when not empty) to `addr` on a new
/// connection; the answer's body is left to read.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Response<Incoming>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect: no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if !body.is_empty() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// A whole HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The header `name`, if present and text.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
}

/// The header `name` of `headers`, if present and text.
pub fn header(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Sends a request and reads the whole answer.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let response = send(addr, method, path, body).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `GET path`, the whole answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    fetch(addr, "GET", path, Vec::new()).await
}

/// `GET path` on `addr`: the status code, or `None` when nothing answers
/// within `timeout`, as a kubelet's probe sees it.
pub async fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let attempt = send(addr, "GET", path, Vec::new());
    let response = tokio::time::timeout(timeout, attempt).await.ok()?.ok()?;
    Some(response.status().as_u16())
}

/// Polls `GET path` on `addr` until it answers `status`; panics with
/// `context()` after [`PROMPT`].
pub async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let got = get_status(addr, path, PROMPT).await;
        if got == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answered {got:?}, never {status}:\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes raw bytes on a fresh connection and reads until the server closes
/// it (or [`PROMPT`] passes).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before reading everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PROMPT, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP answer, 0 if there is none.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of the sample `series` (its name and labels, exactly as
/// printed) in Prometheus or OpenMetrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_exact_series() {
        let text = "# TYPE a counter\na_total{x=\"1\"} 3\na_total{x=\"10\"} 4\nb 2.5\n# EOF\n";
        assert_eq!(sample(text, "a_total{x=\"1\"}"), Some(3.0));
        assert_eq!(sample(text, "a_total{x=\"10\"}"), Some(4.0));
        assert_eq!(sample(text, "b"), Some(2.5));
        assert_eq!(sample(text, "a_total"), None);
        assert_eq!(sample(text, "c"), None);
    }

    #[test]
    fn a_raw_status_is_read_from_the_status_line() {
        assert_eq!(raw_status("HTTP/1.1 405 Method Not Allowed\r\n\r\n"), 405);
        assert_eq!(raw_status(""), 0);
    }
}
