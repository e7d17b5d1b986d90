//! ferryd's side of the control channel: an embedded SSH server (russh) on its own thread.
//!
//! tokio lives on the control thread only. Each transfer is handed to the data plane as a
//! [`SessionSpec`] through a [`SessionStarter`], and its [`SessionReport`] comes back over a
//! channel; the data plane never sees tokio.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_proto::crypto::{Cipher, Direction, TAG_LEN};
use ferry_proto::wire::DATA_HEADER_LEN;
use ferry_tuning::{Policy, RateLimits};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use tokio::sync::watch;

use super::authorized_keys;
use super::claims::Claims;
use super::messages::{
    ClientMsg, Done, DownloadRequest, ErrorMsg, FileDigest, FilePlan, FileSums, LineBuffer,
    Manifest, Offer, PROTOCOL_VERSION, Ready, Selection, ServerMsg, TransferParams, TunnelRequest,
    UploadRequest, encode_line, is_transfer_tag, to_hex,
};
use super::{ErrorCode, SUBSYSTEM};
use crate::config::FerrydConfig;
use crate::data::{
    DataPlane, Fallback, FileEntry, Role, SessionHandle, SessionOp, SessionReport, SessionSpec,
};
use crate::integrity::Algorithm;
use crate::listing::Listings;
use crate::paths::{Docroot, EntryConfiner, PathError, validate_relative};
use crate::resume::{Overwrite, ResumePolicy};
use crate::translog::{self, Start, TransferLog};

/// The largest payload per datagram: a UDP datagram (65 507 bytes) less the data header and
/// the AEAD tag.
pub const MAX_BLOCK_SIZE: u32 = (65_507 - DATA_HEADER_LEN - TAG_LEN) as u32;
/// The smallest payload per datagram a client may ask for.
pub const MIN_BLOCK_SIZE: u32 = 512;

/// How long connections get to deliver their last words after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often a waiting transfer looks for its data-plane report.
const REPORT_POLL: Duration = Duration::from_millis(20);
/// How long a new upload waits for an older session to let go of the same files.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// What the control plane needs of a data plane: start a session, and say where it listens.
/// Implemented by [`DataPlane`]; tests use a fake.
pub trait SessionStarter: Send + Sync + 'static {
    /// Starts a session: its report channel, live progress and relayed operator changes.
    fn start(&self, spec: SessionSpec) -> SessionHandle;
    /// The data plane's UDP port.
    fn udp_port(&self) -> u16;
    /// The data plane's UDP address (`ferry doctor` probes it).
    fn udp_addr(&self) -> SocketAddr {
        SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), self.udp_port())
    }
    /// Ends a session at once, without a word to its peer: its client has gone, or a new
    /// session takes over its files. Its report still arrives.
    fn abandon(&self, _session: u32) {}
    /// Hands a session a change from its peer (a file's checksum, for a receiving session).
    fn relay(&self, _session: u32, _op: SessionOp) {}
    /// Moves a session onto the TCP fallback: `fd` is the data thread's end of a
    /// [`crate::tunnel::pair`].
    fn tunnel(&self, _session: u32, _fd: OwnedFd) -> Result<(), String> {
        Err("this data plane has no TCP fallback".into())
    }
}

impl SessionStarter for DataPlane {
    fn start(&self, spec: SessionSpec) -> SessionHandle {
        self.start_session(spec)
    }

    fn abandon(&self, session: u32) {
        let _ = self.control(session, crate::data::SessionOp::Abandon);
    }

    fn relay(&self, session: u32, op: SessionOp) {
        let _ = self.control(session, op);
    }

    fn tunnel(&self, session: u32, fd: OwnedFd) -> Result<(), String> {
        DataPlane::tunnel(self, session, fd)
    }

    fn udp_port(&self) -> u16 {
        self.local_addr().port()
    }

    fn udp_addr(&self) -> SocketAddr {
        self.local_addr()
    }
}

/// A running control server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    runtime: tokio::runtime::Handle,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The TCP address it accepts on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; transfers still waiting for their report are told the server is
    /// shutting down. Returns at once; [`ServerHandle::wait`] waits for the end.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Shuts down on SIGTERM or SIGINT (instead of dying from them).
    pub fn shutdown_on_signals(&self) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = self.runtime.enter();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = self.stop.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            stop.send_replace(true);
        });
        Ok(())
    }

    /// Waits until the server has stopped (after [`ServerHandle::shutdown`] or a signal).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.send_replace(true);
            let _ = t.join();
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The host key could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The runtime, thread or socket could not be set up.
    #[error("control server: {0}")]
    Io(#[from] io::Error),
}

struct Shared<S> {
    config: FerrydConfig,
    starter: S,
    stop: watch::Receiver<bool>,
    log: TransferLog,
    /// Destination files of running uploads, one session each.
    claims: Claims,
}

/// Starts the control server on `listener` (already bound, so port 0 has its real port) on a
/// thread of its own, and returns once it accepts connections.
pub fn serve<S: SessionStarter>(
    config: FerrydConfig,
    starter: S,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, ServeError> {
    let host_key = config.load_host_key()?;
    let log = TransferLog::open(&config.transfer_log).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot open the transfer log {}: {e} (set transfer_log in ferryd.toml)",
                config.transfer_log.display()
            ),
        )
    })?;
    let local_addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let ssh = russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        // A transfer keeps its control channel silent for as long as the data flows:
        // no inactivity timeout, keepalives find dead clients instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        config,
        starter,
        stop: stop_rx,
        log,
        claims: Claims::default(),
    });
    let thread = std::thread::Builder::new()
        .name("ferry-control".into())
        .spawn(move || runtime.block_on(accept_loop(listener, Arc::new(ssh), shared)))?;
    Ok(ServerHandle {
        local_addr,
        stop: Arc::new(stop_tx),
        runtime: handle,
        thread: Some(thread),
    })
}

