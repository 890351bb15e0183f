//! End-to-end harnesses for quiesce: real sidecar and engine processes run
//! as the operator renders them, locally, and on a cluster when one is
//! reachable.
//!
//! The local comparison (`quiesce-demo`, docs/demo.md) is built from:
//! [`pod`] (a local kubelet), [`balancer`] (a readiness-aware load balancer
//! with an endpoint propagation delay), [`load`] (verified streaming load),
//! [`rollout`] (the Deployment controller's rolling update),
//! [`strategy`] (the three pod templates), [`comparison`] (running them),
//! [`scale_in`] (which pod a scale-in removes, by policy),
//! [`report`] (the table and JSON) and [`timeline`] (the picture).
//!
//! The cluster suite (`quiesce-cluster`, docs/e2e.md) is [`cluster`]: the
//! same engine, load and yardsticks on a real Kubernetes.

pub mod balancer;
pub mod client;
pub mod cluster;
pub mod comparison;
pub mod load;
pub mod pair;
pub mod pod;
pub mod report;
pub mod rollout;
pub mod scale_in;
pub mod stock_pod;
pub mod strategy;
pub mod timeline;
