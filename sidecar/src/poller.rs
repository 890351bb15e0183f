//! The adapter for stock engines (vLLM, SGLang, TensorRT-LLM, any HTTP
//! server), which do not speak the drain protocol: their health endpoint
//! says whether they are ready, their metrics and load endpoints how much
//! work they have ([`stock`]), and the drain is waiting for that work to be
//! nothing. The engine's own SIGTERM handling (vLLM's `--shutdown-timeout`)
//! does what is left, after the preStop hook.
//!
//! A drain ends early only on what the engine said after admission
//! stopped: the adapter looks at once when the propagation delay ends, and
//! then needs several idle looks in a row, since the engines' figures lag
//! (vLLM's by an engine step, SGLang's load snapshot by a few decode steps).
//! Work it cannot see is unknown, never zero: the drain then waits for its
//! timeout. A slow `/health` is not a dead engine (SGLang's takes over a
//! second): a look may take [`PollTarget::timeout`], and the engine is lost
//! only after [`LOST_AFTER_FAILURES`] failed looks or a refused connection.
//! An engine that answers `/health` with an error while nobody asked it to
//! drain is dead after [`PollTarget::unhealthy_grace`]: the adapter stops
//! reporting, `/live` fails, and the kubelet restarts it.

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
pub use crate::stock::StockEngine;
use crate::stock::{self, Blind, Page, SGLANG_LEGACY_LOAD_PATH, Work};

/// Largest page read; a real metrics page is a few hundred KB at most.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Failed looks in a row (timeouts, errors) after which the engine is lost.
/// A refused connection loses it at once: nothing listens any more.
pub const LOST_AFTER_FAILURES: u32 = 3;

/// Where and how to poll the engine.
#[derive(Clone, Debug)]
pub struct PollTarget {
    /// The engine kind.
    pub engine: StockEngine,
    /// `host:port` of the engine inside the pod.
    pub addr: SocketAddr,
    /// Health endpoint path.
    pub health_path: String,
    /// Metrics endpoint path (vLLM, SGLang, TensorRT-LLM).
    pub metrics_path: Option<String>,
    /// Time between two looks while no drain runs.
    pub interval: Duration,
    /// Time between two looks while a drain waits for the engine to be idle.
    pub drain_interval: Duration,
    /// How long one request to the engine may take.
    pub timeout: Duration,
    /// Idle looks in a row, all taken after admission stopped, that end a
    /// drain.
    pub idle_samples: u32,
    /// How long `/health` may fail, outside a drain, before the engine is
    /// dead.
    pub unhealthy_grace: Duration,
}

impl PollTarget {
    /// How long the engine may go without a report and still be live: a
    /// look may take the whole timeout, and a failed one is reported too.
    pub fn liveness_window(&self) -> Duration {
        self.timeout + self.interval * 2
    }
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

/// What one look saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Look {
    /// When it began: nothing after this instant is in it.
    at: Instant,
    /// `/health`'s status code.
    health: u16,
    work: Work,
}

/// Why a look saw nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing listens.
    Refused,
    /// A timeout or a broken answer.
    Failed,
}

/// The drain as the adapter plays it for an engine that cannot be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Drain {
    stop_admitting: Instant,
    abort: Instant,
}

/// What to do with a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Report this status (a sign of life), with what of the work is unknown.
    Report(EngineStatus, Option<Blind>),
    /// Report nothing: the engine is dead, `/live` must fail.
    Silent,
    /// The engine is gone: detach.
    Lost,
}

/// The adapter's memory between looks: pure, so every rule is a unit test.
#[derive(Clone, Debug, Default)]
struct Follower {
    ever_healthy: bool,
    unhealthy_since: Option<Instant>,
    failures: u32,
    drain: Option<Drain>,
    idle_streak: u32,
    last: EngineStatus,
}

impl Follower {
    fn drain(&mut self, request: DrainRequest, now: Instant) {
        let new = Drain {
            stop_admitting: now + request.propagation,
            abort: now + request.abort_after(),
        };
        self.drain = Some(match self.drain {
            Some(d) => Drain {
                stop_admitting: d.stop_admitting.min(new.stop_admitting),
                abort: d.abort.min(new.abort),
            },
            None => new,
        });
        self.idle_streak = 0;
    }

    /// Nothing can abort a stock engine from here: end the drain, so that
    /// the kubelet's SIGTERM reaches it now.
    fn abort(&mut self, now: Instant) {
        if let Some(drain) = &mut self.drain {
            drain.abort = drain.abort.min(now);
        }
    }

