//! The data plane: one UDP socket, the sessions that share it, and their disk I/O.
//!
//! A data thread owns the socket and every session on it; sessions are told apart by the
//! session id in each datagram's header. The thread drives each session's sans-IO state
//! machine ([`ferry_proto::Sender`] or [`ferry_proto::Receiver`]): datagrams in, disk reads
//! and writes as the machine asks, datagrams out when its pacer allows, and sleeps in
//! `poll(2)` until the next datagram or timer. The control plane starts sessions with
//! [`DataPlane::add_session`] and learns how each ended from the returned channel.
//!
//! Each lane is one pinned thread making batched syscalls: data datagrams leave in GSO
//! bursts (`outbound.rs`), arrivals are taken with `recvmmsg` and GRO and their blocks
//! written through an io_uring disk queue (`inbound.rs`), and blocks of large files are
//! sealed from mapped windows where the AES-GCM backend seals in one pass (`source.rs`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, UNIX_EPOCH};

use ferry_proto::checkpoint::Checkpoint;
use ferry_proto::crypto::{Cipher, Direction};
use ferry_proto::{
    Delivery, FailureCode, Manifest, RangeSet, Receiver, ReceiverConfig, ReceiverEvent, Sender,
    SenderConfig, SenderEvent, SlotBuffers, TxBuffer, wire,
};
use ferry_tuning::{Controller, Policy, RateLimits, Timestamp};

use crate::caps::HostCaps;
use crate::checkpointer::Checkpointer;
use crate::control::ErrorCode;
use crate::finisher::{Finisher, Job, Then};
use crate::inbound::{Inbound, Written};
use crate::integrity::{Algorithm, Digest, InOrder};
use crate::outbound::{Burst, Out, send};
use crate::resume::{self, FileAction, FilePlan};
use crate::source::{SendSlots, Windows};
use crate::split;
use crate::stats::{Counters, LaneStats, Latency};
use crate::tunnel;

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
    /// For a piece of a file split across sessions: where its bytes lie in the whole file.
    /// `size` is then the piece's length, and the session sees a file of that size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

/// Where a piece of a split file lies: bytes `[offset, offset + size)` of a file of
/// `whole_size` bytes (see [`ferry_proto::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// The piece's first byte in the whole file.
    pub offset: u64,
    /// The whole file's size.
    pub whole_size: u64,
}

impl FileEntry {
    /// The piece's first byte in the whole file (0 for a whole file).
    pub fn offset(&self) -> u64 {
        self.part.map_or(0, |p| p.offset)
    }

    /// The whole file's size (`size` for a whole file).
    pub fn whole_size(&self) -> u64 {
        self.part.map_or(self.size, |p| p.whole_size)
    }

    /// Whether the piece's offset and length lie within the whole file.
    pub fn part_is_valid(&self) -> bool {
        self.part.is_none_or(|p| {
            p.offset
                .checked_add(self.size)
                .is_some_and(|end| end <= p.whole_size)
        })
    }
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
    /// Round-trip guess until the session measures its own (the control channel's).
    pub initial_rtt: Duration,
    /// The ferry user the session belongs to (for `ferryctl sessions`).
    pub user: String,
    /// A host cap's share for this session, bits per second (see [`SessionOp::Ceiling`]).
    pub ceiling_bps: Option<u64>,
    /// What the receiving side decided for each file, in manifest order: send, resume
    /// from the blocks it holds, or skip. Empty: every file is sent whole.
    pub plans: Vec<FilePlan>,
    /// The multi-session transfer the session belongs to, if any.
    pub transfer: Option<String>,
    /// The end-to-end checksum: the sender hashes each file as it first reads it and
    /// publishes the digest ([`SessionOp::Digest`] on [`SessionHandle::remote_ops`]); the
    /// receiver hashes what it writes and renames a file only once the sender's digest
    /// has arrived ([`DataPlane::control`]) and is equal.
    pub checksum: Algorithm,
    /// What happens when no datagram comes over UDP: fail, or continue over TCP.
    pub fallback: Fallback,
}

/// What a session does when no authentic datagram comes from its peer over UDP within
/// [`UDP_START_TIMEOUT`]: fail, or continue over the TCP fallback ([`crate::tunnel`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Fail with [`ErrorCode::UdpStart`] (`ferry --no-fallback`, and clients that do not
    /// know the fallback).
    #[default]
    Off,
    /// The client's side: publish [`SessionOp::UdpSilent`] on the session's `remote_ops`
    /// and wait (up to [`TUNNEL_WAIT`]) for the control plane to attach a tunnel with
    /// [`DataPlane::tunnel`]; fail as `Off` does if none comes.
    Ask,
    /// ferryd's side: keep waiting, as long as a client that asks for a tunnel needs to
    /// get one attached, before failing as `Off` does.
    Accept,
}

/// How a session ended.
#[derive(Clone, Debug, Default)]
pub struct SessionReport {
    /// `None` when every file arrived complete.
    pub error: Option<(ErrorCode, String)>,
    /// File payload delivered.
    pub bytes: u64,
    /// All UDP payload bytes sent by this side.
    pub wire_bytes: u64,
    /// Payload bytes re-sent (sender side).
    pub retransmitted_bytes: u64,
    /// Seconds from the first data datagram to completion.
    pub data_secs: f64,
    /// Inbound datagrams dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Share of sent blocks the receiver reported lost (sending side).
    pub loss: Option<f64>,
    /// Blocks asked for again, repeats included (receiving side).
    pub nacks: Option<u64>,
    /// Each file's checksum as this side computed it (with a checksum algorithm; `None`
    /// for skipped files and files not finished).
    pub digests: Vec<Option<Digest>>,
    /// Receiving side: the files whose checksum did not match the sender's (or whose
    /// sender's checksum never came). They stay `NAME.partial` with their checkpoint.
    pub mismatched: Vec<u32>,
}

/// Progress of a running session, shared with the control plane and the CLI.
#[derive(Debug, Default)]
pub struct Progress {
    /// Payload bytes delivered so far.
    pub bytes: AtomicU64,
    /// Total payload bytes.
    pub total: AtomicU64,
    /// The controller's current pacing rate, bits per second (sender side).
    pub rate_bps: AtomicU64,
    /// Set when the data flow started (first authentic datagram from the peer).
    pub started: AtomicBool,
}

/// A started session: its report channel and live progress.
#[derive(Debug)]
pub struct SessionHandle {
    /// Yields the report when the session ends.
    pub report: mpsc::Receiver<SessionReport>,
    /// Live progress.
    pub progress: Arc<Progress>,
    /// Live changes asked of a receiving session, which only its peer's sender can make:
    /// the control plane relays them to the peer.
    pub remote_ops: mpsc::Receiver<SessionOp>,
    /// The UDP port of the lane running the session: where the peer sends.
    pub udp_port: u16,
    /// The host cap's share the session starts with, if a cap applies.
    pub ceiling_bps: Option<u64>,
}

enum Command {
    Add(
        Box<SessionSpec>,
        mpsc::Sender<SessionReport>,
        Arc<Progress>,
        mpsc::Sender<SessionOp>,
    ),
    Control(u32, SessionOp, mpsc::Sender<Result<(), String>>),
    Tunnel(u32, OwnedFd, mpsc::Sender<Result<(), String>>),
}

/// A live change to one session, from the operator (`ferryctl`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SessionOp {
    /// New target and/or minimum rate (bits per second) and/or policy.
    SetRate {
        /// New target rate.
        target_bps: Option<u64>,
        /// New minimum rate.
        min_bps: Option<u64>,
        /// New policy.
        policy: Option<Policy>,
    },
    /// Stop sending data; keepalives keep the session alive.
    Pause,
    /// Continue where it was.
    Resume,
    /// End the session; the receiver keeps what it has as `.partial`.
    Cancel,
    /// The session's share of a host-wide cap (bits per second; `None`: uncapped). It
    /// bounds the target and minimum rate without replacing them, so lifting it restores
    /// what the user asked for. A receiving session relays it to its sender.
    Ceiling(Option<u64>),
    /// End the session here at once, without relaying anything: its client has gone, or a
    /// new session takes over its files. A receiver flushes its checkpoints first.
    Abandon,
    /// A file's end-to-end checksum. A sending session publishes it (on its
    /// `remote_ops`) once it has hashed the whole file; the control plane relays it to the
    /// receiving session, which renames the file only if its own digest is equal.
    Digest {
        /// The file's index in the manifest.
        file: u32,
        /// The sender's digest.
        digest: Digest,
    },
    /// No authentic datagram came from the peer over UDP within [`UDP_START_TIMEOUT`]. A
    /// session with [`Fallback::Ask`] publishes it on its `remote_ops`; the control plane
    /// then opens the TCP fallback with the peer and attaches it ([`DataPlane::tunnel`]).
    /// Not an operator's change: [`DataPlane::control`] refuses it.
    UdpSilent,
}

/// What `ferryctl sessions` shows of one session.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: u32,
    /// `send` or `recv`: what this side does.
    pub direction: &'static str,
    /// The peer's UDP address, once known.
    pub peer: Option<String>,
    /// The ferry user.
    pub user: Option<String>,
    /// Files in the session.
    pub files: usize,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Payload bytes in all.
    pub total: u64,
    /// Delivered payload over the last snapshot interval, bits per second.
    pub rate_bps: u64,
    /// Target rate (sending side; on the receiving side the last one relayed, or 0).
    pub target_bps: u64,
    /// Minimum rate (sending side).
    pub min_bps: u64,
    /// Policy (the sender's; on the receiving side the one agreed at the start).
    pub policy: String,
    /// The session's share of a host cap, bits per second, if one applies.
    pub ceiling_bps: Option<u64>,
    /// Share of sent blocks reported lost (sending side).
    pub loss: f64,
    /// Smoothed round-trip time, ms (sending side).
    pub rtt_ms: f64,
    /// Queueing delay the controller sees, ms (sending side).
    pub queue_ms: f64,
    /// `starting`, `running`, `paused` or `finishing`.
    pub state: &'static str,
    /// The core whose data thread runs the session (`None`: an unpinned thread).
    pub core: Option<usize>,
    /// The UDP port of that thread's socket.
    pub port: u16,
    /// The multi-session transfer it belongs to, if any.
    pub transfer: Option<String>,
}

