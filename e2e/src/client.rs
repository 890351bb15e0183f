//! How a request ended, as the suites count it: the verifying OpenAI client
//! of the test kit, its outcome sorted into exactly one class.

use std::net::SocketAddr;
use std::time::Instant;

use hyper::HeaderMap;
use quiesce_sim::verify::Outcome;
pub use quiesce_testkit::http::get_status;
pub use quiesce_testkit::openai::Ask;
use quiesce_testkit::openai::request;

/// How a request ended, as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// Every token arrived, verified, with `finish_reason: "length"`.
    Completed {
        /// Tokens received.
        tokens: u32,
    },
    /// Refused before any work with a retryable 503.
    Rejected,
    /// Ended explicitly with an abort response.
    Aborted {
        /// Verified tokens received before the abort.
        tokens: u32,
    },
    /// Anything else: a reset, a truncated stream, a wrong byte, a bare 5xx.
    Failed(String),
}

impl From<Result<Outcome, String>> for Classified {
    fn from(outcome: Result<Outcome, String>) -> Self {
        match outcome {
            Ok(Outcome::Completed { tokens }) => Self::Completed { tokens },
            Ok(Outcome::Rejected { .. }) => Self::Rejected,
            Ok(Outcome::Aborted { tokens }) => Self::Aborted { tokens },
            Err(why) => Self::Failed(why),
        }
    }
}

/// A finished request, with its timing.
#[derive(Clone, Debug)]
pub struct Finished {
    /// How it ended.
    pub outcome: Classified,
    /// When it was sent.
    pub started: Instant,
    /// When its answer ended.
    pub ended: Instant,
}

/// Sends `ask` to the engine (or a proxy) at `addr` and classifies the answer.
pub async fn complete(addr: SocketAddr, ask: &Ask) -> Finished {
    complete_with_headers(addr, ask).await.0
}

/// [`complete`], also returning the response headers (`None` when no
/// response arrived): a proxy says there which backend answered.
pub async fn complete_with_headers(addr: SocketAddr, ask: &Ask) -> (Finished, Option<HeaderMap>) {
    let record = request(addr, ask).await;
    let finished = Finished {
        outcome: record.outcome.into(),
        started: record.started,
        ended: record.ended,
    };
    (finished, record.headers)
}
