//! The quiesce engine SDK: what an inference server embeds so that it drains
//! instead of dropping requests when Kubernetes stops its pod.
//!
//! 1. Create a [`Shutdown`] at start and call [`Shutdown::set_ready`] once
//!    the model is loaded; stop loading when [`Shutdown::draining`] fires.
//! 2. In the request handler, call [`Shutdown::admit`]: on `Err`, answer 503
//!    with `Retry-After`; on `Ok`, keep the guard for the life of the request
//!    (call [`RequestGuard::start`] when it leaves the queue). End the response
//!    with an explicit abort when [`Shutdown::aborted`] fires.
//! 3. Call [`sidecar::spawn_from_env`] to follow the sidecar (if
//!    `QUIESCE_SOCKET` is set), and, in a binary, [`signals::spawn_driver`]
//!    so that SIGTERM drains even without one.
//! 4. Exit after [`Shutdown::wait_for_exit`].
//!
//! The SDK installs no signal handler by itself and counts work with atomics:
//! nothing happens per token.

pub mod shutdown;
pub mod sidecar;
pub mod signals;

pub use quiesce_protocol::{DrainRequest, EngineStatus, Phase};
pub use shutdown::{KvTransferGuard, Rejected, RequestGuard, Shutdown};