/// A handle on a running data plane (cheap to clone): one or more lanes, each a data thread
/// pinned to its own core with its own UDP socket and port.
#[derive(Clone, Debug)]
pub struct DataPlane {
    lanes: Arc<Vec<Lane>>,
    /// Which lane runs each session, and since when.
    placement: Arc<Mutex<HashMap<u32, (usize, Instant)>>>,
    /// Host-wide caps and their sharing among sessions.
    caps: HostCaps,
}

/// One data thread: its socket's address, its command queue and its session snapshot.
#[derive(Debug)]
struct Lane {
    local: SocketAddr,
    commands: mpsc::Sender<Command>,
    wake: UdpSocket,
    snapshot: Arc<Mutex<Vec<SessionInfo>>>,
    /// Sessions on this lane, and those of them still moving data.
    load: Arc<LaneLoad>,
    /// The lane's counters and latencies, published about once a second.
    stats: Arc<Mutex<LaneStats>>,
}

/// How busy a lane is: counted up when a session is placed on it, down by the lane.
#[derive(Debug, Default)]
struct LaneLoad {
    /// Sessions on the lane, until they end (a receiver lingers a while after its data).
    sessions: AtomicUsize,
    /// Sessions on the lane whose data is still moving: what placement balances. A session
    /// lingering after its data (2 s, or 15 s where the TCP fallback may yet be asked
    /// for) costs its lane nothing, and counting it sent an upload's immediate download
    /// to the other core, which on one host was the client's: the two ends of the session
    /// then shared a core and the download ran at a third of its speed.
    moving: AtomicUsize,
}

impl LaneLoad {
    fn placed(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.moving.fetch_add(1, Ordering::Relaxed);
    }

    /// A session's data is done moving.
    fn stopped_moving(&self) {
        self.moving.fetch_sub(1, Ordering::Relaxed);
    }

    /// A session left the lane; `moving` if its data was still counted as moving.
    fn ended(&self, moving: bool) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        if moving {
            self.stopped_moving();
        }
    }
}

/// How often a receiving session makes what it has written durable and checkpoints it.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the data thread refreshes what [`DataPlane::sessions`] returns.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);
/// How often it publishes [`DataPlane::lane_stats`].
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a session waits for the first authentic datagram from its peer (over UDP, then
/// again over the TCP fallback once attached).
pub const UDP_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session that asked for the TCP fallback waits for it to be attached.
pub const TUNNEL_WAIT: Duration = Duration::from_secs(10);
/// Socket buffers: bursts at 10 Gbit/s and more need megabytes.
const SOCKET_BUFFER: usize = 16 << 20;
/// How long a receiving session that holds every block waits for the sender's checksums
/// of its complete files before failing them.
const DIGEST_WAIT: Duration = Duration::from_secs(15);
/// A datagram that wakes the data thread to look at its command queue.
pub(crate) const WAKE: &[u8] = b"ferry-wake";

/// Binds with `SO_REUSEPORT`, so that `ferry doctor`'s probe socket (`doctor.rs`) can share
/// the port: connected to one client, it alone gets that client's probes (the kernel never
/// hands a connected socket anyone else's datagrams), and the lane keeps everything else.
///
/// A port some other process already holds is refused first, as a plain bind would: two
/// ferryd on one UDP port would otherwise split each other's datagrams.
fn bind_shared(addr: SocketAddr) -> io::Result<ferry_io::UdpSocket> {
    if addr.port() != 0 {
        drop(UdpSocket::bind(addr)?);
    }
    let opts = ferry_io::udp::SocketOptions {
        reuse_port: true,
        recv_buffer: SOCKET_BUFFER,
        send_buffer: SOCKET_BUFFER,
        ..Default::default()
    };
    let socket = ferry_io::UdpSocket::bind(addr, &opts)?;
    // Datagrams of one flow arrive coalesced, one receive for many (split again by
    // `RecvBatch::datagrams`).
    socket.enable_gro();
    Ok(socket)
}

impl Lane {
    fn start(addr: SocketAddr, core: Option<usize>) -> io::Result<Lane> {
        let socket = bind_shared(addr)?;
        let local = socket.local_addr()?;
        let loopback: std::net::IpAddr = if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        let wake = UdpSocket::bind(SocketAddr::new(loopback, 0))?;
        wake.connect(SocketAddr::new(loopback, local.port()))?;
        let (tx, rx) = mpsc::channel();
        let snapshot = Arc::new(Mutex::new(Vec::new()));
        let shared = snapshot.clone();
        let load = Arc::new(LaneLoad::default());
        let lane_load = load.clone();
        let stats = Arc::new(Mutex::new(LaneStats::new(core, local.port())));
        let lane_stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("ferry-data-{}", local.port()))
            .spawn(move || {
                if let Some(core) = core
                    && let Err(e) = ferry_io::placement::pin_current_thread(core)
                {
                    eprintln!("ferry: cannot pin the data thread to core {core}: {e}");
                }
                // Pacing sleeps are tens of microseconds: the default 50 µs timer slack
                // would add as much again to each.
                // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument.
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
                }
                DataThread::new(socket, rx, shared, lane_load, lane_stats).run()
            })?;
        Ok(Lane {
            local,
            commands: tx,
            wake,
            snapshot,
            load,
            stats,
        })
    }

    fn send(&self, cmd: Command) -> Result<(), ()> {
        self.commands.send(cmd).map_err(|_| ())?;
        // Wake the data thread if it is asleep in poll(2).
        let _ = self.wake.send(WAKE);
        Ok(())
    }
}

impl DataPlane {
    /// Binds `addr` (port 0 picks one) and starts one data thread, not pinned.
    pub fn start(addr: SocketAddr) -> io::Result<DataPlane> {
        Self::start_on(addr, &[])
    }

