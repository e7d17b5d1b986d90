//! ferryd's control socket: the server side of `ferryctl` (messages in [`ferry_ctl`]).
//!
//! A Unix stream socket, mode 0660, served by one accept thread and a small thread per
//! connection: plain blocking std I/O, off the data thread and off the control plane's
//! tokio runtime. Reads come from [`DataPlane::sessions`] (a snapshot the data thread
//! refreshes every 100 ms) and changes go through [`DataPlane::control`], so nothing here
//! can hold up a datagram. Only root and the user running ferryd may use it
//! (`SO_PEERCRED`); anyone else gets an error reply.
//!
//! `caps` reads and changes the data plane's [`crate::caps::HostCaps`]; the sharer thread
//! hands the sessions their new shares.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_ctl::{
    Caps, Command, Error as CtlError, ErrorCode, MAX_REQUEST, PROTOCOL_VERSION, Payload, Request,
    Response, Session, Status, decode_request, encode_line, read_line,
};
use ferry_tuning::Policy;

use crate::data::{DataPlane, SessionInfo, SessionOp};

/// Connections served at once; more are answered [`ErrorCode::Busy`] and closed.
const MAX_CONNECTIONS: usize = 32;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not read its answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection about to be closed gets to finish sending its request.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of such a connection's input is read and discarded before closing it.
const DRAIN_LIMIT: usize = 1 << 20;
/// How often the accept thread looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CtlSocketError {
    /// A system call on the socket or its directory failed.
    #[error("{what} {}: {source}; set ctl_socket in ferryd.toml or pass --ctl-socket PATH", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket (or its directory).
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process answers on the socket.
    #[error(
        "another ferryd already serves the control socket {}; stop it or pass another \
         --ctl-socket PATH",
        path.display()
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error(
        "{} exists and is not a socket; remove it or pass another --ctl-socket PATH",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
}

/// What `status` reports about the server besides its sessions.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// The SSH control channel's address.
    pub tcp: SocketAddr,
    /// The data plane's UDP address.
    pub udp: SocketAddr,
    /// When ferryd started.
    pub started: Instant,
}

/// A served control socket. Dropping it (or [`CtlServer::shutdown`]) stops serving and
/// removes the socket file.
#[derive(Debug)]
pub struct CtlServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that only it is ever removed.
    file_id: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CtlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file. Connections being served finish
    /// their current request on their own threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only our own socket: a new ferryd may have replaced it meanwhile.
        if let Ok(m) = fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.file_id
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_now();
        }
    }
}