async fn accept_loop<S: SessionStarter>(
    listener: tokio::net::TcpListener,
    ssh: Arc<russh::server::Config>,
    shared: Arc<Shared<S>>,
) {
    let mut stop = shared.stop.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let handler = ConnHandler {
                        shared: shared.clone(),
                        peer,
                        user: None,
                        sessions: Default::default(),
                    };
                    let ssh = ssh.clone();
                    let mut stop = shared.stop.clone();
                    conns.spawn(async move {
                        let session = match russh::server::run_stream(ssh, sock, handler).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!("{peer}: SSH handshake failed: {e}");
                                return;
                            }
                        };
                        let handle = session.handle();
                        tokio::select! {
                            r = session => if let Err(e) = r
                                && !quiet_end(&e)
                            {
                                tracing::warn!("{peer}: connection ended: {e}");
                            },
                            _ = stopped(&mut stop) => {
                                // Let the channel tasks send their last message first.
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                let _ = handle
                                    .disconnect(
                                        russh::Disconnect::ByApplication,
                                        "ferryd is shutting down".into(),
                                        String::new(),
                                    )
                                    .await;
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Whether a connection's end is ordinary (the client went away) rather than worth a log line.
fn quiet_end(e: &russh::Error) -> bool {
    match e {
        russh::Error::Disconnect => true,
        russh::Error::IO(io) => matches!(
            io.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// Resolves once shutdown has begun (the guard `wait_for` returns must not live across an
/// await, or the future is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

struct ConnHandler<S> {
    shared: Arc<Shared<S>>,
    peer: SocketAddr,
    user: Option<String>,
    /// The sessions started on this connection's channels: only they may be given a TCP
    /// fallback channel, and only on this connection.
    sessions: Arc<Mutex<HashSet<u32>>>,
}

impl<S: SessionStarter> ConnHandler<S> {
    /// Whether `key` may log in as `user`; logs why not.
    fn authorized(&self, user: &str, key: &russh::keys::PublicKey, log: bool) -> bool {
        let config = &self.shared.config;
        let text = match fs::read_to_string(&config.authorized_keys) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", config.authorized_keys.display());
                String::new()
            }
        };
        let (keys, _warnings) = authorized_keys::parse(&text);
        let users = authorized_keys::users_for(config, &keys, key);
        let ok = users.iter().any(|u| u == user);
        if !ok && log {
            let fp = super::known_hosts::fingerprint(key);
            if users.is_empty() {
                tracing::info!(
                    "{}: key {fp} for user {user:?} is not in {} nor in [users]",
                    self.peer,
                    config.authorized_keys.display()
                );
            } else {
                tracing::info!(
                    "{}: key {fp} logs in as {} only, not as {user:?}",
                    self.peer,
                    users.join(", ")
                );
            }
        }
        ok
    }
}

impl<S: SessionStarter> russh::server::Handler for ConnHandler<S> {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.authorized(user, offer.public_key, true) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.authorized(user, key.public_key, true) {
            tracing::info!(
                "{}: user {user} logged in with key {}",
                self.peer,
                super::known_hosts::fingerprint(key.public_key)
            );
            self.user = Some(user.to_string());
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(user) = self.user.clone() else {
            return Ok(()); // dropping `reply` refuses the channel
        };
        reply.accept().await;
        let ctx = ChannelCtx {
            shared: self.shared.clone(),
            peer: self.peer,
            user,
            sessions: self.sessions.clone(),
        };
        tokio::spawn(run_channel(channel, ctx));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if is_ferry_command(data) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == SUBSYSTEM {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

fn is_ferry_command(cmd: &[u8]) -> bool {
    let cmd = cmd.trim_ascii();
    cmd == SUBSYSTEM.as_bytes() || cmd.starts_with(b"ferry ")
}

struct ChannelCtx<S> {
    shared: Arc<Shared<S>>,
    peer: SocketAddr,
    user: String,
    /// The connection's sessions (see [`ConnHandler`]).
    sessions: Arc<Mutex<HashSet<u32>>>,
}

async fn send(channel: &Channel<Msg>, msg: &ServerMsg) -> bool {
    channel.data_bytes(encode_line(msg)).await.is_ok()
}

async fn finish(channel: &Channel<Msg>, ok: bool) {
    let _ = channel.exit_status(if ok { 0 } else { 1 }).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// One control channel: hello, one request, the report.
async fn run_channel<S: SessionStarter>(mut channel: Channel<Msg>, ctx: ChannelCtx<S>) {
    let mut stop = ctx.shared.stop.clone();
    let mut lines = LineBuffer::default();
    let mut started = false;
    // Phase 1: the request.
    let (reply, report) = 'request: loop {
        if started {
            while let Some(line) = lines.next_line() {
                let msg: ClientMsg = match serde_json::from_slice(&line) {
                    Ok(m) => m,
                    Err(e) => {
                        let err = ErrorMsg::new(
                            ErrorCode::Protocol,
                            format!("malformed control message: {e}"),
                        );
                        break 'request (ServerMsg::Error(err), None);
                    }
                };
                match msg {
                    ClientMsg::Hello { version } if version != PROTOCOL_VERSION => {
                        let err = ErrorMsg::new(
                            ErrorCode::Protocol,
                            format!(
                                "the client speaks control protocol {version}, this ferryd \
                                 speaks {PROTOCOL_VERSION}"
                            ),
                        );
                        break 'request (ServerMsg::Error(err), None);
                    }
                    ClientMsg::Hello { .. } => {}
                    ClientMsg::Upload(req) => break 'request handle_upload(&ctx, req).await,
                    ClientMsg::Download(req) => {
                        break 'request handle_download(&ctx, req, &mut channel, &mut lines).await;
                    }
                    ClientMsg::Probe(req) => {
                        let at = ctx.shared.starter.udp_addr();
                        let ok = crate::doctor::answer_probe(&channel, ctx.peer, at, req).await;
                        return finish(&channel, ok).await;
                    }
                    ClientMsg::Tunnel(req) => {
                        return handle_tunnel(&ctx, req, channel, lines).await;
                    }
                    ClientMsg::Plans(_) | ClientMsg::Digest(_) => {
                        let err = ErrorMsg::new(
                            ErrorCode::Protocol,
                            "plans or a checksum sent outside their transfer",
                        );
                        break 'request (ServerMsg::Error(err), None);
                    }
                }
            }
        }
        let msg = tokio::select! {
            m = channel.wait() => m,
            _ = stopped(&mut stop) => return finish(&channel, false).await,
        };
        match msg {
            Some(ChannelMsg::Exec { command, .. }) if is_ferry_command(&command) => {
                started = true;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == SUBSYSTEM => {
                started = true;
            }
            Some(ChannelMsg::Data { data }) => {
                if let Err(e) = lines.push(&data) {
                    let err = ErrorMsg::new(ErrorCode::Protocol, e);
                    break 'request (ServerMsg::Error(err), None);
                }
                continue;
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => continue,
        }
        let hello = ServerMsg::Hello {
            version: PROTOCOL_VERSION,
            user: ctx.user.clone(),
        };
        if !send(&channel, &hello).await {
            return;
        }
    };
    let refused = matches!(reply, ServerMsg::Error(_));
    if let ServerMsg::Error(e) = &reply {
        tracing::warn!(
            "{} ({}): refused: {} (code {})",
            ctx.peer,
            ctx.user,
            e.message,
            e.code
        );
    }
    if refused {
        send(&channel, &reply).await;
        return finish(&channel, false).await;
    }
    let Some((session, rx, logged)) = report else {
        // A listing: its answer is all there is.
        let listed = matches!(reply, ServerMsg::Offer(_));
        if listed {
            send(&channel, &reply).await;
        }
        return finish(&channel, listed).await;
    };
    if !send(&channel, &reply).await {
        // The client left before it heard of its session: nobody will use it.
        let shared = ctx.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            shared.starter.abandon(session);
            // Its files are free once it has ended (checkpoints flushed).
            let _ = rx.report.recv_timeout(Duration::from_secs(10));
        })
        .await;
        ctx.shared.claims.release(session);
        return finish(&channel, false).await;
    }
    ctx.shared.log.start(&logged);
    if let Ok(mut s) = ctx.sessions.lock() {
        s.insert(session);
    }

    // Phase 2: wait for the data plane's report; meanwhile relay operator changes and
    // checksums to the client, and the client's checksums to the receiving session.
    let mut client_gone = false;
    let mut ended = translog::End::default();
    let done = loop {
        // The client's checksums for an upload (its sender hashes what it reads).
        while let Some(line) = lines.next_line() {
            if let Ok(ClientMsg::Digest(d)) = serde_json::from_slice(&line) {
                let shared = ctx.shared.clone();
                let op = SessionOp::Digest {
                    file: d.file,
                    digest: d.checksum,
                };
                let _ =
                    tokio::task::spawn_blocking(move || shared.starter.relay(session, op)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REPORT_POLL) => match rx.report.try_recv() {
                Ok(r) => {
                    // A download's last checksums go out before its Done.
                    for msg in relays(&rx.remote_ops) {
                        if !client_gone {
                            send(&channel, &msg).await;
                        }
                    }
                    let done = done_from_report(&r);
                    ended.loss = r.loss;
                    ended.nacks = r.nacks;
                    ended.retransmitted_bytes =
                        (logged.direction == "download").then_some(r.retransmitted_bytes);
                    break done;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    for msg in relays(&rx.remote_ops) {
                        if !client_gone {
                            send(&channel, &msg).await;
                        }
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => break done_error(
                    ErrorCode::Internal,
                    "the data plane ended the session without a report".into(),
                ),
            },
            m = channel.wait(), if !client_gone => match m {
                Some(ChannelMsg::Data { data }) => {
                    // Malformed or oversized input ends nothing here: the session's own
                    // data decides.
                    let _ = lines.push(&data);
                }
                Some(ChannelMsg::Close) | None => {
                    tracing::info!(
                        "{} ({}): session {session}: the client closed the control \
                         channel; ending the session",
                        ctx.peer, ctx.user
                    );
                    client_gone = true;
                    // Its files are released (and checkpointed) now, not at the data
                    // timeout: the client may well be back at once to resume.
                    let shared = ctx.shared.clone();
                    tokio::task::spawn_blocking(move || shared.starter.abandon(session));
                }
                _ => {}
            },
            _ = stopped(&mut stop) => break done_error(
                ErrorCode::PeerAborted,
                "ferryd is shutting down; resume the transfer when it is back".into(),
            ),
        }
    };
    ended.bytes = done.bytes;
    ended.duration_s = done.data_secs;
    ended.error = done.error().map(|(c, m)| (c.code(), m));
    ctx.shared.log.end(&logged, &ended);
    ctx.shared.claims.release(session);
    if let Ok(mut s) = ctx.sessions.lock() {
        s.remove(&session);
    }
    match done.error() {
        None => tracing::info!(
            session,
            peer = %ctx.peer,
            user = %ctx.user,
            bytes = done.bytes,
            "{} ({}): session {session} done: {} bytes",
            ctx.peer, ctx.user, done.bytes
        ),
        Some((code, msg)) => tracing::warn!(
            session,
            peer = %ctx.peer,
            user = %ctx.user,
            code = code.code(),
            "{} ({}): session {session} failed: {msg} (code {})",
            ctx.peer,
            ctx.user,
            code.code()
        ),
    }
    if !client_gone {
        let ok = done.ok;
        send(&channel, &ServerMsg::Done(done)).await;
        finish(&channel, ok).await;
    }
}

/// A fallback channel: attaches it to the session it names (one of this connection's),
/// answers [`ServerMsg::Tunnel`], then moves datagrams until either side closes.
async fn handle_tunnel<S: SessionStarter>(
    ctx: &ChannelCtx<S>,
    req: TunnelRequest,
    channel: Channel<Msg>,
    mut lines: LineBuffer,
) {
    let id = req.session;
    let refuse = async |channel: &Channel<Msg>, code: ErrorCode, why: String| {
        tracing::warn!(
            "{} ({}): TCP fallback for session {id} refused: {why}",
            ctx.peer,
            ctx.user
        );
        send(channel, &ServerMsg::Error(ErrorMsg::new(code, why))).await;
        finish(channel, false).await;
    };
    if !ctx.sessions.lock().is_ok_and(|s| s.contains(&id)) {
        let why = format!("no session {id} runs on this connection");
        return refuse(&channel, ErrorCode::BadRequest, why).await;
    }
    let (data_end, pump_end) = match crate::tunnel::pair() {
        Ok(p) => p,
        Err(e) => {
            let why = format!("cannot make a socket pair: {e}");
            return refuse(&channel, ErrorCode::Internal, why).await;
        }
    };
    let shared = ctx.shared.clone();
    let attached = tokio::task::spawn_blocking(move || shared.starter.tunnel(id, data_end)).await;
    match attached {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return refuse(&channel, ErrorCode::Internal, why).await,
        Err(e) => return refuse(&channel, ErrorCode::Internal, e.to_string()).await,
    }
    tracing::info!(
        session = id,
        peer = %ctx.peer,
        user = %ctx.user,
        "{} ({}): session {id}: no datagram passed over UDP; continuing over TCP (a \
         channel of the SSH connection)",
        ctx.peer,
        ctx.user
    );
    if !send(&channel, &ServerMsg::Tunnel(req)).await {
        return;
    }
    let early = lines.take_rest();
    if let Err(e) = crate::tunnel::pump(channel, pump_end, early).await {
        tracing::debug!("session {id}: the TCP fallback ended: {e}");
    }
}

/// What the data plane asks to tell the client: an operator's change for its sender, or a
/// file's checksum from ours.
fn relays(ops: &mpsc::Receiver<SessionOp>) -> Vec<ServerMsg> {
    ops.try_iter()
        .filter_map(|op| match op {
            SessionOp::Digest { file, digest } => Some(ServerMsg::Digest(FileDigest {
                file,
                checksum: digest,
            })),
            op => steer_of(op).map(ServerMsg::Steer),
        })
        .collect()
}

fn done_from_report(r: &SessionReport) -> Done {
    Done {
        ok: r.error.is_none(),
        code: r.error.as_ref().map(|(c, _)| c.code()),
        message: r.error.as_ref().map(|(_, m)| m.clone()),
        bytes: r.bytes,
        wire_bytes: r.wire_bytes,
        retransmitted_bytes: r.retransmitted_bytes,
        data_secs: r.data_secs,
        mismatched: r.mismatched.clone(),
    }
}

fn done_error(code: ErrorCode, message: String) -> Done {
    Done {
        ok: false,
        code: Some(code.code()),
        message: Some(message),
        bytes: 0,
        wire_bytes: 0,
        retransmitted_bytes: 0,
        data_secs: 0.0,
        mismatched: Vec::new(),
    }
}

type Started = Option<(u32, SessionHandle, Start)>;

async fn handle_upload<S: SessionStarter>(
    ctx: &ChannelCtx<S>,
    req: UploadRequest,
) -> (ServerMsg, Started) {
    let ids = match fresh_session() {
        Ok(ids) => ids,
        Err(e) => return (ServerMsg::Error(e), None),
    };
    let shared = ctx.shared.clone();
    let user = ctx.user.clone();
    let prepared =
        tokio::task::spawn_blocking(move || prepare_upload(&shared, &user, ids.0, req)).await;
    start_session(ctx, ids, prepared, |ready, p| {
        ServerMsg::Ready(Ready {
            plans: p.spec.plans.clone(),
            ..ready
        })
    })
}

async fn handle_download<S: SessionStarter>(
    ctx: &ChannelCtx<S>,
    req: DownloadRequest,
    channel: &mut Channel<Msg>,
    lines: &mut LineBuffer,
) -> (ServerMsg, Started) {
    let ids = match fresh_session() {
        Ok(ids) => ids,
        Err(e) => return (ServerMsg::Error(e), None),
    };
    let negotiate = req.negotiate;
    let list_only = req.list_only;
    let shared = ctx.shared.clone();
    let user = ctx.user.clone();
    let mut prepared =
        tokio::task::spawn_blocking(move || prepare_download(&shared.config, &user, req)).await;
    if list_only {
        return match prepared {
            Ok(Ok(p)) => (
                ServerMsg::Offer(Offer {
                    files: p.spec.files,
                    block_size: p.spec.block_size,
                    sums: Vec::new(),
                }),
                None,
            ),
            Ok(Err(e)) => (ServerMsg::Error(e), None),
            Err(_) => (
                ServerMsg::Error(ErrorMsg::new(ErrorCode::Internal, "listing failed")),
                None,
            ),
        };
    }
    if negotiate && let Ok(Ok(p)) = &mut prepared {
        match negotiate_plans(p, channel, lines).await {
            Ok(plans) => p.spec.plans = plans,
            Err(e) => return (ServerMsg::Error(e), None),
        }
    }
    start_session(ctx, ids, prepared, |ready, p| {
        ServerMsg::Manifest(Manifest {
            files: p.spec.files.clone(),
            dirs: p.dirs.clone(),
            skipped: p.skipped.clone(),
            session: ready,
        })
    })
}

/// Offers a download's files and reads the client's plan for each.
async fn negotiate_plans(
    p: &Prepared,
    channel: &mut Channel<Msg>,
    lines: &mut LineBuffer,
) -> Result<Vec<FilePlan>, ErrorMsg> {
    let offer = ServerMsg::Offer(Offer {
        files: p.spec.files.clone(),
        block_size: p.spec.block_size,
        sums: p.sums.clone(),
    });
    if !send(channel, &offer).await {
        return Err(ErrorMsg::new(
            ErrorCode::PeerAborted,
            "the client went away",
        ));
    }
    match next_client_msg(channel, lines).await? {
        ClientMsg::Plans(plans) if plans.files.len() == p.spec.files.len() => Ok(plans.files),
        ClientMsg::Plans(plans) => Err(ErrorMsg::new(
            ErrorCode::BadRequest,
            format!(
                "{} plans for {} files",
                plans.files.len(),
                p.spec.files.len()
            ),
        )),
        _ => Err(ErrorMsg::new(
            ErrorCode::Protocol,
            "expected the plans for the offered files",
        )),
    }
}

/// The next message from the client.
async fn next_client_msg(
    channel: &mut Channel<Msg>,
    lines: &mut LineBuffer,
) -> Result<ClientMsg, ErrorMsg> {
    loop {
        if let Some(line) = lines.next_line() {
            return serde_json::from_slice(&line).map_err(|e| {
                ErrorMsg::new(
                    ErrorCode::Protocol,
                    format!("malformed control message: {e}"),
                )
            });
        }
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => lines
                .push(&data)
                .map_err(|e| ErrorMsg::new(ErrorCode::Protocol, e))?,
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                return Err(ErrorMsg::new(
                    ErrorCode::PeerAborted,
                    "the client closed the channel",
                ));
            }
            Some(_) => {}
        }
    }
}

/// A session ready to start, and what the reply needs besides it.
struct Prepared {
    spec: SessionSpec,
    dirs: Vec<String>,
    skipped: Vec<String>,
    /// A download's source checksums (resume levels 2 and 3), for the offer.
    sums: Vec<FileSums>,
}

fn start_session<S: SessionStarter>(
    ctx: &ChannelCtx<S>,
    (session, secret): (u32, [u8; 32]),
    prepared: Result<Result<Prepared, ErrorMsg>, tokio::task::JoinError>,
    reply: impl FnOnce(Ready, &Prepared) -> ServerMsg,
) -> (ServerMsg, Started) {
    let mut prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return (ServerMsg::Error(e), None),
        Err(e) => {
            ctx.shared.claims.release(session);
            let err = ErrorMsg::new(ErrorCode::Internal, format!("request handling failed: {e}"));
            return (ServerMsg::Error(err), None);
        }
    };
    prepared.spec.session = session;
    prepared.spec.user = ctx.user.clone();
    prepared.spec.secret = secret;
    // Start first: the lane the session lands on decides the UDP port the client uses.
    let handle = ctx.shared.starter.start(prepared.spec.clone());
    let spec = &prepared.spec;
    let ready = Ready {
        session,
        secret: to_hex(&secret),
        udp_port: handle.udp_port,
        block_size: spec.block_size,
        cipher: spec.cipher.name().to_string(),
        policy: spec.policy.as_str().to_string(),
        target_bps: spec.limits.target_bps,
        min_bps: spec.limits.min_bps,
        ceiling_bps: handle.ceiling_bps,
        plans: Vec::new(),
    };
    let msg = reply(ready, &prepared);
    let total: u64 = spec.files.iter().map(|f| f.size).sum();
    tracing::info!(
        session,
        peer = %ctx.peer,
        user = %ctx.user,
        files = spec.files.len(),
        bytes = total,
        "{} ({}): session {session}: {} {} files, {total} bytes, {} at {} bit/s ({})",
        ctx.peer,
        ctx.user,
        match spec.role {
            Role::Receiver => "upload of",
            Role::Sender => "download of",
        },
        spec.files.len(),
        spec.root.display(),
        spec.limits.target_bps,
        spec.policy,
    );
    let logged = Start {
        session,
        peer: ctx.peer.to_string(),
        user: ctx.user.clone(),
        direction: match spec.role {
            Role::Receiver => "upload",
            Role::Sender => "download",
        },
        files: spec.files.len(),
        bytes: total,
        target_bps: spec.limits.target_bps,
        policy: spec.policy.to_string(),
    };
    (msg, Some((session, handle, logged)))
}

fn fresh_session() -> Result<(u32, [u8; 32]), ErrorMsg> {
    let rng_failed = || ErrorMsg::new(ErrorCode::Internal, "the system random generator failed");
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| rng_failed())?;
    loop {
        let mut id = [0u8; 4];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| rng_failed())?;
        let id = u32::from_be_bytes(id);
        if id != 0 {
            return Ok((id, secret));
        }
    }
}

/// Cipher, policy, limits and block size from a request and the server's config.
fn negotiate(
    config: &FerrydConfig,
    p: &TransferParams,
) -> Result<(Cipher, Policy, RateLimits, u32), ErrorMsg> {
    let cipher = if p.cipher.is_empty() {
        Cipher::Aes128Gcm
    } else {
        p.cipher.parse().map_err(|_| {
            ErrorMsg::new(
                ErrorCode::BadRequest,
                format!("unknown cipher {:?} (aes128, aes256, none)", p.cipher),
            )
        })?
    };
    let policy = if p.policy.is_empty() {
        config
            .policy_value()
            .map_err(|e| ErrorMsg::new(ErrorCode::Internal, e))?
    } else {
        p.policy.parse().map_err(|_| {
            ErrorMsg::new(
                ErrorCode::BadRequest,
                format!("unknown policy {:?} (fixed, high, fair, low)", p.policy),
            )
        })?
    };
    let target = match p.target_bps {
        0 => config.default_target_rate,
        t => t,
    }
    .min(config.max_target_rate);
    let min = match p.min_bps {
        0 => config.min_rate,
        m => m,
    };
    let block = match p.block_size {
        0 => config.block_size,
        b => b,
    }
    .clamp(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
    Ok((cipher, policy, RateLimits::new(target, min), block))
}

/// Whether the session waits for the client's TCP fallback when UDP stays silent.
fn fallback_of(p: &TransferParams) -> Fallback {
    if p.fallback {
        Fallback::Accept
    } else {
        Fallback::Off
    }
}

/// The end-to-end checksum a request asks for.
fn checksum_of(p: &TransferParams) -> Result<Algorithm, ErrorMsg> {
    p.checksum
        .parse()
        .map_err(|e: String| ErrorMsg::new(ErrorCode::BadRequest, e))
}

/// The resume level and overwrite policy a request asks for.
fn resume_policy(p: &TransferParams) -> Result<ResumePolicy, ErrorMsg> {
    if p.resume_level > 3 {
        return Err(ErrorMsg::new(
            ErrorCode::BadRequest,
            format!("resume level {} is not 0, 1, 2 or 3", p.resume_level),
        ));
    }
    let overwrite: Overwrite = p
        .overwrite
        .parse()
        .map_err(|e: String| ErrorMsg::new(ErrorCode::BadRequest, e))?;
    Ok(ResumePolicy {
        level: p.resume_level,
        overwrite,
    })
}

/// Takes the upload's destination files over from any older session still holding them
/// (a client that was killed and now resumes), then decides for each file whether it is
/// sent, resumed or skipped.
fn claim_and_plan<S: SessionStarter>(
    shared: &Shared<S>,
    session: u32,
    targets: &[PathBuf],
    req: &UploadRequest,
    block_size: u32,
    policy: ResumePolicy,
) -> Result<Vec<FilePlan>, ErrorMsg> {
    // A piece of a split file is claimed alone: the other pieces belong to other sessions.
    let claimed: Vec<PathBuf> = targets
        .iter()
        .zip(&req.files)
        .map(|(path, f)| match f.part {
            Some(_) => crate::split::checkpoint_path_for(path, f),
            None => path.clone(),
        })
        .collect();
    shared
        .claims
        .claim(session, &claimed, CLAIM_WAIT, |old| {
            eprintln!("ferryd: session {session} takes over the files of session {old}");
            shared.starter.abandon(old);
        })
        .map_err(|busy| {
            ErrorMsg::new(
                ErrorCode::FileBusy,
                format!(
                    "{} file(s) are still being received by another session, e.g. {}",
                    busy.len(),
                    busy[0].display()
                ),
            )
        })?;
    // Listed only now: a session taken over has finished and checkpointed what it held.
    let mut seen = Listings::new();
    targets
        .iter()
        .zip(&req.files)
        .enumerate()
        .map(|(i, (path, f))| {
            let sums = req.sums.get(i);
            let plan = match f.part {
                Some(_) => crate::split::plan_piece(path, f, block_size, policy, &mut seen),
                None => crate::resume::plan_file(path, f, block_size, policy, sums, &mut seen),
            };
            plan.map_err(|e| {
                ErrorMsg::new(
                    ErrorCode::from_io(&e),
                    format!("cannot prepare {}: {e}", f.path),
                )
            })
        })
        .collect()
}

fn path_error(e: PathError) -> ErrorMsg {
    ErrorMsg::new(e.code(), e.to_string())
}

fn io_error(what: &str, shown: &str, e: &io::Error) -> ErrorMsg {
    ErrorMsg::new(ErrorCode::from_io(e), format!("{what} {shown}: {e}"))
}

fn open_docroot(config: &FerrydConfig, user: &str) -> Result<Docroot, ErrorMsg> {
    Docroot::open(config.docroot_of(user)).map_err(|e| {
        // The client cannot fix a server's missing docroot: say so plainly.
        ErrorMsg::new(
            if e.code() == ErrorCode::DestinationMissing {
                ErrorCode::Io
            } else {
                e.code()
            },
            format!("user {user}: {e}"),
        )
    })
}

fn prepare_upload<S: SessionStarter>(
    shared: &Shared<S>,
    user: &str,
    session: u32,
    req: UploadRequest,
) -> Result<Prepared, ErrorMsg> {
    let config = &shared.config;
    let (cipher, policy, limits, block_size) = negotiate(config, &req.params)?;
    let resume = resume_policy(&req.params)?;
    let root = open_docroot(config, user)?;
    let dest = root.confine(&req.dest).map_err(path_error)?;
    let shown = root.display(&dest);
    match fs::metadata(&dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ErrorMsg::new(
                ErrorCode::DestinationMissing,
                format!("the destination {shown} is not a directory"),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ErrorMsg::new(
                ErrorCode::DestinationMissing,
                format!("the destination directory {shown} does not exist"),
            ));
        }
        Err(e) => return Err(io_error("cannot use the destination", &shown, &e)),
    }

    // Each directory is listed once: new files cost no lookups of their own. (Planning,
    // after the files are claimed, lists afresh.)
    let mut seen = Listings::new();
    let mut entries = EntryConfiner::new(&root, &req.dest);
    let mut made: HashSet<PathBuf> = HashSet::new();
    made.insert(dest.clone());
    let mut make_dir = |path: &Path, seen: &mut Listings| -> Result<(), ErrorMsg> {
        if made.contains(path) {
            return Ok(());
        }
        fs::create_dir_all(path)
            .map_err(|e| io_error("cannot create the directory", &root.display(path), &e))?;
        seen.created(path);
        made.insert(path.to_path_buf());
        Ok(())
    };
    for d in &req.dirs {
        let path = entries.confine(d, &mut seen).map_err(path_error)?;
        make_dir(&path, &mut seen)?;
    }
    let mut unique = HashSet::new();
    let mut targets = Vec::with_capacity(req.files.len());
    for f in &req.files {
        let path = entries.confine(&f.path, &mut seen).map_err(path_error)?;
        if !f.part_is_valid() {
            return Err(ErrorMsg::new(
                ErrorCode::BadRequest,
                format!("{:?}: the piece lies outside the file", f.path),
            ));
        }
        if !unique.insert(f.path.as_str()) {
            return Err(ErrorMsg::new(
                ErrorCode::BadRequest,
                format!("{:?} is listed twice", f.path),
            ));
        }
        if seen.may_exist(&path) && path.is_dir() {
            return Err(ErrorMsg::new(
                ErrorCode::Io,
                format!("{} is a directory on the server", root.display(&path)),
            ));
        }
        if let Some(parent) = path.parent() {
            make_dir(parent, &mut seen)?;
        }
        targets.push(path);
    }
    let plans = claim_and_plan(shared, session, &targets, &req, block_size, resume)
        .inspect_err(|_| shared.claims.release(session))?;
    for ((path, f), plan) in targets.iter().zip(&req.files).zip(&plans) {
        if plan.action == crate::resume::FileAction::Skip {
            continue;
        }
        crate::resume::preallocate_partial(path, f).map_err(|e| {
            shared.claims.release(session);
            io_error("cannot make room for", &f.path, &e)
        })?;
    }
    Ok(Prepared {
        spec: SessionSpec {
            role: Role::Receiver,
            session: 0,
            secret: [0; 32],
            cipher,
            direction: Direction::ClientToServer,
            block_size,
            policy,
            limits,
            root: dest,
            files: req.files,
            peer: None,
            no_fsync: req.params.no_fsync,
            initial_rtt: rtt_hint(&req.params),
            user: String::new(),
            ceiling_bps: None,
            plans,
            transfer: req.transfer.filter(|t| is_transfer_tag(t)),
            checksum: checksum_of(&req.params)?,
            fallback: fallback_of(&req.params),
        },
        dirs: req.dirs,
        skipped: Vec::new(),
        sums: Vec::new(),
    })
}

fn prepare_download(
    config: &FerrydConfig,
    user: &str,
    req: DownloadRequest,
) -> Result<Prepared, ErrorMsg> {
    let (cipher, policy, limits, block_size) = negotiate(config, &req.params)?;
    let root = open_docroot(config, user)?;
    if req.sources.is_empty() {
        return Err(ErrorMsg::new(ErrorCode::BadRequest, "no source named"));
    }
    let mut walk = Walk {
        root: &root,
        files: Vec::new(),
        dirs: Vec::new(),
        skipped: Vec::new(),
        seen: BTreeSet::new(),
    };
    let mut base: Option<PathBuf> = None;
    for src in &req.sources {
        // The source's own name is kept (a link is sent under its name, not its target's).
        let trimmed = src.trim_end_matches('/');
        let (parent, name) = match trimmed.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", trimmed),
        };
        let parent_abs = root.confine(parent).map_err(path_error)?;
        let whole_docroot = matches!(name, "" | ".");
        let (this_base, abs) = if whole_docroot {
            (parent_abs.clone(), parent_abs)
        } else {
            let abs = root.confine(trimmed).map_err(path_error)?;
            (parent_abs, abs)
        };
        match &base {
            None => base = Some(this_base.clone()),
            Some(b) if *b == this_base => {}
            Some(_) => {
                return Err(ErrorMsg::new(
                    ErrorCode::BadRequest,
                    "all sources of one download must be in the same directory",
                ));
            }
        }
        let meta = fs::metadata(&abs).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ErrorMsg::new(ErrorCode::SourceMissing, format!("{src} does not exist"))
            } else {
                io_error("cannot read", src, &e)
            }
        })?;
        if whole_docroot {
            walk.dir(&abs, "")?;
        } else if meta.is_dir() {
            walk.dir_entry(&abs, name)?;
        } else if meta.is_file() {
            walk.file(name, &meta);
        } else {
            return Err(ErrorMsg::new(
                ErrorCode::BadRequest,
                format!("{src} is neither a file nor a directory"),
            ));
        }
    }
    let root_dir = base.unwrap_or_else(|| root.path().to_path_buf());
    let level = if req.negotiate && !req.list_only {
        resume_policy(&req.params)?.level
    } else {
        0
    };
    let files = select(walk.files, &req.select)?;
    let sums = source_sums(&root_dir, &files, level)?;
    Ok(Prepared {
        spec: SessionSpec {
            role: Role::Sender,
            session: 0,
            secret: [0; 32],
            cipher,
            direction: Direction::ServerToClient,
            block_size,
            policy,
            limits,
            root: root_dir,
            files,
            peer: None,
            no_fsync: false,
            initial_rtt: rtt_hint(&req.params),
            user: String::new(),
            ceiling_bps: None,
            plans: Vec::new(),
            transfer: req.transfer.filter(|t| is_transfer_tag(t)),
            checksum: checksum_of(&req.params)?,
            fallback: fallback_of(&req.params),
        },
        dirs: walk.dirs,
        skipped: walk.skipped,
        sums,
    })
}

/// The pieces of `listed` a session of a multi-session download asks for (all of them
/// when `selection` is empty): a piece that is a whole file is that file, any other a
/// [`Part`](crate::data::Part) of it.
fn select(listed: Vec<FileEntry>, selection: &[Selection]) -> Result<Vec<FileEntry>, ErrorMsg> {
    if selection.is_empty() {
        return Ok(listed);
    }
    let bad = |what: String| ErrorMsg::new(ErrorCode::BadRequest, what);
    let mut seen = HashSet::new();
    selection
        .iter()
        .map(|s| {
            let f = listed
                .get(s.file as usize)
                .ok_or_else(|| bad(format!("no file {} in the listing", s.file)))?;
            if s.offset.checked_add(s.len).is_none_or(|end| end > f.size) {
                return Err(bad(format!(
                    "{:?}: the piece lies outside the file",
                    f.path
                )));
            }
            if !seen.insert(s.file) {
                return Err(bad(format!("{:?} is selected twice", f.path)));
            }
            let whole = s.offset == 0 && s.len == f.size;
            Ok(FileEntry {
                size: s.len,
                part: (!whole).then_some(crate::data::Part {
                    offset: s.offset,
                    whole_size: f.size,
                }),
                ..f.clone()
            })
        })
        .collect()
}

/// The checksums of each file below `root` for resume level `level` (none below 2).
fn source_sums(root: &Path, files: &[FileEntry], level: u8) -> Result<Vec<FileSums>, ErrorMsg> {
    if level < 2 {
        return Ok(Vec::new());
    }
    files
        .iter()
        .map(|f| {
            if f.part.is_some() {
                // The sums cover whole files; a piece resumes by its checkpoints alone.
                return Ok(FileSums::default());
            }
            FileSums::compute(&root.join(&f.path), f.size, level)
                .map_err(|e| io_error("cannot read", &f.path, &e))
        })
        .collect()
}

/// A sorted, depth-first walk of download sources.
struct Walk<'a> {
    root: &'a Docroot,
    files: Vec<FileEntry>,
    dirs: Vec<String>,
    skipped: Vec<String>,
    seen: BTreeSet<String>,
}