    /// `n` data threads (at least one), not pinned, each with a socket of its own on a free
    /// port of `addr`'s address: a client running several sessions at once.
    pub fn start_lanes(addr: SocketAddr, n: usize) -> io::Result<DataPlane> {
        crate::aead::choose();
        let lanes = (0..n.max(1))
            .map(|i| {
                let at = if i == 0 {
                    addr
                } else {
                    SocketAddr::new(addr.ip(), 0)
                };
                Lane::start(at, None)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(DataPlane {
            lanes: Arc::new(lanes),
            placement: Default::default(),
            caps: HostCaps::default(),
        })
    }

    /// One data thread per core in `cores`, each pinned to its core with a socket of its
    /// own: the first on `addr`, the others on free ports of the same address (the client
    /// learns its session's port over the control channel). An empty list starts one
    /// unpinned thread.
    pub fn start_on(addr: SocketAddr, cores: &[usize]) -> io::Result<DataPlane> {
        crate::aead::choose();
        let mut lanes = Vec::new();
        if cores.is_empty() {
            lanes.push(Lane::start(addr, None)?);
        }
        for (i, &core) in cores.iter().enumerate() {
            let at = if i == 0 {
                addr
            } else {
                SocketAddr::new(addr.ip(), 0)
            };
            lanes.push(Lane::start(at, Some(core))?);
        }
        Ok(DataPlane {
            lanes: Arc::new(lanes),
            placement: Default::default(),
            caps: HostCaps::default(),
        })
    }

    /// The host-wide caps its sessions share (uncapped until set; ferryd runs
    /// [`crate::caps::spawn_sharer`] to divide them).
    pub fn caps(&self) -> &HostCaps {
        &self.caps
    }

    /// The first lane's UDP address (the one `ferryd` announces).
    pub fn local_addr(&self) -> SocketAddr {
        self.lanes[0].local
    }

    /// Each lane's counters and latency histograms (at most about a second old).
    pub fn lane_stats(&self) -> Vec<LaneStats> {
        self.lanes
            .iter()
            .filter_map(|l| l.stats.lock().ok().map(|s| s.clone()))
            .collect()
    }

    /// Every lane's UDP address.
    pub fn lane_addrs(&self) -> Vec<SocketAddr> {
        self.lanes.iter().map(|l| l.local).collect()
    }

    /// Starts a session; the channel yields its report when it ends.
    pub fn add_session(&self, spec: SessionSpec) -> mpsc::Receiver<SessionReport> {
        self.start_session(spec).report
    }

    /// The sessions running now (refreshed every 100 ms).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self
            .lanes
            .iter()
            .flat_map(|l| l.snapshot.lock().map(|s| s.clone()).unwrap_or_default())
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Applies a live change to session `id`; effective on the wire within a few
    /// milliseconds.
    pub fn control(&self, id: u32, op: SessionOp) -> Result<(), String> {
        self.ask(id, |tx| Command::Control(id, op, tx))
    }

    /// Sends the lane running session `id` the command `make` builds around a reply
    /// channel, and waits (2 s at most) for the lane's answer.
    fn ask(
        &self,
        id: u32,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), String> {
        let lane = self
            .placement
            .lock()
            .ok()
            .and_then(|p| p.get(&id).map(|&(lane, _)| lane))
            .ok_or_else(|| format!("no session {id}"))?;
        let (tx, rx) = mpsc::channel();
        self.lanes[lane]
            .send(make(tx))
            .map_err(|_| "the data plane has stopped".to_string())?;
        rx.recv_timeout(Duration::from_secs(2))
            .map_err(|_| "the data plane did not answer".to_string())?
    }

    /// Moves session `id` onto the TCP fallback: from now on it sends and receives its
    /// datagrams through `fd`, one end of a [`tunnel::pair`] whose other end
    /// [`tunnel::pump`] connects to the peer. Datagrams that still come over UDP are taken
    /// too.
    pub fn tunnel(&self, id: u32, fd: OwnedFd) -> Result<(), String> {
        self.ask(id, |tx| Command::Tunnel(id, fd, tx))
    }

    /// Ends every session at once (receiving ones checkpoint what they have) and waits up
    /// to `wait` for the lanes to finish with them: ferryd's orderly shutdown.
    pub fn abandon_all(&self, wait: Duration) {
        let placed: Vec<u32> = match self.placement.lock() {
            Ok(p) => p.keys().copied().collect(),
            Err(_) => return,
        };
        for id in placed {
            let _ = self.control(id, SessionOp::Abandon);
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline
            && self
                .lanes
                .iter()
                .any(|l| l.load.sessions.load(Ordering::Relaxed) > 0)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a session on the least busy lane and returns its report channel, live
    /// progress and the UDP port the peer must use.
    pub fn start_session(&self, mut spec: SessionSpec) -> SessionHandle {
        if spec.ceiling_bps.is_none() {
            spec.ceiling_bps = self
                .caps
                .initial_ceiling(spec.role, spec.policy, spec.limits);
        }
        let ceiling_bps = spec.ceiling_bps;
        let (tx, rx) = mpsc::channel();
        let (ops_tx, ops_rx) = mpsc::channel();
        let progress = Arc::new(Progress::default());
        let id = spec.session;
        let lane = (0..self.lanes.len())
            .min_by_key(|&l| {
                let load = &self.lanes[l].load;
                (
                    load.moving.load(Ordering::Relaxed),
                    load.sessions.load(Ordering::Relaxed),
                )
            })
            .unwrap_or(0);
        self.lanes[lane].load.placed();
        if let Ok(mut placement) = self.placement.lock() {
            // Forget sessions no lane lists any more (placed a while ago: a new one shows
            // in its lane's snapshot within 100 ms).
            let live: std::collections::HashSet<u32> =
                self.sessions().iter().map(|s| s.id).collect();
            placement
                .retain(|k, (_, at)| live.contains(k) || at.elapsed() < Duration::from_secs(5));
            placement.insert(id, (lane, Instant::now()));
        }
        if self.lanes[lane]
            .send(Command::Add(
                Box::new(spec),
                tx.clone(),
                progress.clone(),
                ops_tx,
            ))
            .is_err()
        {
            self.lanes[lane].load.ended(true);
            let _ = tx.send(SessionReport::failed(
                ErrorCode::Internal,
                "the data plane has stopped".into(),
            ));
        }
        SessionHandle {
            report: rx,
            progress,
            remote_ops: ops_rx,
            udp_port: self.lanes[lane].local.port(),
            ceiling_bps,
        }
    }
}

impl SessionReport {
    fn failed(code: ErrorCode, message: String) -> Self {
        SessionReport {
            error: Some((code, message)),
            ..SessionReport::default()
        }
    }
}

/// Waits until one of `fds` (the lane's socket, the sessions' tunnels) is readable or
/// `timeout` passes, with nanosecond precision (`ppoll`): pacing at gigabits per second
/// needs waits of tens of microseconds.
fn wait_readable(fds: &[RawFd], timeout: Duration) {
    if timeout < Duration::from_micros(20) {
        return;
    }
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pollfds and timespec; a failed or interrupted poll only ends the wait
    // early.
    unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        );
    }
}

/// A source file no longer matches the manifest (size or mtime moved while it was sent).
#[derive(Debug)]
struct SourceChanged(String);

impl std::fmt::Display for SourceChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceChanged {}

/// The files of a session on this side.
struct Files {
    root: PathBuf,
    entries: Vec<FileEntry>,
    /// Open handles, by file index (senders keep a few; receivers keep the unfinished).
    open: HashMap<u32, File>,
    /// Sender: mapped windows of the large files (`source.rs`).
    windows: Windows,
    /// Receiver: the bytes of each file written so far (resumed ones included).
    received: Vec<RangeSet>,
    /// Receiver: files the plan skips; they are never opened nor renamed.
    skipped: Vec<bool>,
    /// Receiver: files written to since their last checkpoint.
    dirty: std::collections::BTreeSet<u32>,
    /// Receiver: files that may have a checkpoint to remove once complete (resumed ones,
    /// and those checkpointed in this session); the others save a path lookup each.
    checkpointed: Vec<bool>,
    /// Receiver: syncs partial files and writes their checkpoints off the data thread.
    checkpointer: Checkpointer,
    /// Receiver: finishes complete files (sync, stamp, rename) off the data thread.
    finisher: Finisher,
    block_size: u32,
    no_fsync: bool,
    /// Each file's in-order hash while it runs (`None`: no checksum, skipped, or done).
    hashes: Vec<Option<InOrder>>,
    /// Each file's digest as this side computed it.
    digests: Vec<Option<Digest>>,
    /// Sender: digests computed but not yet handed to the control plane.
    published: Vec<(u32, Digest)>,
    /// Receiver: the sender's digest of each file, once it has arrived.
    expected: Vec<Option<Digest>>,
    /// Receiver: complete files waiting for the sender's digest before their rename.
    awaiting: std::collections::BTreeSet<u32>,
    /// Receiver: files whose digest did not match; they stay partial.
    mismatched: Vec<u32>,
}

impl Files {
    fn new(spec: &SessionSpec) -> Self {
        let plan = |i: usize| spec.plans.get(i).cloned().unwrap_or_default();
        let b = u64::from(spec.block_size);
        let received = (0..spec.files.len())
            .map(|i| {
                let size = spec.files[i].size;
                RangeSet::from_ranges(plan(i).held.iter().map(|&(first, end)| {
                    first.saturating_mul(b).min(size)..end.saturating_mul(b).min(size)
                }))
            })
            .collect();
        let skipped: Vec<bool> = (0..spec.files.len())
            .map(|i| plan(i).action == FileAction::Skip)
            .collect();
        let n = spec.files.len();
        // On a memory filesystem (tmpfs) a sync waits for nothing: finish files in place.
        let memory_fs = spec.role == Role::Receiver && crate::finisher::sync_is_free(&spec.root);
        Files {
            checkpointed: (0..n)
                .map(|i| plan(i).action == FileAction::Resume)
                .collect(),
            root: spec.root.clone(),
            hashes: (0..n)
                .map(|i| {
                    (!skipped[i])
                        .then(|| InOrder::new(spec.checksum, spec.files[i].size))
                        .flatten()
                })
                .collect(),
            digests: vec![None; n],
            published: Vec::new(),
            expected: vec![None; n],
            awaiting: Default::default(),
            mismatched: Vec::new(),
            received,
            skipped,
            dirty: Default::default(),
            checkpointer: Checkpointer::default(),
            finisher: {
                let mut f = Finisher::default();
                f.set_inline(spec.no_fsync || memory_fs);
                f
            },
            entries: spec.files.clone(),
            open: HashMap::new(),
            windows: Windows::default(),
            block_size: spec.block_size,
            no_fsync: spec.no_fsync,
        }
    }

    fn path(&self, index: u32) -> PathBuf {
        self.root.join(&self.entries[index as usize].path)
    }

    fn partial(&self, index: u32) -> PathBuf {
        resume::partial_path(&self.path(index))
    }

    /// Sender: reads `len` bytes of file `index` at `offset` into slot `slot`, or points
    /// the slot at them in a mapped window of the file (`source.rs`).
    fn read(
        &mut self,
        index: u32,
        offset: u64,
        slots: &mut SendSlots,
        slot: u32,
        len: usize,
    ) -> io::Result<()> {
        if !self.open.contains_key(&index) {
            if self.open.len() >= 64 {
                self.open.clear();
            }
            let f = File::open(self.path(index))?;
            self.open.insert(index, f);
        }
        let f = &self.open[&index];
        let e = &self.entries[index as usize];
        let at = e.offset() + offset;
        let block = u64::from(self.block_size);
        let buf: &[u8] = match self.windows.find(index, f, e.whole_size(), at, len, block) {
            Some((window, start)) => slots.point(slot, window, start, len),
            None => {
                let buf = slots.read_target(slot, len);
                f.read_exact_at(buf, at).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        // Changed, not vanished: 37 as when a mapped window finds it short.
                        io::Error::other(SourceChanged("it shrank during the transfer".into()))
                    } else {
                        e
                    }
                })?;
                buf
            }
        };
        // The file's (or piece's) last block: before it leaves (and lets the receiver finish
        // the file), make sure the file is still the one the manifest describes, so that a
        // file changed meanwhile is never delivered mixed.
        if offset + buf.len() as u64 == e.size {
            let meta = f.metadata()?;
            let now = (meta.len(), mtime_of(&meta));
            if now != (e.whole_size(), e.mtime) {
                return Err(io::Error::other(SourceChanged(format!(
                    "it changed during the transfer (size {} then {}, mtime {}.{:09} then \
                     {}.{:09})",
                    e.whole_size(),
                    now.0,
                    e.mtime.0,
                    e.mtime.1,
                    now.1.0,
                    now.1.1
                ))));
            }
        }
        self.hash_read(index, offset, buf)?;
        if slots.slot_damaged(slot) {
            return Err(io::Error::other(SourceChanged(
                "it shrank during the transfer".into(),
            )));
        }
        Ok(())
    }

    /// Sender: hashes a block just read, if it is the file's next in order (a re-read of
    /// a block already hashed is not hashed again), then whatever the receiver held from
    /// the start that follows it, from the file.
    fn hash_read(&mut self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let i = index as usize;
        let Some(h) = self.hashes[i].as_mut() else {
            return Ok(());
        };
        // On the sending side `received` is what the receiver held at the start plus what
        // has been read: everything that can be hashed in order.
        self.received[i].insert(offset..offset + data.len() as u64);
        let (f, base) = (&self.open[&index], self.entries[i].offset());
        h.handle_data(offset, data, &self.received[i], |o, b| {
            f.read_exact_at(b, base + o)
        })?;
        self.take_digest(index);
        Ok(())
    }

    /// Sender: the digests of files it never reads, because the receiver holds every
    /// block of them (resumed whole) or they are empty, from the local file.
    fn hash_unread(&mut self) -> io::Result<()> {
        for index in 0..self.entries.len() as u32 {
            let i = index as usize;
            if self.hashes[i].is_none() || self.received[i].len() < self.entries[i].size {
                continue;
            }
            let (f, base) = (File::open(self.path(index))?, self.entries[i].offset());
            if let Some(h) = self.hashes[i].as_mut() {
                h.catch_up(&self.received[i], |o, b| f.read_exact_at(b, base + o))?;
            }
            self.take_digest(index);
        }
        Ok(())
    }

    /// Records file `index`'s digest once every byte of it is hashed.
    fn take_digest(&mut self, index: u32) {
        let i = index as usize;
        if let Some(d) = self.hashes[i].as_mut().and_then(InOrder::finish) {
            self.hashes[i] = None;
            self.digests[i] = Some(d);
            self.published.push((index, d));
        }
    }

    fn open_partial(&mut self, index: u32) -> io::Result<&File> {
        if !self.open.contains_key(&index) {
            let path = self.partial(index);
            let open = || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
            };
            // The control plane made the directories; make them here only if they went.
            let f = match open() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    open()?
                }
                r => r?,
            };
            // Allocate a large file now, in one call, rather than page by page as blocks
            // arrive (on filesystems without fallocate this only sets the length). A small
            // one is written in a block or two: the call would cost more than it saves
            // (on tmpfs it even zeroes pages that the write then fills).
            // The control plane preallocated it before the session started
            // (`resume::preallocate_partial`): seconds for gigabytes on a busy tmpfs,
            // which on this thread would stall every session of the lane.
            self.open.insert(index, f);
        }
        Ok(&self.open[&index])
    }

    /// Where block `offset` of file `index` goes: the open partial and the position in it
    /// (a piece's offset added). The descriptor stays open until the file is finished.
    fn write_target(&mut self, index: u32, offset: u64) -> io::Result<(RawFd, u64)> {
        let at = self.entries[index as usize].offset() + offset;
        Ok((self.open_partial(index)?.as_raw_fd(), at))
    }

    /// A block is written: counts it received (the next checkpoint names it), hashes it,
    /// and when it completes its file, makes the file durable and renames it.
    fn written(&mut self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let i = index as usize;
        self.received[i].insert(offset..offset + data.len() as u64);
        self.dirty.insert(index);
        if let Some(h) = self.hashes[i].as_mut() {
            // In order: straight from the buffer; beyond a gap: read back (page cache)
            // once the gap fills; resumed ranges: from the partial file.
            let (f, base) = (&self.open[&index], self.entries[i].offset());
            h.handle_data(offset, data, &self.received[i], |o, b| {
                f.read_exact_at(b, base + o)
            })?;
        }
        if self.received[i].len() == self.entries[i].size {
            self.complete(index)?;
        }
        Ok(())
    }

    /// Receiver: file `index` holds every byte. Without a checksum it is finished now;
    /// with one, once the sender's digest is here and equal.
    fn complete(&mut self, index: u32) -> io::Result<()> {
        let i = index as usize;
        if self.hashes[i].is_none() && self.digests[i].is_none() {
            return self.finish(index);
        }
        if self.hashes[i].as_ref().is_some_and(|h| !h.is_complete()) {
            // Whatever the writes did not reach (a file resumed whole): from the partial.
            self.open_partial(index)?;
            let (f, base) = (&self.open[&index], self.entries[i].offset());
            if let Some(h) = self.hashes[i].as_mut() {
                h.catch_up(&self.received[i], |o, b| f.read_exact_at(b, base + o))?;
            }
        }
        if let Some(d) = self.hashes[i].as_mut().and_then(InOrder::finish) {
            self.hashes[i] = None;
            self.digests[i] = Some(d);
        }
        self.awaiting.insert(index);
        self.verify(index)
    }

    /// Receiver: compares a complete file's digest with the sender's, if it has come.
    fn verify(&mut self, index: u32) -> io::Result<()> {
        let i = index as usize;
        let (Some(local), Some(expected)) = (self.digests[i], self.expected[i]) else {
            return Ok(());
        };
        if !self.awaiting.remove(&index) {
            return Ok(());
        }
        if local == expected {
            self.finish(index)
        } else {
            // It stays NAME.partial, with a checkpoint naming every byte: a re-run at
            // resume level 3 compares each MiB with the source's and re-sends only the
            // chunks that differ. A piece of a split file has no such sums: its
            // checkpoint goes, and the re-run sends the piece again.
            self.mismatched.push(index);
            if self.entries[i].part.is_some() {
                self.open.remove(&index);
                self.dirty.remove(&index);
                self.received[i] = RangeSet::new();
                return resume::remove_checkpoint_at(&self.checkpoint_path(index));
            }
            self.dirty.insert(index);
            Ok(())
        }
    }

    /// Receiver: the sender's digest of file `index`.
    fn handle_digest(&mut self, index: u32, digest: Digest) -> io::Result<()> {
        let i = index as usize;
        if i >= self.entries.len() || self.skipped[i] || self.expected[i].is_some() {
            return Ok(());
        }
        self.expected[i] = Some(digest);
        self.verify(index)
    }

    /// What went wrong with the files in `mismatched`, for people.
    fn mismatch_message(&self, mismatched: &[u32]) -> String {
        let shown: Vec<String> = mismatched
            .iter()
            .take(5)
            .map(|&i| {
                let i = i as usize;
                let path = &self.entries[i].path;
                match (self.digests[i], self.expected[i]) {
                    (Some(got), Some(want)) => {
                        format!("{path} (received {got}, the source has {want})")
                    }
                    _ => format!("{path} (the source's checksum never arrived)"),
                }
            })
            .collect();
        let more = mismatched.len().saturating_sub(shown.len());
        format!(
            "{} file(s) differ from the source after the transfer and were kept as \
             NAME.partial: {}{}",
            mismatched.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    }

    /// Receiver: gives up on the digests that have not come; those files fail.
    fn give_up_waiting(&mut self) {
        while let Some(index) = self.awaiting.pop_first() {
            self.mismatched.push(index);
        }
    }

    /// Whether some file has data no checkpoint names yet.
    fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// What file `index` has received, as its checkpoint (a piece's names whole-file
    /// offsets and size, like the whole file's would).
    fn checkpoint_of(&self, index: u32) -> Checkpoint {
        let e = &self.entries[index as usize];
        let received = &self.received[index as usize];
        let bytes = match e.part {
            None => received.clone(),
            Some(p) => RangeSet::from_ranges(
                received
                    .ranges()
                    .iter()
                    .map(|r| r.start + p.offset..r.end + p.offset),
            ),
        };
        Checkpoint {
            block_size: self.block_size,
            size: e.whole_size(),
            mtime: e.mtime,
            bytes,
        }
    }

    /// Where file `index`'s checkpoint lives.
    fn checkpoint_path(&self, index: u32) -> PathBuf {
        split::checkpoint_path_for(&self.path(index), &self.entries[index as usize])
    }

    /// Hands each written file's checkpoint to the background checkpointer, which syncs
    /// the file and then writes it; skipped while the previous round is still syncing.
    fn checkpoint_in_background(&mut self) -> io::Result<()> {
        if self.checkpointer.is_busy()? {
            return Ok(());
        }
        while let Some(index) = self.dirty.pop_first() {
            if let Some(f) = self.open.get(&index) {
                let ckpt = self.checkpoint_of(index);
                self.checkpointer
                    .submit(f, self.checkpoint_path(index), ckpt, !self.no_fsync)?;
                self.checkpointed[index as usize] = true;
            }
        }
        Ok(())
    }

    /// Makes what each written file received durable, then records it in the file's
    /// checkpoint (in that order: a checkpoint never names data that is not on disk),
    /// here and now, after the background checkpoints: the session is ending.
    fn flush_checkpoints(&mut self) -> io::Result<()> {
        self.checkpointer.wait_idle()?;
        while let Some(index) = self.dirty.pop_first() {
            if let Some(f) = self.open.get(&index)
                && !self.no_fsync
            {
                f.sync_data()?;
            }
            resume::write_checkpoint_to(&self.checkpoint_path(index), &self.checkpoint_of(index))?;
            self.checkpointed[index as usize] = true;
        }
        Ok(())
    }

    /// Hands a complete file to the finishing threads: durable, stamped, renamed
    /// (`NAME.partial` becomes `NAME` only then), or for a piece, its complete checkpoint
    /// written and the file assembled if whole. The session ends only once they are done.
    fn finish(&mut self, index: u32) -> io::Result<()> {
        // A checkpoint still being written must land before the file's is removed.
        self.checkpointer.wait_idle()?;
        self.open_partial(index)?;
        let file = self.open.remove(&index).expect("just opened");
        self.dirty.remove(&index);
        let e = &self.entries[index as usize];
        let path = self.path(index);
        let (stamp, then) = if e.part.is_some() {
            let then = Then::Piece {
                checkpoint: self.checkpoint_path(index),
                ckpt: self.checkpoint_of(index),
                path,
                entry: e.clone(),
            };
            (None, then)
        } else {
            let mtime =
                UNIX_EPOCH + Duration::new(e.mtime.0.max(0) as u64, e.mtime.1.min(999_999_999));
            let then = Then::Rename {
                partial: self.partial(index),
                path,
                remove_checkpoint: self.checkpointed[index as usize],
            };
            (Some((mtime, e.mode)), then)
        };
        self.finisher.submit(Job {
            index,
            file,
            sync: !self.no_fsync,
            stamp,
            then,
        })
    }

    /// The first failure among the files finished since the last look, if any; with
    /// `wait`, once every file handed over is finished.
    fn finished(&mut self, wait: bool) -> io::Result<()> {
        let done = if wait {
            let mut d = self.finisher.poll();
            d.extend(self.finisher.wait());
            d
        } else {
            self.finisher.poll()
        };
        for (index, r) in done {
            if let Err(e) = r {
                let path = &self.entries[index as usize].path;
                return Err(io::Error::new(e.kind(), format!("finishing {path}: {e}")));
            }
        }
        Ok(())
    }

    /// Files with nothing left to receive (empty ones, resumed ones already whole) are
    /// finished up front; skipped files are left alone.
    fn finish_ready(&mut self) -> io::Result<()> {
        for i in 0..self.entries.len() as u32 {
            let done = self.received[i as usize].len() == self.entries[i as usize].size;
            if done && !self.skipped[i as usize] {
                self.complete(i)?;
            }
        }
        Ok(())
    }
}

