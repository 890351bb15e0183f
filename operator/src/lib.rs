//! quiesce operator: the `InferenceDeployment` API and its reconciliation
//! into drain-aware Deployments.

pub mod admin;
pub mod api;
pub mod controller;
pub mod crd;
pub mod drain_plan;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod reason;
pub mod render;
pub mod rules;
mod schema;
