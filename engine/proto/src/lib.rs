//! ferry-proto: the sans-IO heart of ferry.
//!
//! Everything here is deterministic: time arrives as a [`Timestamp`] argument, datagrams
//! arrive as byte slices, and disk reads and writes leave as events. Nothing in this crate
//! opens a socket or a file, spawns a thread or reads a clock; the engine and the simulator
//! drive the same code.
//!
//! - [`wire`]: the datagram format and its decoder (see `docs/protocol.md`).
//! - [`crypto`]: per-direction keys and in-place sealing (AES-GCM, or CRC32 for `none`).
//! - [`replay`]: the anti-replay window.
#![warn(missing_docs)]

pub mod crypto;
pub mod error;
pub mod replay;
pub mod wire;

pub use error::Error;
pub use ferry_tuning::Timestamp;
