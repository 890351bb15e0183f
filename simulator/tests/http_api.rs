//! The OpenAI-compatible API of the real `quiesce-engine` binary: health
//! during start-up, verified completions, OpenAI-style errors, queueing.

mod common;

use std::time::{Duration, Instant};

use common::{
    Ask, Engine, RUNNING, SLOW, WAITING, get, metric, post, raw_exchange, request, spawn_request,
};
use nix::sys::signal::Signal;
use quiesce_sim::verify::Outcome;
use serde_json::{Value, json};

const FAST: &[&str] = &[
    "--startup-seconds",
    "0.2",
    "--token-interval-ms",
    "5",
    "--workers",
    "1",
];

async fn stop(mut engine: Engine) {
    engine.signal(Signal::SIGTERM);
    assert!(engine.wait_exit(SLOW).await.success());
    engine.assert_no_survivors();
    engine.assert_clean_stderr(&[]);
}

#[tokio::test]
async fn health_is_503_while_loading_then_200() {
    let engine = Engine::start(&["--startup-seconds", "0.5", "--workers", "1"]).await;
    let health = get(engine.addr, "/health").await.unwrap();
    assert_eq!(
        (health.status, health.json()),
        (503, json!({"status": "starting"}))
    );
    let record = request(engine.addr, &Ask::stream("too early", 3)).await;
    assert_eq!(
        record.outcome,
        Ok(Outcome::Rejected {
            code: "starting".into()
        })
    );

    engine.wait_ready().await;
    assert_eq!(
        get(engine.addr, "/health").await.unwrap().json(),
        json!({"status": "ready"})
    );
    let models = get(engine.addr, "/v1/models").await.unwrap().json();
    assert_eq!(models["data"][0]["id"], "quiesce-sim");
    stop(engine).await;
}

#[tokio::test]
async fn completions_and_chat_are_verified_token_by_token() {
    let engine = Engine::start(FAST).await;
    engine.wait_ready().await;
    let asks = [
        Ask::stream("the quick brown fox", 20),
        Ask::whole("the quick brown fox", 20),
        Ask::chat("hello there", 12, true),
        Ask::chat("hello there", 12, false),
        Ask::stream("one token", 1),
    ];
    for ask in asks {
        let tokens = ask.max_tokens;
        let record = request(engine.addr, &ask).await;
        assert_eq!(record.outcome, Ok(Outcome::Completed { tokens }), "{ask:?}");
    }

    // Usage accounting and the usage chunk.
    let whole = post(
        engine.addr,
        "/v1/completions",
        &json!({"prompt": "abcdefgh", "max_tokens": 3}),
    )
    .await;
    assert_eq!(
        whole.json()["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );
    let streamed = post(
        engine.addr,
        "/v1/completions",
        &json!({"prompt": "abc", "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let text = streamed.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        text.contains(r#""usage":{"completion_tokens":2,"prompt_tokens":1,"total_tokens":3}"#),
        "{text}"
    );
    assert_eq!(
        metric(engine.addr, "quiesce_engine_requests_completed_total").await,
        Some(7.0)
    );
    stop(engine).await;
}

fn assert_openai_error(reply: &common::Reply, status: u16, param: Value) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn invalid_requests_get_openai_errors() {
    let mut args = FAST.to_vec();
    args.extend(["--max-body-bytes", "1024", "--max-tokens-limit", "100"]);
    let engine = Engine::start(&args).await;
    engine.wait_ready().await;
    let addr = engine.addr;

    let bad_json = common::send(addr, "POST", "/v1/completions", b"{\"prompt\": ".to_vec())
        .await
        .unwrap();
    assert_openai_error(&bad_json, 400, Value::Null);
    let too_many = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 101}),
    )
    .await;
    assert_openai_error(&too_many, 400, json!("max_tokens"));
    let wrong_type = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": "ten"}),
    )
    .await;
    assert_openai_error(&wrong_type, 400, json!("max_tokens"));
    let no_prompt = post(addr, "/v1/completions", &json!({"max_tokens": 3})).await;
    assert_openai_error(&no_prompt, 400, json!("prompt"));
    let bad_message = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user"}, 7]}),
    )
    .await;
    assert_openai_error(&bad_message, 400, json!("messages[1].role"));
    let bad_chat_limit = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}),
    )
    .await;
    assert_openai_error(&bad_chat_limit, 400, json!("max_completion_tokens"));
    let unknown_model = post(
        addr,
        "/v1/completions",
        &json!({"model": "gpt-9", "prompt": "x"}),
    )
    .await;
    assert_openai_error(&unknown_model, 404, json!("model"));
    assert_eq!(unknown_model.json()["error"]["code"], "model_not_found");
    let no_route = get(addr, "/v2/nothing").await.unwrap();
    assert_eq!(no_route.status, 404);

    // Too large, announced by Content-Length: refused before reading.
    let big = json!({"prompt": "x".repeat(2000)});
    let announced = post(addr, "/v1/completions", &big).await;
    assert_openai_error(&announced, 413, Value::Null);
    // Too large without Content-Length (chunked): refused while reading.
    let chunk = "x".repeat(2000);
    let raw = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let answer = raw_exchange(addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""type":"invalid_request_error""#),
        "{answer}"
    );

    assert_eq!(
        metric(addr, "quiesce_engine_requests_invalid_total").await,
        Some(9.0)
    );
    // None of this disturbed the engine.
    let record = request(addr, &Ask::stream("still fine", 3)).await;
    assert_eq!(record.outcome, Ok(Outcome::Completed { tokens: 3 }));
    stop(engine).await;
}

#[tokio::test]
async fn queueing_beyond_max_concurrency_shows_in_metrics() {
    let engine = Engine::start(&[
        "--startup-seconds",
        "0.2",
        "--token-interval-ms",
        "10",
        "--max-concurrency",
        "2",
    ])
    .await;
    engine.wait_ready().await;
    let addr = engine.addr;
    let (running, waiting) = (RUNNING, WAITING);
    assert_eq!(
        (metric(addr, running).await, metric(addr, waiting).await),
        (Some(0.0), Some(0.0))
    );

    let requests: Vec<_> = (0..5)
        .map(|i| spawn_request(addr, Ask::stream(&format!("queued {i}"), 30)))
        .collect();
    let deadline = Instant::now() + SLOW;
    loop {
        let seen = (metric(addr, running).await, metric(addr, waiting).await);
        if seen == (Some(2.0), Some(3.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never saw 2 running and 3 waiting; last {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for request in requests {
        assert_eq!(
            request.finish().await.outcome,
            Ok(Outcome::Completed { tokens: 30 })
        );
    }
    assert_eq!(
        (metric(addr, running).await, metric(addr, waiting).await),
        (Some(0.0), Some(0.0))
    );
    stop(engine).await;
}
