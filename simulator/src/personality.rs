//! The simulated engine as a stock engine looks from outside: the health,
//! metrics and load endpoints of vLLM, SGLang and TensorRT-LLM, with the
//! semantics, names, labels and freshness their own source gives them, so
//! that the sidecar's HTTP adapters are tested against what they will meet.
//! docs/engine.md has the table; each item below names its source.
//!
//! The work behind every page is the engine's real work: requests
//! generating (holding a slot), requests queued for a slot, HTTP requests
//! not yet fully sent, pending KV transfers.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

/// Which engine the simulated engine plays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Personality {
    /// The quiesce engine itself: `/health` 503 from the first moment of a
    /// drain, vLLM's gauge names on `/metrics`, plus its own counters.
    #[default]
    Quiesce,
    /// vLLM's OpenAI server (`vllm serve`).
    Vllm,
    /// SGLang's server (`sglang.launch_server`).
    Sglang,
    /// TensorRT-LLM's `trtllm-serve`.
    Trtllm,
}

impl Personality {
    /// Whether the server stays up, answering `/health` with 503, once its
    /// engine has died (a worker process was lost), instead of exiting.
    ///
    /// - vLLM: only with `VLLM_KEEP_ALIVE_ON_ENGINE_DEATH`; otherwise its
    ///   watchdog (`launcher.py`, `watchdog_loop`) stops the server.
    /// - TensorRT-LLM: always (`_check_health` answers 503 and nothing
    ///   exits; NVIDIA/TensorRT-LLM issue 18663).
    /// - SGLang: never: a dead child sends SIGQUIT and the whole process
    ///   tree goes (`SubprocessWatchdog`).
    pub fn stays_up_when_dead(self, stock: &StockConfig) -> bool {
        match self {
            Self::Vllm => stock.vllm_keep_alive_on_engine_death,
            Self::Trtllm => true,
            Self::Quiesce | Self::Sglang => false,
        }
    }

    /// How long a SIGTERM without a sidecar lets in-flight work finish:
    /// vLLM's `--shutdown-timeout`, and no limit for SGLang (its
    /// `sigterm_watchdog` waits until no request is left) and TensorRT-LLM
    /// (uvicorn without `timeout_graceful_shutdown`): there the kubelet's
    /// grace period is the only bound.
    pub fn sigterm_timeout(self, shutdown_timeout: Duration) -> Duration {
        match self {
            Self::Quiesce | Self::Vllm => shutdown_timeout,
            Self::Sglang | Self::Trtllm => UNBOUNDED,
        }
    }
}

/// "No limit", in a form every deadline computation can add to the clock.
pub const UNBOUNDED: Duration = Duration::from_secs(24 * 3600);

/// How SGLang's gauges refresh while idle (`self_check_during_idle`:
/// "During idle time, also collect metrics every 30 seconds").
pub const SGLANG_IDLE_METRICS_INTERVAL: Duration = Duration::from_secs(30);

/// How long SGLang's generating `/health` waits before its first check
/// (`health_generate`: `await asyncio.sleep(1)`).
pub const SGLANG_HEALTH_GENERATION_WAIT: Duration = Duration::from_secs(1);

/// The stock engine's own switches, named after its flags and variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockConfig {
    /// Which engine.
    pub personality: Personality,
    /// Every `/health` answer comes this late (an engine under load); on
    /// top of SGLang's own wait.
    pub health_delay: Duration,
    /// vLLM `--enable-server-load-tracking`: `/load` counts; without it
    /// `/load` answers 0 (the route is always there).
    pub vllm_server_load_tracking: bool,
    /// vLLM without `--disable-log-stats`: the scheduler gauges exist.
    pub vllm_log_stats: bool,
    /// vLLM `VLLM_KEEP_ALIVE_ON_ENGINE_DEATH`.
    pub vllm_keep_alive_on_engine_death: bool,
    /// SGLang `--enable-metrics`: without it `/metrics` is not mounted (404).
    pub sglang_metrics: bool,
    /// SGLang `SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION` (default true):
    /// `/health` generates a token and answers after at least a second.
    pub sglang_health_generation: bool,
    /// SGLang `--decode-log-interval` (default 40): decode steps between
    /// two refreshes of the gauges.
    pub sglang_decode_log_interval: u32,
    /// TensorRT-LLM `return_perf_metrics` (and `enable_iter_perf_stats`) in
    /// its LLM API options: only then is `/prometheus/metrics` mounted.
    pub trtllm_perf_metrics: bool,
}

/// The engine's work at one instant, as every page is computed from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Requests generating: holding a slot, until their last token.
    pub generating: u32,
    /// Requests admitted and waiting for a slot.
    pub queued: u32,
    /// HTTP requests admitted whose answer is not fully sent yet.
    pub unsent: u32,
    /// KV transfers pending (prefill role).
    pub kv_transfers: u32,
}

