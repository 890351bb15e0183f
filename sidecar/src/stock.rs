//! What each stock engine exposes about its work, and how to read it: the
//! endpoints, the metric names and the JSON fields as the engines' own source
//! defines them (docs/pod.md, "What quiesce sees of each engine"). Pure:
//! [`poller`](crate::poller) fetches the pages, this reads them.
//!
//! Unknown is never zero: a page that is missing, failing or lacks a field
//! makes the work [`Work::Unknown`], and a drain then waits for its timeout.

use quiesce_protocol::contract::{DEFAULT_METRICS_PATH, TRTLLM_METRICS_PATH};
use serde_json::Value;

/// Which stock engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockEngine {
    /// vLLM (`vllm serve`).
    Vllm,
    /// SGLang (`sglang.launch_server`).
    Sglang,
    /// TensorRT-LLM (`trtllm-serve`).
    Trtllm,
    /// Any HTTP server: health only; its work is unknown.
    Http,
}

/// vLLM's scheduler gauges (`vllm/v1/metrics/loggers.py`), one series per
/// engine index; absent with `--disable-log-stats`.
pub const VLLM_RUNNING: &str = "vllm:num_requests_running";
/// See [`VLLM_RUNNING`].
pub const VLLM_WAITING: &str = "vllm:num_requests_waiting";
/// KV sends a prefill instance still owes its decode peers, from NVIDIA
/// Dynamo's NIXL connector (`NixlConnectorWithPendingMetrics`); stock vLLM
/// exports no such gauge.
pub const VLLM_NIXL_PENDING_SENDS: &str = "vllm:nixl_num_pending_sends";
/// vLLM's load endpoint (`--enable-server-load-tracking`).
pub const VLLM_LOAD_PATH: &str = "/load";
/// SGLang's live load endpoint (`entrypoints/v1_loads.py`).
pub const SGLANG_LOADS_PATH: &str = "/v1/loads";
/// SGLang's older load endpoint, for versions without `/v1/loads`.
pub const SGLANG_LEGACY_LOAD_PATH: &str = "/get_load";
/// SGLang's grammar queue (`metrics/collector.py`), only with `--enable-metrics`.
pub const SGLANG_GRAMMAR_QUEUE: &str = "sglang:num_grammar_queue_reqs";
/// SGLang's queue of prefilled requests whose KV transfer runs.
pub const SGLANG_PREFILL_INFLIGHT: &str = "sglang:num_prefill_inflight_queue_reqs";
/// TensorRT-LLM's gauges on `/prometheus/metrics` (`metrics/collector.py`),
/// only with `return_perf_metrics`.
pub const TRTLLM_RUNNING: &str = "trtllm_num_requests_running";
/// See [`TRTLLM_RUNNING`].
pub const TRTLLM_WAITING: &str = "trtllm_num_requests_waiting";

impl StockEngine {
    /// The metrics path when the resource sets none, or `None` when the
    /// adapter reads no metrics.
    pub fn default_metrics_path(self) -> Option<&'static str> {
        match self {
            Self::Vllm | Self::Sglang => Some(DEFAULT_METRICS_PATH),
            // Its JSON /metrics hands out each statistic once: never poll it.
            Self::Trtllm => Some(TRTLLM_METRICS_PATH),
            Self::Http => None,
        }
    }
}

/// Why the work of an engine cannot be seen. A bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blind {
    /// The http adapter: health is all there is.
    NoWorkSignal,
    /// The metrics endpoint answered something else than 200 (for SGLang:
    /// no `--enable-metrics`; for TensorRT-LLM: no `return_perf_metrics`).
    MetricsUnavailable,
    /// A gauge the adapter needs is not on the page (vLLM
    /// `--disable-log-stats`; TensorRT-LLM without `enable_iter_perf_stats`).
    GaugeMissing,
    /// The load endpoint answered something else than 200.
    LoadUnavailable,
    /// A page did not parse.
    Unparsable,
    /// A work endpoint did not answer in time while health did.
    NoAnswer,
}

