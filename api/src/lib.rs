//! The `InferenceDeployment` API of quiesce and everything pure about it:
//! the types and their CRD, the rules a valid resource satisfies, and the
//! render of a resource into the Deployment, Service and
//! PodDisruptionBudget the operator applies.
//!
//! It needs kube only for its derive: no client, no runtime, no TLS. The
//! controller (the operator crate) reads and writes the cluster; this crate
//! only computes, so that the compiler keeps the render pure.

pub mod crd;
pub mod drain_plan;
pub mod limits;
pub mod reason;
pub mod render;
pub mod rules;
mod schema;
pub mod v1alpha1;

pub use v1alpha1::*;
