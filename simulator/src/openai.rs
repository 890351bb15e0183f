//! The OpenAI-compatible surface of the simulated engine, without HTTP:
//! request parsing and validation, error bodies, and the bytes of every
//! response and stream chunk.
//!
//! Requests are parsed field by field from a JSON value (not derived), so
//! that every refusal names the offending field in `param`, as OpenAI does.

use serde_json::{Map, Value, json};

use super::tokens;

/// `max_tokens` when a request does not set it (OpenAI's default for
/// completions).
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// The event that ends every stream.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// Response header naming the engine instance that answered.
pub const INSTANCE_HEADER: &str = "x-quiesce-instance";

/// The `Retry-After` value (seconds) sent with a rejection: another replica
/// can take the request at once.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// `error.type` of a rejection (503 with `Retry-After`, before any work).
pub const REJECTED_TYPE: &str = "service_unavailable";

/// `error.type` of an aborted non-streaming request (503 without
/// `Retry-After`, after work started).
pub const ABORTED_TYPE: &str = "server_shutdown";

/// `error.code` of an aborted non-streaming request.
pub const ABORTED_CODE: &str = "aborted";

/// The two generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/completions`: `prompt` in, `choices[].text` out.
    Completions,
    /// `POST /v1/chat/completions`: `messages` in, `choices[].message` or
    /// `choices[].delta` out.
    ChatCompletions,
}

impl Endpoint {
    /// The `object` of a non-streaming response.
    fn object(self) -> &'static str {
        match self {
            Self::Completions => "text_completion",
            Self::ChatCompletions => "chat.completion",
        }
    }

    /// The `object` of a stream chunk.
    fn chunk_object(self) -> &'static str {
        match self {
            Self::Completions => "text_completion",
            Self::ChatCompletions => "chat.completion.chunk",
        }
    }

    /// The prefix of response ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Self::Completions => "cmpl",
            Self::ChatCompletions => "chatcmpl",
        }
    }
}

/// What the engine accepts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The served model name; a request naming another model gets a 404.
    pub model: String,
    /// The largest `max_tokens` accepted.
    pub max_tokens: u32,
}

/// A valid generation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRequest {
    /// Which endpoint it came to.
    pub endpoint: Endpoint,
    /// The prompt the tokens derive from (for chat, [`tokens::chat_prompt`]).
    pub prompt: String,
    /// How many tokens to generate.
    pub max_tokens: u32,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: a usage chunk before `[DONE]`.
    pub include_usage: bool,
}

/// An error answer, serialised as OpenAI does:
/// `{"error":{"message":...,"type":...,"param":...,"code":...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.message`, for humans.
    pub message: String,
    /// `error.param`: the offending request field, if any.
    pub param: Option<String>,
    /// `error.code`.
    pub code: Option<&'static str>,
    /// The `Retry-After` header (seconds), sent with rejections only.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
            retry_after: None,
        }
    }

    /// A 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: 413,
            ..Self::invalid(format!("the request body exceeds {limit} bytes"), None)
        }
    }

    /// A 404 for an unknown path.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            status: 404,
            code: Some("not_found"),
            ..Self::invalid(format!("no route for {method} {path}"), None)
        }
    }

    /// A 404 for a request naming a model this engine does not serve.
    pub fn unknown_model(requested: &str, served: &str) -> Self {
        Self {
            status: 404,
            code: Some("model_not_found"),
            ..Self::invalid(
                format!("the model `{requested}` does not exist; this engine serves `{served}`"),
                Some("model"),
            )
        }
    }

    /// A 503 with `Retry-After` for a request refused before any work:
    /// `code` is `starting` or `shutting_down`.
    pub fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 503,
            kind: REJECTED_TYPE,
            message: message.into(),
            param: None,
            code: Some(code),
            retry_after: Some(RETRY_AFTER_SECONDS),
        }
    }

    /// A 503 without `Retry-After` for a non-streaming request aborted after
    /// `generated` of `max_tokens` tokens.
    pub fn aborted(generated: u32, max_tokens: u32, why: &str) -> Self {
        Self {
            status: 503,
            kind: ABORTED_TYPE,
            message: format!(
                "the request was aborted after {generated} of {max_tokens} tokens: {why}"
            ),
            param: None,
            code: Some(ABORTED_CODE),
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let value = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        value.to_string().into_bytes()
    }
}

