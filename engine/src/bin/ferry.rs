//! `ferry`: send files to, or fetch them from, a ferryd.
//!
//! `ferry send [OPTIONS] SRC... [USER@]HOST:DEST` and
//! `ferry recv [OPTIONS] [USER@]HOST:SRC... DEST`, with the flags of `shared/CONTRACT.md`.
//! The control channel (SSH) agrees on the files, the session secret and the UDP port; the
//! data then moves through this process's own data plane.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ferry_engine::config::parse_rate;
use ferry_engine::control::client::{
    ClientOptions, Control, Live, default_known_hosts, default_user,
};
use ferry_engine::control::messages::{FileDigest, Offer, Selection, Steer};
use ferry_engine::control::{DownloadRequest, ErrorCode, TransferParams, UploadRequest};
use ferry_engine::data::{self, DataPlane, FileEntry, Role, SessionReport, SessionSpec};
use ferry_engine::integrity::{Algorithm, Digest};
use ferry_engine::listing::Listings;
use ferry_engine::paths::validate_relative;
use ferry_engine::resume::{self, FileAction, FilePlan, Overwrite, ResumePolicy};
use ferry_engine::retry::{self, Attempts, OnChange};
use ferry_engine::sums::FileSums;
use ferry_proto::crypto::{Cipher, Direction};
use ferry_tuning::{Policy, RateLimits};

#[derive(Parser)]
#[command(name = "ferry", version, about = "High-speed file transfer over UDP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send local files or directories to a ferryd: SRC... [USER@]HOST:DEST
    Send {
        #[command(flatten)]
        opts: Options,
        /// Local sources, then the remote destination directory.
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Fetch files or directories from a ferryd: [USER@]HOST:SRC... DEST
    Recv {
        #[command(flatten)]
        opts: Options,
        /// Remote sources, then the local destination directory.
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Check the path to a ferryd, step by step: DNS, TCP, SSH and its host key,
    /// authentication, UDP both ways on the data port, path MTU and clock skew.
    Doctor {
        #[command(flatten)]
        opts: DoctorArgs,
        /// [USER@]HOST
        target: String,
    },
}

/// `ferry doctor`'s options: how to reach and trust the host, as for `send`.
#[derive(Args, Clone)]
struct DoctorArgs {
    /// TCP (SSH) port of ferryd.
    #[arg(short = 'P', long, default_value_t = 33001)]
    port: u16,
    /// UDP port of ferryd to check (default: the one ferryd announces).
    #[arg(short = 'O', long)]
    udp_port: Option<u16>,
    /// Private key (default ~/.ssh/id_ed25519, then ssh-agent).
    #[arg(short = 'i', long)]
    identity: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts).
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Trust and record a host key seen for the first time.
    #[arg(long)]
    accept_new: bool,
    /// Limit for the TCP connection and for the SSH handshake.
    #[arg(long, default_value = "15s", value_parser = retry::parse_duration)]
    connect_timeout: Duration,
    /// One JSON line per check on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Options {
    /// TCP (SSH) port of ferryd.
    #[arg(short = 'P', long, default_value_t = 33001)]
    port: u16,
    /// UDP port of ferryd (the server's answer takes precedence).
    #[arg(short = 'O', long)]
    udp_port: Option<u16>,
    /// Private key (default ~/.ssh/id_ed25519, then ssh-agent).
    #[arg(short = 'i', long)]
    identity: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts).
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Trust and record a host key seen for the first time.
    #[arg(long)]
    accept_new: bool,
    /// Target rate, e.g. 500m, 10g, 800k (bits per second).
    #[arg(short = 'l', long, value_parser = parse_rate)]
    target_rate: Option<u64>,
    /// Minimum rate.
    #[arg(short = 'm', long, value_parser = parse_rate)]
    min_rate: Option<u64>,
    /// fixed | high | fair | low.
    #[arg(long)]
    policy: Option<Policy>,
    /// aes128 | aes256 | none.
    #[arg(short = 'c', long, default_value = "aes128")]
    cipher: Cipher,
    /// Resume level: 0 sends whole files; 1 resumes partial files whose checkpoint matches
    /// the source's size and mtime; 2 and 3 also compare a sparse or a full checksum of the
    /// source (and judge existing files by content).
    #[arg(short = 'k', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    resume: u8,
    /// When an existing destination file is replaced: never | always | diff | older |
    /// diff+older (diff: always at -k 0, by size and mtime at -k 1, by size and checksum at
    /// -k 2 and 3).
    #[arg(long, default_value = "diff")]
    overwrite: Overwrite,
    /// Sessions to spread the transfer over (uploads): each on its own core of the server
    /// (and of this host), files distributed among them, large files split into ranges.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    sessions: Option<u32>,
    /// Files of at least this size are split across the sessions; smaller ones travel
    /// whole (e.g. 60MB, 1GiB).
    #[arg(long, default_value = "60MB", value_parser = parse_size)]
    split_threshold: u64,
    /// How long each session waits after the one before it started, at most: a session
    /// starts as soon as the one before it has logged in, or after this interval.
    #[arg(long, default_value = "1s", value_parser = retry::parse_duration)]
    session_interval: Duration,
    /// Cluster nodes sharing the destination storage, `HOST[:PORT],...`: the sessions are
    /// spread over them round-robin (one session per node unless --sessions says more).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Rename files without waiting for them to be on disk.
    #[arg(long)]
    no_fsync: bool,
    /// Machine-readable JSON lines on stdout instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// How many times a retryable failure (the network or the peer silent or unreachable)
    /// is tried again; each retry resumes (at least -k 1), never restarts.
    #[arg(long, default_value_t = retry::DEFAULT_RETRIES)]
    retry: u32,
    /// The wait before each retry, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = retry::parse_duration)]
    retry_interval: Duration,
    /// A source that changes (size or mtime) during its transfer: fail (code 37), or
    /// resend it from its new state afterwards (at most 3 times).
    #[arg(long, default_value = "fail")]
    on_change: OnChange,
    /// Limit for the TCP connection and, again, for the SSH handshake.
    #[arg(long, default_value = "15s", value_parser = retry::parse_duration)]
    connect_timeout: Duration,
    /// End-to-end checksum of each file: sha256 | crc32c | none (default none; sha256 when
    /// --manifest is given). The sender hashes each file as it reads it, the receiver as
    /// it writes it, and a file gets its final name only when both agree. A file that
    /// differs stays NAME.partial and is sent again once, at resume level 3 (only the MiB
    /// chunks that differ travel); if it still differs, ferry fails with code 38.
    #[arg(long, value_parser = parse_checksum)]
    checksum: Option<Algorithm>,
    /// After the transfer, write what was sent to PATH: one JSON object per line and per
    /// file, {"path": name relative to the destination, "size": bytes, "mtime": RFC 3339
    /// with nanoseconds, "checksum": "ALGORITHM:HEX" (null for a skipped file), "action":
    /// "sent" | "resumed" | "skipped"}; a file split across sessions has a line per piece,
    /// with "offset" and "file_size" besides.
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// When no datagram passes over UDP within 5 s, fail with code 20 (udp_start, naming
    /// the port) instead of continuing over TCP through the SSH connection; that failure
    /// is not retried (a firewall does not open by itself).
    #[arg(long)]
    no_fallback: bool,
}

fn parse_checksum(s: &str) -> Result<Algorithm, String> {
    s.parse()
}

impl Options {
    /// The checksum in force: `--checksum`, or sha256 for a `--manifest`.
    fn checksum(&self) -> Algorithm {
        match (self.checksum, &self.manifest) {
            (Some(a), _) => a,
            (None, Some(_)) => Algorithm::Sha256,
            (None, None) => Algorithm::None,
        }
    }
}

/// `[USER@]HOST:PATH`.
struct Remote {
    user: String,
    host: String,
    path: String,
}