    /// When to look next, from `now`, the end of the last look.
    fn next_look(&self, now: Instant, target: &PollTarget) -> Instant {
        match self.drain {
            // The first look that counts is the one at the end of the
            // propagation delay.
            Some(d) if now < d.stop_admitting => (now + target.interval).min(d.stop_admitting),
            Some(_) => now + target.drain_interval,
            None => now + target.interval,
        }
    }

    fn on_look(
        &mut self,
        look: Result<Look, Failure>,
        now: Instant,
        target: &PollTarget,
    ) -> Verdict {
        let look = match look {
            Ok(look) => look,
            Err(Failure::Refused) => return Verdict::Lost,
            Err(Failure::Failed) => {
                self.failures += 1;
                if self.failures >= LOST_AFTER_FAILURES {
                    return Verdict::Lost;
                }
                // Alive as far as anyone knows, but not ready.
                let phase = self.phase(false, now, target);
                return Verdict::Report(EngineStatus { phase, ..self.last }, None);
            }
        };
        self.failures = 0;
        let healthy = look.health == 200;
        if healthy {
            self.ever_healthy = true;
            self.unhealthy_since = None;
        } else {
            self.unhealthy_since.get_or_insert(look.at);
        }
        let counts = self.drain.is_some_and(|d| look.at >= d.stop_admitting);
        self.idle_streak = if counts && look.work.is_known_idle() {
            self.idle_streak + 1
        } else {
            0
        };
        let dead = self.drain.is_none()
            && self
                .unhealthy_since
                .is_some_and(|since| self.ever_healthy && now >= since + target.unhealthy_grace);
        if dead {
            return Verdict::Silent;
        }
        let (running, waiting, kv_transfers, blind) = match look.work {
            Work::Known {
                running,
                waiting,
                kv_transfers,
            } => (running, waiting, kv_transfers, None),
            Work::Unknown(blind) => (0, 0, 0, Some(blind)),
        };
        self.last = EngineStatus {
            phase: self.phase(healthy, now, target),
            in_flight: running,
            queued: waiting,
            kv_transfers,
        };
        Verdict::Report(self.last, blind)
    }

    /// The phase a protocol engine would report in the same situation.
    fn phase(&self, healthy: bool, now: Instant, target: &PollTarget) -> Phase {
        match self.drain {
            None if healthy => Phase::Ready,
            None if self.ever_healthy => Phase::Draining,
            None => Phase::Starting,
            Some(d) if now >= d.abort => Phase::Stopped,
            Some(_) if self.idle_streak >= target.idle_samples.max(1) => Phase::Stopped,
            Some(_) => Phase::Draining,
        }
    }
}

