//! ferry-sim: a deterministic simulated network for ferry's sans-IO protocol.
#![warn(missing_docs)]