fn parse_remote(s: &str) -> Option<Remote> {
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) if !u.is_empty() && !u.contains(':') && !u.contains('/') => (u.to_string(), r),
        _ => (default_user(), s),
    };
    let (host, path) = if let Some(r) = rest.strip_prefix('[') {
        let (h, p) = r.split_once("]:")?;
        (h.to_string(), p)
    } else {
        let (h, p) = rest.split_once(':')?;
        (h.to_string(), p)
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some(Remote {
        user,
        host,
        path: path.to_string(),
    })
}

struct Failure(ErrorCode, String);

impl From<(ErrorCode, String)> for Failure {
    fn from((c, m): (ErrorCode, String)) -> Self {
        Failure(c, m)
    }
}

/// What the last JSON line and the summary need.
struct Outcome {
    files: usize,
    /// What was decided for each file.
    plans: Vec<FilePlan>,
    /// Payload bytes resumed files already had at the destination.
    resumed_bytes: u64,
    bytes: u64,
    wire_bytes: u64,
    retransmitted_bytes: u64,
    data_secs: f64,
    /// The checksum in force.
    checksum: Algorithm,
    /// Files sent again after a checksum mismatch.
    repaired: usize,
}

/// Set by SIGINT or SIGTERM; the session loop notices within 200 ms.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    let cli = Cli::parse();
    let started = Instant::now();
    let (json, result) = match cli.command {
        Command::Send { opts, args } => (
            opts.json,
            configured(opts).and_then(|o| with_retries(&o, |o| send(o, &args))),
        ),
        Command::Recv { opts, args } => (
            opts.json,
            configured(opts).and_then(|o| with_retries(&o, |o| recv(o, &args))),
        ),
        Command::Doctor { opts, target } => return doctor(&opts, &target),
    };
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(o) => {
            let rate = if o.data_secs > 0.0 {
                (o.bytes as f64 * 8.0 / o.data_secs) as u64
            } else {
                0
            };
            let count = |a: FileAction| o.plans.iter().filter(|p| p.action == a).count();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "done", "status": "ok", "files": o.files, "bytes": o.bytes,
                        "elapsed_s": elapsed, "rate_bps": rate, "wire_bytes": o.wire_bytes,
                        "retransmitted_bytes": o.retransmitted_bytes,
                        "code": null, "message": null,
                        "skipped": count(FileAction::Skip), "resumed": count(FileAction::Resume),
                        "resumed_bytes": o.resumed_bytes,
                        "checksum": o.checksum.is_enabled().then(|| o.checksum.as_str()),
                        "repaired": o.repaired,
                    })
                );
            } else {
                let (skipped, resumed) = (count(FileAction::Skip), count(FileAction::Resume));
                if o.repaired > 0 {
                    eprintln!(
                        "{} file(s) failed their checksum and were repaired",
                        o.repaired
                    );
                }
                if skipped + resumed > 0 {
                    eprintln!(
                        "{skipped} file(s) skipped, {resumed} resumed ({} already there)",
                        human_bytes(o.resumed_bytes)
                    );
                }
                eprintln!(
                    "done: {} file(s), {} in {:.2} s, {} during the data phase",
                    o.files,
                    human_bytes(o.bytes),
                    elapsed,
                    ferry_ctl::human_rate(rate)
                );
            }
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            let line = code.render(&message);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "done", "status": "error", "files": 0, "bytes": 0,
                        "elapsed_s": elapsed, "rate_bps": 0, "wire_bytes": 0,
                        "retransmitted_bytes": 0, "code": code.code(),
                        "name": code.name(), "message": message, "action": code.action(),
                    })
                );
            }
            eprintln!("ferry: {line}");
            ExitCode::from(1)
        }
    }
}

/// Runs one attempt after another until one succeeds or a failure is final (`--retry`,
/// `--on-change resend`). Every attempt after the first resumes: at least -k 1, so what
/// arrived is kept and a changed source restarts from its new state.
fn with_retries(
    o: &Options,
    mut attempt: impl FnMut(&Options) -> Result<Outcome, Failure>,
) -> Result<Outcome, Failure> {
    let mut attempts = Attempts::new(o.retry, o.retry_interval, o.on_change);
    let mut opts = o.clone();
    loop {
        let err = match attempt(&opts) {
            Ok(outcome) => return Ok(outcome),
            Err(e) => e,
        };
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Err(err);
        }
        // With --no-fallback, UDP that does not start while SSH works is a firewall: the
        // person asked to know at once, and 30 s later it is still there.
        if o.no_fallback && err.0 == ErrorCode::UdpStart {
            return Err(err);
        }
        let Some((again, wait)) = attempts.after_failure(err.0, &err.1) else {
            return Err(err);
        };
        let n = attempts.again_count();
        if o.json {
            println!(
                "{}",
                serde_json::json!({
                    "event": "retry", "kind": again.name(), "attempt": n + 1,
                    "code": err.0.code(), "name": err.0.name(), "message": err.1,
                    "in_s": wait.as_secs_f64(),
                })
            );
            let _ = std::io::stdout().flush();
        }
        match again {
            retry::Again::Retry => eprintln!(
                "ferry: {}; retrying in {} (retry {n} of {}, resuming)",
                err.0.render(&err.1),
                human_duration(wait),
                o.retry
            ),
            retry::Again::Resend => eprintln!(
                "ferry: {}; sending it again from its new state (resend {n} of {})",
                err.1,
                retry::MAX_RESENDS
            ),
        }
        opts.resume = opts.resume.max(1);
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Err(Failure(
                    ErrorCode::Interrupted,
                    "interrupted while waiting to retry; incomplete files are kept as \
                     NAME.partial"
                        .into(),
                ));
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }
}

fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.0} s", d.as_secs_f64())
    }
}

/// `ferry doctor`: every check on its own line (or JSON line); exit 0 only if all pass.
fn doctor(o: &DoctorArgs, target: &str) -> ExitCode {
    let (user, host) = match target.split_once('@') {
        Some((u, h)) if !u.is_empty() => (u.to_string(), h.to_string()),
        _ => (default_user(), target.to_string()),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host)
        .to_string();
    let mut c = ClientOptions::new(host, user);
    c.port = o.port;
    c.identity = o.identity.clone();
    c.known_hosts = o.known_hosts.clone().unwrap_or_else(default_known_hosts);
    c.accept_new = o.accept_new;
    c.connect_timeout = o.connect_timeout;
    let json = o.json;
    let report = ferry_engine::doctor::run(&c, o.udp_port, |check| {
        if json {
            println!("{}", check.to_json());
            let _ = std::io::stdout().flush();
        } else {
            eprintln!("{}", check.line());
        }
    });
    let failed = report.iter().filter(|c| c.failed()).count();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "done", "status": if failed == 0 { "ok" } else { "error" },
                "checks": report.len(), "failed": failed,
            })
        );
    } else if failed == 0 {
        eprintln!("doctor: all {} checks passed", report.len());
    } else {
        eprintln!("doctor: {failed} of {} checks failed", report.len());
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `ferry`'s own settings, from `$FERRY_CONFIG` or else `~/.config/ferry/ferry.toml` (when
/// there is one):
///
/// ```toml
/// [multi_session]
/// enabled = true          # off by default
/// sessions = 3            # how many, when on
/// trigger_rate = "700m"   # only for a target rate (-l) above this; no -l counts as above
/// ```
///
/// `--sessions` on the command line always wins.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    #[serde(default)]
    multi_session: MultiSession,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MultiSession {
    enabled: bool,
    sessions: u32,
    trigger_rate: String,
}

impl Default for MultiSession {
    fn default() -> Self {
        MultiSession {
            enabled: false,
            sessions: 3,
            trigger_rate: "700m".into(),
        }
    }
}

/// The options once `ferry.toml` has had its say.
fn configured(mut o: Options) -> Result<Options, Failure> {
    let path = match std::env::var_os("FERRY_CONFIG") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".config/ferry/ferry.toml"),
            None => return Ok(o),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(o),
        Err(e) => {
            return Err(Failure(
                ErrorCode::from_io(&e),
                format!("{}: {e}", path.display()),
            ));
        }
    };
    let bad = |e: String| Failure(ErrorCode::BadRequest, format!("{}: {e}", path.display()));
    let cfg: ClientConfig = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let m = cfg.multi_session;
    if o.sessions.is_none() && m.enabled {
        let trigger = parse_rate(&m.trigger_rate).map_err(bad)?;
        if o.target_rate.is_none_or(|t| t > trigger) {
            o.sessions = Some(m.sessions.clamp(1, 64));
        }
    }
    Ok(o)
}

