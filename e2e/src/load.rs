//! A load generator: sustained streaming completions through the balancer,
//! each verified byte by byte and sorted into one outcome by
//! [`client::complete_with_headers`], with its timing and the pod that
//! served it.
//!
//! Two shapes of load: open loop (`rate`: requests arrive as a Poisson
//! process whatever happens to earlier ones, as users do; at most
//! `concurrency` in flight, further arrivals wait for a slot) or closed
//! loop (`rate` 0: `concurrency` clients each send their next request when
//! the previous one ends). Lengths follow a [`LengthMix`]. Everything is
//! seeded, so two runs send the same requests in the same order.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use hyper::header::RETRY_AFTER;
use quiesce_sim::openai::INSTANCE_HEADER;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balancer::{ATTEMPTS_HEADER, POD_HEADER, PROXY_ERROR_HEADER};
use crate::client::{self, Ask, Classified, Finished};

/// A class of request lengths: `weight` parts of the mix ask for a number
/// of tokens drawn uniformly in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthClass {
    /// Relative weight.
    pub weight: u32,
    /// Fewest tokens.
    pub min: u32,
    /// Most tokens.
    pub max: u32,
}

/// A mix of request lengths, written `70:20-60,25:100-300,5:400-500`
/// (weight:min-max, comma separated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthMix {
    classes: Vec<LengthClass>,
}

impl LengthMix {
    /// The classes.
    pub fn classes(&self) -> &[LengthClass] {
        &self.classes
    }

    /// The largest length the mix can ask for.
    pub fn longest(&self) -> u32 {
        self.classes.iter().map(|c| c.max).max().unwrap_or(0)
    }

    /// Draws a length.
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let total: u64 = self.classes.iter().map(|c| u64::from(c.weight)).sum();
        let mut pick = rng.below(total.max(1));
        for class in &self.classes {
            let weight = u64::from(class.weight);
            if pick < weight {
                let span = u64::from(class.max - class.min) + 1;
                // below(span) < span <= u32::MAX + 1, so it fits.
                return class.min + rng.below(span) as u32;
            }
            pick -= weight;
        }
        self.classes.last().map_or(1, |c| c.max)
    }
}

impl FromStr for LengthMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |part: &str, why: &str| {
            format!("{part:?} in the length mix: {why} (expected WEIGHT:MIN-MAX, e.g. 70:20-60)")
        };
        let mut classes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (weight, range) = part.split_once(':').ok_or_else(|| bad(part, "no ':'"))?;
            let (min, max) = range.split_once('-').ok_or_else(|| bad(part, "no '-'"))?;
            let number = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| bad(part, "not a number"))
            };
            let class = LengthClass {
                weight: number(weight)?,
                min: number(min)?,
                max: number(max)?,
            };
            if class.min == 0 || class.min > class.max {
                return Err(bad(part, "needs 1 <= MIN <= MAX"));
            }
            classes.push(class);
        }
        if classes.iter().all(|c| c.weight == 0) {
            return Err(format!(
                "{text:?}: the length mix needs a class with a weight"
            ));
        }
        Ok(Self { classes })
    }
}

impl fmt::Display for LengthMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .classes
            .iter()
            .map(|c| format!("{}:{}-{}", c.weight, c.min, c.max))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A small seeded generator (SplitMix64): reproducible load without a
/// dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // The modulo bias is below 2^-40 for the small n used here.
        self.next_u64() % n
    }

    /// An exponentially distributed gap with mean `1 / rate` seconds.
    pub fn exponential(&mut self, rate: f64) -> Duration {
        let u = 1.0 - self.next_f64();
        Duration::from_secs_f64((-u.ln() / rate).min(3600.0))
    }
}

/// The load's shape.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Arrivals per second (open loop); 0 for a closed loop.
    pub rate: f64,
    /// Most requests in flight (open loop), or clients (closed loop).
    pub concurrency: usize,
    /// Request lengths.
    pub lengths: LengthMix,
    /// Seed of lengths and arrival times.
    pub seed: u64,
    /// How many times a request refused with a retryable 503 is sent again
    /// by the client itself, after the `Retry-After` delay, as client
    /// libraries do. 0 where a balancer retries on another pod.
    pub retries: u32,
}

