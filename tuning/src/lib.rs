//! ferry-tuning: rate control for ferry, pure and deterministic.
#![warn(missing_docs)]

pub mod time;

pub use time::Timestamp;