/// Gauges that are refreshed now and then, not read live: SGLang's (each
/// prefill batch, every decode-log interval of decode steps, every 30 s when
/// idle: `Scheduler.log_stats` callers) and TensorRT-LLM's (when a request
/// finishes: `_iteration_stats_collector_loop`, woken by `_extract_metrics`).
#[derive(Debug)]
pub struct LaggingGauges {
    state: Mutex<Lagging>,
}

#[derive(Debug, Clone, Copy)]
struct Lagging {
    shown: Work,
    refreshed: Instant,
    decode_steps: u32,
}

impl LaggingGauges {
    /// Gauges that show `now_work` until their first refresh.
    pub fn new(now_work: Work) -> Self {
        Self {
            state: Mutex::new(Lagging {
                shown: now_work,
                refreshed: Instant::now(),
                decode_steps: 0,
            }),
        }
    }

    /// What the gauges show.
    pub fn shown(&self) -> Work {
        self.state.lock().expect("gauges lock").shown
    }

    /// Shows `work` from now on.
    pub fn refresh(&self, work: Work) {
        let mut state = self.state.lock().expect("gauges lock");
        state.shown = work;
        state.refreshed = Instant::now();
        state.decode_steps = 0;
    }

    /// One decode step (a token interval with requests generating) or one
    /// idle tick of SGLang's scheduler loop.
    pub fn sglang_tick(&self, work: Work, decode_log_interval: u32) {
        let mut state = self.state.lock().expect("gauges lock");
        let due = if work.generating > 0 {
            state.decode_steps += 1;
            state.decode_steps >= decode_log_interval.max(1)
        } else {
            state.refreshed.elapsed() >= SGLANG_IDLE_METRICS_INTERVAL
        };
        if due {
            *state = Lagging {
                shown: work,
                refreshed: Instant::now(),
                decode_steps: 0,
            };
        }
    }
}

/// A Prometheus text page of gauges: `(name, help, labels, value)`.
pub fn gauge_page(gauges: &[(&str, &str, &str, u32)]) -> String {
    let mut page = String::new();
    for (name, help, labels, value) in gauges {
        page.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}.0\n"
        ));
    }
    page
}

/// vLLM's `/metrics` (`vllm/v1/metrics/loggers.py`, `PrometheusStatLogger`):
/// one series per engine, labelled `model_name` and `engine`, set from the
/// scheduler's stats after every engine step, so they count requests in
/// the engine's queues only: not those whose answer is still being sent.
/// With `--disable-log-stats` they do not exist.
pub fn vllm_metrics(model: &str, work: Work, log_stats: bool) -> String {
    if !log_stats {
        return String::new();
    }
    let labels = format!("engine=\"0\",model_name=\"{model}\"");
    gauge_page(&[
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            &labels,
            work.generating,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            &labels,
            work.queued,
        ),
    ])
}

/// vLLM's `GET /load`: `{"server_load": N}`, the HTTP requests of the
/// counted endpoints in flight until their answer has been fully sent
/// (`load_aware_call`, decremented in a background task after the body);
/// always 0 without `--enable-server-load-tracking`.
pub fn vllm_load(work: Work, tracking: bool) -> String {
    let load = if tracking { work.unsent } else { 0 };
    json!({ "server_load": load }).to_string()
}

/// SGLang's `/metrics` with `--enable-metrics`
/// (`python/sglang/srt/metrics/collector.py`, `SchedulerMetricsCollector`),
/// from the lagging gauges, labelled as its rank-0 scheduler labels them.
pub fn sglang_metrics(model: &str, shown: Work) -> String {
    let labels =
        format!("engine_type=\"unified\",model_name=\"{model}\",pp_rank=\"0\",tp_rank=\"0\"");
    gauge_page(&[
        (
            "sglang:num_running_reqs",
            "The number of running requests.",
            &labels,
            shown.generating,
        ),
        (
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            &labels,
            shown.queued,
        ),
        (
            "sglang:num_grammar_queue_reqs",
            "The number of requests in the grammar waiting queue.",
            &labels,
            0,
        ),
        (
            "sglang:num_prefill_inflight_queue_reqs",
            "The number of requests in the prefill inflight queue.",
            &labels,
            shown.kv_transfers,
        ),
    ])
}

