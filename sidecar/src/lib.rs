//! The quiesce sidecar: runs beside the inference engine in every pod, serves
//! `/live`, `/ready`, `/metrics` and `/status`, and coordinates the drain
//! with the engine over a Unix socket in a volume only the pod can see.
//!
//! - [`engine`]: the sidecar's view of the engine, whatever adapter feeds it;
//! - [`coordinator`]: readiness, liveness and the drain;
//! - [`socket`]: the socket, the native protocol adapter and the drain client's server side;
//! - [`poller`]: the adapter for stock engines, observed over HTTP;
//! - [`stock`]: what vLLM, SGLang and TensorRT-LLM expose of their work;
//! - [`http`]: the read-only HTTP endpoints;
//! - [`drain_client`]: `quiesce-sidecar drain`, the preStop hook;
//! - [`install`]: the copy of this binary into the shared volume.

pub mod coordinator;
pub mod drain_client;
pub mod engine;
pub mod http;
pub mod install;
pub mod metrics;
pub mod poller;
pub mod socket;
pub mod stock;