/// `60MB`, `1GiB`, `4096`: decimal (kB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB) units.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 60MB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} (use kB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    Ok((v * mult as f64) as u64)
}

fn resume_policy(o: &Options) -> ResumePolicy {
    ResumePolicy {
        level: o.resume,
        overwrite: o.overwrite,
    }
}

/// Tells the person (or the JSON reader) what happens to each file before data moves:
/// one `file` event per file with `--json`, a line per skipped or resumed file otherwise.
fn announce_plans(files: &[FileEntry], plans: &[FilePlan], block_size: u32, json: bool) -> u64 {
    let mut resumed_bytes = 0;
    for (f, plan) in files.iter().zip(plans) {
        let held = match plan.action {
            FileAction::Resume => plan.held_bytes(f.size, block_size),
            _ => 0,
        };
        resumed_bytes += held;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "event": "file", "path": f.path, "action": plan.action.outcome(),
                    "size": f.size, "resumed_bytes": held, "reason": plan.reason,
                })
            );
        } else if plan.action != FileAction::Send {
            eprintln!(
                "ferry: {}: {} ({})",
                f.path,
                plan.action.outcome(),
                plan.reason
            );
        }
    }
    resumed_bytes
}

fn client_options(o: &Options, r: &Remote) -> ClientOptions {
    let mut c = ClientOptions::new(r.host.clone(), r.user.clone());
    c.port = o.port;
    c.identity = o.identity.clone();
    c.known_hosts = o.known_hosts.clone().unwrap_or_else(default_known_hosts);
    c.accept_new = o.accept_new;
    c.connect_timeout = o.connect_timeout;
    c
}

fn params(o: &Options, block_size: u32, rtt: Duration) -> TransferParams {
    TransferParams {
        rtt_hint_us: rtt.as_micros() as u64,
        cipher: o.cipher.to_string(),
        policy: o.policy.map(|p| p.to_string()).unwrap_or_default(),
        target_bps: o.target_rate.unwrap_or(0),
        min_bps: o.min_rate.unwrap_or(0),
        block_size,
        resume_level: o.resume,
        overwrite: o.overwrite.to_string(),
        checksum: match o.checksum() {
            Algorithm::None => String::new(),
            a => a.to_string(),
        },
        no_fsync: o.no_fsync,
        fallback: !o.no_fallback,
    }
}

/// What a session of this run does when UDP stays silent.
fn fallback(o: &Options) -> data::Fallback {
    if o.no_fallback {
        data::Fallback::Off
    } else {
        data::Fallback::Ask
    }
}

/// Connects the control channel; also returns a round-trip estimate: the SSH handshake
/// takes about four round trips (TCP, key exchange, authentication, channel).
fn connect(o: &Options, r: &Remote) -> Result<(Control, Duration), Failure> {
    let t = Instant::now();
    let control = Control::connect(&client_options(o, r))?;
    let rtt = (t.elapsed() / 4).clamp(Duration::from_micros(200), Duration::from_secs(2));
    Ok((control, rtt))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, Failure> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure(ErrorCode::TcpConnect, format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| Failure(ErrorCode::TcpConnect, format!("{host} has no address")))
}

/// The client's data plane: `lanes` data threads, for as many sessions at once, each pinned
/// to a core of its own as ferryd's are, but taken from the last core down. ferryd puts a
/// first session on its first core, so when both ends share a host (loopback) each end of
/// a session gets a core to itself. Unpinned, the scheduler's wake-affine placement kept
/// pulling the receiving thread onto the core of the sender whose datagrams woke it: a
/// 1 GiB loopback download ran at 6.4 Gbit/s with the client pinned to ferryd's core, at
/// 14.6 on the other, and unpinned at either, run to run.
fn start_data_plane(server: &SocketAddr, lanes: usize) -> Result<DataPlane, Failure> {
    let any: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let cores: Vec<usize> = ferry_io::placement::available_cores()
        .into_iter()
        .rev()
        .take(lanes)
        .collect();
    let plane = if cores.is_empty() {
        DataPlane::start_lanes(any, lanes)
    } else {
        DataPlane::start_on(any, &cores)
    };
    plane.map_err(|e| Failure(ErrorCode::Io, format!("binding a UDP socket: {e}")))
}

/// The local side of an upload: manifest entries (relative names), the local path of each,
/// and the directories to create.
type Collected = (Vec<FileEntry>, Vec<PathBuf>, Vec<String>);

/// Walks the local sources into manifest entries, local paths and directories.
fn collect(sources: &[String]) -> Result<Collected, Failure> {
    let mut files = Vec::new();
    let mut locals = Vec::new();
    let mut dirs = Vec::new();
    for src in sources {
        let path = Path::new(src);
        let meta = std::fs::metadata(path)
            .map_err(|e| Failure(ErrorCode::SourceMissing, format!("{src}: {e}")))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                Failure(
                    ErrorCode::InvalidPath,
                    format!("{src}: no usable file name"),
                )
            })?
            .to_string();
        // Made absolute once here (the sending lanes open `/` + path); everything below is
        // opened, and named in messages, by a path built from it.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        walk(&path, &name, &meta, &mut files, &mut locals, &mut dirs)?;
    }
    Ok((files, locals, dirs))
}

fn walk(
    path: &Path,
    rel: &str,
    meta: &std::fs::Metadata,
    files: &mut Vec<FileEntry>,
    locals: &mut Vec<PathBuf>,
    dirs: &mut Vec<String>,
) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    validate_relative(rel).map_err(|e| Failure(e.code(), e.to_string()))?;
    if meta.is_dir() {
        dirs.push(rel.to_string());
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Failure(ErrorCode::from_io(&e), format!("{}: {e}", path.display())))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                eprintln!("ferry: skipping {}: name is not UTF-8", e.path().display());
                continue;
            };
            // Symbolic links are followed; anything else is described by its directory.
            let m = match e.file_type() {
                Ok(t) if !t.is_symlink() => e.metadata(),
                _ => std::fs::metadata(e.path()),
            }
            .map_err(|err| {
                Failure(
                    ErrorCode::from_io(&err),
                    format!("{}: {err}", e.path().display()),
                )
            })?;
            walk(&e.path(), &format!("{rel}/{name}"), &m, files, locals, dirs)?;
        }
    } else if meta.is_file() {
        files.push(FileEntry {
            path: rel.to_string(),
            size: meta.len(),
            mtime: data::mtime_of(meta),
            mode: meta.permissions().mode() & 0o7777,
            part: None,
        });
        locals.push(path.to_path_buf());
    } else {
        eprintln!(
            "ferry: skipping {}: not a regular file or directory",
            path.display()
        );
    }
    Ok(())
}

/// One session's worth of a transfer: how it went, and the files that failed their
/// checksum (kept as `NAME.partial` at the destination).
struct Pass {
    outcome: Outcome,
    files: Vec<FileEntry>,
    digests: Vec<Option<Digest>>,
    /// Manifest indices of the files whose checksum did not match, and why.
    mismatched: Vec<u32>,
    mismatch: Option<Failure>,
}

