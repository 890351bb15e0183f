//! quiesce operator: the `InferenceDeployment` API and its reconciliation
//! into drain-aware Deployments.

pub mod api;
pub mod crd;
pub mod render;
pub mod rules;
mod schema;
