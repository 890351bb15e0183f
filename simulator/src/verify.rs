//! Client-side checks of the simulated engine's answers: every request ends
//! in exactly one [`Outcome`] (completed and correct token by token,
//! rejected before any work, or explicitly aborted), and anything else is a
//! [`Violation`] — a truncated stream, a wrong token, a 5xx without an abort
//! body.
//!
//! Pure: feed it the bytes you read ([`SseDecoder`], [`StreamCheck`]) or the
//! whole response ([`check_response`]); the tests and the e2e harness share it.

use serde_json::Value;

use super::openai::{ABORTED_TYPE, Endpoint, REJECTED_TYPE};
use super::tokens::{expected_text, prompt_seed, token_id, token_text};

/// How a request ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every token arrived, each equal to [`super::tokens::expected_token`],
    /// and the stream or response ended with `finish_reason: "length"`.
    Completed {
        /// Tokens received (the request's `max_tokens`).
        tokens: u32,
    },
    /// Refused before any work: 503 with `Retry-After`; retry elsewhere.
    Rejected {
        /// `error.code`: `starting` or `shutting_down`.
        code: String,
    },
    /// Aborted after work started, explicitly: a final chunk with
    /// `finish_reason: "abort"` then `[DONE]`, or (non-streaming) a 503
    /// `server_shutdown` error without `Retry-After`.
    Aborted {
        /// Correct tokens received before the abort (0 for non-streaming).
        tokens: u32,
    },
}

/// What a correct engine never does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The bytes are not what the protocol allows at this point.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A token differs from the expected one.
    #[error("token {index}: expected {expected:?}, got {got:?}")]
    WrongToken {
        /// The token's index.
        index: u32,
        /// What [`super::tokens::expected_token`] says.
        expected: String,
        /// What arrived.
        got: String,
    },
    /// A token chunk arrived out of order.
    #[error("expected token {expected}, got token {got}")]
    WrongIndex {
        /// The next index expected.
        expected: u32,
        /// The index that arrived.
        got: u64,
    },
    /// The stream ended without its final chunk and `[DONE]`.
    #[error("the stream ended after {tokens} tokens without a final chunk and [DONE]")]
    Truncated {
        /// Tokens received before it ended.
        tokens: u32,
    },
    /// An HTTP answer that is neither a success, a rejection nor an abort.
    #[error("unexpected HTTP {status}: {body}")]
    UnexpectedStatus {
        /// The status.
        status: u16,
        /// The body, lossily decoded.
        body: String,
    },
}

fn malformed(message: impl Into<String>) -> Violation {
    Violation::Malformed(message.into())
}

/// What a request asked for: enough to know every byte of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The endpoint it was sent to.
    pub endpoint: Endpoint,
    /// The prompt, as the engine sees it (for chat,
    /// [`super::tokens::chat_prompt`] of the messages).
    pub prompt: String,
    /// The request's `max_tokens`.
    pub max_tokens: u32,
}

/// Splits a `text/event-stream` body into the `data` of its events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
}

impl SseDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes as they arrive; returns the data of every event they
    /// complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, Violation> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = std::str::from_utf8(&raw).map_err(|_| malformed("an event is not UTF-8"))?;
            let mut data: Option<String> = None;
            for line in text.lines() {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let Some(value) = line.strip_prefix("data:") else {
                    return Err(malformed(format!("unexpected event line {line:?}")));
                };
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                }
            }
            events.extend(data);
        }
        Ok(events)
    }

    /// Whether a partial event is left over (the stream was cut inside an
    /// event).
    pub fn has_partial_event(&self) -> bool {
        self.buffer.iter().any(|b| !b.is_ascii_whitespace())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Length,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing yet (chat expects the role chunk first).
    Start,
    /// Token chunks.
    Tokens,
    /// The final chunk arrived; a usage chunk or `[DONE]` may follow.
    Finished(Finish),
    /// The usage chunk arrived; `[DONE]` must follow.
    Usage(Finish),
    /// `[DONE]` arrived; nothing may follow.
    Done(Finish),
}

/// Checks the events of one stream, in order.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    expected: Expected,
    seed: u64,
    next: u32,
    id: Option<String>,
    state: State,
}

impl StreamCheck {
    /// A check for a stream answering `expected`.
    pub fn new(expected: Expected) -> Self {
        let seed = prompt_seed(&expected.prompt);
        let state = match expected.endpoint {
            Endpoint::Completions => State::Tokens,
            Endpoint::ChatCompletions => State::Start,
        };
        Self {
            expected,
            seed,
            next: 0,
            id: None,
            state,
        }
    }

    /// Correct tokens received so far.
    pub fn tokens(&self) -> u32 {
        self.next
    }

