//! ferry-sim: a deterministic simulated network for ferry's sans-IO protocol.
#![warn(missing_docs)]

pub mod link;
pub mod rng;
pub mod scenario;
pub mod tcp;