/// The global blocks the receiver holds at the start: every block of a skipped file, the
/// held blocks of a resumed one.
fn held_at_start(manifest: &Manifest, plans: &[FilePlan]) -> RangeSet {
    let per_file: Vec<(u32, RangeSet)> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let i = i as u32;
            let blocks = match p.action {
                FileAction::Send => RangeSet::new(),
                FileAction::Resume => p.held_blocks(),
                FileAction::Skip => {
                    RangeSet::from_ranges(std::iter::once(0..manifest.file_blocks(i)))
                }
            };
            (i, blocks)
        })
        .collect();
    manifest.global_blocks(per_file.iter().map(|(i, r)| (*i, r.ranges())))
}

enum Machine {
    Send(Box<Sender>, SendSlots),
    Recv(Box<Receiver>, Vec<u8>),
}

struct Session {
    id: u32,
    machine: Machine,
    files: Files,
    peer: Option<SocketAddr>,
    started: Timestamp,
    heard: bool,
    first_data: Option<Timestamp>,
    done_at: Option<Timestamp>,
    progress: Arc<Progress>,
    report: mpsc::Sender<SessionReport>,
    error: Option<(ErrorCode, String)>,
    finished: bool,
    /// A close datagram went to the peer.
    closed: bool,
    /// Where live changes for the peer's sender go (receiving sessions).
    remote: Option<mpsc::Sender<SessionOp>>,
    /// Target and minimum rate the user asked for (on the receiving side: agreed at the
    /// start, then as relayed), before any host cap's ceiling.
    limits: RateLimits,
    /// The policy (the sender's; agreed at the start on the receiving side).
    policy: Policy,
    /// This session's share of a host cap, bits per second.
    ceiling: Option<u64>,
    /// The ferry user.
    user: String,
    /// The multi-session transfer it belongs to.
    transfer: Option<String>,
    wire_bytes: u64,
    /// When written data is next made durable and checkpointed (receiving sessions).
    next_checkpoint: Timestamp,
    /// Receiving: the protocol is done, but complete files still wait for the sender's
    /// checksums; they are failed at this time.
    digest_deadline: Option<Timestamp>,
    /// What happens when UDP stays silent.
    fallback: Fallback,
    /// The TCP fallback, once attached: every datagram goes this way from then on.
    tunnel: Option<OwnedFd>,
    /// The fallback was asked for ([`SessionOp::UdpSilent`] published) or attached.
    asked: bool,
    /// Until the first authentic datagram: when the silence becomes a failure.
    start_deadline: Timestamp,
    /// Counted in its lane's [`LaneLoad::moving`]: until its data is done.
    moving: bool,
}

