//! An OpenAI client for the simulated engine (or a proxy in front of it)
//! that checks every byte of every answer with [`quiesce_sim::verify`] and
//! sorts each request into exactly one outcome.

use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use quiesce_sim::openai::Endpoint;
use quiesce_sim::tokens::chat_prompt;
use quiesce_sim::verify::{Expected, Outcome, SseDecoder, StreamCheck, check_response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::PROMPT;
use crate::http::{header, send};

/// A generation request. It names no model: the engine answers with the
/// one it serves.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Where it goes.
    pub endpoint: Endpoint,
    /// The prompt, or the content of the one user message of a chat.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Whether to stream (SSE).
    pub stream: bool,
}

impl Ask {
    /// A streaming completion.
    pub fn stream(prompt: &str, max_tokens: u32) -> Self {
        Self {
            endpoint: Endpoint::Completions,
            prompt: prompt.to_owned(),
            max_tokens,
            stream: true,
        }
    }

    /// A non-streaming completion.
    pub fn whole(prompt: &str, max_tokens: u32) -> Self {
        Self {
            stream: false,
            ..Self::stream(prompt, max_tokens)
        }
    }

    /// A chat completion with one user message.
    pub fn chat(content: &str, max_tokens: u32, stream: bool) -> Self {
        Self {
            endpoint: Endpoint::ChatCompletions,
            stream,
            ..Self::stream(content, max_tokens)
        }
    }

    fn path(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }

    fn body(&self) -> Value {
        let mut body = json!({"max_tokens": self.max_tokens, "stream": self.stream});
        match self.endpoint {
            Endpoint::Completions => body["prompt"] = json!(self.prompt),
            Endpoint::ChatCompletions => {
                body["messages"] = json!([{"role": "user", "content": self.prompt}]);
            }
        }
        body
    }

    /// What the engine must answer.
    pub fn expected(&self) -> Expected {
        let prompt = match self.endpoint {
            Endpoint::Completions => self.prompt.clone(),
            Endpoint::ChatCompletions => chat_prompt([("user", self.prompt.as_str())]),
        };
        Expected {
            endpoint: self.endpoint,
            prompt,
            max_tokens: self.max_tokens,
        }
    }
}

/// How one request went.
#[derive(Debug, Clone)]
pub struct Record {
    /// The outcome, or what the engine (or the network) did wrong.
    pub outcome: Result<Outcome, String>,
    /// The response's headers, `None` when no response arrived: a proxy
    /// says there which backend answered.
    pub headers: Option<HeaderMap>,
    /// When each verified token arrived.
    pub token_times: Vec<Instant>,
    /// When it was sent.
    pub started: Instant,
    /// When its answer ended.
    pub ended: Instant,
}

/// A request in the background.
pub struct InFlight {
    tokens: watch::Receiver<u32>,
    task: tokio::task::JoinHandle<Record>,
}

impl InFlight {
    /// Waits until at least `n` tokens have arrived (and been verified).
    pub async fn wait_tokens(&mut self, n: u32) {
        let waited = tokio::time::timeout(PROMPT, self.tokens.wait_for(|t| *t >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "fewer than {n} tokens within {PROMPT:?}"
        );
    }

    /// Waits for the request to end.
    pub async fn finish(self) -> Record {
        tokio::time::timeout(PROMPT * 2, self.task)
            .await
            .expect("the request did not end in time")
            .expect("the request task panicked")
    }
}

/// Starts `ask` in the background.
pub fn spawn_request(addr: SocketAddr, ask: Ask) -> InFlight {
    let (tokens_tx, tokens) = watch::channel(0);
    let task = tokio::spawn(async move { request_with(addr, &ask, &tokens_tx).await });
    InFlight { tokens, task }
}

/// Sends `ask` and waits for its record, however long the answer takes.
pub async fn request(addr: SocketAddr, ask: &Ask) -> Record {
    request_with(addr, ask, &watch::channel(0).0).await
}

async fn request_with(addr: SocketAddr, ask: &Ask, tokens: &watch::Sender<u32>) -> Record {
    let started = Instant::now();
    let mut headers = None;
    let mut token_times = Vec::new();
    let outcome = exchange(addr, ask, tokens, &mut headers, &mut token_times).await;
    Record {
        outcome,
        headers,
        token_times,
        started,
        ended: Instant::now(),
    }
}

async fn exchange(
    addr: SocketAddr,
    ask: &Ask,
    tokens: &watch::Sender<u32>,
    headers: &mut Option<HeaderMap>,
    token_times: &mut Vec<Instant>,
) -> Result<Outcome, String> {
    let response = send(
        addr,
        "POST",
        ask.path(),
        ask.body().to_string().into_bytes(),
    )
    .await?;
    let status = response.status().as_u16();
    let head = headers.insert(response.headers().clone());
    let retry_after = header(head, RETRY_AFTER).map(str::to_owned);
    let event_stream = header(head, CONTENT_TYPE) == Some("text/event-stream");
    let expected = ask.expected();
    let mut body = response.into_body();
    if !(ask.stream && status == 200 && event_stream) {
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        return check_response(&expected, status, retry_after.as_deref(), &bytes)
            .map_err(|v| v.to_string());
    }
    let mut decoder = SseDecoder::new();
    let mut check = StreamCheck::new(expected);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("the stream broke after {} tokens: {e}", check.tokens()))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for event in decoder.push(data).map_err(|v| v.to_string())? {
            let before = check.tokens();
            check.event(&event).map_err(|v| v.to_string())?;
            if check.tokens() > before {
                token_times.push(Instant::now());
                tokens.send_replace(check.tokens());
            }
        }
    }
    if decoder.has_partial_event() {
        return Err(format!(
            "the stream ended inside an event after {} tokens",
            check.tokens()
        ));
    }
    check.finish().map_err(|v| v.to_string())
}
