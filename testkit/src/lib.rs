//! What every quiesce suite needs, written once: child processes as a
//! kubelet sees them ([`process`]), the workspace's binaries ([`bins`]), a
//! small HTTP/1.1 client ([`http`]), hostile HTTP clients ([`hostile`])
//! and an OpenAI client that verifies every token the simulated engine
//! streams ([`openai`]).
//!
//! Nothing here sleeps to synchronise: every wait polls for a condition (a
//! log line, a status code, an exit) with a deadline.

use std::time::Duration;

pub mod bins;
pub mod hostile;
pub mod http;
pub mod openai;
pub mod process;

/// Generous bound for anything that takes well under a second on an idle
/// machine: CI is a loaded 2-core box.
pub const PROMPT: Duration = Duration::from_secs(10);
