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
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ferry_engine::config::parse_rate;
use ferry_engine::control::client::{
    ClientOptions, Control, Live, default_known_hosts, default_user,
};
use ferry_engine::control::messages::{FileDigest, Offer, Steer};
use ferry_engine::control::{DownloadRequest, ErrorCode, TransferParams, UploadRequest};
use ferry_engine::data::{self, DataPlane, FileEntry, Role, SessionReport, SessionSpec};
use ferry_engine::integrity::{Algorithm, Digest};
use ferry_engine::paths::validate_relative;
use ferry_engine::resume::{self, FileAction, FilePlan, Overwrite, ResumePolicy};
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
    /// Multi-session count (not implemented yet: one session).
    #[arg(long)]
    sessions: Option<u32>,
    /// Split threshold for multi-session transfers (not implemented yet).
    #[arg(long)]
    split_threshold: Option<String>,
    /// Rename files without waiting for them to be on disk.
    #[arg(long)]
    no_fsync: bool,
    /// Machine-readable JSON lines on stdout instead of a progress bar.
    #[arg(long)]
    json: bool,
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
    /// "sent" | "resumed" | "skipped"}.
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
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
        Command::Send { opts, args } => (opts.json, send(&opts, &args)),
        Command::Recv { opts, args } => (opts.json, recv(&opts, &args)),
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