impl Blind {
    /// Every reason, for the metric's series.
    pub const ALL: [Self; 6] = [
        Self::NoWorkSignal,
        Self::MetricsUnavailable,
        Self::GaugeMissing,
        Self::LoadUnavailable,
        Self::Unparsable,
        Self::NoAnswer,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoWorkSignal => "no_work_signal",
            Self::MetricsUnavailable => "metrics_unavailable",
            Self::GaugeMissing => "gauge_missing",
            Self::LoadUnavailable => "load_unavailable",
            Self::Unparsable => "unparsable",
            Self::NoAnswer => "no_answer",
        }
    }

    /// What it means for `engine`, and what to do, for the log.
    pub fn explain(self, engine: StockEngine) -> &'static str {
        match (engine, self) {
            (_, Self::NoWorkSignal) => {
                "the http adapter sees only health, not work: a drain waits for its whole timeout \
                 unless the engine exits first"
            }
            (StockEngine::Sglang, Self::MetricsUnavailable) => {
                "SGLang serves no /metrics without --enable-metrics, so its grammar queue is \
                 invisible: add --enable-metrics to the engine's arguments"
            }
            (StockEngine::Trtllm, Self::MetricsUnavailable) => {
                "trtllm-serve serves /prometheus/metrics only with return_perf_metrics: true (and \
                 enable_iter_perf_stats: true) in its --extra_llm_api_options"
            }
            (_, Self::MetricsUnavailable) => "the engine's metrics endpoint fails",
            (StockEngine::Vllm, Self::GaugeMissing) => {
                "vLLM exports no vllm:num_requests_running or vllm:num_requests_waiting with \
                 --disable-log-stats: remove that flag"
            }
            (StockEngine::Trtllm, Self::GaugeMissing) => {
                "trtllm-serve exports its request gauges only with enable_iter_perf_stats: true"
            }
            (_, Self::GaugeMissing) => "a gauge of the engine's work is missing",
            (StockEngine::Vllm, Self::LoadUnavailable) => {
                "vLLM's /load fails; it needs a vLLM with --enable-server-load-tracking"
            }
            (_, Self::LoadUnavailable) => "the engine's load endpoint fails",
            (_, Self::Unparsable) => "a page of the engine's work did not parse",
            (_, Self::NoAnswer) => "the engine's work endpoints do not answer in time",
        }
    }
}

/// The engine's work, as one look saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Every part of it is visible.
    Known {
        /// Requests being processed (and, for vLLM, HTTP answers not fully
        /// sent yet).
        running: u32,
        /// Requests queued.
        waiting: u32,
        /// KV transfers still owed to decode peers.
        kv_transfers: u32,
    },
    /// Some part cannot be seen.
    Unknown(Blind),
}

impl Work {
    /// Whether it is known to be nothing at all.
    pub fn is_known_idle(self) -> bool {
        matches!(
            self,
            Self::Known {
                running: 0,
                waiting: 0,
                kv_transfers: 0
            }
        )
    }
}

/// One fetched page: its status and body, or `None` when nothing answered.
pub type Page = Option<(u16, String)>;

/// The pages each look fetches, besides health.
pub fn work_paths(engine: StockEngine, metrics_path: Option<&str>) -> Vec<String> {
    let metrics = metrics_path.map(str::to_owned);
    match engine {
        StockEngine::Vllm => metrics
            .into_iter()
            .chain([VLLM_LOAD_PATH.to_owned()])
            .collect(),
        StockEngine::Sglang => [SGLANG_LOADS_PATH.to_owned()]
            .into_iter()
            .chain(metrics)
            .collect(),
        StockEngine::Trtllm => metrics.into_iter().collect(),
        StockEngine::Http => Vec::new(),
    }
}

/// Reads the work of `engine` from the pages of [`work_paths`], in order.
/// For SGLang a 404 on `/v1/loads` is followed by one look at `/get_load`
/// (`legacy`), which the caller fetches.
pub fn read_work(engine: StockEngine, pages: &[Page], legacy: Option<&Page>) -> Work {
    match engine {
        StockEngine::Vllm => vllm(pages.first(), pages.get(1)),
        StockEngine::Sglang => sglang(pages.first(), legacy, pages.get(1)),
        StockEngine::Trtllm => trtllm(pages.first()),
        StockEngine::Http => Work::Unknown(Blind::NoWorkSignal),
    }
}

/// The body of a 200 page; why not otherwise.
fn body(page: Option<&Page>, failed: Blind) -> Result<&str, Blind> {
    match page {
        Some(Some((200, body))) => Ok(body),
        Some(Some(_)) => Err(failed),
        Some(None) | None => Err(Blind::NoAnswer),
    }
}