impl Pass {
    /// Folds in the pass that re-sent this one's mismatched files.
    fn absorb(&mut self, retry: Pass) {
        for (k, &i) in self.mismatched.iter().enumerate() {
            if let Some(d) = retry.digests.get(k) {
                self.digests[i as usize] = *d;
            }
        }
        let (a, b) = (&mut self.outcome, retry.outcome);
        a.bytes += b.bytes;
        a.wire_bytes += b.wire_bytes;
        a.retransmitted_bytes += b.retransmitted_bytes;
        a.data_secs += b.data_secs;
        a.repaired = self.mismatched.len();
        self.mismatched = retry
            .mismatched
            .iter()
            .map(|&k| self.mismatched[k as usize])
            .collect();
        self.mismatch = retry.mismatch;
    }

    /// The outcome once no file is left mismatched; writes `--manifest` and tells each
    /// file's checksum (`--json`).
    fn finish(self, o: &Options) -> Result<Outcome, Failure> {
        if let Some(f) = self.mismatch {
            return Err(f);
        }
        if o.json && o.checksum().is_enabled() {
            for (f, d) in self.files.iter().zip(&self.digests) {
                if let Some(d) = d {
                    println!(
                        "{}",
                        serde_json::json!({"event": "checksum", "path": f.path,
                            "checksum": d.to_string()})
                    );
                }
            }
        }
        if let Some(path) = &o.manifest {
            write_manifest(path, &self.files, &self.outcome.plans, &self.digests).map_err(|e| {
                Failure(
                    ErrorCode::from_io(&e),
                    format!("writing the manifest {}: {e}", path.display()),
                )
            })?;
        }
        Ok(self.outcome)
    }
}

/// `--manifest`: one JSON line per file.
fn write_manifest(
    path: &Path,
    files: &[FileEntry],
    plans: &[FilePlan],
    digests: &[Option<Digest>],
) -> std::io::Result<()> {
    use time::format_description::well_known::Rfc3339;
    let mut out = String::new();
    for (i, f) in files.iter().enumerate() {
        let action = plans.get(i).map_or(FileAction::Send, |p| p.action);
        let nanos = i128::from(f.mtime.0) * 1_000_000_000 + i128::from(f.mtime.1);
        let mtime = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok());
        let checksum = digests.get(i).copied().flatten().map(|d| d.to_string());
        let mut line = serde_json::json!({
            "path": f.path, "size": f.size, "mtime": mtime, "checksum": checksum,
            "action": action.outcome(),
        });
        if let Some(p) = f.part {
            // A piece of a file split across sessions: its own bytes, and its checksum.
            line["offset"] = p.offset.into();
            line["file_size"] = p.whole_size.into();
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(path, out)
}

/// Tells the person that mismatched files go again.
fn announce_repair(pass: &Pass, json: bool) {
    let names: Vec<&str> = pass
        .mismatched
        .iter()
        .map(|&i| pass.files[i as usize].path.as_str())
        .collect();
    if json {
        for n in &names {
            println!(
                "{}",
                serde_json::json!({"event": "checksum_mismatch", "path": n, "action": "resend"})
            );
        }
    } else {
        eprintln!(
            "ferry: {} file(s) failed their checksum ({}); sending the chunks that differ again",
            names.len(),
            names.join(", ")
        );
    }
}

fn send(o: &Options, args: &[String]) -> Result<Outcome, Failure> {
    let (sources, dest) = args.split_at(args.len() - 1);
    let remote = parse_remote(&dest[0]).ok_or_else(|| {
        Failure(
            ErrorCode::BadRequest,
            format!("{}: expected [USER@]HOST:DEST", dest[0]),
        )
    })?;
    let (files, locals, dirs) = collect(sources)?;
    let nodes = cluster_nodes(o, &remote)?;
    let count = o.sessions.map_or(nodes.len(), |n| n as usize).max(1);
    let jobs = upload_jobs(o, &files, &locals, &dirs, count);
    let (mut pass, entry_locals) = upload_pass(o, &remote, &nodes, &jobs, o.resume)?;
    pass.outcome.files = files.len();
    if !pass.mismatched.is_empty() {
        // Once, at resume level 3: the receiver keeps every MiB chunk of the partial whose
        // CRC32 matches the source's, so only the damaged ones travel (a piece of a split
        // file travels again whole: its checkpoint went with the mismatch).
        announce_repair(&pass, o.json);
        let picked: Vec<usize> = pass.mismatched.iter().map(|&i| i as usize).collect();
        let job = Job {
            files: picked.iter().map(|&i| pass.files[i].clone()).collect(),
            locals: picked.iter().map(|&i| entry_locals[i].clone()).collect(),
            dirs: Vec::new(),
            bytes: picked.iter().map(|&i| pass.files[i].size).sum(),
        };
        let (retry, _) = upload_pass(o, &remote, &nodes, &[job], 3)?;
        pass.absorb(retry);
    }
    pass.finish(o)
}

/// One pass of an upload: its sessions (`jobs`) run side by side at resume level `level`.
/// Returns the pass, its entries in session order, and the local path of each.
fn upload_pass(
    o: &Options,
    remote: &Remote,
    nodes: &[Node],
    jobs: &[Job],
    level: u8,
) -> Result<(Pass, Vec<PathBuf>), Failure> {
    let planned = jobs.iter().map(|j| j.bytes).collect();
    let runs = run_sessions(o, nodes, planned, |i, node, tracker| {
        upload_session(o, remote, node, &jobs[i], level, i, tracker)
    })?;
    let locals = jobs.iter().flat_map(|j| j.locals.iter().cloned()).collect();
    Ok((combine(o, runs), locals))
}

/// Runs one session per planned share (`planned`: its payload bytes), each in its own
/// thread with `session(index, node, tracker)`, on `nodes` round-robin: each starts once
/// the one before it has logged in (or after `--session-interval`), and none starts
/// after one has failed (those running finish their part, which a re-run with -k keeps).
/// Reports progress meanwhile; returns every session's run, or the first failure.
fn run_sessions(
    o: &Options,
    nodes: &[Node],
    planned: Vec<u64>,
    session: impl Fn(usize, &Node, &Tracker) -> Result<SessionRun, Failure> + Sync,
) -> Result<Vec<SessionRun>, Failure> {
    let count = planned.len();
    let tracker = Tracker::new(planned);
    let results = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for i in 0..count {
            if i > 0 {
                tracker.wait_for_start(i - 1, o.session_interval);
            }
            let node = &nodes[i % nodes.len()];
            let (tracker, session) = (&tracker, &session);
            threads.push(scope.spawn(move || {
                let r = session(i, node, tracker);
                tracker.ended(i, r.is_err());
                r
            }));
            if tracker.failed() {
                (i + 1..count).for_each(|j| tracker.ended(j, false));
                break;
            }
        }
        tracker.watch(o.json);
        threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(Failure(
                        ErrorCode::Internal,
                        "a session thread panicked".into(),
                    ))
                })
            })
            .collect::<Vec<_>>()
    });
    results.into_iter().collect()
}

/// A server to open sessions with: the destination's host, or each of `--hosts`.
struct Node {
    host: String,
    port: u16,
}

/// `--hosts h1,h2:33002,[::1]:33003`, or the destination's own host.
fn cluster_nodes(o: &Options, remote: &Remote) -> Result<Vec<Node>, Failure> {
    if o.hosts.is_empty() {
        return Ok(vec![Node {
            host: remote.host.clone(),
            port: o.port,
        }]);
    }
    o.hosts
        .iter()
        .map(|h| {
            let bad = || {
                Failure(
                    ErrorCode::BadRequest,
                    format!("--hosts: {h:?} is not HOST[:PORT]"),
                )
            };
            let (host, port) = if let Some(r) = h.strip_prefix('[') {
                let (host, rest) = r.split_once(']').ok_or_else(bad)?;
                (host, rest.strip_prefix(':'))
            } else {
                match h.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (h.as_str(), None),
                }
            };
            let port = match port {
                Some(p) => p.parse().map_err(|_| bad())?,
                None => o.port,
            };
            if host.is_empty() {
                return Err(bad());
            }
            Ok(Node {
                host: host.to_string(),
                port,
            })
        })
        .collect()
}