fn warn_unimplemented(o: &Options) {
    if o.sessions.is_some_and(|n| n > 1) || o.split_threshold.is_some() {
        eprintln!(
            "ferry: note: multi-session transfers are not implemented yet; using one session"
        );
    }
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

fn start_data_plane(server: &SocketAddr) -> Result<DataPlane, Failure> {
    let any: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    DataPlane::start(any).map_err(|e| Failure(ErrorCode::Io, format!("binding a UDP socket: {e}")))
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
        walk(path, &name, &meta, &mut files, &mut locals, &mut dirs)?;
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
            let m = std::fs::metadata(e.path()).map_err(|err| {
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
        });
        locals.push(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
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
        let line = serde_json::json!({
            "path": f.path, "size": f.size, "mtime": mtime, "checksum": checksum,
            "action": action.outcome(),
        });
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
    warn_unimplemented(o);
    let (sources, dest) = args.split_at(args.len() - 1);
    let remote = parse_remote(&dest[0]).ok_or_else(|| {
        Failure(
            ErrorCode::BadRequest,
            format!("{}: expected [USER@]HOST:DEST", dest[0]),
        )
    })?;
    let (files, locals, dirs) = collect(sources)?;
    let mut pass = upload(o, &remote, files, &locals, dirs, o.resume)?;
    if !pass.mismatched.is_empty() {
        // Once, at resume level 3: the receiver keeps every MiB chunk of the partial whose
        // CRC32 matches the source's, so only the damaged ones travel.
        announce_repair(&pass, o.json);
        let picked: Vec<usize> = pass.mismatched.iter().map(|&i| i as usize).collect();
        let files = picked.iter().map(|&i| pass.files[i].clone()).collect();
        let locals: Vec<PathBuf> = picked.iter().map(|&i| locals[i].clone()).collect();
        let retry = upload(o, &remote, files, &locals, Vec::new(), 3)?;
        pass.absorb(retry);
    }
    pass.finish(o)
}

/// One upload session of `files` (read from `locals`) at resume level `level`.
fn upload(
    o: &Options,
    remote: &Remote,
    files: Vec<FileEntry>,
    locals: &[PathBuf],
    dirs: Vec<String>,
    level: u8,
) -> Result<Pass, Failure> {
    let server_tcp = resolve(&remote.host, o.port)?;
    let block = data::block_size_for(&server_tcp, o.cipher);
    let (mut control, rtt) = connect(o, remote)?;
    let plane = start_data_plane(&server_tcp)?;
    let sums = source_sums(&files, locals, level)?;
    let mut params = params(o, block, rtt);
    params.resume_level = level;
    let ready = control.upload(UploadRequest {
        dest: remote.path.clone(),
        files: files.clone(),
        dirs,
        params,
        client_udp: plane.local_addr().port(),
        sums,
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
        0 => vec![FilePlan::default(); files.len()],
        n if n == files.len() => ready.plans.clone(),
        n => {
            return Err(Failure(
                ErrorCode::Protocol,
                format!("the server sent {n} plans for {} files", files.len()),
            ));
        }
    };
    let resumed_bytes = announce_plans(&files, &plans, ready.block_size, o.json);
    // The data plane reads each file from its local path: the manifest names travel, the
    // local paths stay here.
    let local_files = files
        .iter()
        .zip(locals)
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
        checksum: o.checksum(),
    };
    let report = run_session(&plane, &mut control, spec, o.json)?;
    // A failure seen here (a source that vanished) is more specific than the server's view
    // of it (the sender closed the session), unless all we saw is that the server ended
    // the session: then its reason (disk full) is the one to show.
    if let Some(err) = report.error {
        if err.0 == ErrorCode::PeerAborted
            && let Ok(done) = control.wait_done(Some(Duration::from_secs(5)))
            && let Some(server) = done.error()
        {
            return Err(server.into());
        }
        return Err(err.into());
    }
    // Otherwise the server's word decides: its files are renamed only once complete,
    // durable and (with a checksum) verified.
    let done = control.wait_done(Some(Duration::from_secs(120)))?;
    let mut mismatch = None;
    if let Some(err) = done.error() {
        if err.0 != ErrorCode::ChecksumMismatch || done.mismatched.is_empty() {
            return Err(err.into());
        }
        mismatch = Some(err.into());
    }
    Ok(Pass {
        outcome: Outcome {
            files: files.len(),
            plans,
            resumed_bytes,
            bytes: done.bytes.max(report.bytes),
            wire_bytes: report.wire_bytes,
            retransmitted_bytes: report.retransmitted_bytes,
            data_secs: report.data_secs,
            checksum: o.checksum(),
            repaired: 0,
        },
        files,
        digests: report.digests,
        mismatched: done.mismatched,
        mismatch,
    })
}

fn recv(o: &Options, args: &[String]) -> Result<Outcome, Failure> {
    warn_unimplemented(o);
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
    let mut pass = download(o, &remote, paths.clone(), &dest, o.resume)?;
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

/// One download session of `paths` (on the server) into `dest` at resume level `level`.
fn download(
    o: &Options,
    remote: &Remote,
    paths: Vec<String>,
    dest: &Path,
    level: u8,
) -> Result<Pass, Failure> {
    let server_tcp = resolve(&remote.host, o.port)?;
    let block = data::block_size_for(&server_tcp, o.cipher);
    let (mut control, rtt) = connect(o, remote)?;
    let plane = start_data_plane(&server_tcp)?;
    let mut params = params(o, block, rtt);
    params.resume_level = level;
    let request = DownloadRequest {
        sources: paths,
        params,
        client_udp: plane.local_addr().port(),
        negotiate: true,
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
        checksum: o.checksum(),
    };
    let report = run_session(&plane, &mut control, spec, o.json)?;
    let mut mismatch = None;
    if let Some(err) = report.error {
        if err.0 != ErrorCode::ChecksumMismatch || report.mismatched.is_empty() {
            return Err(err.into());
        }
        mismatch = Some(err.into());
    }
    let done = control.wait_done(Some(Duration::from_secs(30)));
    let (wire, retx) = match &done {
        Ok(d) => (d.wire_bytes, d.retransmitted_bytes),
        Err(_) => (0, 0),
    };
    Ok(Pass {
        outcome: Outcome {
            files: manifest.files.len(),
            plans,
            resumed_bytes,
            bytes: report.bytes,
            wire_bytes: wire,
            retransmitted_bytes: retx,
            data_secs: report.data_secs,
            checksum: o.checksum(),
            repaired: 0,
        },
        files: manifest.files,
        digests: report.digests,
        mismatched: report.mismatched,
        mismatch,
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
            resume::plan_file(&path, f, offer.block_size, policy, sums).map_err(|e| {
                (
                    ErrorCode::from_io(&e),
                    format!("preparing {}: {e}", path.display()),
                )
            })
        })
        .collect()
}

/// Runs one session to its end, reporting progress at least once a second.
fn run_session(
    plane: &DataPlane,
    control: &mut Control,
    spec: SessionSpec,
    json: bool,
) -> Result<SessionReport, Failure> {
    let id = spec.session;
    let handle = plane.start_session(spec);
    let bar = (!json && std::io::stderr().is_terminal()).then(progress_bar);
    let started = Instant::now();
    let mut last = (started, 0u64);
    loop {
        // Changes the server's operator relays (ferryctl on an upload, whose sender is
        // here) are applied at once; waiting for them is also part of this loop's pause.
        // This side's sender hashes each file as it reads it: its checksums go to the
        // server's receiver (upload).
        while let Ok(op) = handle.remote_ops.try_recv() {
            relay_digest(control, op);
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
        // Progress at least once a second (the contract); more often makes a smoother bar.
        match handle.report.recv_timeout(Duration::from_millis(180)) {
            Ok(report) => {
                while let Ok(op) = handle.remote_ops.try_recv() {
                    relay_digest(control, op);
                }
                if let Some(b) = &bar {
                    b.finish();
                }
                return Ok(report);
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
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(Failure(
                ErrorCode::Interrupted,
                "interrupted by a signal; incomplete files are kept as NAME.partial".into(),
            ));
        }
        let p = &handle.progress;
        let bytes = p.bytes.load(Ordering::Relaxed);
        let total = p.total.load(Ordering::Relaxed);
        let now = Instant::now();
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