/// One request, as the client saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Sequence number.
    pub id: u64,
    /// Tokens asked for.
    pub max_tokens: u32,
    /// When it was sent.
    pub started: Instant,
    /// When its answer ended.
    pub ended: Instant,
    /// How it ended.
    pub outcome: Classified,
    /// The pod that served it (the last one tried), per the balancer or
    /// the engine itself.
    pub pod: Option<String>,
    /// Times it was sent, by the client and the balancer together.
    pub attempts: u32,
    /// The balancer's error, if the balancer answered itself.
    pub proxy_error: Option<String>,
}

/// Requests by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Completed and verified.
    pub completed: usize,
    /// Refused before any work with a retryable 503 (after any retry).
    pub rejected: usize,
    /// Ended with an explicit abort.
    pub aborted: usize,
    /// Anything else.
    pub failed: usize,
}

impl Counts {
    /// Counts `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Self {
        let mut counts = Self::default();
        for record in records {
            match record.outcome {
                Classified::Completed { .. } => counts.completed += 1,
                Classified::Rejected => counts.rejected += 1,
                Classified::Aborted { .. } => counts.aborted += 1,
                Classified::Failed(_) => counts.failed += 1,
            }
        }
        counts
    }

    /// Every request.
    pub fn total(&self) -> usize {
        self.completed + self.rejected + self.aborted + self.failed
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} completed, {} rejected, {} aborted, {} failed",
            self.completed, self.rejected, self.aborted, self.failed
        )
    }
}

/// A view of running load, for progress reports.
#[derive(Clone)]
pub struct LoadStats {
    records: Arc<Mutex<Vec<RequestRecord>>>,
    in_flight: Arc<AtomicUsize>,
}