/// `limits` bounded by a host cap's `ceiling`.
fn capped(limits: RateLimits, ceiling: Option<u64>) -> RateLimits {
    match ceiling {
        Some(c) => RateLimits::new(limits.target_bps.min(c), limits.min_bps.min(c)),
        None => limits,
    }
}

fn failure_code(code: FailureCode, role: Role) -> ErrorCode {
    match code {
        FailureCode::DataTimeout => ErrorCode::DataTimeout,
        FailureCode::PeerAborted => ErrorCode::PeerAborted,
        FailureCode::Protocol => ErrorCode::Protocol,
        FailureCode::ReadFailed if role == Role::Sender => ErrorCode::SourceVanished,
        FailureCode::ReadFailed | FailureCode::WriteFailed => ErrorCode::Io,
        FailureCode::Cancelled => ErrorCode::PeerAborted,
    }
}

fn io_code(e: &io::Error) -> ErrorCode {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorCode::DiskFull,
        Some(libc::EACCES) | Some(libc::EPERM) => ErrorCode::PermissionDenied,
        _ => ErrorCode::Io,
    }
}

impl Session {
    fn new(
        spec: SessionSpec,
        now: Timestamp,
        report: mpsc::Sender<SessionReport>,
        progress: Arc<Progress>,
    ) -> Result<Session, (ErrorCode, String)> {
        let sizes = spec.files.iter().map(|f| f.size).collect();
        let manifest = Manifest::new(sizes, spec.block_size)
            .map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
        let held = held_at_start(&manifest, &spec.plans);
        let held_bytes: u64 = held
            .ranges()
            .iter()
            .map(|r| manifest.bytes_in(r.clone()))
            .sum();
        // Progress counts what this session moves: resumed and skipped bytes stay out.
        progress
            .total
            .store(manifest.total_bytes() - held_bytes, Ordering::Relaxed);
        let mut files = Files::new(&spec);
        let machine = match spec.role {
            Role::Sender => {
                files.hash_unread().map_err(|e| {
                    (
                        ErrorCode::SourceVanished,
                        format!("reading a source to checksum it: {e}"),
                    )
                })?;
                let mut cfg =
                    SenderConfig::new(spec.session, spec.cipher, spec.secret, spec.direction);
                cfg.policy = spec.policy;
                cfg.limits = capped(spec.limits, spec.ceiling_bps);
                cfg.initial_rtt = spec.initial_rtt;
                let buffers = SendSlots::new(SlotBuffers::new(
                    cfg.read_ahead,
                    spec.block_size,
                    spec.cipher.trailer_len(),
                ));
                let sender = Sender::new_resuming(cfg, manifest, held, now);
                files.windows.enabled =
                    crate::source::map_sources(sender.seals_from_in_one_pass(), spec.block_size);
                Machine::Send(Box::new(sender), buffers)
            }
            Role::Receiver => {
                files
                    .finish_ready()
                    .map_err(|e| (io_code(&e), format!("finishing complete files: {e}")))?;
                let mut cfg =
                    ReceiverConfig::new(spec.session, spec.cipher, spec.secret, spec.direction);
                cfg.max_datagram = 1472;
                cfg.initial_rtt = spec.initial_rtt;
                if spec.fallback == Fallback::Accept {
                    // UDP that passes only towards us can bring every block before the
                    // client, which hears nothing back, asks for the TCP fallback: stay
                    // until then, so that its sender learns over TCP that it is done.
                    cfg.linger = cfg.linger.max(UDP_START_TIMEOUT + TUNNEL_WAIT);
                }
                let receiver = Receiver::new_resuming(cfg, manifest, held, now);
                Machine::Recv(Box::new(receiver), vec![0; 2048])
            }
        };
        Ok(Session {
            id: spec.session,
            machine,
            files,
            peer: spec.peer,
            started: now,
            heard: false,
            first_data: None,
            done_at: None,
            progress,
            report,
            error: None,
            finished: false,
            closed: false,
            remote: None,
            limits: spec.limits,
            policy: spec.policy,
            ceiling: spec.ceiling_bps,
            user: spec.user.clone(),
            transfer: spec.transfer.clone(),
            wire_bytes: 0,
            next_checkpoint: now + CHECKPOINT_INTERVAL,
            digest_deadline: None,
            fallback: spec.fallback,
            tunnel: None,
            asked: false,
            start_deadline: now
                + match spec.fallback {
                    Fallback::Off => UDP_START_TIMEOUT,
                    Fallback::Ask => UDP_START_TIMEOUT + TUNNEL_WAIT,
                    // The client asks after its own timeout, then opens a channel: give
                    // it that and a few seconds more.
                    Fallback::Accept => UDP_START_TIMEOUT + TUNNEL_WAIT + Duration::from_secs(5),
                },
            moving: true,
        })
    }

    fn fail(&mut self, code: ErrorCode, message: String) {
        if self.error.is_none() {
            self.error = Some((code, message));
        }
    }

    fn apply(&mut self, now: Timestamp, op: SessionOp) -> Result<(), String> {
        if op == SessionOp::UdpSilent {
            return Err("UdpSilent is the data plane's to report, not a change".into());
        }
        if op == SessionOp::Abandon {
            self.abandon(now);
            return Ok(());
        }
        if let SessionOp::Digest { file, digest } = op {
            if matches!(self.machine, Machine::Send(..)) {
                return Err(format!(
                    "session {} sends here: it makes its own digests",
                    self.id
                ));
            }
            if let Err(e) = self.files.handle_digest(file, digest) {
                let path = self
                    .files
                    .entries
                    .get(file as usize)
                    .map_or("?", |e| &e.path);
                self.fail(io_code(&e), format!("finishing {path}: {e}"));
            }
            return Ok(());
        }
        let Machine::Send(s, _) = &mut self.machine else {
            // The peer sends: relay the change to it over the control channel.
            match op {
                SessionOp::SetRate {
                    target_bps,
                    min_bps,
                    policy,
                } => {
                    self.limits = RateLimits::new(
                        target_bps.unwrap_or(self.limits.target_bps),
                        min_bps.unwrap_or(self.limits.min_bps),
                    );
                    self.policy = policy.unwrap_or(self.policy);
                }
                SessionOp::Ceiling(c) => self.ceiling = c,
                _ => {}
            }
            return match &self.remote {
                Some(r) if r.send(op).is_ok() => Ok(()),
                _ => Err(format!(
                    "session {} receives here and its sender cannot be reached",
                    self.id
                )),
            };
        };
        match op {
            SessionOp::SetRate {
                target_bps,
                min_bps,
                policy,
            } => {
                let target = target_bps.unwrap_or(self.limits.target_bps);
                let min = min_bps.unwrap_or(self.limits.min_bps);
                if min > target {
                    return Err("the minimum rate is above the target".into());
                }
                self.limits = RateLimits::new(target, min);
                s.set_limits(capped(self.limits, self.ceiling));
                if let Some(p) = policy {
                    self.policy = p;
                    s.set_policy(p);
                }
            }
            SessionOp::Ceiling(c) => {
                self.ceiling = c;
                s.set_limits(capped(self.limits, c));
            }
            SessionOp::Pause => s.set_paused(true),
            SessionOp::Resume => s.set_paused(false),
            SessionOp::Cancel => {
                s.cancel(now);
                self.fail(ErrorCode::PeerAborted, "cancelled by the operator".into());
            }
            SessionOp::Abandon | SessionOp::Digest { .. } | SessionOp::UdpSilent => {
                unreachable!("handled above")
            }
        }
        Ok(())
    }