/// What one session of an upload carries.
struct Job {
    /// Manifest entries (names relative to the destination); a piece of a split file has a
    /// [`data::Part`].
    files: Vec<FileEntry>,
    /// The local path of each.
    locals: Vec<PathBuf>,
    /// Directories to create (every session asks: creating one twice is harmless).
    dirs: Vec<String>,
    /// Payload bytes.
    bytes: u64,
}

/// Pieces of large files align to this: whole 4 MiB extents on disk.
const SPLIT_UNIT: u64 = 4 << 20;

/// Divides the files among `count` sessions (`ferry_proto::plan`): small files whole,
/// large ones in ranges. One session carries every file whole.
fn upload_jobs(
    o: &Options,
    files: &[FileEntry],
    locals: &[PathBuf],
    dirs: &[String],
    count: usize,
) -> Vec<Job> {
    if count <= 1 {
        return vec![Job {
            files: files.to_vec(),
            locals: locals.to_vec(),
            dirs: dirs.to_vec(),
            bytes: files.iter().map(|f| f.size).sum(),
        }];
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    ferry_proto::plan::plan(&sizes, count, o.split_threshold, SPLIT_UNIT)
        .into_iter()
        .filter(|p| !p.pieces.is_empty())
        .map(|p| {
            let mut job = Job {
                files: Vec::with_capacity(p.pieces.len()),
                locals: Vec::with_capacity(p.pieces.len()),
                dirs: dirs.to_vec(),
                bytes: p.bytes,
            };
            for piece in p.pieces {
                let f = &files[piece.file as usize];
                let whole = piece.offset == 0 && piece.len == f.size;
                job.files.push(FileEntry {
                    size: piece.len,
                    part: (!whole).then_some(data::Part {
                        offset: piece.offset,
                        whole_size: f.size,
                    }),
                    ..f.clone()
                });
                job.locals.push(locals[piece.file as usize].clone());
            }
            job
        })
        .collect()
}

/// What a finished session hands back.
struct SessionRun {
    report: SessionReport,
    plans: Vec<FilePlan>,
    resumed_bytes: u64,
    /// File payload delivered (the receiving side's count where it is known).
    bytes: u64,
    /// When its data phase began and ended.
    began: Instant,
    ended: Instant,
    /// The session's entries (pieces of split files included).
    files: Vec<FileEntry>,
    /// Indices (in `files`) of the files whose checksum did not match, and why.
    mismatched: Vec<u32>,
    mismatch: Option<Failure>,
}

/// From the first session's first data to the last one's completion.
fn data_phase(runs: &[SessionRun]) -> f64 {
    let began = runs.iter().map(|r| r.began).min();
    let ended = runs.iter().map(|r| r.ended).max();
    match (began, ended) {
        (Some(b), Some(e)) => e.saturating_duration_since(b).as_secs_f64(),
        _ => 0.0,
    }
}

/// One session of an upload, from its SSH connection to the server's last word.
fn upload_session(
    o: &Options,
    remote: &Remote,
    node: &Node,
    job: &Job,
    level: u8,
    slot: usize,
    tracker: &Tracker,
) -> Result<SessionRun, Failure> {
    let server_tcp = resolve(&node.host, node.port)?;
    let block = data::block_size_for(&server_tcp, o.cipher);
    let target = Remote {
        user: remote.user.clone(),
        host: node.host.clone(),
        path: remote.path.clone(),
    };
    let (mut control, rtt) = connect(
        &Options {
            port: node.port,
            ..o.clone()
        },
        &target,
    )?;
    tracker.connected(slot);
    let plane = tracker.plane(&server_tcp)?;
    let sums = source_sums(&job.files, &job.locals, level)?;
    let mut params = params(o, block, rtt);
    params.resume_level = level;
    if let Some(total) = o.target_rate {
        // The transfer's rate, shared: each session aims at its part.
        params.target_bps = (total / tracker.sessions() as u64).max(1);
    }
    let ready = control.upload(UploadRequest {
        dest: remote.path.clone(),
        files: job.files.clone(),
        dirs: job.dirs.clone(),
        params,
        client_udp: plane.local_addr().port(),
        sums,
        transfer: tracker.tag(),
    })?;
    let secret =
        ferry_engine::control::messages::secret_from_hex(&ready.secret).ok_or_else(|| {
            Failure(
                ErrorCode::Protocol,
                "the server sent a malformed secret".into(),
            )
        })?;
    let peer = SocketAddr::new(server_tcp.ip(), ready.udp_port);
    let plans = match ready.plans.len() {
        0 => vec![FilePlan::default(); job.files.len()],
        n if n == job.files.len() => ready.plans.clone(),
        n => {
            return Err(Failure(
                ErrorCode::Protocol,
                format!("the server sent {n} plans for {} files", job.files.len()),
            ));
        }
    };
    let resumed_bytes = announce_plans(&job.files, &plans, ready.block_size, o.json);
    // The data plane reads each file from its local path: the manifest names travel, the
    // local paths stay here.
    let local_files = job
        .files
        .iter()
        .zip(&job.locals)
        .map(|(f, l)| FileEntry {
            path: l.to_string_lossy().into_owned(),
            ..f.clone()
        })
        .collect();
    let spec = SessionSpec {
        role: Role::Sender,
        session: ready.session,
        secret,
        cipher: ready.cipher.parse().map_err(|_| {
            Failure(
                ErrorCode::Protocol,
                format!("unknown cipher {}", ready.cipher),
            )
        })?,
        direction: Direction::ClientToServer,
        block_size: ready.block_size,
        policy: ready.policy.parse().unwrap_or(Policy::Fair),
        limits: RateLimits::new(ready.target_bps, ready.min_bps),
        root: PathBuf::from("/"),
        files: local_files,
        peer: Some(peer),
        no_fsync: o.no_fsync,
        initial_rtt: rtt,
        user: remote.user.clone(),
        ceiling_bps: ready.ceiling_bps,
        plans: plans.clone(),
        transfer: tracker.tag(),
        checksum: o.checksum(),
        fallback: fallback(o),
    };
    let (mut report, began, ended) =
        run_session(&plane, &mut control, spec, slot, tracker, o.json)?;
    // A failure seen here (a source that vanished) is more specific than the server's view
    // of it (the sender closed the session), unless all we saw is that the server ended
    // the session: then its reason (disk full) is the one to show.
    // UDP silent on the way back only, and no fallback: the server may still hold every
    // byte; its word decides then too.
    let mut early_done = None;
    if let Some(err) = report.error.take() {
        if matches!(err.0, ErrorCode::PeerAborted | ErrorCode::UdpStart)
            && let Ok(done) = control.wait_done(Some(Duration::from_secs(5)))
        {
            match done.error() {
                Some(server) if err.0 == ErrorCode::PeerAborted => return Err(server.into()),
                None if err.0 == ErrorCode::UdpStart => early_done = Some(done),
                _ => return Err(err.into()),
            }
        } else {
            return Err(err.into());
        }
    }
    // Otherwise the server's word decides: its files are renamed only once complete,
    // durable and (with a checksum) verified.
    let done = match early_done {
        Some(d) => d,
        None => control.wait_done(Some(Duration::from_secs(120)))?,
    };
    let mut mismatch = None;
    if let Some(err) = done.error() {
        if err.0 != ErrorCode::ChecksumMismatch || done.mismatched.is_empty() {
            return Err(err.into());
        }
        mismatch = Some(err.into());
    }
    Ok(SessionRun {
        bytes: done.bytes.max(report.bytes),
        mismatched: done.mismatched,
        mismatch,
        files: job.files.clone(),
        report,
        plans,
        resumed_bytes,
        began,
        ended,
    })
}

fn recv(o: &Options, args: &[String]) -> Result<Outcome, Failure> {
    let (sources, dest) = args.split_at(args.len() - 1);
    let dest = PathBuf::from(&dest[0]);
    if !dest.is_dir() {
        return Err(Failure(
            ErrorCode::DestinationMissing,
            format!("{} is not an existing directory", dest.display()),
        ));
    }
    let mut remote: Option<Remote> = None;
    let mut paths = Vec::new();
    for s in sources {
        let r = parse_remote(s).ok_or_else(|| {
            Failure(
                ErrorCode::BadRequest,
                format!("{s}: expected [USER@]HOST:SRC"),
            )
        })?;
        if let Some(prev) = &remote
            && (prev.host != r.host || prev.user != r.user)
        {
            return Err(Failure(
                ErrorCode::BadRequest,
                "all sources must be on one host, as one user".into(),
            ));
        }
        paths.push(r.path.clone());
        remote = Some(r);
    }
    let remote = remote.expect("at least one source");
    let count = o.sessions.map_or(o.hosts.len(), |n| n as usize).max(1);
    let mut pass = download(o, &remote, paths.clone(), &dest, o.resume, count)?;
    pass.outcome.files = pass.files.iter().filter(|f| f.offset() == 0).count();
    if !pass.mismatched.is_empty() {
        announce_repair(&pass, o.json);
        // Every source lies in one directory on the server, and each file's name is
        // relative to it: fetch each damaged file alone into its own directory here, at
        // resume level 3 (only the MiB chunks that differ travel).
        let first = paths[0].trim_end_matches('/');
        let base = first.rsplit_once('/').map_or("", |(b, _)| b);
        let mut retry_all: Option<Pass> = None;
        for &i in &pass.mismatched {
            let name = &pass.files[i as usize].path;
            let (sub, _) = name.rsplit_once('/').unwrap_or(("", name));
            let mut one = download(
                o,
                &remote,
                vec![format!("{base}/{name}")],
                &dest.join(sub),
                3,
                1,
            )?;
            one.files[0].path.clone_from(name);
            retry_all = Some(match retry_all {
                None => one,
                Some(mut acc) => {
                    let k = acc.files.len() as u32;
                    acc.files.append(&mut one.files);
                    acc.digests.append(&mut one.digests);
                    acc.mismatched.extend(one.mismatched.iter().map(|_| k));
                    acc.mismatch = one.mismatch.or(acc.mismatch);
                    let (a, b) = (&mut acc.outcome, one.outcome);
                    a.bytes += b.bytes;
                    a.wire_bytes += b.wire_bytes;
                    a.retransmitted_bytes += b.retransmitted_bytes;
                    a.data_secs += b.data_secs;
                    acc
                }
            });
        }
        if let Some(retry) = retry_all {
            pass.absorb(retry);
        }
    }
    pass.finish(o)
}

/// A download over `count` sessions (`--sessions`, `--hosts`) of `paths` into `dest` at
/// resume level `level`. Several sessions first list the files, then each asks for its
/// share of them (`ferry_proto::plan`: small files whole, large ones in ranges).
fn download(
    o: &Options,
    remote: &Remote,
    paths: Vec<String>,
    dest: &Path,
    level: u8,
    count: usize,
) -> Result<Pass, Failure> {
    let nodes = cluster_nodes(o, remote)?;
    let jobs: Vec<(Vec<Selection>, u64)> = if count <= 1 {
        vec![(Vec::new(), 0)]
    } else {
        let listed = list(o, remote, &nodes[0], &paths)?;
        let sizes: Vec<u64> = listed.files.iter().map(|f| f.size).collect();
        ferry_proto::plan::plan(&sizes, count, o.split_threshold, SPLIT_UNIT)
            .into_iter()
            .filter(|p| !p.pieces.is_empty())
            .map(|p| {
                let select = p
                    .pieces
                    .iter()
                    .map(|x| Selection {
                        file: x.file,
                        offset: x.offset,
                        len: x.len,
                    })
                    .collect();
                (select, p.bytes)
            })
            .collect()
    };
    let planned = jobs.iter().map(|j| j.1).collect();
    let runs = run_sessions(o, nodes.as_slice(), planned, |i, node, tracker| {
        download_session(o, remote, node, &paths, &jobs[i].0, dest, level, i, tracker)
    })?;
    Ok(combine(o, runs))
}

/// The sessions of one pass as one: their entries in session order, their counts added,
/// their data phase from the first's start to the last's end.
fn combine(o: &Options, runs: Vec<SessionRun>) -> Pass {
    let mut pass = Pass {
        outcome: Outcome {
            files: 0,
            plans: Vec::new(),
            resumed_bytes: 0,
            bytes: 0,
            wire_bytes: 0,
            retransmitted_bytes: 0,
            data_secs: data_phase(&runs),
            checksum: o.checksum(),
            repaired: 0,
        },
        files: Vec::new(),
        digests: Vec::new(),
        mismatched: Vec::new(),
        mismatch: None,
    };
    for run in runs {
        let base = pass.files.len() as u32;
        let out = &mut pass.outcome;
        out.files += run.files.len();
        out.plans.extend(run.plans);
        out.resumed_bytes += run.resumed_bytes;
        out.bytes += run.bytes;
        out.wire_bytes += run.report.wire_bytes;
        out.retransmitted_bytes += run.report.retransmitted_bytes;
        pass.mismatched
            .extend(run.mismatched.iter().map(|&i| base + i));
        pass.mismatch = pass.mismatch.or(run.mismatch);
        let mut digests = run.report.digests;
        digests.resize(run.files.len(), None);
        pass.digests.extend(digests);
        pass.files.extend(run.files);
    }
    pass
}

/// The files a download of `paths` would bring, listed by `node`.
fn list(o: &Options, remote: &Remote, node: &Node, paths: &[String]) -> Result<Offer, Failure> {
    let server_tcp = resolve(&node.host, node.port)?;
    let target = Remote {
        user: remote.user.clone(),
        host: node.host.clone(),
        path: remote.path.clone(),
    };
    let node_opts = Options {
        port: node.port,
        ..o.clone()
    };
    let (mut control, rtt) = connect(&node_opts, &target)?;
    let block = data::block_size_for(&server_tcp, o.cipher);
    Ok(control.list(DownloadRequest {
        sources: paths.to_vec(),
        params: params(o, block, rtt),
        ..Default::default()
    })?)
}

/// One session of a download: `select` of the listed files (all when empty) from `node`.
#[allow(clippy::too_many_arguments)]
fn download_session(
    o: &Options,
    remote: &Remote,
    node: &Node,
    paths: &[String],
    select: &[Selection],
    dest: &Path,
    level: u8,
    slot: usize,
    tracker: &Tracker,
) -> Result<SessionRun, Failure> {
    let server_tcp = resolve(&node.host, node.port)?;
    let block = data::block_size_for(&server_tcp, o.cipher);
    let target = Remote {
        user: remote.user.clone(),
        host: node.host.clone(),
        path: remote.path.clone(),
    };
    let node_opts = Options {
        port: node.port,
        ..o.clone()
    };
    let (mut control, rtt) = connect(&node_opts, &target)?;
    tracker.connected(slot);
    let plane = tracker.plane(&server_tcp)?;
    let mut params = params(o, block, rtt);
    params.resume_level = level;
    if let Some(total) = o.target_rate {
        params.target_bps = (total / tracker.sessions() as u64).max(1);
    }
    let request = DownloadRequest {
        sources: paths.to_vec(),
        params,
        client_udp: plane.local_addr().port(),
        negotiate: true,
        select: select.to_vec(),
        transfer: tracker.tag(),
        ..Default::default()
    };
    let policy = ResumePolicy {
        level,
        ..resume_policy(o)
    };
    let (manifest, plans) =
        control.download_negotiated(request, |offer| plan_download(dest, offer, policy))?;
    for d in &manifest.dirs {
        validate_relative(d)
            .map_err(|e| Failure(ErrorCode::Protocol, format!("server sent {d:?}: {e}")))?;
        std::fs::create_dir_all(dest.join(d)).map_err(|e| {
            Failure(
                ErrorCode::from_io(&e),
                format!("creating {}: {e}", dest.join(d).display()),
            )
        })?;
    }
    for f in &manifest.files {
        validate_relative(&f.path).map_err(|e| {
            Failure(
                ErrorCode::Protocol,
                format!("server sent {:?}: {e}", f.path),
            )
        })?;
    }
    let s = &manifest.session;
    for (f, plan) in manifest.files.iter().zip(&plans) {
        if plan.action != FileAction::Skip {
            let path = dest.join(&f.path);
            resume::preallocate_partial(&path, f).map_err(|e| {
                Failure(
                    ErrorCode::from_io(&e),
                    format!("making room for {}: {e}", path.display()),
                )
            })?;
        }
    }
    let resumed_bytes = announce_plans(&manifest.files, &plans, s.block_size, o.json);
    let secret = ferry_engine::control::messages::secret_from_hex(&s.secret).ok_or_else(|| {
        Failure(
            ErrorCode::Protocol,
            "the server sent a malformed secret".into(),
        )
    })?;
    let spec = SessionSpec {
        role: Role::Receiver,
        session: s.session,
        secret,
        cipher: s
            .cipher
            .parse()
            .map_err(|_| Failure(ErrorCode::Protocol, format!("unknown cipher {}", s.cipher)))?,
        direction: Direction::ServerToClient,
        block_size: s.block_size,
        policy: s.policy.parse().unwrap_or(Policy::Fair),
        limits: RateLimits::new(s.target_bps, s.min_bps),
        root: dest.to_path_buf(),
        files: manifest.files.clone(),
        peer: Some(SocketAddr::new(server_tcp.ip(), s.udp_port)),
        no_fsync: o.no_fsync,
        initial_rtt: rtt,
        user: remote.user.clone(),
        ceiling_bps: s.ceiling_bps,
        plans: plans.clone(),
        transfer: tracker.tag(),
        checksum: o.checksum(),
        fallback: fallback(o),
    };
    let (mut report, began, ended) =
        run_session(&plane, &mut control, spec, slot, tracker, o.json)?;
    let mut mismatch = None;
    if let Some(err) = report.error.take() {
        // All this receiver saw of a failure on the server's side (a source that changed or
        // vanished) is that the sender closed the session; the server's reason comes over
        // the control channel, and it is the one to show (and to retry or resend by).
        if err.0 == ErrorCode::PeerAborted
            && let Ok(done) = control.wait_done(Some(Duration::from_secs(5)))
            && let Some(server) = done.error()
        {
            return Err(server.into());
        }
        if err.0 != ErrorCode::ChecksumMismatch || report.mismatched.is_empty() {
            return Err(err.into());
        }
        mismatch = Some(err.into());
    }
    // The sender's counts are the server's.
    let done = control.wait_done(Some(Duration::from_secs(30)));
    (report.wire_bytes, report.retransmitted_bytes) = match &done {
        Ok(d) => (d.wire_bytes, d.retransmitted_bytes),
        Err(_) => (0, 0),
    };
    Ok(SessionRun {
        bytes: report.bytes,
        mismatched: std::mem::take(&mut report.mismatched),
        mismatch,
        files: manifest.files,
        report,
        plans,
        resumed_bytes,
        began,
        ended,
    })
}

/// The checksums of each local source for resume level `level` (none below 2).
fn source_sums(
    files: &[FileEntry],
    locals: &[PathBuf],
    level: u8,
) -> Result<Vec<FileSums>, Failure> {
    if level < 2 {
        return Ok(Vec::new());
    }
    files
        .iter()
        .zip(locals)
        .map(|(f, local)| {
            if f.part.is_some() {
                // The sums cover whole files; a piece resumes by its checkpoints alone.
                return Ok(FileSums::default());
            }
            FileSums::compute(local, f.size, level).map_err(|e| {
                Failure(
                    ErrorCode::from_io(&e),
                    format!("reading {}: {e}", local.display()),
                )
            })
        })
        .collect()
}

/// Decides, for each offered file of a download, whether it is sent, resumed or skipped
/// against what lies under `dest` (names are checked before any path is built from them).
fn plan_download(
    dest: &Path,
    offer: &Offer,
    policy: ResumePolicy,
) -> Result<Vec<FilePlan>, (ErrorCode, String)> {
    let mut seen = Listings::new();
    offer
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            validate_relative(&f.path).map_err(|e| {
                (
                    ErrorCode::Protocol,
                    format!("server sent {:?}: {e}", f.path),
                )
            })?;
            let path = dest.join(&f.path);
            let sums = offer.sums.get(i);
            let plan = match f.part {
                Some(_) => {
                    ferry_engine::split::plan_piece(&path, f, offer.block_size, policy, &mut seen)
                }
                None => resume::plan_file(&path, f, offer.block_size, policy, sums, &mut seen),
            };
            plan.map_err(|e| {
                (
                    ErrorCode::from_io(&e),
                    format!("preparing {}: {e}", path.display()),
                )
            })
        })
        .collect()
}