/// Parses and validates a generation request body.
pub fn parse_request(
    endpoint: Endpoint,
    body: &[u8],
    limits: &Limits,
) -> Result<GenerationRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    };
    if let Some(model) = optional(&fields, "model") {
        let model = model
            .as_str()
            .ok_or_else(|| ApiError::invalid("`model` must be a string", Some("model")))?;
        if model != limits.model {
            return Err(ApiError::unknown_model(model, &limits.model));
        }
    }
    let prompt = match endpoint {
        Endpoint::Completions => completion_prompt(&fields)?,
        Endpoint::ChatCompletions => chat_prompt(&fields)?,
    };
    let max_tokens = max_tokens(endpoint, &fields, limits.max_tokens)?;
    if let Some(n) = optional(&fields, "n")
        && n.as_u64() != Some(1)
    {
        return Err(ApiError::invalid("only `n` = 1 is supported", Some("n")));
    }
    let stream = match optional(&fields, "stream") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::invalid("`stream` must be a boolean", Some("stream")))?,
    };
    let include_usage = match optional(&fields, "stream_options") {
        None => false,
        Some(Value::Object(options)) => match optional(options, "include_usage") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                ApiError::invalid(
                    "`stream_options.include_usage` must be a boolean",
                    Some("stream_options.include_usage"),
                )
            })?,
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "`stream_options` must be an object",
                Some("stream_options"),
            ));
        }
    };
    Ok(GenerationRequest {
        endpoint,
        prompt,
        max_tokens,
        stream,
        include_usage,
    })
}

/// A field that is present and not `null` (OpenAI clients send `null` for
/// "unset").
fn optional<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|v| !v.is_null())
}

fn completion_prompt(fields: &Map<String, Value>) -> Result<String, ApiError> {
    const MESSAGE: &str = "`prompt` must be a string or an array of one string";
    match optional(fields, "prompt") {
        None => Err(ApiError::invalid("`prompt` is required", Some("prompt"))),
        Some(Value::String(prompt)) => Ok(prompt.clone()),
        Some(Value::Array(prompts)) => match prompts.as_slice() {
            [Value::String(prompt)] => Ok(prompt.clone()),
            _ => Err(ApiError::invalid(MESSAGE, Some("prompt"))),
        },
        Some(_) => Err(ApiError::invalid(MESSAGE, Some("prompt"))),
    }
}

fn chat_prompt(fields: &Map<String, Value>) -> Result<String, ApiError> {
    let messages = match optional(fields, "messages") {
        None => {
            return Err(ApiError::invalid(
                "`messages` is required",
                Some("messages"),
            ));
        }
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(_) => {
            return Err(ApiError::invalid(
                "`messages` must be a non-empty array",
                Some("messages"),
            ));
        }
    };
    let mut pairs = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                let param = format!("messages[{i}].role");
                ApiError::invalid(
                    format!("`{param}` must be a non-empty string"),
                    Some(&param),
                )
            })?;
        let content = message_content(message.get("content")).ok_or_else(|| {
            let param = format!("messages[{i}].content");
            ApiError::invalid(
                format!("`{param}` must be a string or an array of text parts"),
                Some(&param),
            )
        })?;
        pairs.push((role, content));
    }
    Ok(tokens::chat_prompt(
        pairs
            .iter()
            .map(|(role, content)| (*role, content.as_str())),
    ))
}