    /// Ends the session at the next reap; the peer gets a close datagram if it can.
    fn abandon(&mut self, now: Timestamp) {
        if let Machine::Send(s, _) = &mut self.machine {
            s.cancel(now);
        }
        self.fail(
            ErrorCode::PeerAborted,
            "abandoned: the client went away, or a new session took over its files".into(),
        );
        self.finished = true;
    }

    /// Makes received data durable and checkpoints it, if the time has come.
    fn checkpoint(&mut self, now: Timestamp) {
        if !self.files.has_dirty() || now < self.next_checkpoint {
            return;
        }
        self.next_checkpoint = now + CHECKPOINT_INTERVAL;
        if let Err(e) = self.files.checkpoint_in_background() {
            self.fail(io_code(&e), format!("checkpointing received data: {e}"));
        }
    }

    fn info(&self, rate_bps: u64) -> SessionInfo {
        let bytes = self.progress.bytes.load(Ordering::Relaxed);
        let total = self.progress.total.load(Ordering::Relaxed);
        let state = |paused: bool| {
            if !self.heard {
                "starting"
            } else if self.done_at.is_some() || self.error.is_some() {
                "finishing"
            } else if paused {
                "paused"
            } else {
                "running"
            }
        };
        let mut info = SessionInfo {
            id: self.id,
            direction: "recv",
            peer: self.peer.map(|p| p.to_string()),
            user: (!self.user.is_empty()).then(|| self.user.clone()),
            files: self.files.entries.len(),
            bytes,
            total,
            rate_bps,
            target_bps: self.limits.target_bps,
            min_bps: self.limits.min_bps,
            policy: self.policy.to_string(),
            ceiling_bps: self.ceiling,
            loss: 0.0,
            rtt_ms: 0.0,
            queue_ms: 0.0,
            state: state(false),
            core: None,
            port: 0,
            transfer: self.transfer.clone(),
        };
        if let Machine::Send(s, _) = &self.machine {
            let c = s.controller();
            let st = s.stats();
            info.direction = "send";
            info.loss = st.nacked_blocks as f64 / (st.datagrams.max(1)) as f64;
            info.rtt_ms = s.rtt().srtt().as_secs_f64() * 1e3;
            info.queue_ms = c.queue_delay().map_or(0.0, |q| q.as_secs_f64() * 1e3);
            info.state = state(s.is_paused());
        }
        info
    }

    /// This session's share of its lane's counters, so far.
    fn counters(&self) -> Counters {
        let mut c = Counters {
            wire_bytes_sent: self.wire_bytes,
            ..Counters::default()
        };
        let drops = match &self.machine {
            Machine::Send(s, _) => {
                c.bytes_sent = s.acknowledged_bytes();
                c.retransmitted_bytes = s.stats().resent_bytes + s.stats().copy_bytes;
                s.drops().nonzero()
            }
            Machine::Recv(r, _) => {
                c.bytes_received = r.stats().new_bytes;
                r.drops().nonzero()
            }
        };
        c.drops = drops.into_iter().collect();
        c
    }

    fn drops_total(&self) -> u64 {
        match &self.machine {
            Machine::Send(s, _) => s.drops().total(),
            Machine::Recv(r, _) => r.drops().total(),
        }
    }

    /// Moves the session onto the TCP fallback (see [`DataPlane::tunnel`]). A session
    /// that has not heard its peer yet gets [`UDP_START_TIMEOUT`] again, for the tunnel.
    fn attach(&mut self, now: Timestamp, fd: OwnedFd) {
        self.tunnel = Some(fd);
        self.asked = true;
        if !self.heard {
            self.start_deadline = now + UDP_START_TIMEOUT;
        }
    }

    /// Where datagrams go now: the tunnel once attached, else the peer's UDP address.
    fn out(&self) -> Option<Out> {
        match &self.tunnel {
            Some(fd) => Some(Out::Tunnel(fd.as_raw_fd())),
            None => self.peer.map(Out::Udp),
        }
    }

    /// A datagram from the peer: `from` is its UDP address, `None` through the tunnel. The
    /// block it brought for the disk, if any, comes back, for the caller to write
    /// ([`Session::write_now`] or through the lane's disk queue) and then report
    /// ([`Session::written`]).
    fn handle_datagram(
        &mut self,
        now: Timestamp,
        from: Option<SocketAddr>,
        datagram: &mut [u8],
        stats: &mut LaneStats,
    ) -> Option<Delivery> {
        let before = self.drops_total();
        let delivery = match &mut self.machine {
            Machine::Send(s, _) => {
                let samples = s.rtt().samples();
                s.handle_datagram(now, datagram);
                if s.rtt().samples() != samples
                    && let Some(rtt) = s.rtt().latest()
                {
                    stats.record(Latency::FeedbackRtt, rtt);
                    if let Some(q) = s.controller().queue_delay() {
                        stats.record(Latency::QueueDelay, q);
                    }
                }
                for d in s.drain_delivery_latencies() {
                    stats.record(Latency::BlockDelivery, d);
                }
                None
            }
            Machine::Recv(r, _) => r.handle_datagram(now, datagram),
        };
        if self.drops_total() != before {
            return None;
        }
        // Authentic: this is where the peer is (learned, or moved).
        if let Some(from) = from {
            self.peer = Some(from);
        }
        if !self.heard {
            self.heard = true;
            self.progress.started.store(true, Ordering::Relaxed);
        }
        if delivery.is_some() {
            self.first_data.get_or_insert(now);
        }
        delivery
    }

    /// Where block `offset` of file `file` is to be written: a descriptor that stays open
    /// while the session has writes in flight, and the position in the file.
    fn write_target(&mut self, file: u32, offset: u64) -> io::Result<(RawFd, u64)> {
        self.files.write_target(file, offset)
    }

    /// Writes a delivered block now, on this thread (the TCP fallback's datagrams, or a
    /// lane without a disk queue).
    fn write_now(&mut self, now: Timestamp, d: &Delivery, datagram: &[u8], stats: &mut LaneStats) {
        let data = &datagram[d.payload.clone()];
        let t = Instant::now();
        let (fd, at) = match self.write_target(d.file, d.offset) {
            Ok(target) => target,
            Err(e) => return self.written(now, d.file, d.offset, data, Err(e)),
        };
        let result = ferry_io::file::write_all_at_fd(fd, data, at);
        stats.record(Latency::DiskWrite, t.elapsed());
        self.written(now, d.file, d.offset, data, result);
    }

    /// A block's write finished with `result`: counts it received (hash, checkpoint, its
    /// file finished when whole) and tells the machine.
    fn written(
        &mut self,
        now: Timestamp,
        file: u32,
        offset: u64,
        data: &[u8],
        result: io::Result<()>,
    ) {
        let result = result
            .and_then(|()| self.files.written(file, offset, data))
            .map_err(|e| {
                let code = io_code(&e);
                let path = self.files.entries[file as usize].path.clone();
                (code, format!("writing {path}: {e}"))
            });
        let Machine::Recv(r, _) = &mut self.machine else {
            unreachable!("only a receiver writes")
        };
        match result {
            Ok(()) => r.handle_write_done(now, Ok(())),
            Err((code, msg)) => {
                self.error.get_or_insert((code, msg.clone()));
                r.handle_write_done(now, Err(msg));
            }
        }
        self.progress
            .bytes
            .store(r.stats().new_bytes, Ordering::Relaxed);
    }

