//! The simulated engine's HTTP side: the OpenAI-compatible routes,
//! admission through the SDK, the paced generation loop, `/health` and
//! `/metrics`.
//!
//! Every generation request ends in exactly one way: completed, rejected
//! before any work (503 with `Retry-After`), or explicitly aborted (a final
//! `finish_reason: "abort"` chunk, or a 503 `server_shutdown` body). The
//! request's [`RequestGuard`] lives in the response body and is dropped only
//! when hyper has taken the body's last byte, so the engine cannot report
//! `stopped` (and exit) while an answer is still on its way.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use tokio::sync::{Semaphore, mpsc};

use super::config::EngineConfig;
use super::openai::{
    ApiError, Endpoint, GenerationRequest, INSTANCE_HEADER, Limits, ResponseMeta, SSE_DONE,
    parse_request,
};
use super::personality::{self, LaggingGauges, Personality, SGLANG_HEALTH_GENERATION_WAIT, Work};
use super::tokens::{prompt_seed, prompt_tokens, token_id, token_text};
use super::workers::WorkerPool;
use quiesce_engine::{Phase, Rejected, RequestGuard, Shutdown};

/// Request counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    completed: AtomicU64,
    rejected_starting: AtomicU64,
    rejected_shutting_down: AtomicU64,
    aborted: AtomicU64,
    cancelled: AtomicU64,
    invalid: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The state the HTTP handlers share.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    limits: Limits,
    shutdown: Shutdown,
    slots: Arc<Semaphore>,
    workers: Option<Arc<WorkerPool>>,
    stats: Stats,
    next_id: AtomicU64,
    /// Set when the engine died (a worker was lost) and the server stays up.
    dead: Arc<AtomicBool>,
    /// SGLang's and TensorRT-LLM's gauges, refreshed now and then.
    gauges: LaggingGauges,
    /// TensorRT-LLM's iteration statistics, until a `/metrics` read takes them.
    iteration_stats: Mutex<VecDeque<serde_json::Value>>,
    /// HTTP requests served, by path, for `/sim/stats`.
    requests: Mutex<BTreeMap<String, u64>>,
}

/// The most iteration statistics TensorRT-LLM's JSON `/metrics` keeps here
/// (its own queue is unbounded).
const MAX_ITERATION_STATS: usize = 1000;
/// How often TensorRT-LLM's worker queues iteration statistics
/// (`_iteration_result_task`: `time.sleep(0.2)`).
const TRTLLM_STATS_INTERVAL: Duration = Duration::from_millis(200);

/// Why a request was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AbortCause {
    Shutdown,
    WorkerLost,
}

impl AbortCause {
    fn describe(self) -> &'static str {
        match self {
            Self::Shutdown => "the engine is shutting down",
            Self::WorkerLost => "a worker process died",
        }
    }
}

/// How generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Completed,
    Aborted { generated: u32, cause: AbortCause },
    ClientGone,
}

