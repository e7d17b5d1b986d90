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
//! - [`manifest`]: the files and the block grid over them.
//! - [`ranges`] and [`checkpoint`]: what a resumed file already holds, and how that is
//!   recorded on disk.
//! - [`sender`] and [`receiver`]: the two state machines of a session.
#![warn(missing_docs)]

pub mod blockset;
pub mod checkpoint;
pub mod crypto;
pub mod error;
pub mod manifest;
pub mod plan;
pub mod ranges;
pub mod receiver;
pub mod replay;
pub mod sender;
pub mod session;
pub mod wire;

pub use error::Error;
pub use ferry_tuning::Timestamp;
pub use manifest::Manifest;
pub use ranges::RangeSet;
pub use receiver::{Delivery, Receiver, ReceiverConfig, ReceiverEvent};
pub use sender::{Sender, SenderConfig, SenderEvent, SlotBuffers, Transmit, TxBuffer, TxBuffers};
pub use session::{Failure, FailureCode};