/// The sessions of one transfer, as the thread that reports on them sees them: their
/// progress, whether they have started moving data or ended, and the client's data plane
/// they share (one lane per session, up to this host's cores).
struct Tracker {
    /// Each session's live progress, once it has started.
    progress: Vec<OnceLock<Arc<data::Progress>>>,
    /// Each session's payload bytes, as planned (until its own total is known).
    planned: Vec<u64>,
    ended: Vec<AtomicBool>,
    /// Each session's control channel is up (the next one may start connecting).
    connected: Vec<AtomicBool>,
    /// A session failed: no more are started (the running ones finish their part).
    failed: AtomicBool,
    plane: OnceLock<Result<DataPlane, String>>,
    /// Wakes the watcher and the starter of the next session.
    changed: (Mutex<()>, Condvar),
    /// The tag the sessions of a multi-session transfer share (for ferryctl).
    transfer: String,
}

impl Tracker {
    fn new(planned: Vec<u64>) -> Tracker {
        let n = planned.len();
        Tracker {
            progress: (0..n).map(|_| OnceLock::new()).collect(),
            planned,
            ended: (0..n).map(|_| AtomicBool::new(false)).collect(),
            connected: (0..n).map(|_| AtomicBool::new(false)).collect(),
            failed: AtomicBool::new(false),
            plane: OnceLock::new(),
            changed: (Mutex::new(()), Condvar::new()),
            transfer: ferry_engine::control::messages::new_transfer_tag(),
        }
    }