impl LoadStats {
    /// Requests by outcome so far.
    pub fn counts(&self) -> Counts {
        Counts::of(self.records.lock().expect("records lock").iter())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Running load.
pub struct Load {
    stop: CancellationToken,
    tasks: TaskTracker,
    records: Arc<Mutex<Vec<RequestRecord>>>,
    in_flight: Arc<AtomicUsize>,
}

struct Sender {
    target: SocketAddr,
    retries: u32,
    records: Arc<Mutex<Vec<RequestRecord>>>,
    in_flight: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

/// The longest `Retry-After` the client honours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Sender {
    async fn send(&self, max_tokens: u32) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let completion = Ask::stream(&format!("request {id}: tell me about the sea"), max_tokens);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut sent = 0;
        let mut started = None;
        let (finished, headers) = loop {
            let (finished, headers) = client::complete_with_headers(self.target, &completion).await;
            sent += 1;
            let started = *started.get_or_insert(finished.started);
            let retry = finished.outcome == Classified::Rejected && sent <= self.retries;
            if !retry {
                break (
                    Finished {
                        started,
                        ..finished
                    },
                    headers,
                );
            }
            tokio::time::sleep(retry_after(headers.as_ref())).await;
        };
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let header = |name: &str| {
            headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let balancer_attempts: u32 = header(ATTEMPTS_HEADER)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let record = RequestRecord {
            id,
            max_tokens,
            started: finished.started,
            ended: finished.ended,
            outcome: finished.outcome,
            pod: header(POD_HEADER).or_else(|| header(INSTANCE_HEADER)),
            attempts: sent - 1 + balancer_attempts,
            proxy_error: header(PROXY_ERROR_HEADER),
        };
        self.records.lock().expect("records lock").push(record);
    }
}

fn retry_after(headers: Option<&HeaderMap>) -> Duration {
    headers
        .and_then(|h| h.get(RETRY_AFTER)?.to_str().ok()?.parse().ok())
        .map_or(Duration::from_millis(500), Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

impl Load {
    /// Starts sending to `target`. Must be called inside a Tokio runtime.
    pub fn start(target: SocketAddr, config: LoadConfig) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let records = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let sender = Arc::new(Sender {
            target,
            retries: config.retries,
            records: Arc::clone(&records),
            in_flight: Arc::clone(&in_flight),
            next_id: AtomicU64::new(0),
        });
        let concurrency = config.concurrency.max(1);
        if config.rate > 0.0 {
            tasks.spawn(open_loop(
                sender,
                config,
                concurrency,
                stop.clone(),
                tasks.clone(),
            ));
        } else {
            for client in 0..concurrency {
                let mut rng =
                    SplitMix64::new(config.seed ^ (client as u64).wrapping_mul(0x51_7C_C1));
                let sender = Arc::clone(&sender);
                let lengths = config.lengths.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    while !stop.is_cancelled() {
                        sender.send(lengths.sample(&mut rng)).await;
                    }
                });
            }
        }
        Self {
            stop,
            tasks,
            records,
            in_flight,
        }
    }

    /// A view for progress reports.
    pub fn stats(&self) -> LoadStats {
        LoadStats {
            records: Arc::clone(&self.records),
            in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// Stops sending new requests; those in flight go on.
    pub fn stop_sending(&self) {
        self.stop.cancel();
    }

    /// Stops sending new requests and waits, at most `within`, for those in
    /// flight to end. Returns every record, by start time.
    pub async fn finish(self, within: Duration) -> Result<Vec<RequestRecord>, String> {
        self.stop.cancel();
        self.tasks.close();
        let waited = tokio::time::timeout(within, self.tasks.wait()).await;
        let mut records = std::mem::take(&mut *self.records.lock().expect("records lock"));
        records.sort_by_key(|r| r.started);
        match waited {
            Ok(()) => Ok(records),
            Err(_) => Err(format!(
                "{} requests were still in flight {within:?} after the load stopped",
                self.in_flight.load(Ordering::Relaxed)
            )),
        }
    }
}

async fn open_loop(
    sender: Arc<Sender>,
    config: LoadConfig,
    concurrency: usize,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut rng = SplitMix64::new(config.seed);
    // An absolute schedule: a late arrival does not push the next ones back.
    let mut next = tokio::time::Instant::now();
    loop {
        next += rng.exponential(config.rate);
        let max_tokens = config.lengths.sample(&mut rng);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let sender = Arc::clone(&sender);
        tasks.spawn(async move {
            sender.send(max_tokens).await;
            drop(permit);
        });
    }
}

/// The ideal termination time of a pod deleted at `deleted`, given the
/// `(start, natural end)` of the requests that reached it.
pub fn ideal_termination(
    propagation: Duration,
    deleted: Instant,
    work: impl IntoIterator<Item = (Instant, Instant)>,
) -> Duration {
    let admission_end = deleted + propagation;
    let tail = work
        .into_iter()
        .filter(|(start, _)| *start <= admission_end)
        .map(|(_, end)| end.saturating_duration_since(admission_end))
        .max()
        .unwrap_or_default();
    propagation + tail
}

/// When a request that reached a pod would have ended, had nothing
/// interrupted it; `None` if it did no work on any pod (rejected, or
/// refused by a dead pod).
pub fn natural_end(record: &RequestRecord, token_interval: Duration) -> Option<Instant> {
    match &record.outcome {
        Classified::Completed { .. } => Some(record.ended),
        Classified::Rejected => None,
        Classified::Failed(_) if record.proxy_error.is_some() => None,
        Classified::Aborted { .. } | Classified::Failed(_) => {
            Some(record.started + token_interval * record.max_tokens)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_mixes_parse_print_and_sample_within_their_classes() {
        let mix: LengthMix = "70:20-60, 25:100-300,5:400-500".parse().unwrap();
        assert_eq!(mix.to_string(), "70:20-60,25:100-300,5:400-500");
        assert_eq!(mix.longest(), 500);
        let mut rng = SplitMix64::new(7);
        let samples: Vec<u32> = (0..10_000).map(|_| mix.sample(&mut rng)).collect();
        assert!(samples.iter().all(|&n| (20..=60).contains(&n)
            || (100..=300).contains(&n)
            || (400..=500).contains(&n)));
        let long = samples.iter().filter(|&&n| n >= 400).count();
        assert!((350..650).contains(&long), "about 5% long: {long}");
        for bad in ["", "70", "70:20", "70:60-20", "x:1-2", "0:1-2", "5:0-3"] {
            assert!(bad.parse::<LengthMix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_generator_is_reproducible_and_exponential_gaps_have_the_right_mean() {
        let mut a = SplitMix64::new(1);
        let mut b = SplitMix64::new(1);
        assert_eq!(a.next_u64(), b.next_u64());
        let mut rng = SplitMix64::new(3);
        let mean: f64 = (0..20_000)
            .map(|_| rng.exponential(4.0).as_secs_f64())
            .sum::<f64>()
            / 20_000.0;
        assert!((0.23..0.27).contains(&mean), "mean gap {mean}");
    }
}
