//! The adapter for stock engines (vLLM, SGLang, any HTTP server), which do
//! not speak the drain protocol: their health endpoint says whether they are
//! ready, their Prometheus metrics how much work they have, and the drain is
//! waiting for that work to reach zero. The engine's own SIGTERM handling
//! (vLLM's `--shutdown-timeout`) does the aborting, after the preStop hook.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::HOST;
use quiesce_protocol::{DrainRequest, EngineStatus, Phase};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

use crate::engine::{EngineAttachment, EngineCommand, EngineHub};

/// Largest metrics page read; a real one is a few hundred KB at most.
const MAX_METRICS_BYTES: usize = 8 * 1024 * 1024;

/// Which stock engine, and so which metrics count its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockEngine {
    /// vLLM: `vllm:num_requests_running` + `vllm:num_requests_waiting`.
    Vllm,
    /// SGLang: `sglang:num_running_reqs` + `sglang:num_queue_reqs`.
    Sglang,
    /// Any HTTP server: health only; its work is unknown.
    Http,
}

impl StockEngine {
    /// The gauges of running and waiting requests.
    fn gauges(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Vllm => Some(("vllm:num_requests_running", "vllm:num_requests_waiting")),
            Self::Sglang => Some(("sglang:num_running_reqs", "sglang:num_queue_reqs")),
            Self::Http => None,
        }
    }
}

/// Where and how to poll the engine.
#[derive(Clone, Debug)]
pub struct PollTarget {
    /// The engine kind.
    pub engine: StockEngine,
    /// `host:port` of the engine inside the pod.
    pub addr: SocketAddr,
    /// Health endpoint path.
    pub health_path: String,
    /// Metrics endpoint path (vLLM, SGLang).
    pub metrics_path: Option<String>,
    /// Time between two polls.
    pub interval: Duration,
}

/// Parses `http://HOST:PORT` (the pod-local engine URL the operator passes).
pub fn parse_engine_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: the engine URL must start with http://"))?;
    rest.trim_end_matches('/')
        .parse()
        .map_err(|_| format!("{url:?}: expected http://IP:PORT, such as http://127.0.0.1:8000"))
}

/// Sums every sample of `name` in a Prometheus text page.
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
    found
}

/// What one poll saw.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Observation {
    healthy: bool,
    running: u32,
    waiting: u32,
}

/// The drain as the adapter plays it for an engine that cannot be told.
#[derive(Clone, Copy, Debug)]
struct Drain {
    stop_admitting: Instant,
    abort: Instant,
}

/// Follows the engine until the task is aborted. Attaches to the hub once
/// the engine first answers, detaches when it stops answering during a drain
/// (the engine is gone), and reattaches when it comes back.
pub async fn run(target: PollTarget, hub: &EngineHub) {
    loop {
        // Wait for the engine to answer at all: until then it is not started.
        let first = loop {
            if let Some(seen) = poll(&target).await {
                break seen;
            }
            tokio::time::sleep(target.interval).await;
        };
        let Ok(attachment) = hub.attach() else {
            tracing::error!("another engine adapter is attached; the poller stops");
            return;
        };
        tracing::info!(addr = %target.addr, "following the engine over HTTP");
        follow(&target, attachment, first).await;
        tracing::warn!("the engine stopped answering during a drain");
    }
}

/// Reports what the polls see until the engine is lost mid-drain.
async fn follow(target: &PollTarget, mut attachment: EngineAttachment<'_>, first: Observation) {
    let mut seen = Some(first);
    let mut drain: Option<Drain> = None;
    let mut ever_healthy = false;
    let mut next_poll = Instant::now();
    loop {
        if let Some(observation) = seen {
            ever_healthy |= observation.healthy;
            attachment.report(status(
                observation,
                drain,
                ever_healthy,
                Instant::now(),
                target,
            ));
        } else if drain.is_some() {
            return;
        }
        // Between polls the engine's state is unknown: report nothing, so a
        // hung engine stops looking live.
        next_poll += target.interval;
        tokio::select! {
            command = attachment.commands.recv() => match command {
                Some(EngineCommand::Drain(request)) => {
                    drain = Some(start(request, drain));
                    seen = poll(target).await;
                }
                Some(EngineCommand::Abort(_)) => {
                    // Nothing can abort a stock engine from here: end the
                    // drain so the kubelet's SIGTERM reaches it now.
                    drain = drain.map(|d| Drain { abort: Instant::now(), ..d });
                    seen = poll(target).await.or(seen);
                }
                None => return,
            },
            () = sleep_until(next_poll) => {
                seen = poll(target).await;
            }
        }
    }
}

fn start(request: DrainRequest, current: Option<Drain>) -> Drain {
    let now = Instant::now();
    let new = Drain {
        stop_admitting: now + request.propagation,
        abort: now + request.abort_after(),
    };
    match current {
        Some(d) => Drain {
            stop_admitting: d.stop_admitting.min(new.stop_admitting),
            abort: d.abort.min(new.abort),
        },
        None => new,
    }
}