    fn sessions(&self) -> usize {
        self.planned.len()
    }

    /// The transfer's tag, when it has several sessions.
    fn tag(&self) -> Option<String> {
        (self.sessions() > 1).then(|| self.transfer.clone())
    }

    /// The client's data plane, started by the first session that needs it.
    fn plane(&self, server: &SocketAddr) -> Result<DataPlane, Failure> {
        let lanes = self
            .sessions()
            .min(std::thread::available_parallelism().map_or(1, |n| n.get()));
        self.plane
            .get_or_init(|| start_data_plane(server, lanes).map_err(|f| f.1))
            .clone()
            .map_err(|m| Failure(ErrorCode::Io, m))
    }

    fn notify(&self) {
        let _guard = self.changed.0.lock();
        self.changed.1.notify_all();
    }

    /// Session `slot`'s control channel is up.
    fn connected(&self, slot: usize) {
        self.connected[slot].store(true, Ordering::Relaxed);
        self.notify();
    }

    fn started(&self, slot: usize, progress: Arc<data::Progress>) {
        let _ = self.progress[slot].set(progress);
        self.notify();
    }

    fn ended(&self, slot: usize, failed: bool) {
        self.ended[slot].store(true, Ordering::Relaxed);
        if failed {
            self.failed.store(true, Ordering::Relaxed);
        }
        self.notify();
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until session `slot` has its control channel up (logins go one after
    /// another, not all at once), ends, or `interval` has passed.
    fn wait_for_start(&self, slot: usize, interval: Duration) {
        let deadline = Instant::now() + interval;
        let mut guard = self.changed.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let moving = self.connected[slot].load(Ordering::Relaxed);
            let now = Instant::now();
            if moving
                || self.ended[slot].load(Ordering::Relaxed)
                || self.failed()
                || now >= deadline
            {
                return;
            }
            // Data flow shows in the progress only: look again every 20 ms.
            let wait = (deadline - now).min(Duration::from_millis(20));
            guard = match self.changed.1.wait_timeout(guard, wait) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Bytes delivered and to deliver, over every session.
    fn totals(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut total = 0;
        for (p, planned) in self.progress.iter().zip(&self.planned) {
            match p.get() {
                Some(p) => {
                    bytes += p.bytes.load(Ordering::Relaxed);
                    total += p.total.load(Ordering::Relaxed);
                }
                None => total += planned,
            }
        }
        (bytes, total)
    }

    /// Reports progress at least once a second (JSON lines or a bar) until every
    /// session has ended.
    fn watch(&self, json: bool) {
        let bar = (!json && std::io::stderr().is_terminal()).then(progress_bar);
        let started = Instant::now();
        let mut last = (started, 0u64);
        loop {
            {
                let guard = self.changed.0.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .changed
                    .1
                    .wait_timeout(guard, Duration::from_millis(200));
            }
            if self.ended.iter().all(|e| e.load(Ordering::Relaxed)) {
                break;
            }
            let now = Instant::now();
            if now.duration_since(last.0) < Duration::from_millis(180) {
                continue;
            }
            let (bytes, total) = self.totals();
            let dt = now.duration_since(last.0).as_secs_f64();
            let rate = ((bytes.saturating_sub(last.1)) as f64 * 8.0 / dt.max(1e-3)) as u64;
            last = (now, bytes);
            if json {
                let elapsed = now.duration_since(started).as_secs_f64();
                println!(
                    "{}",
                    serde_json::json!({"event": "progress", "bytes": bytes, "total": total,
                        "rate_bps": rate, "elapsed_s": elapsed})
                );
                let _ = std::io::stdout().flush();
            } else if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(bytes);
                b.set_message(ferry_ctl::human_rate(rate));
            }
        }
        if let Some(b) = bar {
            if self.failed() {
                b.abandon();
            } else {
                b.finish();
            }
        }
    }
}

/// Runs one session to its end: relays the server's steering, and stops it when the
/// control connection is lost or on a signal. Returns its report and when its data phase
/// began and ended.
fn run_session(
    plane: &DataPlane,
    control: &mut Control,
    spec: SessionSpec,
    slot: usize,
    tracker: &Tracker,
    json: bool,
) -> Result<(SessionReport, Instant, Instant), Failure> {
    let id = spec.session;
    let server_udp = spec.peer;
    let handle = plane.start_session(spec);
    tracker.started(slot, handle.progress.clone());
    loop {
        // Changes the server's operator relays (ferryctl on an upload, whose sender is
        // here) are applied at once; waiting for them is also part of this loop's pause.
        // This side's sender hashes each file as it reads it: its checksums go to the
        // server's receiver (upload).
        while let Ok(op) = handle.remote_ops.try_recv() {
            if op == data::SessionOp::UdpSilent {
                fall_back(plane, control, id, server_udp, json);
            } else {
                relay_digest(control, op);
            }
        }
        if let Some(live) = control.poll_live(Duration::from_millis(20)) {
            let steer = match live {
                Live::Steer(steer) => steer,
                Live::Digest(d) => {
                    let op = data::SessionOp::Digest {
                        file: d.file,
                        digest: d.checksum,
                    };
                    if let Err(e) = plane.control(id, op) {
                        eprintln!("ferry: a checksum from the server could not be applied: {e}");
                    }
                    continue;
                }
            };
            let op = match steer {
                Steer::SetRate {
                    target_bps,
                    min_bps,
                    policy,
                } => data::SessionOp::SetRate {
                    target_bps,
                    min_bps,
                    policy: policy.and_then(|p| p.parse().ok()),
                },
                Steer::Pause => data::SessionOp::Pause,
                Steer::Resume => data::SessionOp::Resume,
                Steer::Cancel => data::SessionOp::Cancel,
                Steer::Ceiling { bps } => data::SessionOp::Ceiling(bps),
            };
            if let Err(e) = plane.control(id, op) {
                eprintln!("ferry: the server asked for a change that failed here: {e}");
            }
        }
        match handle.report.recv_timeout(Duration::from_millis(50)) {
            Ok(report) => {
                while let Ok(op) = handle.remote_ops.try_recv() {
                    relay_digest(control, op);
                }
                let ended = Instant::now();
                let began = ended - Duration::from_secs_f64(report.data_secs.max(0.0));
                return Ok((report, began, ended));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure(
                    ErrorCode::Internal,
                    "the data plane stopped".into(),
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if control.is_lost() {
            // ferryd died or the network broke: waiting for the data timeout would only
            // delay the error. What arrived stays resumable.
            let _ = plane.control(id, data::SessionOp::Abandon);
            let _ = handle.report.recv_timeout(Duration::from_secs(10));
            if control.timed_out() {
                return Err(Failure(
                    ErrorCode::ControlTimeout,
                    "ferryd stopped answering on the control connection (SSH keepalives \
                     timed out): the network path failed"
                        .into(),
                ));
            }
            return Err(Failure(
                ErrorCode::PeerAborted,
                "the control connection to ferryd was lost (ferryd stopped, or the network \
                 failed)"
                    .into(),
            ));
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            // A sending session tells its receiver at once; a receiving one tells its
            // sender and checkpoints what it has. Incomplete files stay NAME.partial.
            let _ = plane.control(id, data::SessionOp::Abandon);
            let _ = handle.report.recv_timeout(Duration::from_secs(5));
            return Err(Failure(
                ErrorCode::Interrupted,
                "interrupted by a signal; incomplete files are kept as NAME.partial".into(),
            ));
        }
    }
}

/// UDP stayed silent: moves session `id` onto the TCP fallback (a channel of the SSH
/// connection) and says so, one line (a `fallback` event with `--json`). If the fallback
/// cannot be opened, the session fails by itself with the UDP error soon after.
fn fall_back(
    plane: &DataPlane,
    control: &mut Control,
    id: u32,
    server_udp: Option<SocketAddr>,
    json: bool,
) {
    let secs = data::UDP_START_TIMEOUT.as_secs();
    let (path, port) = match server_udp {
        Some(a) => (a.to_string(), a.port().to_string()),
        None => ("the server".to_string(), "?".to_string()),
    };
    let attached = control
        .open_tunnel(id)
        .map_err(|(_, e)| e)
        .and_then(|fd| plane.tunnel(id, fd));
    if let Err(e) = attached {
        eprintln!("ferry: UDP is silent and the TCP fallback could not be opened: {e}");
        return;
    }
    let reason = format!(
        "no UDP datagram passed to or from {path} within {secs} s (UDP port {port} blocked?)"
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "fallback", "transport": "tcp", "via": "ssh", "session": id,
                "udp": path, "reason": reason,
            })
        );
        let _ = std::io::stdout().flush();
    } else {
        eprintln!(
            "ferry: {reason}; continuing over TCP through the SSH connection (slower: allow \
             UDP port {port} both ways for full speed; --no-fallback fails instead)"
        );
    }
}

/// Sends a checksum this side's sender published to the server's receiver.
fn relay_digest(control: &mut Control, op: data::SessionOp) {
    if let data::SessionOp::Digest { file, digest } = op
        && let Err((_, e)) = control.send_digest(FileDigest {
            file,
            checksum: digest,
        })
    {
        eprintln!("ferry: a checksum could not be sent to the server: {e}");
    }
}

/// The terminal's progress bar: bytes, rate, time left.
fn progress_bar() -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{bar:30.cyan/blue} {percent:>3}%  {bytes}/{total_bytes}  {msg:>12}  eta {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    indicatif::ProgressBar::new(0).with_style(style)
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