/// Follows the engine until the task is aborted. Attaches to the hub once
/// the engine first answers, detaches when it is lost, and reattaches when
/// it answers again.
pub async fn run(target: PollTarget, hub: &EngineHub) {
    loop {
        // Wait for the engine to answer at all: until then it is not started.
        let first = loop {
            if let Ok(seen) = look(&target).await {
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
    }
}

/// Reports what the looks see until the engine is lost.
async fn follow(target: &PollTarget, mut attachment: EngineAttachment<'_>, first: Look) {
    let mut follower = Follower::default();
    let mut seen = Some(Ok(first));
    let mut blind: Option<Blind> = None;
    let mut silent = false;
    loop {
        if let Some(look) = seen.take() {
            match follower.on_look(look, Instant::now(), target) {
                Verdict::Report(status, now_blind) => {
                    if now_blind != blind {
                        log_visibility(target.engine, now_blind, follower.drain.is_some());
                        blind = now_blind;
                    }
                    silent = false;
                    attachment.report_blind(status, blind.map(Blind::label));
                }
                Verdict::Silent => {
                    if !silent {
                        tracing::error!(
                            grace_s = target.unhealthy_grace.as_secs(),
                            "the engine's /health has failed for the whole grace while no drain \
                             was asked: it is dead, not draining; /live now fails so that the \
                             kubelet restarts it"
                        );
                        silent = true;
                    }
                }
                Verdict::Lost => {
                    tracing::warn!(
                        draining = follower.drain.is_some(),
                        "the engine stopped answering"
                    );
                    return;
                }
            }
        }
        let next_look = follower.next_look(Instant::now(), target);
        tokio::select! {
            command = attachment.commands.recv() => match command {
                Some(EngineCommand::Drain(request)) => {
                    follower.drain(request, Instant::now());
                    if let Some(blind) = blind {
                        tracing::warn!(
                            reason = blind.label(),
                            "the drain waits for its whole timeout: {}",
                            blind.explain(target.engine)
                        );
                    }
                    if request.propagation.is_zero() {
                        seen = Some(look(target).await);
                    }
                }
                Some(EngineCommand::Abort(_)) => {
                    follower.abort(Instant::now());
                    seen = Some(look(target).await);
                }
                None => return,
            },
            () = sleep_until(next_look) => {
                seen = Some(look(target).await);
            }
        }
    }
}

/// Says loudly when the engine's work turns invisible, and when it is
/// visible again.
fn log_visibility(engine: StockEngine, blind: Option<Blind>, draining: bool) {
    match blind {
        Some(blind) => tracing::warn!(
            reason = blind.label(),
            draining,
            "cannot see the engine's work, so a drain waits for its whole timeout: {}",
            blind.explain(engine)
        ),
        None => tracing::info!("the engine's work is visible"),
    }
}

/// One look: health, and the work pages, at once.
async fn look(target: &PollTarget) -> Result<Look, Failure> {
    let at = Instant::now();
    let paths = stock::work_paths(target.engine, target.metrics_path.as_deref());
    let pages = async {
        let mut pages: Vec<Page> = Vec::with_capacity(paths.len());
        for path in &paths {
            pages.push(get(target, path).await.ok());
        }
        let legacy = match (target.engine, pages.first()) {
            (StockEngine::Sglang, Some(Some((404, _)))) => {
                Some(get(target, SGLANG_LEGACY_LOAD_PATH).await.ok())
            }
            _ => None,
        };
        (pages, legacy)
    };
    let (health, (pages, legacy)) = tokio::join!(get(target, &target.health_path), pages);
    let (health, _) = health?;
    Ok(Look {
        at,
        health,
        work: stock::read_work(target.engine, &pages, legacy.as_ref()),
    })
}

/// `GET path`: its status and body, within the target's timeout.
async fn get(target: &PollTarget, path: &str) -> Result<(u16, String), Failure> {
    let answer = async {
        let stream = TcpStream::connect(target.addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                Failure::Refused
            } else {
                Failure::Failed
            }
        })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|_| Failure::Failed)?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, target.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|_| Failure::Failed)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Failed)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
            .collect()
            .await
            .map_err(|_| Failure::Failed)?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(target.timeout, answer)
        .await
        .map_err(|_| Failure::Failed)?
}