/// vLLM: both scheduler gauges, summed over every engine, and `/load`; the
/// gauges miss requests still being tokenized and answers still being sent,
/// `/load` counts them until their last byte.
fn vllm(metrics: Option<&Page>, load: Option<&Page>) -> Work {
    let read = || -> Result<Work, Blind> {
        let page = body(metrics, Blind::MetricsUnavailable)?;
        let running = gauge_sum(page, VLLM_RUNNING).ok_or(Blind::GaugeMissing)?;
        let waiting = gauge_sum(page, VLLM_WAITING).ok_or(Blind::GaugeMissing)?;
        let kv = gauge_sum(page, VLLM_NIXL_PENDING_SENDS).unwrap_or(0.0);
        let load: Value = serde_json::from_str(body(load, Blind::LoadUnavailable)?)
            .map_err(|_| Blind::Unparsable)?;
        // A known race can take it below zero for a moment: nothing sent.
        let server_load = load["server_load"].as_f64().ok_or(Blind::Unparsable)?;
        let running = count(running).max(count(server_load).saturating_sub(count(waiting)));
        Ok(Work::Known {
            running,
            waiting: count(waiting),
            kv_transfers: count(kv),
        })
    };
    read().unwrap_or_else(Work::Unknown)
}

/// SGLang: live counts per data-parallel rank from `/v1/loads` (or the
/// older `/get_load`), prefill KV sends from its disaggregation queue, and
/// the grammar queue, which only the metrics show.
fn sglang(loads: Option<&Page>, legacy: Option<&Page>, metrics: Option<&Page>) -> Work {
    let read = || -> Result<Work, Blind> {
        let (running, mut waiting, mut kv) = match loads {
            Some(Some((404, _))) => legacy_load(legacy)?,
            _ => v1_loads(body(loads, Blind::LoadUnavailable)?)?,
        };
        let page = body(metrics, Blind::MetricsUnavailable)?;
        let grammar = gauge_sum(page, SGLANG_GRAMMAR_QUEUE).ok_or(Blind::GaugeMissing)?;
        // Waiting for their grammar to compile, before the waiting queue.
        waiting = waiting.saturating_add(count(grammar));
        kv = kv.max(gauge_sum(page, SGLANG_PREFILL_INFLIGHT).map_or(0, count));
        Ok(Work::Known {
            running,
            waiting,
            kv_transfers: kv,
        })
    };
    read().unwrap_or_else(Work::Unknown)
}

/// `(running, waiting, kv)` summed over the ranks of a `/v1/loads` answer.
fn v1_loads(body: &str) -> Result<(u32, u32, u32), Blind> {
    let answer: Value = serde_json::from_str(body).map_err(|_| Blind::Unparsable)?;
    let loads = answer["loads"].as_array().ok_or(Blind::Unparsable)?;
    let field = |load: &Value, name: &str| load[name].as_f64().ok_or(Blind::Unparsable);
    let (mut running, mut waiting, mut kv) = (0u32, 0u32, 0u32);
    for load in loads {
        // Saturating: a count past u32::MAX stays huge, never wraps to few.
        running = running.saturating_add(count(field(load, "num_running_reqs")?));
        waiting = waiting.saturating_add(count(field(load, "num_waiting_reqs")?));
        // Present with include=disagg (the default, all); 0 elsewhere.
        kv = kv.saturating_add(count(
            load["disaggregation"]["prefill_inflight_queue_reqs"]
                .as_f64()
                .unwrap_or(0.0),
        ));
    }
    Ok((running, waiting, kv))
}

/// `(running, waiting, kv)` from `/get_load`: `num_reqs` is running plus
/// waiting.
fn legacy_load(page: Option<&Page>) -> Result<(u32, u32, u32), Blind> {
    let answer: Value =
        serde_json::from_str(body(page, Blind::LoadUnavailable)?).map_err(|_| Blind::Unparsable)?;
    let loads = answer.as_array().ok_or(Blind::Unparsable)?;
    let (mut total, mut waiting) = (0u32, 0u32);
    for load in loads {
        total = total.saturating_add(count(load["num_reqs"].as_f64().ok_or(Blind::Unparsable)?));
        waiting = waiting.saturating_add(count(
            load["num_waiting_reqs"].as_f64().ok_or(Blind::Unparsable)?,
        ));
    }
    Ok((total.saturating_sub(waiting), waiting, 0))
}

