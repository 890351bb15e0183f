//! The local drain demo (`quiesce-demo`, docs/demo.md): a rolling restart
//! of three deployments under streaming load, side by side, then a
//! scale-in under each `spec.scaleIn.policy`. It is built on the
//! harness of `quiesce-e2e` (a local kubelet, a load balancer, verified
//! load, the Deployment controller's rolling update):
//!
//! [`strategy`] (the three pod templates), [`comparison`] (running them),
//! [`scale_in`] (which pod a scale-in removes, by policy), [`report`] (the
//! table and JSON) and [`timeline`] (the picture).

pub mod comparison;
pub mod report;
pub mod scale_in;
pub mod strategy;
pub mod timeline;