#[cfg(test)]
mod tests {
    use super::*;

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
            metrics_path: engine.default_metrics_path().map(str::to_owned),
            interval: Duration::from_secs(1),
            drain_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
            idle_samples: 3,
            unhealthy_grace: Duration::from_secs(30),
        }
    }

    const IDLE: Work = Work::Known {
        running: 0,
        waiting: 0,
        kv_transfers: 0,
    };
    const BUSY: Work = Work::Known {
        running: 2,
        waiting: 1,
        kv_transfers: 0,
    };

    fn look(at: Instant, health: u16, work: Work) -> Result<Look, Failure> {
        Ok(Look { at, health, work })
    }

    fn phase(verdict: Verdict) -> Phase {
        match verdict {
            Verdict::Report(status, _) => status.phase,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    fn request(propagation: u64, timeout: u64) -> DrainRequest {
        DrainRequest {
            propagation: Duration::from_secs(propagation),
            timeout: Duration::from_secs(timeout),
            abort_grace: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_follow_health_outside_a_drain() {
        let vllm = target(StockEngine::Vllm);
        let mut follower = Follower::default();
        let t = Instant::now();
        assert_eq!(
            phase(follower.on_look(look(t, 503, IDLE), t, &vllm)),
            Phase::Starting
        );
        let ready = follower.on_look(look(t, 200, BUSY), t, &vllm);
        assert_eq!(
            ready,
            Verdict::Report(
                EngineStatus {
                    phase: Phase::Ready,
                    in_flight: 2,
                    queued: 1,
                    kv_transfers: 0
                },
                None
            )
        );
        assert_eq!(
            phase(follower.on_look(look(t, 503, BUSY), t, &vllm)),
            Phase::Draining
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_idle_looks_after_admission_stopped_end_a_drain_and_several_of_them() {
        let vllm = target(StockEngine::Vllm);
        let s = Duration::from_secs;
        let mut follower = Follower::default();
        let t0 = Instant::now();
        follower.on_look(look(t0, 200, IDLE), t0, &vllm);
        follower.drain(request(5, 60), t0);
        // Idle looks during the propagation delay do not count, even the one
        // that began just before it ended and came back after.
        for at in [t0 + s(1), t0 + s(4), t0 + Duration::from_millis(4999)] {
            assert_eq!(
                phase(follower.on_look(look(at, 200, IDLE), t0 + s(5), &vllm)),
                Phase::Draining
            );
        }
        assert_eq!(
            follower.next_look(t0 + Duration::from_millis(4500), &vllm),
            t0 + s(5)
        );
        // From the end of the propagation delay: three idle looks in a row.
        let after = |ms: u64| t0 + s(5) + Duration::from_millis(ms);
        assert_eq!(
            phase(follower.on_look(look(after(0), 200, IDLE), after(0), &vllm)),
            Phase::Draining
        );
        assert_eq!(
            phase(follower.on_look(look(after(250), 200, IDLE), after(250), &vllm)),
            Phase::Draining
        );
        // A busy look starts the count again.
        assert_eq!(
            phase(follower.on_look(look(after(500), 200, BUSY), after(500), &vllm)),
            Phase::Draining
        );
        for ms in [750, 1000] {
            assert_eq!(
                phase(follower.on_look(look(after(ms), 200, IDLE), after(ms), &vllm)),
                Phase::Draining
            );
        }
        assert_eq!(
            phase(follower.on_look(look(after(1250), 200, IDLE), after(1250), &vllm)),
            Phase::Stopped
        );
        assert_eq!(
            follower.next_look(after(1250), &vllm),
            after(1500),
            "looks every 250 ms while draining"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_work_drains_until_the_timeout_and_says_why() {
        let vllm = target(StockEngine::Vllm);
        let s = Duration::from_secs;
        let mut follower = Follower::default();
        let t0 = Instant::now();
        let blind = Work::Unknown(Blind::GaugeMissing);
        follower.on_look(look(t0, 200, blind), t0, &vllm);
        follower.drain(request(0, 60), t0);
        for secs in [1, 10, 59] {
            let verdict = follower.on_look(look(t0 + s(secs), 200, blind), t0 + s(secs), &vllm);
            assert_eq!(phase(verdict), Phase::Draining);
            assert!(matches!(
                verdict,
                Verdict::Report(_, Some(Blind::GaugeMissing))
            ));
        }
        assert_eq!(
            phase(follower.on_look(look(t0 + s(60), 200, blind), t0 + s(60), &vllm)),
            Phase::Stopped
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_failed_looks_are_not_a_lost_engine_but_a_refused_connection_is() {
        let sglang = target(StockEngine::Sglang);
        let t = Instant::now();
        let mut follower = Follower::default();
        follower.on_look(look(t, 200, BUSY), t, &sglang);
        for _ in 1..LOST_AFTER_FAILURES {
            let verdict = follower.on_look(Err(Failure::Failed), t, &sglang);
            assert_eq!(
                phase(verdict),
                Phase::Draining,
                "live, not ready: {verdict:?}"
            );
        }
        // An answer resets the count.
        assert_eq!(
            phase(follower.on_look(look(t, 200, BUSY), t, &sglang)),
            Phase::Ready
        );
        for _ in 1..LOST_AFTER_FAILURES {
            follower.on_look(Err(Failure::Failed), t, &sglang);
        }
        assert_eq!(
            follower.on_look(Err(Failure::Failed), t, &sglang),
            Verdict::Lost
        );
        let mut fresh = Follower::default();
        fresh.on_look(look(t, 200, BUSY), t, &sglang);
        assert_eq!(
            fresh.on_look(Err(Failure::Refused), t, &sglang),
            Verdict::Lost
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_unhealthy_without_a_drain_is_dead_after_the_grace() {
        let vllm = target(StockEngine::Vllm);
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut follower = Follower::default();
        follower.on_look(look(t0, 200, IDLE), t0, &vllm);
        assert_eq!(
            phase(follower.on_look(look(t0 + s(1), 503, IDLE), t0 + s(1), &vllm)),
            Phase::Draining
        );
        assert_eq!(
            phase(follower.on_look(look(t0 + s(30), 503, IDLE), t0 + s(30), &vllm)),
            Phase::Draining
        );
        assert_eq!(
            follower.on_look(look(t0 + s(31), 503, IDLE), t0 + s(31), &vllm),
            Verdict::Silent
        );
        // Healthy again: alive again.
        assert_eq!(
            phase(follower.on_look(look(t0 + s(32), 200, IDLE), t0 + s(32), &vllm)),
            Phase::Ready
        );
        // While draining, an error on /health is the drain (SGLang answers 503).
        follower.drain(request(0, 600), t0 + s(40));
        let at = t0 + s(100);
        assert_eq!(
            phase(follower.on_look(look(at, 503, BUSY), at, &vllm)),
            Phase::Draining
        );
        // One that never was healthy is still starting.
        let mut starting = Follower::default();
        let late = t0 + s(300);
        assert_eq!(
            phase(starting.on_look(look(t0, 503, IDLE), late, &vllm)),
            Phase::Starting
        );
    }
}
