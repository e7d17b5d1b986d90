//! ferry-io: the engine's contact with the kernel — UDP with GSO/GRO, file I/O helpers, CPU
//! placement and the memlock limit.
//!
//! # What is here today
//!
//! The socket calls are plain, non-blocking syscalls made through `libc`: `sendmsg` with a
//! `UDP_SEGMENT` control message (GSO), `recvmmsg` with `UDP_GRO`, `ppoll` to sleep. A
//! receiver's file writes go through an io_uring ([`uring`]); `sched_setaffinity`,
//! `setrlimit` and `fallocate` are plain calls. No executor, no threads of its own.
//!
//! - [`udp`]: [`UdpSocket`], [`RecvBatch`], readiness waits.
//! - [`placement`]: the cores this process may run on and pinning a thread to one.
//! - [`memlock`]: raising `RLIMIT_MEMLOCK` (registered io_uring buffers count against it).
//! - [`file`](mod@file): positional reads and writes, preallocation, `fdatasync`, disk-full detection.
//! - [`uring`]: a [`WriteQueue`](uring::WriteQueue) of positioned, gathered writes
//!   through io_uring, handed to the kernel's workers so a stalled write never stalls the
//!   thread that drains the socket.
//! - [`map`]: read-only file mappings that turn a file shrinking under them into zeros and
//!   a mark, not a `SIGBUS` that kills the process.
//!
//! # Why the API is batch-shaped
//!
//! An io_uring backend is expected to replace the internals of [`udp`] and [`file`](mod@file) later.
//! The API is written so that it can: sends hand over a whole burst (up to
//! [`MAX_GSO_SEGMENTS`](udp::MAX_GSO_SEGMENTS) datagrams in one call), receives fill a
//! caller-owned, preallocated [`RecvBatch`] of many messages, and nothing
//! hands out per-datagram allocations. `WouldBlock` is an ordinary result: the caller decides
//! when to [`wait`](udp::UdpSocket::wait) and for how long (its next pacing or protocol timer).
//!
//! # Errors
//!
//! Everything returns [`std::io::Error`] with the OS error intact (`raw_os_error()` works),
//! so the engine can classify failures (e.g. [`file::is_disk_full`]) and add its own context.
//! Errors this crate makes itself carry a message saying what to do.
//!
//! This crate depends on none of ferry's crates (as `quinn-udp` does not depend on
//! `quinn-proto`); only `ferry-engine` depends on it.
#![warn(missing_docs)]

pub mod file;
pub mod map;
pub mod memlock;
pub mod placement;
pub mod udp;
pub mod uring;

mod sys;

pub use udp::{Readiness, RecvBatch, SocketOptions, UdpSocket};
