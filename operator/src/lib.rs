//! quiesce operator: reconciles `InferenceDeployment`s (their API and pure
//! render live in [`quiesce_api`]) into drain-aware Deployments.

pub mod admin;
pub mod controller;
pub mod leader;
pub mod metrics;