impl Engine {
    /// The engine's HTTP state. `workers` computes the tokens when present.
    /// `dead` is set when the engine dies and the server stays up (see
    /// [`Personality::stays_up_when_dead`]). Must be called inside a Tokio
    /// runtime: the stock personalities keep their statistics in tasks.
    pub fn new(
        config: EngineConfig,
        shutdown: Shutdown,
        workers: Option<Arc<WorkerPool>>,
        dead: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let limits = Limits {
            model: config.model.clone(),
            max_tokens: config.max_tokens_limit,
        };
        let engine = Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            limits,
            config,
            shutdown,
            workers,
            stats: Stats::default(),
            next_id: AtomicU64::new(1),
            dead,
            gauges: LaggingGauges::new(Work::default()),
            iteration_stats: Mutex::new(VecDeque::new()),
            requests: Mutex::new(BTreeMap::new()),
        });
        match engine.config.stock.personality {
            Personality::Sglang => {
                tokio::spawn(sglang_scheduler_ticks(Arc::downgrade(&engine)));
            }
            Personality::Trtllm => {
                tokio::spawn(trtllm_iteration_stats(Arc::downgrade(&engine)));
            }
            Personality::Quiesce | Personality::Vllm => {}
        }
        engine
    }

    /// The routes of the engine it plays.
    pub fn router(self: &Arc<Self>) -> Router {
        let stock = &self.config.stock;
        let routes = Router::new()
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .route("/sim/stats", get(sim_stats));
        let routes = match stock.personality {
            Personality::Quiesce => routes
                .route("/health", get(health))
                .route("/metrics", get(metrics)),
            Personality::Vllm => routes
                .route("/health", get(stock_health))
                .route("/metrics", get(vllm_metrics))
                .route("/load", get(vllm_load)),
            Personality::Sglang => {
                let routes = routes
                    .route("/health", get(stock_health))
                    .route("/health_generate", get(stock_health))
                    .route("/v1/loads", get(sglang_loads))
                    .route("/get_load", get(sglang_get_load));
                if stock.sglang_metrics {
                    routes.route("/metrics", get(sglang_metrics))
                } else {
                    routes
                }
            }
            Personality::Trtllm => {
                let routes = routes
                    .route("/health", get(stock_health))
                    .route("/metrics", get(trtllm_json_metrics));
                if stock.trtllm_perf_metrics {
                    routes.route("/prometheus/metrics", get(trtllm_metrics))
                } else {
                    routes
                }
            }
        };
        routes
            .fallback(no_route)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                count_and_name,
            ))
            .with_state(self.clone())
    }

    /// The engine's work now.
    pub fn work(&self) -> Work {
        let status = self.shutdown.status();
        let free = self.slots.available_permits();
        Work {
            generating: (self.config.max_concurrency.saturating_sub(free)) as u32,
            queued: status.queued,
            unsent: status.in_flight + status.queued,
            kv_transfers: status.kv_transfers,
        }
    }

    fn meta(&self, endpoint: Endpoint) -> ResponseMeta {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        ResponseMeta {
            endpoint,
            id: format!("{}-{id}", endpoint.id_prefix()),
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: self.config.model.clone(),
        }
    }

    async fn handle(self: Arc<Self>, endpoint: Endpoint, request: Request) -> Response {
        // Client errors first: a request that is wrong here is wrong on
        // every replica, so a retryable 503 would only send it elsewhere.
        let body = match read_body(request, self.config.max_body_bytes).await {
            Ok(body) => body,
            Err(error) => {
                count(&self.stats.invalid);
                return error_response(&error, None);
            }
        };
        let request = match parse_request(endpoint, &body, &self.limits) {
            Ok(request) => request,
            Err(error) => {
                count(&self.stats.invalid);
                return error_response(&error, None);
            }
        };
        let guard = match self.shutdown.admit() {
            Ok(guard) => guard,
            Err(rejected) => return self.reject(rejected),
        };
        if request.stream {
            self.stream(request, guard)
        } else {
            self.respond(request, guard).await
        }
    }

    fn reject(&self, rejected: Rejected) -> Response {
        let error = match rejected {
            Rejected::Starting => {
                count(&self.stats.rejected_starting);
                ApiError::rejected(
                    "starting",
                    "the engine is loading its model; retry on another replica",
                )
            }
            Rejected::ShuttingDown => {
                count(&self.stats.rejected_shutting_down);
                ApiError::rejected(
                    "shutting_down",
                    "the engine is shutting down and admits no new requests; retry on another replica",
                )
            }
        };
        error_response(&error, None)
    }

    /// A streamed answer: headers now, then one event per token from a task
    /// that owns the request until its last event is queued.
    fn stream(self: Arc<Self>, request: GenerationRequest, mut guard: RequestGuard) -> Response {
        let meta = self.meta(request.endpoint);
        let (events, body) = mpsc::unbounded_channel();
        if request.endpoint == Endpoint::ChatCompletions {
            let _ = events.send(Piece::Data(meta.role_chunk().into()));
        }
        tokio::spawn(async move {
            let last = request.max_tokens.saturating_sub(1);
            let ending = self
                .generate(&request, &mut guard, events.closed(), |i, text| {
                    let chunk = meta.token_chunk(i, text, i == last);
                    events.send(Piece::Data(chunk.into())).is_ok()
                })
                .await;
            let generated = match ending {
                Ending::ClientGone => {
                    count(&self.stats.cancelled);
                    tracing::debug!(id = meta.id, "the client went away");
                    return;
                }
                Ending::Completed => {
                    self.finish_completed(&meta.id);
                    request.max_tokens
                }
                Ending::Aborted { generated, cause } => {
                    self.finish_aborted(&meta.id, generated, cause);
                    let _ = events.send(Piece::Data(meta.abort_chunk().into()));
                    generated
                }
            };
            if request.include_usage {
                let usage = meta.usage_chunk(prompt_tokens(&request.prompt), generated);
                let _ = events.send(Piece::Data(usage.into()));
            }
            let _ = events.send(Piece::Data(Bytes::from_static(SSE_DONE)));
            // The guard travels behind the last event: it is dropped when
            // hyper has taken everything before it.
            let _ = events.send(Piece::End(guard));
        });
        let mut response = Response::new(Body::new(ResponseBody::stream(body)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    /// A whole answer, once generation has ended.
    async fn respond(&self, request: GenerationRequest, mut guard: RequestGuard) -> Response {
        let meta = self.meta(request.endpoint);
        let mut text = String::new();
        let ending = self
            .generate(&request, &mut guard, std::future::pending(), |_, token| {
                text.push_str(token);
                true
            })
            .await;
        match ending {
            Ending::Completed => {
                self.finish_completed(&meta.id);
                let body =
                    meta.full_response(&text, prompt_tokens(&request.prompt), request.max_tokens);
                let mut response = Response::new(Body::new(ResponseBody::once(body, Some(guard))));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Ending::Aborted { generated, cause } => {
                self.finish_aborted(&meta.id, generated, cause);
                let error = ApiError::aborted(generated, request.max_tokens, cause.describe());
                error_response(&error, Some(guard))
            }
            Ending::ClientGone => {
                // Not reachable: a non-streaming request notices a departed
                // client only by being dropped.
                count(&self.stats.cancelled);
                error_response(
                    &ApiError::invalid("the client went away", None),
                    Some(guard),
                )
            }
        }
    }

    fn finish_completed(&self, id: &str) {
        count(&self.stats.completed);
        self.refresh_on_finish();
        tracing::debug!(id, "request completed");
        // Registered before the request's guard is dropped, so that the
        // drain never sees a moment with neither.
        self.start_kv_transfer();
    }

    fn finish_aborted(&self, id: &str, generated: u32, cause: AbortCause) {
        count(&self.stats.aborted);
        self.refresh_on_finish();
        tracing::debug!(id, generated, cause = cause.describe(), "request aborted");
    }

    /// TensorRT-LLM refreshes its gauges when a request finishes.
    fn refresh_on_finish(&self) {
        if self.config.stock.personality == Personality::Trtllm {
            self.gauges.refresh(self.work());
        }
    }

    /// Holds a pending KV transfer for `--kv-transfer-ms`, as a prefill
    /// instance does while a decode instance pulls the KV cache; an abort
    /// cancels it.
    fn start_kv_transfer(&self) {
        let hold = self.config.kv_transfer;
        if hold.is_zero() {
            return;
        }
        let transfer = self.shutdown.kv_transfer();
        let aborted = self.shutdown.aborted();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(hold) => {}
                () = aborted.cancelled() => tracing::debug!("KV transfer cancelled by the abort"),
            }
            drop(transfer);
        });
    }

    /// The simulated model: waits for a slot, prefills, then produces one
    /// token per interval on an absolute schedule (no drift), each computed
    /// by a worker. `emit` returns false when the client is gone.
    async fn generate(
        &self,
        request: &GenerationRequest,
        guard: &mut RequestGuard,
        client_gone: impl Future<Output = ()>,
        mut emit: impl FnMut(u32, &'static str) -> bool,
    ) -> Ending {
        let aborted = self.shutdown.aborted();
        let shutdown_abort = |generated| Ending::Aborted {
            generated,
            cause: AbortCause::Shutdown,
        };
        tokio::pin!(client_gone);
        let _slot = tokio::select! {
            biased;
            () = aborted.cancelled() => return shutdown_abort(0),
            () = &mut client_gone => return Ending::ClientGone,
            slot = self.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                // The semaphore is never closed.
                Err(_) => return shutdown_abort(0),
            },
        };
        guard.start();
        if self.config.stock.personality == Personality::Sglang {
            // SGLang logs its stats once per prefill batch.
            self.gauges.refresh(self.work());
        }
        let seed = prompt_seed(&request.prompt);
        let prefill = self
            .config
            .prefill_per_token
            .saturating_mul(prompt_tokens(&request.prompt));
        let first_token = Instant::now() + prefill;
        for i in 0..request.max_tokens {
            let due = first_token + self.config.token_interval.saturating_mul(i);
            tokio::select! {
                biased;
                () = aborted.cancelled() => return shutdown_abort(i),
                () = &mut client_gone => return Ending::ClientGone,
                () = tokio::time::sleep_until(due.into()) => {}
            }
            let id = match &self.workers {
                None => token_id(seed, i),
                Some(workers) => tokio::select! {
                    biased;
                    () = aborted.cancelled() => return shutdown_abort(i),
                    id = workers.token(seed, i) => match id {
                        Ok(id) => id,
                        Err(_) => return Ending::Aborted { generated: i, cause: AbortCause::WorkerLost },
                    },
                },
            };
            if !emit(i, token_text(id).unwrap_or_default()) {
                return Ending::ClientGone;
            }
        }
        Ending::Completed
    }

    /// The Prometheus text exposition.
    fn render_metrics(&self) -> String {
        let status = self.shutdown.status();
        let model = escape_label(&self.config.model);
        let stats = &self.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                if labels.is_empty() {
                    out.push_str(&format!("{name} {value}\n"));
                } else {
                    out.push_str(&format!("{name}{{{labels}}} {value}\n"));
                }
            }
        };
        let model_label = format!("model_name=\"{model}\"");
        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests generating (holding a slot).",
            &[(&model_label, u64::from(status.in_flight))],
        );
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests admitted and waiting for a slot.",
            &[(&model_label, u64::from(status.queued))],
        );
        metric(
            "quiesce_engine_kv_transfers",
            "gauge",
            "KV transfers pending.",
            &[("", u64::from(status.kv_transfers))],
        );
        metric(
            "quiesce_engine_requests_completed_total",
            "counter",
            "Requests that generated every token.",
            &[("", load(&stats.completed))],
        );
        metric(
            "quiesce_engine_requests_rejected_total",
            "counter",
            "Requests refused before any work (503 with Retry-After).",
            &[
                ("reason=\"starting\"", load(&stats.rejected_starting)),
                (
                    "reason=\"shutting_down\"",
                    load(&stats.rejected_shutting_down),
                ),
            ],
        );
        metric(
            "quiesce_engine_requests_aborted_total",
            "counter",
            "Requests ended with an explicit abort after work started.",
            &[("", load(&stats.aborted))],
        );
        metric(
            "quiesce_engine_requests_cancelled_total",
            "counter",
            "Streaming requests whose client went away.",
            &[("", load(&stats.cancelled))],
        );
        metric(
            "quiesce_engine_requests_invalid_total",
            "counter",
            "Requests refused as invalid (400, 404, 413).",
            &[("", load(&stats.invalid))],
        );
        let phases = [
            Phase::Starting,
            Phase::Ready,
            Phase::Draining,
            Phase::Aborting,
            Phase::Stopped,
        ];
        let phase_labels: Vec<String> = phases.iter().map(|p| format!("phase=\"{p}\"")).collect();
        let phase_samples: Vec<(&str, u64)> = phases
            .iter()
            .zip(&phase_labels)
            .map(|(p, label)| (label.as_str(), u64::from(*p == status.phase)))
            .collect();
        metric(
            "quiesce_engine_phase",
            "gauge",
            "The engine's phase (1 for the current one).",
            &phase_samples,
        );
        out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn completions(State(engine): State<Arc<Engine>>, request: Request) -> Response {
    engine.handle(Endpoint::Completions, request).await
}

