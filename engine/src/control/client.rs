//! The `ferry` client's side of the control channel, with a blocking API.
//!
//! [`Control`] owns a one-worker tokio runtime: the SSH session keeps running on that thread
//! (answering keepalives) while the caller's thread drives the data plane.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};

use super::known_hosts::{self, HostKeyStatus};
use super::messages::{
    ClientMsg, Done, DownloadRequest, FileDigest, FilePlan, LineBuffer, Manifest, Offer,
    PROTOCOL_VERSION, Plans, ProbeReady, ProbeRequest, ProbeResult, Ready, ServerMsg, Steer,
    TunnelRequest, UploadRequest, encode_line,
};
use super::{ControlError, ErrorCode, SUBSYSTEM};

/// How to reach and trust a ferryd.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Host name or address.
    pub host: String,
    /// TCP (SSH) port.
    pub port: u16,
    /// The ferry user to log in as.
    pub user: String,
    /// Private key file; `None` tries `~/.ssh/id_ed25519`, then ssh-agent.
    pub identity: Option<PathBuf>,
    /// The known_hosts file.
    pub known_hosts: PathBuf,
    /// Trust and record a host key seen for the first time.
    pub accept_new: bool,
    /// Limit for the TCP connection and, again, for the SSH handshake.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Options with the defaults: port 33001, default key and known_hosts, 15 s timeout.
    pub fn new(host: impl Into<String>, user: impl Into<String>) -> ClientOptions {
        ClientOptions {
            host: host.into(),
            port: crate::config::DEFAULT_PORT,
            user: user.into(),
            identity: None,
            known_hosts: default_known_hosts(),
            accept_new: false,
            connect_timeout: Duration::from_secs(15),
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `~/.ssh/known_hosts`.
pub fn default_known_hosts() -> PathBuf {
    home().join(".ssh").join("known_hosts")
}

/// `~/.ssh/id_ed25519`.
pub fn default_identity() -> PathBuf {
    home().join(".ssh").join("id_ed25519")
}

/// The local login name (`$USER`), the user when none is given.
pub fn default_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "ferry".to_string())
}

/// What the server relays while a transfer runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Live {
    /// An operator's change for this client's sender.
    Steer(Steer),
    /// The server's sender has hashed a whole file: this client's receiver checks it.
    Digest(FileDigest),
}

/// An open control channel to ferryd.
pub struct Control {
    rt: tokio::runtime::Runtime,
    inner: Inner,
    user: String,
    host_fingerprint: String,
    notes: Vec<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("user", &self.user)
            .field("host_fingerprint", &self.host_fingerprint)
            .finish_non_exhaustive()
    }
}

struct Inner {
    session: client::Handle<ClientHandler>,
    channel: Channel<client::Msg>,
    lines: LineBuffer,
    /// Messages read while looking for steering, kept for the next reply.
    pending: std::collections::VecDeque<ServerMsg>,
    /// The channel closed or broke before the server's `Done`.
    lost: bool,
    /// Shared with the SSH handler, which records why the connection ended.
    verdict: Arc<Mutex<Verdict>>,
}