impl Walk<'_> {
    fn file(&mut self, rel: &str, meta: &fs::Metadata) {
        if !self.seen.insert(rel.to_string()) {
            return;
        }
        self.files.push(FileEntry {
            path: rel.to_string(),
            size: meta.len(),
            mtime: crate::data::mtime_of(meta),
            mode: meta.mode() & 0o7777,
            part: None,
        });
    }

    fn dir_entry(&mut self, abs: &Path, rel: &str) -> Result<(), ErrorMsg> {
        if !self.seen.insert(format!("{rel}/")) {
            return Ok(());
        }
        self.dirs.push(rel.to_string());
        self.dir(abs, rel)
    }

    fn dir(&mut self, abs: &Path, rel: &str) -> Result<(), ErrorMsg> {
        let shown = self.root.display(abs);
        let mut entries = Vec::new();
        for e in fs::read_dir(abs).map_err(|e| io_error("cannot list", &shown, &e))? {
            let e = e.map_err(|e| io_error("cannot list", &shown, &e))?;
            entries.push(e.file_name());
        }
        entries.sort();
        for name in entries {
            let child = abs.join(&name);
            let Some(name) = name.to_str() else {
                return Err(ErrorMsg::new(
                    ErrorCode::InvalidPath,
                    format!("{:?} in {shown} is not valid UTF-8", name.to_string_lossy()),
                ));
            };
            let child_rel = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            validate_relative(&child_rel).map_err(path_error)?;
            let lmeta = fs::symlink_metadata(&child)
                .map_err(|e| io_error("cannot read", &self.root.display(&child), &e))?;
            let meta = if lmeta.file_type().is_symlink() {
                // Served only when it leads to a file inside the docroot; linked directories
                // are skipped (no loops, no second copies).
                let inside = child
                    .canonicalize()
                    .is_ok_and(|t| t.starts_with(self.root.path()));
                match fs::metadata(&child) {
                    Ok(m) if inside && m.is_file() => m,
                    _ => {
                        self.skipped.push(format!(
                            "{child_rel}: a symbolic link that does not lead to a file inside \
                             the docroot"
                        ));
                        continue;
                    }
                }
            } else {
                lmeta
            };
            if meta.is_dir() {
                self.dir_entry(&child, &child_rel)?;
            } else if meta.is_file() {
                self.file(&child_rel, &meta);
            } else {
                self.skipped
                    .push(format!("{child_rel}: not a regular file or directory"));
            }
        }
        Ok(())
    }
}