    /// Lets the machine do everything it can at `now`: disk reads, datagrams out.
    fn drive(&mut self, now: Timestamp, socket: &ferry_io::UdpSocket, stats: &mut LaneStats) {
        let out = self.out();
        match &mut self.machine {
            Machine::Send(s, bufs) => {
                loop {
                    while let Some(ev) = s.poll_event() {
                        match ev {
                            SenderEvent::Read { slot, block } => {
                                let t = Instant::now();
                                let r = self.files.read(
                                    block.file,
                                    block.offset,
                                    bufs,
                                    slot,
                                    block.len as usize,
                                );
                                stats.record(Latency::DiskRead, t.elapsed());
                                if let Err(e) = &r {
                                    let path = &self.files.entries[block.file as usize].path;
                                    let changed = e
                                        .get_ref()
                                        .is_some_and(|inner| inner.is::<SourceChanged>());
                                    let code = if changed {
                                        ErrorCode::FileChanged
                                    } else {
                                        ErrorCode::SourceVanished
                                    };
                                    self.error
                                        .get_or_insert((code, format!("reading {path}: {e}")));
                                }
                                s.handle_read_done(now, slot, r.map_err(|e| e.to_string()));
                            }
                            SenderEvent::Complete => {
                                self.done_at.get_or_insert(now);
                            }
                            SenderEvent::Failed(f) => {
                                let code = failure_code(f.code, Role::Sender);
                                self.error.get_or_insert((code, f.reason));
                            }
                        }
                    }
                    let Some(out) = out else { break };
                    // Everything the pacer lets go now, data datagrams gathered into GSO
                    // bursts. A slot's datagram stays in the slot until its burst leaves:
                    // the sender asks for no read into a slot before the next
                    // `poll_event`, which comes after the flush.
                    let mut burst = Burst::default();
                    let mut sent = false;
                    while let Some(tx) = s.poll_transmit(now, bufs) {
                        sent = true;
                        if bufs.damaged(&tx) {
                            // A file shrank under its mapping since the block was read:
                            // what was sealed is zeros, not the file.
                            self.error.get_or_insert((
                                ErrorCode::FileChanged,
                                "a source file shrank during the transfer".into(),
                            ));
                            s.cancel(now);
                            break;
                        }
                        self.wire_bytes += tx.len as u64;
                        if let TxBuffer::Slot(slot) = tx.buffer {
                            self.first_data.get_or_insert(now);
                            if let Out::Udp(peer) = out {
                                if !burst.fits(tx.len) {
                                    burst.flush(socket, peer, |i| bufs.slot_bytes(i));
                                }
                                burst.push(slot, tx.len);
                                continue;
                            }
                        }
                        // A control datagram, or the tunnel: in order, on its own.
                        if let Out::Udp(peer) = out {
                            burst.flush(socket, peer, |i| bufs.slot_bytes(i));
                        }
                        send(socket, bufs.bytes(&tx), out);
                    }
                    if let Out::Udp(peer) = out {
                        burst.flush(socket, peer, |i| bufs.slot_bytes(i));
                    }
                    if !sent {
                        break;
                    }
                }
                if let Some(remote) = &self.remote {
                    for (file, digest) in self.files.published.drain(..) {
                        let _ = remote.send(SessionOp::Digest { file, digest });
                    }
                }
                self.progress
                    .bytes
                    .store(s.acknowledged_bytes(), Ordering::Relaxed);
                self.progress
                    .rate_bps
                    .store((s.controller().rate() * 8.0) as u64, Ordering::Relaxed);
                if s.is_done() {
                    self.finished = true;
                }
            }
            Machine::Recv(r, buf) => {
                while let Some(ev) = r.poll_event() {
                    match ev {
                        ReceiverEvent::Complete => {
                            self.done_at.get_or_insert(now);
                        }
                        // Finished below, once no complete file waits for its checksum.
                        ReceiverEvent::Closed => {}
                        ReceiverEvent::Failed(f) => {
                            let code = failure_code(f.code, Role::Receiver);
                            self.error.get_or_insert((code, f.reason));
                            self.finished = true;
                        }
                    }
                }
                if self.error.is_some() && !self.closed {
                    // Tell the sender at once, rather than leave it to time out.
                    self.closed = true;
                    if let (Some(out), Some(len)) =
                        (out, r.close(now, FailureCode::WriteFailed, buf))
                    {
                        send(socket, &buf[..len], out);
                    }
                    self.finished = true;
                }
                if let Some(out) = out {
                    while let Some(len) = r.poll_transmit(now, buf) {
                        send(socket, &buf[..len], out);
                        self.wire_bytes += len as u64;
                    }
                }
                if let Err(e) = self.files.finished(false) {
                    self.error.get_or_insert((io_code(&e), e.to_string()));
                }
                if r.is_done() && !self.files.finisher.busy() {
                    if self.files.awaiting.is_empty() {
                        self.finished = true;
                    } else if now >= *self.digest_deadline.get_or_insert(now + DIGEST_WAIT) {
                        self.files.give_up_waiting();
                        self.finished = true;
                    }
                }
            }
        }
        if self.heard {
            return;
        }
        let silent = now.saturating_since(self.started) >= UDP_START_TIMEOUT;
        if silent && self.fallback == Fallback::Ask && !self.asked {
            self.asked = true;
            if let Some(remote) = &self.remote {
                let _ = remote.send(SessionOp::UdpSilent);
            }
        }
        if now >= self.start_deadline {
            let local = socket.local_addr().map(|a| a.port()).unwrap_or(0);
            let secs = UDP_START_TIMEOUT.as_secs();
            let message = match (&self.tunnel, self.peer) {
                (Some(_), _) => format!(
                    "no datagram from the peer within {secs} s over UDP nor over the TCP \
                     fallback through SSH"
                ),
                (None, Some(peer)) => format!(
                    "no UDP datagram passed between this host (UDP port {local}) and {peer} \
                     within {secs} s: UDP port {} is blocked in one direction or both",
                    peer.port()
                ),
                (None, None) => format!(
                    "no UDP datagram from the peer within {secs} s on UDP port {local}: is \
                     it blocked in either direction?"
                ),
            };
            self.fail(ErrorCode::UdpStart, message);
            self.finished = true;
        }
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let mut t = match &self.machine {
            Machine::Send(s, _) => s.poll_timeout(),
            Machine::Recv(r, _) => r.poll_timeout(),
        };
        if self.files.has_dirty() {
            t = Some(t.map_or(self.next_checkpoint, |t| t.min(self.next_checkpoint)));
        }
        if let Some(d) = self.digest_deadline {
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        if self.heard {
            return t;
        }
        let mut start = self.start_deadline;
        if self.fallback == Fallback::Ask && !self.asked {
            start = start.min(self.started + UDP_START_TIMEOUT);
        }
        let start = start + Duration::from_millis(1);
        Some(t.map_or(start, |t| t.min(start)))
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        match &mut self.machine {
            Machine::Send(s, _) => s.handle_timeout(now),
            Machine::Recv(r, _) => r.handle_timeout(now),
        }
        self.checkpoint(now);
    }

    fn into_report(mut self) -> (mpsc::Sender<SessionReport>, SessionReport) {
        // Files handed over are finished (or have failed) before the session reports.
        if let Err(e) = self.files.finished(true) {
            self.fail(io_code(&e), e.to_string());
        }
        // Whatever ended the session, what arrived stays resumable.
        if let Err(e) = self.files.flush_checkpoints() {
            self.fail(io_code(&e), format!("checkpointing received data: {e}"));
        }
        let (bytes, retransmitted, drops) = match &self.machine {
            Machine::Send(s, _) => (
                s.acknowledged_bytes(),
                s.stats().resent_bytes + s.stats().copy_bytes,
                s.drops().nonzero(),
            ),
            Machine::Recv(r, _) => (r.stats().new_bytes, 0, r.drops().nonzero()),
        };
        let (loss, nacks) = match &self.machine {
            Machine::Send(s, _) => {
                let st = s.stats();
                (
                    Some(st.nacked_blocks as f64 / st.datagrams.max(1) as f64),
                    None,
                )
            }
            Machine::Recv(r, _) => (None, Some(r.stats().nacked_blocks)),
        };
        let data_secs = match (self.first_data, self.done_at) {
            (Some(a), Some(b)) => b.saturating_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let mismatched = std::mem::take(&mut self.files.mismatched);
        let error = match (self.error, self.done_at) {
            (Some(e), _) => Some(e),
            (None, Some(_)) if !mismatched.is_empty() => Some((
                ErrorCode::ChecksumMismatch,
                self.files.mismatch_message(&mismatched),
            )),
            (None, Some(_)) => None,
            (None, None) => Some((ErrorCode::PeerAborted, "the session ended early".into())),
        };
        let report = SessionReport {
            error,
            bytes,
            wire_bytes: self.wire_bytes,
            retransmitted_bytes: retransmitted,
            data_secs,
            drops,
            loss,
            nacks,
            digests: std::mem::take(&mut self.files.digests),
            mismatched,
        };
        (self.report, report)
    }
}

struct DataThread {
    socket: ferry_io::UdpSocket,
    /// Where received datagrams land, many per system call, and the disk queue their
    /// blocks are written through.
    inbound: Inbound,
    /// Writes completed and not yet reported to their sessions.
    written: Vec<Written>,
    commands: mpsc::Receiver<Command>,
    sessions: HashMap<u32, Session>,
    epoch: Instant,
    unknown_session: u64,
    snapshot: Arc<Mutex<Vec<SessionInfo>>>,
    next_snapshot: Timestamp,
    /// Bytes each session had delivered at the last snapshot.
    last_bytes: HashMap<u32, u64>,
    /// The lane's count of sessions (and of those moving data), decremented here.
    load: Arc<LaneLoad>,
    /// The core this thread is pinned to, if any.
    core: Option<usize>,
    /// Counters and latencies, recorded here without locks.
    stats: LaneStats,
    /// Where [`DataThread::stats`] is published, about once a second.
    stats_shared: Arc<Mutex<LaneStats>>,
    next_stats: Timestamp,
    /// Time spent asleep waiting for datagrams or timers.
    slept: Duration,
}

impl DataThread {
    fn new(
        socket: ferry_io::UdpSocket,
        commands: mpsc::Receiver<Command>,
        snapshot: Arc<Mutex<Vec<SessionInfo>>>,
        load: Arc<LaneLoad>,
        stats_shared: Arc<Mutex<LaneStats>>,
    ) -> Self {
        let stats = stats_shared
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| LaneStats::new(None, 0));
        DataThread {
            load,
            core: stats.core,
            stats,
            stats_shared,
            next_stats: Timestamp::ZERO,
            slept: Duration::ZERO,
            socket,
            inbound: Inbound::new(),
            written: Vec::new(),
            commands,
            sessions: HashMap::new(),
            epoch: Instant::now(),
            unknown_session: 0,
            snapshot,
            next_snapshot: Timestamp::ZERO,
            last_bytes: HashMap::new(),
        }
    }

    fn publish(&mut self, now: Timestamp) {
        if now < self.next_snapshot {
            return;
        }
        let secs = SNAPSHOT_INTERVAL.as_secs_f64();
        let mut infos: Vec<SessionInfo> = Vec::with_capacity(self.sessions.len());
        let mut seen = HashMap::new();
        for (id, s) in &self.sessions {
            let bytes = s.progress.bytes.load(Ordering::Relaxed);
            let before = self.last_bytes.get(id).copied().unwrap_or(bytes);
            seen.insert(*id, bytes);
            let mut info = s.info((bytes.saturating_sub(before) as f64 * 8.0 / secs) as u64);
            info.core = self.core;
            info.port = self.socket.local_addr().map_or(0, |a| a.port());
            infos.push(info);
        }
        infos.sort_by_key(|i| i.id);
        self.last_bytes = seen;
        if now >= self.next_stats {
            let mut live = Counters::default();
            for s in self.sessions.values() {
                live.add(&s.counters());
            }
            if self.unknown_session > 0 {
                live.drops.insert("unknown_session", self.unknown_session);
            }
            self.stats.live = live;
            self.stats.uptime = self.epoch.elapsed();
            self.stats.busy = self.stats.uptime.saturating_sub(self.slept);
            if let Ok(mut shared) = self.stats_shared.lock() {
                *shared = self.stats.clone();
            }
            self.next_stats = now + STATS_INTERVAL;
        }
        if let Ok(mut shared) = self.snapshot.lock() {
            *shared = infos;
        }
        self.next_snapshot = now + SNAPSHOT_INTERVAL;
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Where a datagram wakes this thread: its socket, on loopback.
    fn wake_addr(&self) -> Option<SocketAddr> {
        let local = self.socket.local_addr().ok()?;
        let ip: std::net::IpAddr = if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        Some(SocketAddr::new(ip, local.port()))
    }

    fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Add(spec, report, progress, remote)) => {
                        let now = self.now();
                        let id = spec.session;
                        match Session::new(*spec, now, report.clone(), progress) {
                            Ok(mut s) => {
                                s.remote = Some(remote);
                                if let Some(wake) = self.wake_addr() {
                                    s.files.finisher.set_wake(wake);
                                }
                                self.sessions.insert(id, s);
                                self.stats.ended.sessions_started += 1;
                            }
                            Err((code, msg)) => {
                                self.load.ended(true);
                                let _ = report.send(SessionReport::failed(code, msg));
                            }
                        }
                    }
                    Ok(Command::Tunnel(id, fd, reply)) => {
                        let now = self.now();
                        let result = match self.sessions.get_mut(&id) {
                            Some(s) => {
                                s.attach(now, fd);
                                Ok(())
                            }
                            None => Err(format!("no session {id}")),
                        };
                        let _ = reply.send(result);
                    }
                    Ok(Command::Control(id, op, reply)) => {
                        let now = self.now();
                        let result = match self.sessions.get_mut(&id) {
                            Some(s) => s.apply(now, op),
                            None => Err(format!("no session {id}")),
                        };
                        let _ = reply.send(result);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        if self.sessions.is_empty() {
                            return;
                        }
                        break;
                    }
                }
            }
            let now = self.now();
            for s in self.sessions.values_mut() {
                s.drive(now, &self.socket, &mut self.stats);
                if s.moving && (s.done_at.is_some() || s.finished) {
                    s.moving = false;
                    self.load.stopped_moving();
                }
            }
            self.reap();
            self.publish(now);
            let next = self
                .sessions
                .values()
                .filter_map(Session::poll_timeout)
                .chain((!self.sessions.is_empty()).then_some(self.next_snapshot))
                .min();
            let mut wait = match next {
                Some(t) => t.saturating_since(self.now()),
                None => Duration::from_millis(200),
            };
            if !self.inbound.flush() {
                // Writes the kernel has not taken yet: no completion will wake us for them.
                wait = wait.min(Duration::from_millis(1));
            }
            if !wait.is_zero() {
                let t = Instant::now();
                let fds: Vec<RawFd> = std::iter::once(self.socket.as_raw_fd())
                    .chain(self.inbound.event_fd())
                    .chain(
                        self.sessions
                            .values()
                            .filter_map(|s| s.tunnel.as_ref().map(|fd| fd.as_raw_fd())),
                    )
                    .collect();
                wait_readable(&fds, wait.min(Duration::from_millis(200)));
                self.slept += t.elapsed();
            }
            self.inbound.completed(&mut self.written);
            self.report_written();
            // Take in what arrived, a bounded number of batches so sending is not starved.
            for _ in 0..8 {
                let Some(batch) = self.inbound.free_batch(&self.written) else {
                    // Every batch still has writes in flight: the disk is behind. Wait for
                    // one rather than leave the socket, whose filling buffer is what the
                    // sender's controller sees.
                    if self.inbound.wait(&mut self.written).is_err() {
                        break;
                    }
                    self.report_written();
                    continue;
                };
                if self.socket.recv_batch(batch).is_err() {
                    break;
                }
                let now = self.now();
                let (batch, mut stage) = self.inbound.batch_and_stage();
                for (from, datagram) in batch.datagrams() {
                    if datagram.len() < wire::COMMON_HEADER_LEN {
                        if datagram != WAKE {
                            self.unknown_session += 1;
                        }
                        continue;
                    }
                    let id = u32::from_be_bytes(datagram[4..8].try_into().expect("4 bytes"));
                    // A session that has ended (it only waits for its writes in flight to be
                    // reaped) takes no more data, as if it were gone already.
                    let Some(s) = self.sessions.get_mut(&id).filter(|s| !s.finished) else {
                        self.unknown_session += 1;
                        continue;
                    };
                    let Some(d) = s.handle_datagram(now, Some(from), datagram, &mut self.stats)
                    else {
                        continue;
                    };
                    match stage.as_deref_mut() {
                        Some(stage) => match s.write_target(d.file, d.offset) {
                            Ok((fd, at)) => {
                                stage.push(id, d.file, d.offset, fd, at, &datagram[d.payload])
                            }
                            Err(e) => s.written(now, d.file, d.offset, &[], Err(e)),
                        },
                        None => s.write_now(now, &d, datagram, &mut self.stats),
                    }
                }
                self.inbound.submit(&mut self.written);
                self.report_written();
            }
            self.receive_tunnels(&mut buf);
            let now = self.now();
            for s in self.sessions.values_mut() {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
            }
        }
    }

    /// Hands completed writes to their sessions.
    fn report_written(&mut self) {
        let now = self.now();
        for w in self.written.drain(..) {
            self.stats.record(Latency::DiskWrite, w.elapsed);
            let Some(s) = self.sessions.get_mut(&w.session) else {
                continue;
            };
            for (offset, data) in w.blocks() {
                let result = match &w.result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(copy_error(e)),
                };
                s.written(now, w.file, offset, data, result);
            }
        }
    }

    /// Takes in what the sessions' tunnels carried, a bounded batch each.
    fn receive_tunnels(&mut self, buf: &mut [u8]) {
        for s in self.sessions.values_mut() {
            let Some(fd) = s.tunnel.as_ref().map(|fd| fd.as_raw_fd()) else {
                continue;
            };
            if s.finished {
                // Ended; only waiting for its writes in flight to be reaped.
                continue;
            }
            for _ in 0..256 {
                let n = match tunnel::recv(&fd, buf) {
                    Ok(0) => {
                        // The channel closed (the peer's session ended, or the control
                        // connection went): nothing more comes this way, and the session
                        // ends by its control channel or its data timeout.
                        s.tunnel = None;
                        break;
                    }
                    Ok(n) => n,
                    Err(_) => break,
                };
                let now = Timestamp::from_nanos(self.epoch.elapsed().as_nanos() as u64);
                let datagram = &mut buf[..n];
                let ours = datagram.len() >= wire::COMMON_HEADER_LEN
                    && datagram[4..8] == s.id.to_be_bytes();
                if ours {
                    if let Some(d) = s.handle_datagram(now, None, datagram, &mut self.stats) {
                        s.write_now(now, &d, datagram, &mut self.stats);
                    }
                } else {
                    self.unknown_session += 1;
                }
            }
        }
    }

    fn reap(&mut self) {
        // A session with writes in flight keeps its files open for them: it goes once they
        // are done (their completions wake the lane).
        let ended: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(id, s)| s.finished && self.inbound.in_flight(**id) == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            let s = self.sessions.remove(&id).expect("listed");
            self.load.ended(s.moving);
            let mut c = s.counters();
            c.sessions_ended = 1;
            c.sessions_failed = u64::from(s.error.is_some() || s.done_at.is_none());
            self.stats.ended.add(&c);
            debug_assert_eq!(s.id, id);
            let (tx, report) = s.into_report();
            let _ = tx.send(report);
        }
    }
}