impl Control {
    /// Connects, checks the host key, logs in and opens the `ferry` channel.
    pub fn connect(opts: &ClientOptions) -> Result<Control, ControlError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-control")
            .enable_all()
            .build()
            .map_err(|e| {
                (
                    ErrorCode::Internal,
                    format!("cannot start the runtime: {e}"),
                )
            })?;
        let (inner, user, host_fingerprint, notes) = rt.block_on(connect(opts))?;
        Ok(Control {
            rt,
            inner,
            user,
            host_fingerprint,
            notes,
        })
    }

    /// The ferry user the server logged us in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The server's host key fingerprint (`SHA256:...`).
    pub fn host_fingerprint(&self) -> &str {
        &self.host_fingerprint
    }

    /// Things worth telling the person, such as a host key just recorded.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Asks to upload; the answer says where to send and with which secret.
    pub fn upload(&mut self, req: UploadRequest) -> Result<Ready, ControlError> {
        let inner = &mut self.inner;
        self.rt.block_on(async {
            inner.send(&ClientMsg::Upload(req)).await?;
            match inner.next_reply().await? {
                ServerMsg::Ready(r) => Ok(r),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// The files a download of `req.sources` would send, without starting it.
    pub fn list(&mut self, mut req: DownloadRequest) -> Result<Offer, ControlError> {
        req.list_only = true;
        let inner = &mut self.inner;
        self.rt.block_on(async {
            inner.send(&ClientMsg::Download(req)).await?;
            match inner.next_reply().await? {
                ServerMsg::Offer(o) => Ok(o),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// Asks to download; the answer lists the files and the session.
    pub fn download(&mut self, req: DownloadRequest) -> Result<Manifest, ControlError> {
        let inner = &mut self.inner;
        self.rt.block_on(async {
            inner.send(&ClientMsg::Download(req)).await?;
            match inner.next_reply().await? {
                ServerMsg::Manifest(m) => Ok(m),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// Asks to download, deciding what to do with each file before the session starts:
    /// `decide` sees the offered files and returns one plan per file (resume, skip or
    /// send), which the server's sender honours. Returns the manifest and those plans.
    pub fn download_negotiated(
        &mut self,
        mut req: DownloadRequest,
        decide: impl FnOnce(&Offer) -> Result<Vec<FilePlan>, ControlError>,
    ) -> Result<(Manifest, Vec<FilePlan>), ControlError> {
        req.negotiate = true;
        let inner = &mut self.inner;
        self.rt.block_on(async {
            inner.send(&ClientMsg::Download(req)).await?;
            let offer = match inner.next_reply().await? {
                ServerMsg::Offer(o) => o,
                other => return Err(unexpected(&other)),
            };
            let plans = decide(&offer)?;
            let msg = ClientMsg::Plans(Plans {
                files: plans.clone(),
            });
            inner.send(&msg).await?;
            match inner.next_reply().await? {
                ServerMsg::Manifest(m) => Ok((m, plans)),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// `ferry doctor`'s UDP probe: asks the server to probe, calls `on_ready` (which starts
    /// the client's side of the probing and returns) once the server listens, and returns
    /// what the server saw.
    pub fn probe(
        &mut self,
        req: ProbeRequest,
        on_ready: impl FnOnce(&ProbeReady),
    ) -> Result<(ProbeReady, ProbeResult), ControlError> {
        let inner = &mut self.inner;
        self.rt.block_on(async {
            inner.send(&ClientMsg::Probe(req)).await?;
            let ready = match inner.next_reply().await? {
                ServerMsg::ProbeReady(r) => r,
                other => return Err(unexpected(&other)),
            };
            on_ready(&ready);
            match inner.next_reply().await? {
                ServerMsg::ProbeResult(r) => Ok((ready, r)),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// Whether the control channel has been lost: closed or broken before the server's
    /// [`Done`] arrived. [`poll_steer`](Self::poll_steer) notices it.
    pub fn is_lost(&self) -> bool {
        self.inner.lost
    }

    /// Whether the connection ended because the server stopped answering (SSH keepalives
    /// timed out) rather than because it was closed: the network, not ferryd, went away.
    pub fn timed_out(&self) -> bool {
        self.inner.verdict.lock().unwrap().timed_out
    }

    /// Sends the checksum of a file this client's sender has read whole (upload).
    pub fn send_digest(&mut self, digest: FileDigest) -> Result<(), ControlError> {
        let inner = &mut self.inner;
        self.rt
            .block_on(async { inner.send(&ClientMsg::Digest(digest)).await })
    }

    /// Waits up to `wait` for a live change the server relays from its operator
    /// (`ferryctl set-rate` on an upload, whose sender is this client) or for a file's
    /// checksum from the server's sender (download). Other messages are kept for
    /// [`wait_done`](Self::wait_done).
    pub fn poll_live(&mut self, wait: Duration) -> Option<Live> {
        let inner = &mut self.inner;
        if let Some(i) = inner
            .pending
            .iter()
            .position(|m| matches!(m, ServerMsg::Steer(_) | ServerMsg::Digest(_)))
        {
            match inner.pending.remove(i) {
                Some(ServerMsg::Steer(s)) => return Some(Live::Steer(s)),
                Some(ServerMsg::Digest(d)) => return Some(Live::Digest(d)),
                _ => {}
            }
        }
        if inner.lost {
            std::thread::sleep(wait);
            return None;
        }
        let msg = match self
            .rt
            .block_on(async { tokio::time::timeout(wait, inner.read_msg()).await })
            .ok()?
        {
            Ok(m) => m,
            Err(_) => {
                // Closed or broken; a Done already read means the server finished first.
                inner.lost = !inner
                    .pending
                    .iter()
                    .any(|m| matches!(m, ServerMsg::Done(_)));
                return None;
            }
        };
        match msg {
            ServerMsg::Steer(s) => Some(Live::Steer(s)),
            ServerMsg::Digest(d) => Some(Live::Digest(d)),
            other => {
                inner.pending.push_back(other);
                None
            }
        }
    }

    /// Waits for the server's end of the transfer (`None`: as long as the connection lives).
    pub fn wait_done(&mut self, timeout: Option<Duration>) -> Result<Done, ControlError> {
        let inner = &mut self.inner;
        self.rt.block_on(async {
            let wait = async {
                loop {
                    match inner.next_reply().await? {
                        ServerMsg::Done(d) => return Ok(d),
                        // A change relayed after our session ended: nothing to apply.
                        ServerMsg::Steer(_) | ServerMsg::Digest(_) => {}
                        other => return Err(unexpected(&other)),
                    }
                }
            };
            match timeout {
                None => wait.await,
                Some(t) => tokio::time::timeout(t, wait).await.unwrap_or_else(|_| {
                    Err((
                        ErrorCode::PeerAborted,
                        format!("ferryd sent no result within {} s", t.as_secs()),
                    ))
                }),
            }
        })
    }

    /// Opens the TCP fallback for `session` (started on this connection): a second
    /// channel of this SSH connection that carries the session's datagrams, moved by a
    /// task on this connection's runtime. Returns the data thread's end of the socket
    /// pair, for [`crate::data::DataPlane::tunnel`].
    pub fn open_tunnel(&mut self, session: u32) -> Result<OwnedFd, ControlError> {
        let (ours, theirs) = crate::tunnel::pair().map_err(|e| {
            (
                ErrorCode::Internal,
                format!("cannot make a socket pair for the TCP fallback: {e}"),
            )
        })?;
        let handle = &self.inner.session;
        let opened = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), open_tunnel(handle, session)).await
        });
        let (channel, early) = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err((
                    ErrorCode::PeerAborted,
                    "ferryd did not open the TCP fallback within 10 s".into(),
                ));
            }
        };
        self.rt.spawn(async move {
            if let Err(e) = crate::tunnel::pump(channel, theirs, early).await {
                tracing::debug!("TCP fallback of session {session} ended: {e}");
            }
        });
        Ok(ours)
    }

    /// Closes the channel and the connection politely.
    pub fn close(self) {
        let Control { rt, inner, .. } = self;
        rt.block_on(async {
            let _ = inner.channel.eof().await;
            let _ = inner
                .session
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

fn unexpected(msg: &ServerMsg) -> ControlError {
    let kind = match msg {
        ServerMsg::Hello { .. } => "hello",
        ServerMsg::Ready(_) => "ready",
        ServerMsg::Manifest(_) => "manifest",
        ServerMsg::Offer(_) => "offer",
        ServerMsg::Done(_) => "done",
        ServerMsg::Steer(_) => "steer",
        ServerMsg::Digest(_) => "digest",
        ServerMsg::Error(_) => "error",
        ServerMsg::ProbeReady(_) => "probe_ready",
        ServerMsg::ProbeResult(_) => "probe_result",
        ServerMsg::Tunnel(_) => "tunnel",
    };
    (
        ErrorCode::Protocol,
        format!("ferryd sent an unexpected {kind} message"),
    )
}

impl Inner {
    async fn send(&mut self, msg: &ClientMsg) -> Result<(), ControlError> {
        self.channel
            .data_bytes(encode_line(msg))
            .await
            .map_err(|e| lost(&e.to_string()))
    }

    /// The next message; a server [`ServerMsg::Error`] becomes an `Err`.
    async fn next_reply(&mut self) -> Result<ServerMsg, ControlError> {
        let msg = match self.pending.pop_front() {
            Some(m) => m,
            None => self.next_msg().await?,
        };
        match msg {
            ServerMsg::Error(e) => Err(e.to_error()),
            m => Ok(m),
        }
    }

    /// The next message, steering included.
    async fn read_msg(&mut self) -> Result<ServerMsg, ControlError> {
        self.next_msg().await
    }

    async fn next_msg(&mut self) -> Result<ServerMsg, ControlError> {
        loop {
            if let Some(line) = self.lines.next_line() {
                return serde_json::from_slice(&line).map_err(|e| {
                    (
                        ErrorCode::Protocol,
                        format!("malformed message from ferryd: {e}"),
                    )
                });
            }
            match self.channel.wait().await {
                Some(ChannelMsg::Data { data }) => self
                    .lines
                    .push(&data)
                    .map_err(|e| (ErrorCode::Protocol, e))?,
                Some(ChannelMsg::Failure) => {
                    return Err((
                        ErrorCode::Protocol,
                        "the server refused the ferry subsystem: is it ferryd?".into(),
                    ));
                }
                Some(ChannelMsg::Close) | None => {
                    return Err(lost("ferryd closed the control channel"));
                }
                Some(_) => {}
            }
        }
    }
}

/// A fallback channel for `session`, accepted: the channel and the stream bytes that came
/// behind the server's answer.
async fn open_tunnel(
    session: &client::Handle<ClientHandler>,
    id: u32,
) -> Result<(Channel<client::Msg>, Vec<u8>), ControlError> {
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(|e| lost(&e.to_string()))?;
    channel
        .request_subsystem(true, SUBSYSTEM)
        .await
        .map_err(|e| lost(&e.to_string()))?;
    let mut hello = encode_line(&ClientMsg::Hello {
        version: PROTOCOL_VERSION,
    });
    hello.extend(encode_line(&ClientMsg::Tunnel(TunnelRequest {
        session: id,
    })));
    channel
        .data_bytes(hello)
        .await
        .map_err(|e| lost(&e.to_string()))?;
    let mut lines = LineBuffer::default();
    loop {
        while let Some(line) = lines.next_line() {
            let msg: ServerMsg = serde_json::from_slice(&line).map_err(|e| {
                (
                    ErrorCode::Protocol,
                    format!("malformed message from ferryd: {e}"),
                )
            })?;
            match msg {
                ServerMsg::Hello { .. } => {}
                ServerMsg::Tunnel(t) if t.session == id => return Ok((channel, lines.take_rest())),
                ServerMsg::Error(e) => return Err(e.to_error()),
                other => return Err(unexpected(&other)),
            }
        }
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => {
                lines.push(&data).map_err(|e| (ErrorCode::Protocol, e))?
            }
            Some(ChannelMsg::Failure) => {
                return Err((
                    ErrorCode::Protocol,
                    "ferryd refused the TCP fallback channel".into(),
                ));
            }
            Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                return Err(lost("ferryd closed the TCP fallback channel"));
            }
            Some(_) => {}
        }
    }
}

fn lost(detail: &str) -> ControlError {
    (
        ErrorCode::PeerAborted,
        format!("the control connection was lost: {detail}"),
    )
}

type Connected = (Inner, String, String, Vec<String>);

async fn connect(opts: &ClientOptions) -> Result<Connected, ControlError> {
    let target = format!("{}:{}", opts.host, opts.port);
    let secs = opts.connect_timeout.as_secs_f64();
    let tcp = match tokio::time::timeout(
        opts.connect_timeout,
        tokio::net::TcpStream::connect((opts.host.as_str(), opts.port)),
    )
    .await
    {
        Err(_) => {
            return Err((
                ErrorCode::TcpConnect,
                format!("connecting to {target} timed out after {secs:.0} s"),
            ));
        }
        Ok(Err(e)) => return Err(connect_error(&target, &e)),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);

    let verdict = Arc::new(Mutex::new(Verdict::default()));
    let handler = ClientHandler {
        host: opts.host.clone(),
        port: opts.port,
        known_hosts: opts.known_hosts.clone(),
        accept_new: opts.accept_new,
        verdict: verdict.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let handshake = tokio::time::timeout(
        opts.connect_timeout,
        client::connect_stream(config, tcp, handler),
    )
    .await;
    let taken = std::mem::take(&mut *verdict.lock().unwrap());
    if let Some(err) = taken.error {
        return Err(err);
    }
    let mut session = match handshake {
        Err(_) => {
            return Err((
                ErrorCode::TcpConnect,
                format!("the SSH handshake with {target} timed out after {secs:.0} s"),
            ));
        }
        Ok(Err(e)) => {
            return Err((
                ErrorCode::TcpConnect,
                format!("the SSH handshake with {target} failed ({e}): is ferryd listening there?"),
            ));
        }
        Ok(Ok(s)) => s,
    };

    authenticate(&mut session, opts).await?;

    let channel = session
        .channel_open_session()
        .await
        .map_err(|e| lost(&e.to_string()))?;
    channel
        .request_subsystem(true, SUBSYSTEM)
        .await
        .map_err(|e| lost(&e.to_string()))?;
    let mut inner = Inner {
        session,
        channel,
        lines: LineBuffer::default(),
        pending: Default::default(),
        lost: false,
        verdict,
    };
    inner
        .send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
    let user = match inner.next_reply().await? {
        ServerMsg::Hello { version, user } if version == PROTOCOL_VERSION => user,
        ServerMsg::Hello { version, .. } => {
            return Err((
                ErrorCode::Protocol,
                format!(
                    "ferryd speaks control protocol {version}, this ferry speaks \
                     {PROTOCOL_VERSION}"
                ),
            ));
        }
        other => return Err(unexpected(&other)),
    };
    Ok((inner, user, taken.fingerprint, taken.notes))
}

fn connect_error(target: &str, e: &std::io::Error) -> ControlError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => (
            ErrorCode::TcpConnect,
            format!(
                "{target} refused the connection: ferryd is not running there or the port is closed"
            ),
        ),
        ErrorKind::TimedOut => (
            ErrorCode::TcpConnect,
            format!("connecting to {target} timed out"),
        ),
        _ => match ErrorCode::from_io(e) {
            ErrorCode::NetworkUnreachable => (
                ErrorCode::NetworkUnreachable,
                format!("{target} is unreachable: {e}"),
            ),
            _ => (
                ErrorCode::TcpConnect,
                format!("cannot connect to {target}: {e}"),
            ),
        },
    }
}

/// What the host key check decided, read after the handshake.
#[derive(Default)]
struct Verdict {
    error: Option<ControlError>,
    fingerprint: String,
    notes: Vec<String>,
    /// The connection ended because keepalives or the inactivity timeout expired.
    timed_out: bool,
}

struct ClientHandler {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    verdict: Arc<Mutex<Verdict>>,
}

impl ClientHandler {
    fn judge(&self, key: &PublicKey) -> Result<Option<String>, ControlError> {
        let name = known_hosts::host_pattern(&self.host, self.port);
        let fp = known_hosts::fingerprint(key);
        let kind = key.algorithm().as_str().to_string();
        let file = self.known_hosts.display();
        let status = known_hosts::check(&self.known_hosts, &self.host, self.port, key)
            .map_err(|e| (ErrorCode::Io, format!("cannot read {file}: {e}")))?;
        match status {
            HostKeyStatus::Known => Ok(None),
            HostKeyStatus::Unknown if self.accept_new => {
                known_hosts::append(&self.known_hosts, &self.host, self.port, key).map_err(
                    |e| {
                        (
                            ErrorCode::Io,
                            format!("cannot record the host key in {file}: {e}"),
                        )
                    },
                )?;
                Ok(Some(format!(
                    "recorded the host key of {name} ({kind} {fp}) in {file}"
                )))
            }
            HostKeyStatus::Unknown => Err((
                ErrorCode::HostKeyUnknown,
                format!(
                    "the host key of {name} ({kind} {fp}) is not in {file}; if the server's \
                     operator confirms this fingerprint, run again with --accept-new"
                ),
            )),
            HostKeyStatus::Changed { line, other_type } => Err((
                ErrorCode::HostKeyMismatch,
                format!(
                    "{name} offered the {kind} host key {fp}, but line {line} of {file} records \
                     {} for it: someone may be intercepting the connection, or the host key \
                     was replaced; the connection was refused",
                    match other_type {
                        Some(t) => format!("a {t} key"),
                        None => "another key".to_string(),
                    }
                ),
            )),
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => {
                if matches!(
                    e,
                    russh::Error::KeepaliveTimeout | russh::Error::InactivityTimeout
                ) {
                    self.verdict.lock().unwrap().timed_out = true;
                }
                Err(e)
            }
        }
    }

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            self.verdict.lock().unwrap().error = Some((
                ErrorCode::Protocol,
                "the server offered a host certificate; ferry expects a plain host key".into(),
            ));
            return Ok(false);
        };
        let judged = self.judge(key);
        let mut v = self.verdict.lock().unwrap();
        v.fingerprint = known_hosts::fingerprint(key);
        match judged {
            Ok(note) => {
                v.notes.extend(note);
                Ok(true)
            }
            Err(e) => {
                v.error = Some(e);
                Ok(false)
            }
        }
    }
}

fn load_key(path: &Path) -> Result<PrivateKey, ControlError> {
    let shown = path.display();
    russh::keys::load_secret_key(path, None).map_err(|e| match e {
        russh::keys::Error::IO(io) if io.kind() == std::io::ErrorKind::NotFound => (
            ErrorCode::Identity,
            format!("the key file {shown} does not exist"),
        ),
        russh::keys::Error::IO(io) => (
            ErrorCode::Identity,
            format!("cannot read the key file {shown}: {io}"),
        ),
        russh::keys::Error::KeyIsEncrypted => (
            ErrorCode::Identity,
            format!(
                "{shown} is protected by a passphrase: add it to ssh-agent (ssh-add {shown}) \
                 and run without -i"
            ),
        ),
        e => (
            ErrorCode::Identity,
            format!("{shown} is not a private key ferry can use: {e}"),
        ),
    })
}

async fn authenticate(
    session: &mut client::Handle<ClientHandler>,
    opts: &ClientOptions,
) -> Result<(), ControlError> {
    let user = opts.user.as_str();
    let target = format!("{}:{}", opts.host, opts.port);
    let rsa_hash = session
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let mut tried = Vec::new();

    let try_file = async |session: &mut client::Handle<ClientHandler>, key: PrivateKey| {
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        session
            .authenticate_publickey(user, key)
            .await
            .map(|r| r.success())
            .map_err(|e| lost(&e.to_string()))
    };

    if let Some(path) = &opts.identity {
        let key = load_key(path)?;
        let fp = known_hosts::fingerprint(key.public_key());
        if try_file(session, key).await? {
            return Ok(());
        }
        return Err((
            ErrorCode::Auth,
            format!(
                "ferryd at {target} did not accept the key {} ({fp}) for user {user}",
                path.display()
            ),
        ));
    }

    let default = default_identity();
    if default.exists() {
        match load_key(&default) {
            Ok(key) => {
                let fp = known_hosts::fingerprint(key.public_key());
                if try_file(session, key).await? {
                    return Ok(());
                }
                tried.push(format!("{} ({fp})", default.display()));
            }
            Err((_, why)) => tried.push(format!("not {why}")),
        }
    }

    match std::env::var_os("SSH_AUTH_SOCK") {
        Some(sock) => match AgentClient::connect_uds(&sock).await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                if ids.is_empty() {
                    tried.push("ssh-agent (it holds no keys)".into());
                }
                for id in ids {
                    let AgentIdentity::PublicKey { key, comment } = id else {
                        continue;
                    };
                    let fp = known_hosts::fingerprint(&key);
                    let hash = if key.algorithm().is_rsa() {
                        rsa_hash
                    } else {
                        None
                    };
                    match session
                        .authenticate_publickey_with(user, key, hash, &mut agent)
                        .await
                    {
                        Ok(AuthResult::Success) => return Ok(()),
                        Ok(_) => tried.push(format!("ssh-agent key {fp} ({comment})")),
                        Err(e) => tried.push(format!("ssh-agent key {fp} (signing failed: {e})")),
                    }
                }
            }
            Err(e) => tried.push(format!("not ssh-agent ({e})")),
        },
        None if tried.is_empty() => {
            return Err((
                ErrorCode::Identity,
                format!(
                    "no key to offer: {} does not exist and no ssh-agent runs (SSH_AUTH_SOCK \
                     is unset); name a key with -i",
                    default.display()
                ),
            ));
        }
        None => {}
    }
    Err((
        ErrorCode::Auth,
        format!(
            "ferryd at {target} accepted none of the keys offered for user {user}; tried: {}",
            tried.join(", ")
        ),
    ))
}