/// The client's estimate of the round trip (from its SSH handshake), within sane bounds, or
/// 50 ms: the receiver re-requests a lost block after twice this until it has measured one.
fn rtt_hint(params: &crate::control::TransferParams) -> std::time::Duration {
    match params.rtt_hint_us {
        0 => std::time::Duration::from_millis(50),
        us => std::time::Duration::from_micros(us.clamp(200, 2_000_000)),
    }
}

/// The message that relays an operator's change to the client's sender (`None`: not an
/// operator's change).
fn steer_of(op: SessionOp) -> Option<crate::control::messages::Steer> {
    use crate::control::messages::Steer;
    Some(match op {
        SessionOp::SetRate {
            target_bps,
            min_bps,
            policy,
        } => Steer::SetRate {
            target_bps,
            min_bps,
            policy: policy.map(|p| p.to_string()),
        },
        SessionOp::Pause => Steer::Pause,
        SessionOp::Resume => Steer::Resume,
        SessionOp::Cancel | SessionOp::Abandon => Steer::Cancel,
        SessionOp::Ceiling(bps) => Steer::Ceiling { bps },
        SessionOp::Digest { .. } | SessionOp::UdpSilent => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> FerrydConfig {
        let mut c = FerrydConfig::parse("", dir).unwrap();
        c.max_target_rate = 1_000_000_000;
        c
    }

    #[test]
    fn negotiation_applies_defaults_and_clamps() {
        let c = config(Path::new("/d"));
        let (cipher, policy, limits, block) = negotiate(&c, &TransferParams::default()).unwrap();
        assert_eq!(cipher, Cipher::Aes128Gcm);
        assert_eq!(policy, Policy::Fair);
        assert_eq!(limits.target_bps, 1_000_000_000); // the default, clamped to max 1g
        assert_eq!(block, 8192);
        let p = TransferParams {
            cipher: "none".into(),
            policy: "fixed".into(),
            target_bps: 200_000_000,
            min_bps: 500_000_000,
            block_size: 1_000_000,
            rtt_hint_us: 0,
            ..Default::default()
        };
        let (cipher, policy, limits, block) = negotiate(&c, &p).unwrap();
        assert_eq!(cipher, Cipher::None);
        assert_eq!(policy, Policy::Fixed);
        assert_eq!(limits.target_bps, 200_000_000);
        assert_eq!(limits.min_bps, 200_000_000);
        assert_eq!(block, MAX_BLOCK_SIZE);
        let bad = TransferParams {
            cipher: "rot13".into(),
            ..Default::default()
        };
        assert_eq!(
            negotiate(&c, &bad).unwrap_err().code,
            ErrorCode::BadRequest.code()
        );
    }

    #[test]
    fn commands() {
        assert!(is_ferry_command(b"ferry"));
        assert!(is_ferry_command(b" ferry --server\n"));
        assert!(!is_ferry_command(b"ferryx"));
        assert!(!is_ferry_command(b"rm -rf /"));
    }
}