    /// Checks the next event's data (what follows `data: `).
    pub fn event(&mut self, data: &str) -> Result<(), Violation> {
        if let State::Done(_) = self.state {
            return Err(malformed(format!("an event after [DONE]: {data}")));
        }
        if data == "[DONE]" {
            return match self.state {
                State::Finished(finish) | State::Usage(finish) => {
                    self.state = State::Done(finish);
                    Ok(())
                }
                _ => Err(malformed(format!(
                    "[DONE] after {} tokens without a final chunk",
                    self.next
                ))),
            };
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| malformed(format!("a chunk is not JSON ({e}): {data}")))?;
        let id = chunk["id"]
            .as_str()
            .ok_or_else(|| malformed("a chunk without an id"))?;
        match &self.id {
            None => self.id = Some(id.to_owned()),
            Some(first) if first != id => {
                return Err(malformed(format!("the id changed from {first} to {id}")));
            }
            Some(_) => {}
        }
        let choices = chunk["choices"]
            .as_array()
            .ok_or_else(|| malformed("a chunk without choices"))?;
        let Some(choice) = choices.first() else {
            // The usage chunk: empty choices, after the final chunk.
            return match self.state {
                State::Finished(finish) if chunk["usage"].is_object() => {
                    self.state = State::Usage(finish);
                    Ok(())
                }
                _ => Err(malformed(format!(
                    "an unexpected chunk without choices: {data}"
                ))),
            };
        };
        if choices.len() != 1 {
            return Err(malformed("more than one choice"));
        }
        match self.state {
            State::Start => {
                if choice["delta"]["role"] != "assistant" {
                    return Err(malformed(format!(
                        "the first chat chunk does not carry the role: {data}"
                    )));
                }
                self.state = State::Tokens;
                return Ok(());
            }
            State::Tokens => {}
            _ => return Err(malformed(format!("a chunk after the final chunk: {data}"))),
        }
        let text = match self.expected.endpoint {
            Endpoint::Completions => &choice["text"],
            Endpoint::ChatCompletions => &choice["delta"]["content"],
        };
        match choice["finish_reason"].as_str() {
            Some("abort") => {
                if !choice["token_index"].is_null() || text.as_str().is_some_and(|t| !t.is_empty())
                {
                    return Err(malformed(format!("an abort chunk with a token: {data}")));
                }
                self.state = State::Finished(Finish::Abort);
                Ok(())
            }
            finish @ (None | Some("length")) => {
                let index = choice["token_index"].as_u64().ok_or_else(|| {
                    malformed(format!("a token chunk without token_index: {data}"))
                })?;
                if index != u64::from(self.next) {
                    return Err(Violation::WrongIndex {
                        expected: self.next,
                        got: index,
                    });
                }
                let got = text
                    .as_str()
                    .ok_or_else(|| malformed(format!("a token chunk without text: {data}")))?;
                let expected = token_text(token_id(self.seed, self.next)).unwrap_or_default();
                if got != expected {
                    return Err(Violation::WrongToken {
                        index: self.next,
                        expected: expected.to_owned(),
                        got: got.to_owned(),
                    });
                }
                self.next += 1;
                let last = self.next == self.expected.max_tokens;
                match (finish.is_some(), last) {
                    (true, true) => self.state = State::Finished(Finish::Length),
                    (false, false) => {}
                    (true, false) => {
                        return Err(malformed(format!(
                            "finish_reason length after {} tokens",
                            self.next
                        )));
                    }
                    (false, true) => {
                        return Err(malformed(
                            "the last token does not carry finish_reason length",
                        ));
                    }
                }
                Ok(())
            }
            Some(other) => Err(malformed(format!("unexpected finish_reason {other:?}"))),
        }
    }

    /// The outcome once the body has ended: an error unless `[DONE]` came
    /// after a final chunk.
    pub fn finish(&self) -> Result<Outcome, Violation> {
        match self.state {
            State::Done(Finish::Length) => Ok(Outcome::Completed { tokens: self.next }),
            State::Done(Finish::Abort) => Ok(Outcome::Aborted { tokens: self.next }),
            _ => Err(Violation::Truncated { tokens: self.next }),
        }
    }
}