/// A message's text: a string, an array of `{"type":"text","text":...}`
/// parts (concatenated), or `null`/absent (an assistant message with tool
/// calls) for the empty string.
fn message_content(content: Option<&Value>) -> Option<String> {
    match content {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match (part.get("type"), part.get("text")) {
                (Some(Value::String(kind)), Some(Value::String(text))) if kind == "text" => {
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect(),
        Some(_) => None,
    }
}

fn max_tokens(
    endpoint: Endpoint,
    fields: &Map<String, Value>,
    limit: u32,
) -> Result<u32, ApiError> {
    // Chat clients send the newer name; it wins when both are present.
    let name = match endpoint {
        Endpoint::ChatCompletions if optional(fields, "max_completion_tokens").is_some() => {
            "max_completion_tokens"
        }
        _ => "max_tokens",
    };
    let Some(value) = optional(fields, name) else {
        return Ok(DEFAULT_MAX_TOKENS.min(limit));
    };
    value
        .as_u64()
        .filter(|n| (1..=u64::from(limit)).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                format!("`{name}` must be an integer between 1 and {limit}, got {value}"),
                Some(name),
            )
        })
}

/// The fixed parts of one response: everything a chunk carries besides the
/// token.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// The endpoint, which decides the shapes.
    pub endpoint: Endpoint,
    /// `id`, such as `cmpl-7`.
    pub id: String,
    /// `created`, in Unix seconds.
    pub created: u64,
    /// `model`.
    pub model: String,
}

impl ResponseMeta {
    fn envelope(&self, object: &str, choices: Value) -> Map<String, Value> {
        let mut envelope = Map::new();
        envelope.insert("id".into(), json!(self.id));
        envelope.insert("object".into(), json!(object));
        envelope.insert("created".into(), json!(self.created));
        envelope.insert("model".into(), json!(self.model));
        envelope.insert("choices".into(), choices);
        envelope
    }

    fn chunk(&self, choice: Value) -> Vec<u8> {
        let envelope = self.envelope(self.endpoint.chunk_object(), json!([choice]));
        sse(&Value::Object(envelope))
    }

    /// Chat only: the first chunk, which announces the assistant's role.
    pub fn role_chunk(&self) -> Vec<u8> {
        self.chunk(json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }))
    }

    /// Token `index` with its `text`; the last token carries
    /// `finish_reason: "length"`. Every token chunk carries its
    /// `token_index` (an extension: OpenAI clients ignore it).
    pub fn token_chunk(&self, index: u32, text: &str, last: bool) -> Vec<u8> {
        let finish = if last { json!("length") } else { Value::Null };
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
                "token_index": index,
            }),
            Endpoint::ChatCompletions => json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": null,
                "finish_reason": finish,
                "token_index": index,
            }),
        };
        self.chunk(choice)
    }

    /// The explicit end of an aborted stream: no text, `finish_reason:
    /// "abort"`. `[DONE]` follows.
    pub fn abort_chunk(&self) -> Vec<u8> {
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": "", "logprobs": null, "finish_reason": "abort",
            }),
            Endpoint::ChatCompletions => json!({
                "index": 0, "delta": {}, "logprobs": null, "finish_reason": "abort",
            }),
        };
        self.chunk(choice)
    }

    /// The usage chunk (`stream_options.include_usage`): empty `choices`.
    pub fn usage_chunk(&self, prompt_tokens: u32, completion_tokens: u32) -> Vec<u8> {
        let mut envelope = self.envelope(self.endpoint.chunk_object(), json!([]));
        envelope.insert("usage".into(), usage(prompt_tokens, completion_tokens));
        sse(&Value::Object(envelope))
    }

    /// A complete non-streaming response.
    pub fn full_response(&self, text: &str, prompt_tokens: u32, completion_tokens: u32) -> Vec<u8> {
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": "length",
            }),
            Endpoint::ChatCompletions => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": "length",
            }),
        };
        let mut envelope = self.envelope(self.endpoint.object(), json!([choice]));
        envelope.insert("usage".into(), usage(prompt_tokens, completion_tokens));
        Value::Object(envelope).to_string().into_bytes()
    }
}

fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": u64::from(prompt_tokens) + u64::from(completion_tokens),
    })
}