async fn chat_completions(State(engine): State<Arc<Engine>>, request: Request) -> Response {
    engine.handle(Endpoint::ChatCompletions, request).await
}

async fn models(State(engine): State<Arc<Engine>>) -> Response {
    let body = serde_json::json!({
        "object": "list",
        "data": [{
            "id": engine.config.model,
            "object": "model",
            "created": 0,
            "owned_by": "quiesce",
        }],
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// 200 when ready; 503 while starting, draining, aborting or stopped, so
/// that load balancers stop routing as soon as a drain begins.
async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let phase = engine.shutdown.phase();
    let status = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "status": phase.as_str() });
    json_response(status, body.to_string().into_bytes())
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let mut response = Response::new(Body::from(engine.render_metrics()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Counts the request for `/sim/stats`, and names the instance in the
/// answer: behind a Service, a client learns which pod answered.
async fn count_and_name(
    State(engine): State<Arc<Engine>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    *engine
        .requests
        .lock()
        .expect("requests lock")
        .entry(path)
        .or_default() += 1;
    let mut response = next.run(request).await;
    if let Ok(name) = HeaderValue::from_str(&engine.config.instance) {
        response.headers_mut().insert(INSTANCE_HEADER, name);
    }
    response
}

/// `GET /sim/stats`: the HTTP requests the engine served, by path; the
/// polling cost of whatever watches it.
async fn sim_stats(State(engine): State<Arc<Engine>>) -> Response {
    let requests = engine.requests.lock().expect("requests lock").clone();
    let body = serde_json::json!({ "requests": requests });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// `/health` of the stock personalities:
///
/// - 503 while loading (vLLM and TensorRT-LLM do not listen yet; SGLang
///   answers 503 until its warm-up passed);
/// - 503 once the engine died (vLLM with `VLLM_KEEP_ALIVE_ON_ENGINE_DEATH`,
///   TensorRT-LLM);
/// - while draining: 200 for vLLM, whose drain marks nothing dead
///   (`AsyncLLM.check_health` raises only on `EngineDeadError`) and for
///   TensorRT-LLM; 503 for SGLang (`gracefully_exit`);
/// - SGLang, unless `SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=false`,
///   generates a token and answers after at least a second
///   (`health_generate`);
/// - every answer `--health-delay-ms` late: an engine under load.
async fn stock_health(State(engine): State<Arc<Engine>>) -> Response {
    let stock = &engine.config.stock;
    let mut delay = stock.health_delay;
    let phase = engine.shutdown.phase();
    let sglang = stock.personality == Personality::Sglang;
    let healthy = match phase {
        _ if engine.dead.load(Ordering::Acquire) => false,
        Phase::Starting => false,
        Phase::Ready => true,
        Phase::Draining | Phase::Aborting | Phase::Stopped => !sglang,
    };
    if sglang && healthy && stock.sglang_health_generation {
        delay += SGLANG_HEALTH_GENERATION_WAIT;
    }
    tokio::time::sleep(delay).await;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap_or_default()
}

fn text_response(page: String) -> Response {
    let mut response = Response::new(Body::from(page));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn vllm_metrics(State(engine): State<Arc<Engine>>) -> Response {
    let stock = &engine.config.stock;
    text_response(personality::vllm_metrics(
        &escape_label(&engine.config.model),
        engine.work(),
        stock.vllm_log_stats,
    ))
}

async fn vllm_load(State(engine): State<Arc<Engine>>) -> Response {
    let tracking = engine.config.stock.vllm_server_load_tracking;
    let body = personality::vllm_load(engine.work(), tracking);
    json_response(StatusCode::OK, body.into_bytes())
}

async fn sglang_metrics(State(engine): State<Arc<Engine>>) -> Response {
    let model = escape_label(&engine.config.model);
    text_response(personality::sglang_metrics(&model, engine.gauges.shown()))
}

async fn sglang_loads(State(engine): State<Arc<Engine>>) -> Response {
    let body = personality::sglang_loads(engine.work(), engine.config.max_concurrency);
    json_response(StatusCode::OK, body.into_bytes())
}

async fn sglang_get_load(State(engine): State<Arc<Engine>>) -> Response {
    let body = personality::sglang_get_load(engine.work());
    json_response(StatusCode::OK, body.into_bytes())
}

async fn trtllm_metrics(State(engine): State<Arc<Engine>>) -> Response {
    text_response(personality::trtllm_metrics(engine.gauges.shown()))
}

/// TensorRT-LLM's JSON `/metrics`: hands out the queued iteration
/// statistics and forgets them.
async fn trtllm_json_metrics(State(engine): State<Arc<Engine>>) -> Response {
    let taken: Vec<serde_json::Value> = engine
        .iteration_stats
        .lock()
        .expect("stats lock")
        .drain(..)
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::Value::from(taken).to_string().into_bytes(),
    )
}

/// SGLang's scheduler loop as its gauges see it: a decode step per token
/// interval while requests generate, an idle check otherwise.
async fn sglang_scheduler_ticks(engine: Weak<Engine>) {
    loop {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let interval = engine.config.token_interval.max(Duration::from_millis(1));
        let decode_log_interval = engine.config.stock.sglang_decode_log_interval;
        engine
            .gauges
            .sglang_tick(engine.work(), decode_log_interval);
        drop(engine);
        tokio::time::sleep(interval).await;
    }
}

/// TensorRT-LLM's worker queueing iteration statistics while it iterates.
async fn trtllm_iteration_stats(engine: Weak<Engine>) {
    let mut iteration = 0;
    loop {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let work = engine.work();
        if work.generating > 0 {
            iteration += 1;
            let mut queue = engine.iteration_stats.lock().expect("stats lock");
            queue.push_back(personality::trtllm_iteration_stats(iteration, work));
            if queue.len() > MAX_ITERATION_STATS {
                queue.pop_front();
            }
        }
        drop(engine);
        tokio::time::sleep(TRTLLM_STATS_INTERVAL).await;
    }
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error_response(&ApiError::no_route(method.as_str(), uri.path()), None)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError, guard: Option<RequestGuard>) -> Response {
    let mut response = Response::new(Body::new(ResponseBody::once(error.body(), guard)));
    *response.status_mut() =
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = error.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Reads the whole body, refusing more than `limit` bytes with a 413
/// (before reading anything when `Content-Length` already says so).
async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::too_large(limit)),
        Err(error) => Err(ApiError::invalid(
            format!("cannot read the request body: {error}"),
            None,
        )),
    }
}

/// What a streaming request's task sends to its response body.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    /// The end of the stream, carrying the request's guard.
    End(RequestGuard),
}

/// A response body that holds its request's [`RequestGuard`] until hyper has
/// taken its last byte.
#[derive(Debug)]
struct ResponseBody {
    source: Source,
    guard: Option<RequestGuard>,
}

#[derive(Debug)]
enum Source {
    Once(Option<Bytes>),
    Stream {
        events: mpsc::UnboundedReceiver<Piece>,
        ended: bool,
    },
}

impl ResponseBody {
    fn once(bytes: Vec<u8>, guard: Option<RequestGuard>) -> Self {
        Self {
            source: Source::Once(Some(bytes.into())),
            guard,
        }
    }

    fn stream(events: mpsc::UnboundedReceiver<Piece>) -> Self {
        Self {
            source: Source::Stream {
                events,
                ended: false,
            },
            guard: None,
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match &mut this.source {
            Source::Once(bytes) => match bytes.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => {
                    this.guard = None;
                    Poll::Ready(None)
                }
            },
            Source::Stream { events, ended } => {
                if *ended {
                    return Poll::Ready(None);
                }
                match ready!(events.poll_recv(cx)) {
                    Some(Piece::Data(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    Some(Piece::End(guard)) => {
                        *ended = true;
                        drop(guard);
                        Poll::Ready(None)
                    }
                    // The task ended without the end marker (it panicked):
                    // fail the body so that hyper cuts the connection rather
                    // than ending the stream as if it were complete.
                    None => {
                        *ended = true;
                        Poll::Ready(Some(Err(io::Error::other(
                            "the stream ended without its final chunk",
                        ))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Once(bytes) => bytes.is_none(),
            Source::Stream { ended, .. } => *ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Once(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Source::Once(None) => SizeHint::with_exact(0),
            Source::Stream { .. } => SizeHint::default(),
        }
    }
}
