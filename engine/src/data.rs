//! The data plane: one UDP socket, the sessions that share it, and their disk I/O.
//!
//! (Being written.) The control plane starts sessions through [`DataPlane::add_session`]
//! and learns how each ended from the returned channel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;

use ferry_proto::crypto::{Cipher, Direction};
use ferry_tuning::{Policy, RateLimits};

/// One file of a session, as both sides agree on it over the control channel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Path relative to the transfer root, `/`-separated, already validated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds since the Unix epoch.
    pub mtime: (i64, u32),
    /// Unix permission bits.
    pub mode: u32,
}

/// Which end of the data this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads files and sends them.
    Sender,
    /// Receives and writes files.
    Receiver,
}

/// Everything the data plane needs to run one session.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// Sender or receiver.
    pub role: Role,
    /// Session id carried in every datagram.
    pub session: u32,
    /// Fresh random secret agreed over the control channel.
    pub secret: [u8; 32],
    /// Cipher.
    pub cipher: Cipher,
    /// Direction of the data (client to server for an upload).
    pub direction: Direction,
    /// Payload bytes per datagram.
    pub block_size: u32,
    /// Rate policy (the sender uses it).
    pub policy: Policy,
    /// Target and minimum rate (the sender uses them).
    pub limits: RateLimits,
    /// Where the files are (sender) or go (receiver): each entry's `path` is joined to it.
    pub root: PathBuf,
    /// The files, in manifest order. Directories travel separately (control plane).
    pub files: Vec<FileEntry>,
    /// The peer's UDP address, if known; otherwise learned from its first authentic datagram.
    pub peer: Option<SocketAddr>,
    /// Skip fdatasync before the rename (`--no-fsync`).
    pub no_fsync: bool,
}

/// How a session ended.
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// `None` when every file arrived complete.
    pub error: Option<(crate::control::ErrorCode, String)>,
    /// File payload delivered.
    pub bytes: u64,
    /// All UDP payload bytes sent by this side.
    pub wire_bytes: u64,
    /// Payload bytes re-sent (sender side).
    pub retransmitted_bytes: u64,
    /// Seconds from the first data datagram to completion.
    pub data_secs: f64,
}

/// Progress of a running session, polled by the CLI for its bar and `--json` lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Payload bytes delivered so far.
    pub bytes: u64,
    /// Total payload bytes.
    pub total: u64,
    /// Current rate, bits per second.
    pub rate_bps: u64,
}

/// A handle on a running data plane (cheap to clone).
#[derive(Clone, Debug)]
pub struct DataPlane {
    local: SocketAddr,
}

impl DataPlane {
    /// Binds `addr` (port 0 picks one) and starts the data thread.
    pub fn start(addr: SocketAddr) -> std::io::Result<DataPlane> {
        let _ = addr;
        Err(std::io::Error::other("data plane not written yet"))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts a session; the channel yields its report when it ends.
    pub fn add_session(&self, spec: SessionSpec) -> mpsc::Receiver<SessionReport> {
        let _ = spec;
        mpsc::channel().1
    }
}
