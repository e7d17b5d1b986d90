//! ferry-lab: a userspace WAN link emulator for one machine.
//!
//! Two network namespaces are joined by a pair of TUN devices, one in each; an emulator
//! thread per direction reads every IP packet from one device and, after the link has done
//! its work, writes it into the other. The link's work is the sans-IO part, unit-tested
//! without a kernel:
//!
//! - [`link`]: a drop-tail bottleneck at a fixed rate, wire loss, delay, jitter, reordering;
//! - [`loss`]: random and Gilbert–Elliott loss;
//! - [`packet`]: the `virtio_net_hdr`, checksums, and splitting GSO super-packets into
//!   MTU-sized segments (loss and rate apply per segment, as on a real wire).
//!
//! The rest touches the kernel: [`netns`] (namespaces through `ip`, `setns`), [`tun`]
//! (TUN devices with offloads), [`emulator`] (the threads, at real-time priority).
//! The kernel here has no netem; this is what stands in for it.

#![warn(missing_docs)]

pub mod emulator;
pub mod error;
pub mod link;
pub mod loss;
pub mod netns;
pub mod packet;
pub mod rng;
pub mod tun;

pub use emulator::{Emulator, EmulatorConfig};
pub use error::Error;
pub use link::{Link, LinkConfig};
pub use loss::Loss;