/// The same error again, for each block of a gathered write that failed.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Seconds and nanoseconds since the epoch of a modification time.
pub fn mtime_of(meta: &fs::Metadata) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    // As stat(2) has it (seconds may be negative: before 1970), so that every side that
    // compares two readings of one file agrees.
    (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
}

/// The largest block that fits one datagram on the way to `peer`: 64 KiB datagrams on
/// loopback (nothing fragments there), 1500-byte Ethernet otherwise until path-MTU
/// discovery lands.
pub fn block_size_for(peer: &SocketAddr, cipher: Cipher) -> u32 {
    let overhead = wire::DATA_HEADER_LEN + cipher.trailer_len();
    let datagram = if peer.ip().is_loopback() {
        65_507
    } else {
        1_472
    };
    let block = datagram - overhead;
    // Whole 4 KiB pages where they fit, so reads stay page-aligned.
    (if block >= 4096 {
        block / 4096 * 4096
    } else {
        block
    }) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_port_another_process_holds_is_refused() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = DataPlane::start(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(held);
        DataPlane::start(addr).unwrap();
    }

    fn spec(session: u32) -> SessionSpec {
        SessionSpec {
            role: Role::Sender,
            session,
            secret: [7; 32],
            cipher: Cipher::Aes128Gcm,
            direction: Direction::ServerToClient,
            block_size: 8192,
            policy: Policy::Fair,
            limits: RateLimits::new(1_000_000_000, 0),
            root: std::env::temp_dir(),
            files: vec![FileEntry {
                path: "none".into(),
                size: 1,
                mtime: (0, 0),
                mode: 0o644,
                part: None,
            }],
            peer: None,
            no_fsync: true,
            initial_rtt: Duration::from_millis(10),
            user: "test".into(),
            ceiling_bps: None,
            plans: Vec::new(),
            transfer: None,
            checksum: Algorithm::None,
            fallback: Fallback::Off,
        }
    }

    #[test]
    fn sessions_started_together_land_on_different_lanes() {
        let core = ferry_io::placement::available_cores()[0];
        let plane = DataPlane::start_on("127.0.0.1:0".parse().unwrap(), &[core; 3]).unwrap();
        let ports: std::collections::HashSet<u16> = (1..=3)
            .map(|id| plane.start_session(spec(id)).udp_port)
            .collect();
        assert_eq!(ports.len(), 3, "three sessions, three lanes: {ports:?}");
        assert_eq!(plane.lane_addrs().len(), 3);
        // Each can be steered through the lane that runs it.
        for id in 1..=3 {
            plane.control(id, SessionOp::Pause).unwrap();
        }
        assert!(plane.control(99, SessionOp::Pause).is_err());
    }
}
