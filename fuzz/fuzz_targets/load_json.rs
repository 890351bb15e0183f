//! The JSON answers the stock-engine adapters read: vLLM's `/load`,
//! SGLang's `/v1/loads` and its older `/get_load`. Any body is read as a
//! count or found unparsable; nothing panics or overflows.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce_sidecar::stock::{StockEngine, read_work};

const VLLM_METRICS: &str = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1.0\n\
                            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 0.0\n";
const SGLANG_METRICS: &str = "sglang:num_grammar_queue_reqs{model_name=\"m\"} 0.0\n";

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let page = |text: &str| Some((200, text.to_owned()));
    let answer = page(body);
    read_work(
        StockEngine::Vllm,
        &[page(VLLM_METRICS), answer.clone()],
        None,
    );
    read_work(
        StockEngine::Sglang,
        &[answer.clone(), page(SGLANG_METRICS)],
        None,
    );
    let not_found = Some((404, String::new()));
    read_work(
        StockEngine::Sglang,
        &[not_found, page(SGLANG_METRICS)],
        Some(&answer),
    );
});