/// The phase a protocol engine would report in the same situation.
fn status(
    seen: Observation,
    drain: Option<Drain>,
    ever_healthy: bool,
    now: Instant,
    target: &PollTarget,
) -> EngineStatus {
    let known_idle = target.engine.gauges().is_some() && seen.running + seen.waiting == 0;
    let phase = match drain {
        None if seen.healthy => Phase::Ready,
        None if ever_healthy => Phase::Draining,
        None => Phase::Starting,
        Some(d) if now >= d.abort => Phase::Stopped,
        Some(d) if now >= d.stop_admitting && known_idle => Phase::Stopped,
        Some(_) => Phase::Draining,
    };
    EngineStatus {
        phase,
        in_flight: seen.running,
        queued: seen.waiting,
        kv_transfers: 0,
    }
}

/// One poll: health, then metrics. `None` when the engine does not answer.
async fn poll(target: &PollTarget) -> Option<Observation> {
    let timeout = target.interval.max(Duration::from_millis(500));
    let (health, _) = tokio::time::timeout(timeout, get(target.addr, &target.health_path))
        .await
        .ok()??;
    let healthy = health == 200;
    let (mut running, mut waiting) = (0, 0);
    if let (Some(path), Some((run_gauge, wait_gauge))) =
        (&target.metrics_path, target.engine.gauges())
    {
        let (status, page) = tokio::time::timeout(timeout, get(target.addr, path))
            .await
            .ok()??;
        if status == 200 {
            let count = |name| gauge_sum(&page, name).unwrap_or(0.0).max(0.0) as u32;
            running = count(run_gauge);
            waiting = count(wait_gauge);
        } else {
            tracing::warn!(
                status,
                path,
                "the engine's metrics endpoint failed (for SGLang, pass --enable-metrics)"
            );
        }
    }
    Some(Observation {
        healthy,
        running,
        waiting,
    })
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_METRICS_BYTES)
        .collect()
        .await
        .ok()?;
    Some((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0
vllm:num_requests_running_total_xyz 99
vllm:num_requests_waiting{model_name=\"m\"} 4
sglang:num_running_reqs 1
";

    #[test]
    fn gauges_are_summed_over_label_sets() {
        assert_eq!(gauge_sum(PAGE, "vllm:num_requests_running"), Some(5.0));
        assert_eq!(gauge_sum(PAGE, "vllm:num_requests_waiting"), Some(4.0));
        assert_eq!(gauge_sum(PAGE, "sglang:num_running_reqs"), Some(1.0));
        assert_eq!(gauge_sum(PAGE, "sglang:num_queue_reqs"), None);
    }

    #[test]
    fn engine_urls() {
        assert_eq!(
            parse_engine_url("http://127.0.0.1:8000"),
            Ok("127.0.0.1:8000".parse().unwrap())
        );
        assert!(parse_engine_url("https://127.0.0.1:8000").is_err());
        assert!(
            parse_engine_url("http://localhost:8000")
                .unwrap_err()
                .contains("http://IP:PORT")
        );
    }

    fn target(engine: StockEngine) -> PollTarget {
        PollTarget {
            engine,
            addr: "127.0.0.1:1".parse().unwrap(),
            health_path: "/health".into(),
            metrics_path: Some("/metrics".into()),
            interval: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_follow_health_work_and_the_drain() {
        let vllm = target(StockEngine::Vllm);
        let now = Instant::now();
        let busy = Observation {
            healthy: true,
            running: 2,
            waiting: 1,
        };
        let idle = Observation {
            healthy: true,
            running: 0,
            waiting: 0,
        };
        let sick = Observation {
            healthy: false,
            ..idle
        };
        assert_eq!(status(sick, None, false, now, &vllm).phase, Phase::Starting);
        assert_eq!(status(busy, None, true, now, &vllm).phase, Phase::Ready);
        assert_eq!(status(busy, None, true, now, &vllm).in_flight, 2);
        assert_eq!(status(sick, None, true, now, &vllm).phase, Phase::Draining);

        let request = DrainRequest {
            propagation: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            abort_grace: Duration::from_secs(5),
        };
        let drain = start(request, None);
        let s = Duration::from_secs;
        // Idle, but load balancers may still route: keep serving.
        assert_eq!(
            status(idle, Some(drain), true, now + s(1), &vllm).phase,
            Phase::Draining
        );
        assert_eq!(
            status(busy, Some(drain), true, now + s(6), &vllm).phase,
            Phase::Draining
        );
        assert_eq!(
            status(idle, Some(drain), true, now + s(6), &vllm).phase,
            Phase::Stopped
        );
        assert_eq!(
            status(busy, Some(drain), true, now + s(65), &vllm).phase,
            Phase::Stopped
        );
        // Without metrics the work is unknown: only the deadline ends the drain.
        let http = target(StockEngine::Http);
        assert_eq!(
            status(idle, Some(drain), true, now + s(6), &http).phase,
            Phase::Draining
        );
        assert_eq!(
            status(idle, Some(drain), true, now + s(65), &http).phase,
            Phase::Stopped
        );
    }
}
