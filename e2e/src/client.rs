//! An OpenAI client that checks every byte of every answer of the simulated
//! engine and sorts each request into exactly one outcome.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{HeaderMap, Request};
use quiesce_sim::openai::Endpoint;
use quiesce_sim::verify::{Expected, Outcome, SseDecoder, StreamCheck, check_response};
use tokio::net::TcpStream;

/// How long a client waits for a connection, as HTTP clients do.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A completion to request.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The prompt.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Whether to stream (SSE).
    pub stream: bool,
}

/// How a request ended, as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// Every token arrived, verified, with `finish_reason: "length"`.
    Completed {
        /// Tokens received.
        tokens: u32,
    },
    /// Refused before any work with a retryable 503.
    Rejected,
    /// Ended explicitly with an abort response.
    Aborted {
        /// Verified tokens received before the abort.
        tokens: u32,
    },
    /// Anything else: a reset, a truncated stream, a wrong byte, a bare 5xx.
    Failed(String),
}

/// A finished request, with its timing.
#[derive(Clone, Debug)]
pub struct Finished {
    /// How it ended.
    pub outcome: Classified,
    /// When it was sent.
    pub started: Instant,
    /// When its answer ended.
    pub ended: Instant,
}

/// Sends `completion` to the engine (or a proxy) at `addr` and classifies the answer.
pub async fn complete(addr: SocketAddr, completion: &Completion) -> Finished {
    complete_with_headers(addr, completion).await.0
}

/// [`complete`], also returning the response headers (`None` when no
/// response arrived): a proxy says there which backend answered.
pub async fn complete_with_headers(
    addr: SocketAddr,
    completion: &Completion,
) -> (Finished, Option<HeaderMap>) {
    let started = Instant::now();
    let mut headers = None;
    let outcome = match send(addr, completion, &mut headers).await {
        Ok(outcome) => outcome,
        Err(why) => Classified::Failed(why),
    };
    let finished = Finished {
        outcome,
        started,
        ended: Instant::now(),
    };
    (finished, headers)
}

async fn send(
    addr: SocketAddr,
    completion: &Completion,
    headers: &mut Option<HeaderMap>,
) -> Result<Classified, String> {
    // Through a Service, a connection sent to a pod that is already gone
    // hangs until the kernel gives up, minutes later: clients bound it.
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect: no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    // No "model": the engine then answers with the one it serves.
    let body = serde_json::json!({
        "prompt": completion.prompt,
        "max_tokens": completion.max_tokens,
        "stream": completion.stream,
    });
    let request = Request::post("/v1/completions")
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    *headers = Some(response.headers().clone());
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let expected = Expected {
        endpoint: Endpoint::Completions,
        prompt: completion.prompt.clone(),
        max_tokens: completion.max_tokens,
    };
    let mut body = response.into_body();
    if status == 200 && completion.stream {
        let mut decoder = SseDecoder::new();
        let mut check = StreamCheck::new(expected);
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| format!("the stream broke after {} tokens: {e}", check.tokens()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for event in decoder.push(data).map_err(|e| e.to_string())? {
                check.event(&event).map_err(|e| e.to_string())?;
            }
        }
        return classify(check.finish());
    }
    let bytes = body
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    classify(check_response(
        &expected,
        status,
        retry_after.as_deref(),
        &bytes,
    ))
}

fn classify(result: Result<Outcome, quiesce_sim::verify::Violation>) -> Result<Classified, String> {
    match result {
        Ok(Outcome::Completed { tokens }) => Ok(Classified::Completed { tokens }),
        Ok(Outcome::Rejected { .. }) => Ok(Classified::Rejected),
        Ok(Outcome::Aborted { tokens }) => Ok(Classified::Aborted { tokens }),
        Err(violation) => Err(violation.to_string()),
    }
}

/// `GET path` on `addr`: the status code, or `None` when nothing answers.
pub async fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().as_u16())
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}
