//! End-to-end harnesses for quiesce: real sidecar and engine processes run
//! as the operator renders them, locally, and on a cluster when one is
//! reachable.

pub mod bins;
pub mod client;
pub mod pair;
pub mod process;