/// Checks a whole response that is not a 200 event stream: a non-streaming
/// answer, or a refusal of a streaming request. `retry_after` is the
/// `Retry-After` header, if any.
pub fn check_response(
    expected: &Expected,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Outcome, Violation> {
    let unexpected = || Violation::UnexpectedStatus {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| unexpected())?;
    match status {
        200 => {
            let choice = &value["choices"][0];
            let text = match expected.endpoint {
                Endpoint::Completions => &choice["text"],
                Endpoint::ChatCompletions => &choice["message"]["content"],
            };
            let text = text
                .as_str()
                .ok_or_else(|| malformed("a response without text"))?;
            let want = expected_text(&expected.prompt, expected.max_tokens);
            if text != want {
                return Err(malformed(format!(
                    "the text differs: expected {want:?}, got {text:?}"
                )));
            }
            if choice["finish_reason"] != "length" {
                return Err(malformed(format!(
                    "finish_reason {} instead of length",
                    choice["finish_reason"]
                )));
            }
            Ok(Outcome::Completed {
                tokens: expected.max_tokens,
            })
        }
        503 => {
            let error = &value["error"];
            let kind = error["type"].as_str().unwrap_or_default();
            match (retry_after.is_some(), kind) {
                (true, REJECTED_TYPE) => Ok(Outcome::Rejected {
                    code: error["code"].as_str().unwrap_or_default().to_owned(),
                }),
                (false, ABORTED_TYPE) => Ok(Outcome::Aborted { tokens: 0 }),
                _ => Err(unexpected()),
            }
        }
        _ => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{ApiError, ResponseMeta, SSE_DONE};
    use crate::tokens::expected_token;

    fn meta(endpoint: Endpoint) -> ResponseMeta {
        ResponseMeta {
            endpoint,
            id: "x-1".into(),
            created: 1,
            model: "sim".into(),
        }
    }

    fn expected(endpoint: Endpoint, max_tokens: u32) -> Expected {
        Expected {
            endpoint,
            prompt: "p".into(),
            max_tokens,
        }
    }

    /// A stream as the engine writes it: `tokens` tokens, then the end.
    fn stream(endpoint: Endpoint, max_tokens: u32, tokens: u32, abort: bool) -> Vec<u8> {
        let meta = meta(endpoint);
        let mut bytes = Vec::new();
        if endpoint == Endpoint::ChatCompletions {
            bytes.extend(meta.role_chunk());
        }
        for i in 0..tokens {
            bytes.extend(meta.token_chunk(i, &expected_token("p", i), i + 1 == max_tokens));
        }
        if abort {
            bytes.extend(meta.abort_chunk());
        }
        bytes.extend(meta.usage_chunk(1, tokens));
        bytes.extend(SSE_DONE);
        bytes
    }

    fn run(expected: Expected, bytes: &[u8], split: usize) -> Result<Outcome, Violation> {
        let mut decoder = SseDecoder::new();
        let mut check = StreamCheck::new(expected);
        for piece in bytes.chunks(split) {
            for event in decoder.push(piece)? {
                check.event(&event)?;
            }
        }
        check.finish()
    }

    #[test]
    fn complete_and_aborted_streams_pass_in_any_split() {
        for endpoint in [Endpoint::Completions, Endpoint::ChatCompletions] {
            for split in [1, 7, 4096] {
                let done = stream(endpoint, 5, 5, false);
                assert_eq!(
                    run(expected(endpoint, 5), &done, split),
                    Ok(Outcome::Completed { tokens: 5 })
                );
                let aborted = stream(endpoint, 5, 2, true);
                assert_eq!(
                    run(expected(endpoint, 5), &aborted, split),
                    Ok(Outcome::Aborted { tokens: 2 })
                );
            }
        }
    }

    #[test]
    fn truncation_and_wrong_tokens_fail() {
        let endpoint = Endpoint::Completions;
        let done = stream(endpoint, 5, 5, false);
        let cut = &done[..done.len() - SSE_DONE.len()];
        assert_eq!(
            run(expected(endpoint, 5), cut, 64),
            Err(Violation::Truncated { tokens: 5 })
        );
        let mid = stream(endpoint, 5, 3, false);
        assert!(run(expected(endpoint, 5), &mid, 64).is_err());
        let other_prompt = Expected {
            prompt: "q".into(),
            ..expected(endpoint, 5)
        };
        assert!(matches!(
            run(other_prompt, &done, 64),
            Err(Violation::WrongToken { index: 0, .. })
        ));
    }

    #[test]
    fn whole_responses_are_classified() {
        let exp = expected(Endpoint::Completions, 3);
        let ok = meta(Endpoint::Completions).full_response(&expected_text("p", 3), 1, 3);
        assert_eq!(
            check_response(&exp, 200, None, &ok),
            Ok(Outcome::Completed { tokens: 3 })
        );
        let rejected = ApiError::rejected("shutting_down", "bye").body();
        assert_eq!(
            check_response(&exp, 503, Some("1"), &rejected),
            Ok(Outcome::Rejected {
                code: "shutting_down".into()
            })
        );
        let aborted = ApiError::aborted(1, 3, "bye").body();
        assert_eq!(
            check_response(&exp, 503, None, &aborted),
            Ok(Outcome::Aborted { tokens: 0 })
        );
        assert!(
            check_response(&exp, 503, None, &rejected).is_err(),
            "a rejection needs Retry-After"
        );
        assert!(check_response(&exp, 500, None, b"oops").is_err());
    }
}