/// TensorRT-LLM: its two request gauges on `/prometheus/metrics`.
fn trtllm(metrics: Option<&Page>) -> Work {
    let read = || -> Result<Work, Blind> {
        let page = body(metrics, Blind::MetricsUnavailable)?;
        let running = gauge_sum(page, TRTLLM_RUNNING).ok_or(Blind::GaugeMissing)?;
        let waiting = gauge_sum(page, TRTLLM_WAITING).ok_or(Blind::GaugeMissing)?;
        Ok(Work::Known {
            running: count(running),
            waiting: count(waiting),
            kv_transfers: 0,
        })
    };
    read().unwrap_or_else(Work::Unknown)
}

/// A count from a gauge's value: negative is nothing, fractions round up.
fn count(value: f64) -> u32 {
    if value.is_nan() || value <= 0.0 {
        0
    } else {
        value.ceil().min(f64::from(u32::MAX)) as u32
    }
}

/// Sums every sample of `name` in a Prometheus text page (one per engine,
/// rank or model); `None` when the page has no sample of it, or when the
/// sum is not a finite number.
pub fn gauge_sum(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `name{...} v` or `name v`.
        let value = match rest.chars().next() {
            Some('{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(value) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += value;
        }
    }
    // `+Inf`, `NaN` or a sum past f64's range is no count: unknown, which
    // `count` would otherwise read as nothing.
    found.filter(|sum: &f64| sum.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Page {
        Some((200, body.to_owned()))
    }

    const VLLM_PAGE: &str = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0
vllm:num_requests_running_total_xyz 99
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 4.0
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 0.0
";

    #[test]
    fn gauges_are_summed_over_every_series() {
        assert_eq!(gauge_sum(VLLM_PAGE, VLLM_RUNNING), Some(5.0));
        assert_eq!(gauge_sum(VLLM_PAGE, VLLM_WAITING), Some(4.0));
        assert_eq!(gauge_sum(VLLM_PAGE, "sglang:num_queue_reqs"), None);
    }

    #[test]
    fn vllm_needs_both_gauges_and_its_load_and_counts_unsent_answers() {
        let work = read_work(
            StockEngine::Vllm,
            &[ok(VLLM_PAGE), ok(r#"{"server_load": 12}"#)],
            None,
        );
        assert_eq!(
            work,
            Work::Known {
                running: 8,
                waiting: 4,
                kv_transfers: 0
            }
        );
        // The engine is done, one answer is still being sent.
        let idle_engine = "vllm:num_requests_running{engine=\"0\"} 0\nvllm:num_requests_waiting{engine=\"0\"} 0\n";
        let work = read_work(
            StockEngine::Vllm,
            &[ok(idle_engine), ok(r#"{"server_load": 1}"#)],
            None,
        );
        assert!(!work.is_known_idle(), "{work:?}");
        let idle = read_work(
            StockEngine::Vllm,
            &[ok(idle_engine), ok(r#"{"server_load": -1}"#)],
            None,
        );
        assert!(idle.is_known_idle(), "a negative load is nothing: {idle:?}");
        let no_stats = "vllm:num_requests_running{engine=\"0\"} 0\n";
        for (pages, blind) in [
            (
                vec![ok(no_stats), ok(r#"{"server_load": 0}"#)],
                Blind::GaugeMissing,
            ),
            (
                vec![Some((500, String::new())), ok(r#"{"server_load": 0}"#)],
                Blind::MetricsUnavailable,
            ),
            (
                vec![ok(idle_engine), Some((404, String::new()))],
                Blind::LoadUnavailable,
            ),
            (vec![ok(idle_engine), ok("<html>")], Blind::Unparsable),
            (vec![ok(idle_engine), None], Blind::NoAnswer),
        ] {
            assert_eq!(
                read_work(StockEngine::Vllm, &pages, None),
                Work::Unknown(blind)
            );
        }
    }

    const SGLANG_METRICS: &str = "\
sglang:num_running_reqs{tp_rank=\"0\"} 9\n\
sglang:num_grammar_queue_reqs{tp_rank=\"0\"} 1\n\
sglang:num_prefill_inflight_queue_reqs{tp_rank=\"0\"} 0\n";

    /// Found by the `metrics` fuzz target: samples of +Inf and -Inf (or
    /// NaN) summed to NaN, which a count reads as 0: an engine with work
    /// looked idle.
    #[test]
    fn a_sum_that_is_no_number_is_unknown_not_zero() {
        for page in [
            "vllm:num_requests_running{a=\"1\"} +Inf\nvllm:num_requests_running{a=\"2\"} -Inf\n",
            "vllm:num_requests_running NaN\n",
            "vllm:num_requests_running{a=\"1\"} 1e308\nvllm:num_requests_running{a=\"2\"} 1e308\n",
        ] {
            assert_eq!(gauge_sum(page, VLLM_RUNNING), None, "{page}");
            let pages = [
                ok(&format!("{page}vllm:num_requests_waiting 0\n")),
                ok(r#"{"server_load": 0}"#),
            ];
            let work = read_work(StockEngine::Vllm, &pages, None);
            assert_eq!(work, Work::Unknown(Blind::GaugeMissing), "{page}");
        }
    }

    /// Found by the `load_json` fuzz target: the sum over ranks overflowed
    /// (a panic in a debug build, a wrap to a few requests in the image).
    #[test]
    fn counts_past_u32_max_saturate_and_never_wrap() {
        let loads = r#"{"loads": [
            {"num_running_reqs": 1e300, "num_waiting_reqs": 1e300},
            {"num_running_reqs": 21474836474967295, "num_waiting_reqs": 7}]}"#;
        let work = read_work(StockEngine::Sglang, &[ok(loads), ok(SGLANG_METRICS)], None);
        assert_eq!(
            work,
            Work::Known {
                running: u32::MAX,
                waiting: u32::MAX,
                kv_transfers: 0
            }
        );
        let legacy = ok(r#"[{"num_reqs": 4294967295, "num_waiting_reqs": 0},
                          {"num_reqs": 9, "num_waiting_reqs": 1}]"#);
        let not_found = Some((404, String::new()));
        let work = read_work(
            StockEngine::Sglang,
            &[not_found, ok(SGLANG_METRICS)],
            Some(&legacy),
        );
        assert!(
            matches!(work, Work::Known { running, .. } if running >= u32::MAX - 1),
            "{work:?}"
        );
    }

    #[test]
    fn sglang_reads_live_loads_per_rank_the_grammar_queue_and_kv_sends() {
        let loads = r#"{"loads": [
            {"dp_rank": 0, "num_running_reqs": 2, "num_waiting_reqs": 1,
             "disaggregation": {"prefill_inflight_queue_reqs": 3}},
            {"dp_rank": 1, "num_running_reqs": 1, "num_waiting_reqs": 0}]}"#;
        let work = read_work(StockEngine::Sglang, &[ok(loads), ok(SGLANG_METRICS)], None);
        assert_eq!(
            work,
            Work::Known {
                running: 3,
                waiting: 2,
                kv_transfers: 3
            }
        );
        // Older SGLang: /get_load instead.
        let legacy =
            ok(r#"[{"dp_rank": 0, "num_reqs": 5, "num_waiting_reqs": 2, "num_tokens": 9}]"#);
        let work = read_work(
            StockEngine::Sglang,
            &[Some((404, String::new())), ok(SGLANG_METRICS)],
            Some(&legacy),
        );
        assert_eq!(
            work,
            Work::Known {
                running: 3,
                waiting: 3,
                kv_transfers: 0
            }
        );
        // Without --enable-metrics the grammar queue is unseen.
        let work = read_work(
            StockEngine::Sglang,
            &[ok(loads), Some((404, String::new()))],
            None,
        );
        assert_eq!(work, Work::Unknown(Blind::MetricsUnavailable));
    }

    #[test]
    fn trtllm_reads_its_prometheus_gauges_only() {
        let page = "trtllm_num_requests_running{model_name=\"undefined\"} 2.0\ntrtllm_num_requests_waiting{model_name=\"undefined\"} 1.0\n";
        assert_eq!(
            read_work(StockEngine::Trtllm, &[ok(page)], None),
            Work::Known {
                running: 2,
                waiting: 1,
                kv_transfers: 0
            }
        );
        assert_eq!(
            read_work(StockEngine::Trtllm, &[Some((404, String::new()))], None),
            Work::Unknown(Blind::MetricsUnavailable)
        );
        assert_eq!(
            work_paths(
                StockEngine::Trtllm,
                StockEngine::Trtllm.default_metrics_path()
            ),
            ["/prometheus/metrics"],
            "never its JSON /metrics, which a read empties"
        );
        assert_eq!(
            read_work(StockEngine::Http, &[], None),
            Work::Unknown(Blind::NoWorkSignal)
        );
    }
}
