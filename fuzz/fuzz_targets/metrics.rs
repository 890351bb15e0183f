//! The Prometheus text parser of the stock-engine adapters: any page a
//! vLLM, SGLang or TensorRT-LLM `/metrics` could serve. The gauges are
//! read or found missing; nothing panics, and a count is never made up
//! from a page that does not hold it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce_sidecar::stock::{StockEngine, Work, gauge_sum, read_work};

/// Every gauge the adapters read.
const GAUGES: [&str; 6] = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "sglang:num_grammar_queue_reqs",
    "trtllm_num_requests_running",
    "trtllm_num_requests_waiting",
    "sglang:num_running_reqs",
];

fuzz_target!(|data: &[u8]| {
    let Ok(page) = std::str::from_utf8(data) else {
        return;
    };
    for gauge in GAUGES {
        if let Some(sum) = gauge_sum(page, gauge) {
            assert!(
                page.contains(gauge),
                "{gauge} summed from a page without it"
            );
            // A count, never a NaN or an infinity that would read as 0.
            assert!(sum.is_finite(), "{gauge} summed to {sum}");
        }
    }
    let metrics = Some((200, page.to_owned()));
    let idle_load = Some((200, r#"{"server_load": 0}"#.to_owned()));
    for (engine, pages) in [
        (StockEngine::Vllm, vec![metrics.clone(), idle_load]),
        (StockEngine::Trtllm, vec![metrics.clone()]),
    ] {
        if let Work::Known {
            running, waiting, ..
        } = read_work(engine, &pages, None)
        {
            // A count needs its gauge on the page.
            let counted = u64::from(running) + u64::from(waiting);
            assert!(counted == 0 || GAUGES.iter().any(|g| page.contains(g)));
        }
    }
});