/// SGLang's `GET /v1/loads` (`python/sglang/srt/entrypoints/v1_loads.py`,
/// from PR 16976): per data-parallel rank, live counts from the scheduler
/// (`Scheduler.get_loads`), the KV sends of a prefill server apart in
/// `disaggregation.prefill_inflight_queue_reqs`. The grammar queue comes
/// from the metrics stats: 0 without `--enable-metrics`. The fields quiesce
/// reads, and the ones beside them.
pub fn sglang_loads(work: Work, max_running: usize) -> String {
    let load = json!({
        "dp_rank": 0,
        "num_running_reqs": work.generating,
        "num_waiting_reqs": work.queued,
        "num_total_reqs": work.generating + work.queued,
        "max_running_requests": max_running,
        "disaggregation": {
            "mode": "prefill",
            "prefill_prealloc_queue_reqs": 0,
            "prefill_inflight_queue_reqs": work.kv_transfers,
            "decode_prealloc_queue_reqs": 0,
            "decode_transfer_queue_reqs": 0,
            "decode_retracted_queue_reqs": 0,
        },
        "queues": {"waiting": work.queued, "grammar": 0, "paused": 0, "retracted": 0},
    });
    json!({
        "version": "sim",
        "dp_rank_count": 1,
        "loads": [load],
    })
    .to_string()
}

/// SGLang's older `GET /get_load` (one entry per data-parallel rank, live):
/// `num_reqs` is running plus waiting.
pub fn sglang_get_load(work: Work) -> String {
    json!([{
        "dp_rank": 0,
        "num_reqs": work.generating + work.queued,
        "num_waiting_reqs": work.queued,
        "num_tokens": 0,
    }])
    .to_string()
}

/// TensorRT-LLM's `/prometheus/metrics` (`tensorrt_llm/metrics/collector.py`,
/// `MetricsCollector.log_iteration_stats`): `trtllm_num_requests_running`
/// from `numActiveRequests` and `trtllm_num_requests_waiting` from
/// `numQueuedRequests`, labels hard-coded `"undefined"` by
/// `openai_server.py`, refreshed only when a request finishes.
pub fn trtllm_metrics(shown: Work) -> String {
    let labels = "engine_type=\"undefined\",model_name=\"undefined\"";
    gauge_page(&[
        (
            "trtllm_num_requests_running",
            "Number of active requests",
            labels,
            shown.generating,
        ),
        (
            "trtllm_num_requests_waiting",
            "Number of queued requests",
            labels,
            shown.queued,
        ),
    ])
}

/// One entry of TensorRT-LLM's JSON `/metrics`: iteration statistics that
/// the executor queues every 0.2 s and that a read takes away
/// (`IterationResult.__anext__` pops them).
pub fn trtllm_iteration_stats(iteration: u64, work: Work) -> serde_json::Value {
    json!({
        "iter": iteration,
        "numActiveRequests": work.generating,
        "numQueuedRequests": work.queued,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Work {
        Work {
            generating: 3,
            queued: 2,
            unsent: 6,
            kv_transfers: 1,
        }
    }

    #[test]
    fn vllm_pages_carry_its_names_and_labels_and_vanish_without_log_stats() {
        let page = vllm_metrics("m", busy(), true);
        assert!(page.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n"));
        assert!(page.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2.0\n"));
        assert_eq!(vllm_metrics("m", busy(), false), "");
        assert_eq!(vllm_load(busy(), true), r#"{"server_load":6}"#);
        assert_eq!(vllm_load(busy(), false), r#"{"server_load":0}"#);
    }

    #[test]
    fn sglang_loads_are_live_and_keep_kv_sends_apart() {
        let loads: serde_json::Value = serde_json::from_str(&sglang_loads(busy(), 64)).unwrap();
        let load = &loads["loads"][0];
        assert_eq!(load["num_running_reqs"], 3);
        assert_eq!(load["num_waiting_reqs"], 2);
        assert_eq!(load["disaggregation"]["prefill_inflight_queue_reqs"], 1);
        let legacy: serde_json::Value = serde_json::from_str(&sglang_get_load(busy())).unwrap();
        assert_eq!(legacy[0]["num_reqs"], 5);
    }

    #[tokio::test(start_paused = true)]
    async fn sglang_gauges_refresh_every_log_interval_or_every_30_s_when_idle() {
        let gauges = LaggingGauges::new(Work::default());
        for _ in 0..39 {
            gauges.sglang_tick(busy(), 40);
        }
        assert_eq!(gauges.shown(), Work::default(), "39 decode steps: not yet");
        gauges.sglang_tick(busy(), 40);
        assert_eq!(gauges.shown(), busy());
        tokio::time::advance(Duration::from_secs(29)).await;
        gauges.sglang_tick(Work::default(), 40);
        assert_eq!(
            gauges.shown(),
            busy(),
            "idle for 29 s: still the old values"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        gauges.sglang_tick(Work::default(), 40);
        assert_eq!(gauges.shown(), Work::default());
    }
}
