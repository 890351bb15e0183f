//! The simulated engine's settings, independent of how they were given
//! (the binary's flags).

use std::net::SocketAddr;
use std::time::Duration;

use quiesce_protocol::DrainRequest;

use super::personality::StockConfig;

/// Everything the simulated engine needs to run.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The HTTP address to listen on (port 0 picks a free port; the
    /// `listening` log line tells which).
    pub listen: SocketAddr,
    /// The served model name (`/v1/models`, the `model` of responses).
    pub model: String,
    /// This instance's name, sent with every answer in
    /// [`INSTANCE_HEADER`](super::openai::INSTANCE_HEADER): behind a
    /// Service, it tells a client which pod answered.
    pub instance: String,
    /// Model load time: `/health` answers 503 until it has passed (in every
    /// worker, when there are workers).
    pub startup: Duration,
    /// Time per output token (one decode step).
    pub token_interval: Duration,
    /// Prefill time per prompt token, before the first output token.
    pub prefill_per_token: Duration,
    /// Most sequences generating at once; further requests queue.
    pub max_concurrency: usize,
    /// Worker processes (0: tokens are computed in the engine process).
    pub workers: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// The largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// The drain a signal starts when there is no sidecar to order one.
    pub local_drain: DrainRequest,
    /// How long each completed request keeps a KV transfer pending (0: no
    /// KV transfers).
    pub kv_transfer: Duration,
    /// Which stock engine it plays to the sidecar's HTTP adapters, and that
    /// engine's switches.
    pub stock: StockConfig,
}

/// Parses a non-negative number of seconds, fractions allowed (`0.2`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    parse_scaled(text, 1.0, "seconds")
}

/// Parses a non-negative number of milliseconds, fractions allowed (`0.05`).
pub fn parse_millis(text: &str) -> Result<Duration, String> {
    parse_scaled(text, 1e-3, "milliseconds")
}

fn parse_scaled(text: &str, to_seconds: f64, unit: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of {unit}"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "`{text}` must be a finite, non-negative number of {unit}"
        ));
    }
    Duration::try_from_secs_f64(value * to_seconds).map_err(|e| format!("`{text}` {unit}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_seconds("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_millis("0.5"), Ok(Duration::from_micros(500)));
        for bad in ["-1", "nan", "inf", "", "1s", "1e400"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