/// Binds the control socket at `path` and serves it on threads of its own: creates the
/// parent directory if missing, replaces a stale socket file (one nobody answers on),
/// refuses to replace a live socket or anything that is not a socket, and sets mode 0660.
pub fn serve(path: &Path, data: DataPlane, info: ServerInfo) -> Result<CtlServer, CtlSocketError> {
    let io_err = |what: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| CtlSocketError::Io { what, path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        fs::create_dir_all(dir).map_err(io_err("cannot create the directory of", path))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(CtlSocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            Err(_) => {
                fs::remove_file(path).map_err(io_err("cannot remove the stale socket", path))?
            }
        },
        Ok(_) => {
            return Err(CtlSocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot look at", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("cannot bind the socket", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(io_err("cannot set the mode of", path))?;
    let meta = fs::symlink_metadata(path).map_err(io_err("cannot look at", path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("cannot set up", path))?;

    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        data,
        info,
        path: path.to_path_buf(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        owner: unsafe { libc::geteuid() },
        connections: AtomicUsize::new(0),
    });
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("ferry-ctl".into())
            .spawn(move || accept_loop(listener, shared, stop))
            .map_err(io_err("cannot start the thread serving", path))?
    };
    Ok(CtlServer {
        path: path.to_path_buf(),
        file_id: (meta.dev(), meta.ino()),
        stop,
        thread: Some(thread),
    })
}

struct Shared {
    data: DataPlane,
    info: ServerInfo,
    path: PathBuf,
    /// The effective uid ferryd runs as; it and root may connect.
    owner: u32,
    connections: AtomicUsize,
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => accept(stream, &shared),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(&listener, ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!("ctl: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn wait_readable(listener: &UnixListener, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a failed or interrupted poll only ends the wait early.
    unsafe {
        libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int);
    }
}

/// Who is on the other end of a Unix stream.
fn peer_credentials(stream: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a live socket; the option value is a ucred of the stated size.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// Hands the connection to a thread of its own (who it is gets checked there).
fn accept(stream: UnixStream, shared: &Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        // Not worth a thread: answer what fits in the socket buffer and go. A client that
        // has written meanwhile may see a reset instead.
        let _ = stream.set_nonblocking(true);
        let reply = Response::error(
            ErrorCode::Busy,
            format!("ferryd serves {MAX_CONNECTIONS} control connections at once; try again"),
        );
        let _ = (&stream).write_all(&encode_line(&reply));
        let _ = (&stream).read(&mut [0u8; 4096]);
        return;
    }
    let conn_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("ferry-ctl-conn".into())
        .spawn(move || {
            serve_connection(stream, &conn_shared);
            conn_shared.connections.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!("ctl: cannot start a connection thread: {e}");
    }
}

/// Whether `stream`'s peer may control ferryd: root and ferryd's own user only. The
/// error is what to tell those who may not.
fn permitted(stream: &UnixStream, shared: &Shared) -> Result<u32, String> {
    let cred = peer_credentials(stream)
        .map_err(|e| format!("ferryd cannot tell who is connecting ({e})"))?;
    if cred.uid == 0 || cred.uid == shared.owner {
        return Ok(cred.uid);
    }
    tracing::warn!(
        "ctl: refused uid {} (pid {}): only root and uid {} may control ferryd",
        cred.uid,
        cred.pid,
        shared.owner
    );
    Err(format!(
        "permission denied: uid {} may not control this ferryd (only root and uid {}, \
         which runs it)",
        cred.uid, shared.owner
    ))
}

/// Answers requests, one line each, until the client closes, idles out or oversteps.
fn serve_connection(stream: UnixStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 << 10, stream);
    let uid = match permitted(reader.get_ref(), shared) {
        Ok(uid) => uid,
        Err(message) => {
            // Take the request first: closing a Unix socket with unread input resets it,
            // and the client would never see why.
            let _ = reader
                .get_ref()
                .set_read_timeout(Some(REFUSAL_READ_TIMEOUT));
            let _ = read_line(&mut reader, MAX_REQUEST);
            let refusal = Response::error(ErrorCode::PermissionDenied, message);
            let _ = writer.write_all(&encode_line(&refusal));
            return close_politely(reader);
        }
    };
    let _ = reader.get_ref().set_read_timeout(Some(IDLE_TIMEOUT));
    loop {
        let (response, close) = match read_line(&mut reader, MAX_REQUEST) {
            Ok(None) => return,
            Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(line)) => match decode_request(&line) {
                Ok(req) => (handle(shared, uid, req), false),
                Err(e) => (refusal(&e), false),
            },
            Err(e @ CtlError::TooLarge { .. }) => (refusal(&e), true),
            // Idle timeout, reset: nothing to answer.
            Err(_) => return,
        };
        if writer.write_all(&encode_line(&response)).is_err() {
            return;
        }
        if close {
            return close_politely(reader);
        }
    }
}

/// Ends a connection so that the client reads our last reply: no more writes, then
/// discard what it still sends (a bounded amount, for a bounded time) before closing, as a
/// close with unread input would reset the connection and lose the reply.
fn close_politely(mut reader: BufReader<UnixStream>) {
    let _ = reader.get_ref().shutdown(Shutdown::Write);
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(REFUSAL_READ_TIMEOUT));
    let deadline = Instant::now() + REFUSAL_READ_TIMEOUT;
    let mut left = DRAIN_LIMIT;
    let mut buf = [0u8; 16 << 10];
    while left > 0 && Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn refusal(e: &CtlError) -> Response {
    let code = match e {
        CtlError::TooLarge { .. } => ErrorCode::TooLarge,
        CtlError::Version { .. } => ErrorCode::Version,
        CtlError::Malformed(_) | CtlError::Io(_) => ErrorCode::BadRequest,
    };
    let msg = match e {
        CtlError::TooLarge { max } => format!(
            "request over the {max}-byte limit; closing the connection \
             (one JSON request per line)"
        ),
        CtlError::Malformed(m) => format!(
            "not a control request ({m}); send one JSON object per line, like \
             {{\"version\":{PROTOCOL_VERSION},\"command\":{{\"op\":\"status\"}}}}"
        ),
        e => e.to_string(),
    };
    Response::error(code, msg)
}

fn handle(shared: &Shared, uid: u32, req: Request) -> Response {
    let data = &shared.data;
    let (id, op, what) = match req.command {
        Command::Status => return Response::Ok(Payload::Status(status(shared))),
        Command::Stats => {
            let lanes = data.lane_stats().iter().map(lane_row).collect();
            return Response::Ok(Payload::Stats { lanes });
        }
        Command::Sessions => {
            let sessions = data.sessions().iter().map(session_row).collect();
            return Response::Ok(Payload::Sessions { sessions });
        }
        Command::SetRate {
            id,
            target_bps,
            min_bps,
            policy,
        } => match rate_change(target_bps, min_bps, policy, 1) {
            Ok((op, what)) => (id, op, what),
            Err(why) => return Response::error(ErrorCode::BadRequest, why),
        },
        Command::SetTransferRate {
            transfer,
            target_bps,
            min_bps,
            policy,
        } => return set_transfer_rate(shared, uid, &transfer, target_bps, min_bps, policy),
        Command::Pause { id } => (id, SessionOp::Pause, "pause".into()),
        Command::Resume { id } => (id, SessionOp::Resume, "resume".into()),
        Command::Cancel { id } => (id, SessionOp::Cancel, "cancel".into()),
        Command::Caps {
            inbound_bps,
            outbound_bps,
            background_bps,
        } => {
            let caps = data.caps();
            let mut settings = caps.settings();
            let set = |slot: &mut Option<u64>, v: Option<u64>| {
                if let Some(v) = v {
                    *slot = (v > 0).then_some(v);
                }
            };
            set(&mut settings.inbound_bps, inbound_bps);
            set(&mut settings.outbound_bps, outbound_bps);
            set(&mut settings.background_bps, background_bps);
            if settings != caps.settings() {
                caps.set(settings);
                tracing::info!("ctl (uid {uid}): caps {settings:?}");
            }
            return Response::Ok(Payload::Caps(caps_row(shared, &data.sessions())));
        }
    };
    match data.control(id, op) {
        Ok(()) => {
            tracing::info!("ctl (uid {uid}): session {id}: {what}");
            Response::Ok(Payload::Done)
        }
        Err(message) => {
            let listed = data.sessions().into_iter().find(|s| s.id == id);
            let code = if message == format!("no session {id}") {
                ErrorCode::NoSession
            } else if listed.is_some_and(|s| s.direction != "send") {
                ErrorCode::Unsupported
            } else {
                ErrorCode::Other
            };
            let message = match code {
                ErrorCode::NoSession => {
                    format!("no session {id} (it may have ended; ferryctl sessions lists them)")
                }
                ErrorCode::Unsupported => format!(
                    "{message} (an upload's changes are relayed to the client, which has gone)"
                ),
                _ => message,
            };
            tracing::warn!("ctl (uid {uid}): session {id}: {what}: refused: {message}");
            Response::error(code, message)
        }
    }
}

/// The session change a `set-rate` asks for, with its rates divided among `share`
/// sessions, and its description for the log; or why a request that changes nothing or
/// names no known policy is refused.
fn rate_change(
    target_bps: Option<u64>,
    min_bps: Option<u64>,
    policy: Option<String>,
    share: u64,
) -> Result<(SessionOp, String), String> {
    if target_bps.is_none() && min_bps.is_none() && policy.is_none() {
        return Err("set-rate changes nothing: give a target, a minimum or a policy".into());
    }
    if target_bps == Some(0) {
        return Err("the target rate must be above 0".into());
    }
    let policy = match policy.as_deref().map(str::parse::<Policy>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            return Err(format!(
                "unknown policy {:?} (fixed, high, fair, low)",
                policy.unwrap_or_default()
            ));
        }
    };
    let share = share.max(1);
    let target_bps = target_bps.map(|t| (t / share).max(1));
    let min_bps = min_bps.map(|m| m / share);
    let mut what = Vec::new();
    if let Some(t) = target_bps {
        what.push(format!("target={t}"));
    }
    if let Some(m) = min_bps {
        what.push(format!("min={m}"));
    }
    if let Some(p) = policy {
        what.push(format!("policy={p}"));
    }
    let op = SessionOp::SetRate {
        target_bps,
        min_bps,
        policy,
    };
    Ok((op, format!("set-rate {}", what.join(" "))))
}

/// `set-rate` on a multi-session transfer: each of its sessions gets an even share.
fn set_transfer_rate(
    shared: &Shared,
    uid: u32,
    transfer: &str,
    target_bps: Option<u64>,
    min_bps: Option<u64>,
    policy: Option<String>,
) -> Response {
    let ids: Vec<u32> = shared
        .data
        .sessions()
        .iter()
        .filter(|s| s.transfer.as_deref() == Some(transfer))
        .map(|s| s.id)
        .collect();
    if ids.is_empty() {
        return Response::error(
            ErrorCode::NoSession,
            format!("no transfer {transfer} (it may have ended; ferryctl sessions lists them)"),
        );
    }
    let (op, what) = match rate_change(target_bps, min_bps, policy, ids.len() as u64) {
        Ok(change) => change,
        Err(why) => return Response::error(ErrorCode::BadRequest, why),
    };
    let mut refused = Vec::new();
    for id in &ids {
        if let Err(e) = shared.data.control(*id, op) {
            refused.push(format!("session {id}: {e}"));
        }
    }
    if refused.is_empty() {
        tracing::info!(
            "ctl (uid {uid}): transfer {transfer} ({} sessions): {what} each",
            ids.len()
        );
        Response::Ok(Payload::Done)
    } else {
        let message = refused.join("; ");
        tracing::warn!("ctl (uid {uid}): transfer {transfer}: {what}: {message}");
        Response::error(ErrorCode::Other, message)
    }
}

fn status(shared: &Shared) -> Status {
    let sessions = shared.data.sessions();
    let rate = |dir: &str| -> u64 {
        sessions
            .iter()
            .filter(|s| s.direction == dir)
            .map(|s| s.rate_bps)
            .sum()
    };
    let count = |dir: &str| sessions.iter().filter(|s| s.direction == dir).count() as u64;
    let caps = caps_row(shared, &sessions);
    let lanes = shared
        .data
        .lane_stats()
        .iter()
        .map(|l| ferry_ctl::Lane {
            core: l.core.map(|c| c as u64),
            port: l.port,
            sessions: sessions
                .iter()
                .filter(|s| s.port == l.port)
                .map(|s| s.id)
                .collect(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        uptime_s: shared.info.started.elapsed().as_secs_f64(),
        tcp: shared.info.tcp.to_string(),
        udp: shared.info.udp.to_string(),
        ctl: shared.path.display().to_string(),
        sessions: sessions.len() as u64,
        sending: count("send"),
        receiving: count("recv"),
        rate_bps: sessions.iter().map(|s| s.rate_bps).sum(),
        send_rate_bps: rate("send"),
        recv_rate_bps: rate("recv"),
        caps,
        lanes,
    }
}

fn lane_row(l: &crate::stats::LaneStats) -> ferry_ctl::LaneStats {
    let t = l.totals();
    ferry_ctl::LaneStats {
        core: l.core.map(|c| c as u64),
        port: l.port,
        uptime_s: l.uptime.as_secs_f64(),
        busy_s: l.busy.as_secs_f64(),
        sessions_started: t.sessions_started,
        sessions_ended: t.sessions_ended,
        sessions_failed: t.sessions_failed,
        bytes_sent: t.bytes_sent,
        bytes_received: t.bytes_received,
        wire_bytes_sent: t.wire_bytes_sent,
        retransmitted_bytes: t.retransmitted_bytes,
        drops: t.drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        latencies: l
            .latencies()
            .into_iter()
            .map(|p| ferry_ctl::LatencyStats {
                name: p.name.to_string(),
                count: p.count,
                p50_us: p.p50_us,
                p90_us: p.p90_us,
                p99_us: p.p99_us,
                p999_us: p.p999_us,
                max_us: p.max_us,
            })
            .collect(),
    }
}

fn caps_row(shared: &Shared, sessions: &[SessionInfo]) -> Caps {
    let settings = shared.data.caps().settings();
    let sum = |keep: &dyn Fn(&SessionInfo) -> bool| -> u64 {
        sessions
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.rate_bps)
            .sum()
    };
    Caps {
        inbound_bps: settings.inbound_bps,
        outbound_bps: settings.outbound_bps,
        background_bps: settings.background_bps,
        inbound_rate_bps: sum(&|s| s.direction == "recv"),
        outbound_rate_bps: sum(&|s| s.direction == "send"),
        background_rate_bps: sum(&|s| s.policy == "low"),
    }
}

fn session_row(s: &SessionInfo) -> Session {
    Session {
        id: s.id,
        peer: s.peer.clone(),
        user: s.user.clone(),
        direction: s.direction.to_string(),
        files: s.files as u64,
        bytes: s.bytes,
        total: s.total,
        rate_bps: s.rate_bps,
        target_bps: s.target_bps,
        min_bps: s.min_bps,
        policy: s.policy.clone(),
        ceiling_bps: s.ceiling_bps,
        core: s.core.map(|c| c as u64),
        port: s.port,
        transfer: s.transfer.clone(),
        loss: s.loss,
        rtt_ms: s.rtt_ms,
        queue_ms: s.queue_ms,
        state: s.state.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn start(dir: &Path) -> (CtlServer, PathBuf) {
        let data = DataPlane::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let info = ServerInfo {
            tcp: "127.0.0.1:1".parse().unwrap(),
            udp: data.local_addr(),
            started: Instant::now(),
        };
        let path = dir.join("sub/ctl.sock");
        (serve(&path, data, info).unwrap(), path)
    }

    fn ask(stream: &mut UnixStream, line: &[u8]) -> Response {
        stream.write_all(line).unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut s = String::new();
        r.read_line(&mut s).unwrap();
        ferry_ctl::decode_response(s.trim_end().as_bytes()).unwrap()
    }

    fn code(r: &Response) -> ErrorCode {
        match r {
            Response::Error { code, .. } => *code,
            Response::Ok(p) => panic!("expected an error, got {p:?}"),
        }
    }

    #[test]
    fn answers_requests_and_survives_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let (server, path) = start(tmp.path());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let mut c = UnixStream::connect(&path).unwrap();
        let r = ask(&mut c, &encode_line(&Request::new(Command::Status)));
        let Response::Ok(Payload::Status(s)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(s.sessions, 0);
        assert_eq!(s.ctl, path.display().to_string());
        // Garbage, another version, an unknown session: errors, and the connection lives.
        assert_eq!(code(&ask(&mut c, b"garbage\n")), ErrorCode::BadRequest);
        assert_eq!(
            code(&ask(
                &mut c,
                b"{\"version\":9,\"command\":{\"op\":\"x\"}}\n"
            )),
            ErrorCode::Version
        );
        let pause = encode_line(&Request::new(Command::Pause { id: 77 }));
        assert_eq!(code(&ask(&mut c, &pause)), ErrorCode::NoSession);
        let bad = encode_line(&Request::new(Command::SetRate {
            id: 1,
            target_bps: None,
            min_bps: None,
            policy: Some("greedy".into()),
        }));
        assert_eq!(code(&ask(&mut c, &bad)), ErrorCode::BadRequest);
        let r = ask(&mut c, &encode_line(&Request::new(Command::Sessions)));
        assert_eq!(r, Response::Ok(Payload::Sessions { sessions: vec![] }));

        // Oversized: an error, then the connection is closed.
        let mut c2 = UnixStream::connect(&path).unwrap();
        let big = vec![b'x'; MAX_REQUEST + 10];
        let writer = {
            let mut c2 = c2.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = c2.write_all(&big);
            })
        };
        let mut answer = String::new();
        c2.read_to_string(&mut answer).unwrap();
        writer.join().unwrap();
        let r = ferry_ctl::decode_response(answer.trim_end().as_bytes()).unwrap();
        assert_eq!(code(&r), ErrorCode::TooLarge);

        // The first connection still works.
        let r = ask(&mut c, &encode_line(&Request::new(Command::Sessions)));
        assert!(matches!(r, Response::Ok(Payload::Sessions { .. })), "{r:?}");
        server.shutdown();
        assert!(!path.exists(), "the socket file is removed on shutdown");
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_and_files_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ctl.sock");
        // Stale: bound, then its listener gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let data = DataPlane::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let info = ServerInfo {
            tcp: "127.0.0.1:1".parse().unwrap(),
            udp: data.local_addr(),
            started: Instant::now(),
        };
        let server = serve(&path, data.clone(), info.clone()).unwrap();
        // Live: a second server must not steal it.
        let e = serve(&path, data.clone(), info.clone()).unwrap_err();
        assert!(matches!(e, CtlSocketError::InUse { .. }), "{e}");
        assert!(UnixStream::connect(&path).is_ok(), "the first still serves");
        drop(server);
        assert!(!path.exists());
        // A regular file is never removed.
        fs::write(&path, b"precious").unwrap();
        let e = serve(&path, data, info).unwrap_err();
        assert!(matches!(e, CtlSocketError::NotASocket { .. }), "{e}");
        assert!(e.to_string().contains("--ctl-socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }
}
