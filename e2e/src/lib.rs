//! End-to-end harnesses for quiesce: real sidecar and engine processes run
//! as the operator renders them, locally, and on a cluster when one is
//! reachable.
//!
//! Locally: [`pod`] (a kubelet: the pod runner and its events),
//! [`balancer`] (a readiness-aware load balancer with an endpoint
//! propagation delay), [`load`] (verified streaming load and the ideal
//! termination of a pod), [`rollout`] (the Deployment controller's rolling
//! update), [`client`] (how each request ended), [`pair`] and
//! [`stock_pod`] (the smallest real pods, for drain tests and benchmarks).
//! The demo (crate `quiesce-demo`) is built on them.
//!
//! The cluster suite (`quiesce-cluster`, docs/e2e.md) is [`cluster`]: the
//! same engine, load and yardsticks on a real Kubernetes.

pub mod balancer;
pub mod client;
pub mod cluster;
pub mod load;
pub mod pair;
pub mod pod;
pub mod rollout;
pub mod stock_pod;
