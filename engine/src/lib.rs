//! ferry-engine: the glue between the sans-IO core (`ferry-proto`), the kernel (`ferry-io`)
//! and the control plane. `ferryd` and `ferry` are built here.
//!
//! - [`aead`]: which AES-GCM implementation (aws-lc or ring) is faster on this host.
//! - [`data`]: the data plane — UDP datagrams in and out, disk reads and writes, driving
//!   [`ferry_proto::Sender`] and [`ferry_proto::Receiver`].
//! - [`control`]: the SSH control channel (russh): server inside `ferryd`, client in `ferry`.
//! - [`config`], [`paths`]: ferryd's configuration, and confinement of users to their docroot.
//! - [`resume`]: resume levels, overwrite policies and the checkpoints of partial files;
//!   [`sums`]: the source checksums levels 2 and 3 check against.
//! - [`retry`]: which failures `ferry --retry` tries again; `--on-change`.
//! - [`doctor`]: `ferry doctor`'s checks, and ferryd's side of its UDP probe.
//! - [`integrity`]: end-to-end file checksums (`--checksum`), hashed in file order as data
//!   passes by.
//! - [`tunnel`]: the TCP fallback, a session's datagrams through an SSH channel when UDP
//!   does not pass.
#![warn(missing_docs)]

pub mod aead;
pub mod caps;
mod checkpointer;
pub mod config;
pub mod control;
pub mod ctl_server;
pub mod data;
pub mod doctor;
mod finisher;
mod inbound;
pub mod integrity;
pub mod listing;
pub mod logging;
pub mod metrics;
mod outbound;
pub mod paths;
pub mod resume;
pub mod retry;
mod source;
pub mod split;
pub mod stats;
pub mod sums;
pub mod translog;
pub mod tunnel;
