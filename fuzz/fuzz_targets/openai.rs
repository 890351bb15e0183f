//! The simulated engine's OpenAI request parsing: any body a client could
//! post to `/v1/completions` or `/v1/chat/completions` is a request or an
//! OpenAI error; nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce_sim::openai::{Endpoint, Limits, parse_request};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        model: "quiesce-sim".to_owned(),
        max_tokens: 4096,
    };
    for endpoint in [Endpoint::Completions, Endpoint::ChatCompletions] {
        if let Ok(request) = parse_request(endpoint, data, &limits) {
            assert!(request.max_tokens <= limits.max_tokens, "{request:?}");
            assert_eq!(request.endpoint, endpoint);
        }
    }
});