/// One server-sent event: `data: {json}\n\n`.
fn sse(value: &Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            model: "sim".into(),
            max_tokens: 100,
        }
    }

    fn parse(endpoint: Endpoint, body: &str) -> Result<GenerationRequest, ApiError> {
        parse_request(endpoint, body.as_bytes(), &limits())
    }

    fn param(result: Result<GenerationRequest, ApiError>) -> (u16, Option<String>) {
        let error = result.expect_err("the request should be refused");
        (error.status, error.param)
    }

    #[test]
    fn a_minimal_completion() {
        let request = parse(Endpoint::Completions, r#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(request.prompt, "hi");
        assert_eq!(request.max_tokens, DEFAULT_MAX_TOKENS);
        assert!(!request.stream);
    }

    #[test]
    fn unknown_fields_and_nulls_are_ignored() {
        let body = r#"{"model":"sim","prompt":["hi"],"max_tokens":null,"temperature":0.7,"stream":true,"n":1}"#;
        let request = parse(Endpoint::Completions, body).unwrap();
        assert_eq!(request.prompt, "hi");
        assert!(request.stream);
    }

    #[test]
    fn chat_messages_become_the_prompt() {
        let body = r#"{"messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
            "max_completion_tokens":7,"max_tokens":9}"#;
        let request = parse(Endpoint::ChatCompletions, body).unwrap();
        assert_eq!(request.prompt, "system: be brief\nuser: ab\n");
        assert_eq!(request.max_tokens, 7);
    }

    #[test]
    fn refusals_name_the_field() {
        use Endpoint::*;
        assert_eq!(param(parse(Completions, "{")), (400, None));
        assert_eq!(param(parse(Completions, "[1]")), (400, None));
        assert_eq!(
            param(parse(Completions, "{}")),
            (400, Some("prompt".into()))
        );
        assert_eq!(
            param(parse(Completions, r#"{"prompt":["a","b"]}"#)),
            (400, Some("prompt".into()))
        );
        assert_eq!(
            param(parse(Completions, r#"{"prompt":"a","max_tokens":101}"#)),
            (400, Some("max_tokens".into()))
        );
        for bad in ["0", "-1", "1.5", "\"5\"", "1e2"] {
            let body = format!(r#"{{"prompt":"a","max_tokens":{bad}}}"#);
            assert_eq!(
                param(parse(Completions, &body)),
                (400, Some("max_tokens".into())),
                "{bad}"
            );
        }
        assert_eq!(
            param(parse(Completions, r#"{"prompt":"a","stream":"yes"}"#)),
            (400, Some("stream".into()))
        );
        assert_eq!(
            param(parse(Completions, r#"{"prompt":"a","n":2}"#)),
            (400, Some("n".into()))
        );
        assert_eq!(
            param(parse(Completions, r#"{"prompt":"a","model":"gpt"}"#)),
            (404, Some("model".into()))
        );
        assert_eq!(
            param(parse(ChatCompletions, r#"{"messages":[]}"#)),
            (400, Some("messages".into()))
        );
        assert_eq!(
            param(parse(ChatCompletions, r#"{"messages":[{"content":"x"}]}"#)),
            (400, Some("messages[0].role".into()))
        );
        assert_eq!(
            param(parse(
                ChatCompletions,
                r#"{"messages":[{"role":"user","content":5}]}"#
            )),
            (400, Some("messages[0].content".into()))
        );
    }

    #[test]
    fn error_bodies_have_the_openai_shape() {
        let body = ApiError::invalid("bad", Some("prompt")).body();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            json!({"error":{"message":"bad","type":"invalid_request_error","param":"prompt","code":null}})
        );
        let rejected = ApiError::rejected("shutting_down", "bye");
        assert_eq!((rejected.status, rejected.retry_after), (503, Some(1)));
        let aborted = ApiError::aborted(3, 10, "the engine is shutting down");
        assert_eq!(
            (aborted.status, aborted.retry_after, aborted.kind),
            (503, None, ABORTED_TYPE)
        );
    }

    #[test]
    fn chunks_are_server_sent_events() {
        let meta = ResponseMeta {
            endpoint: Endpoint::Completions,
            id: "cmpl-1".into(),
            created: 0,
            model: "sim".into(),
        };
        let chunk = String::from_utf8(meta.token_chunk(3, " fern", true)).unwrap();
        let json = chunk
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        let value: Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["choices"][0]["text"], " fern");
        assert_eq!(value["choices"][0]["token_index"], 3);
        assert_eq!(value["choices"][0]["finish_reason"], "length");
    }
}
