//! A harness for end-to-end tests with real processes: a `ferryd` started on loopback
//! (killed on drop) and `ferry` runs whose last JSON line, exit status and stderr are kept.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod netns;

pub const FERRYD: &str = env!("CARGO_BIN_EXE_ferryd");
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The user name every test logs in as (the authorized key's comment).
pub const USER: &str = "tester";

/// How long one `ferry` run may take before the test gives up on it.
pub const FERRY_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs `ssh-keygen` to make an ed25519 key at `path` (and `path.pub`) with `comment`.
/// Fails the test, saying why, when ssh-keygen is missing or fails.
pub fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run ssh-keygen ({e}); these tests need it to make client keys \
                 (install the openssh-client package)"
            )
        });
    assert!(
        out.status.success(),
        "ssh-keygen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `TYPE BASE64` part of an OpenSSH public key file.
pub fn public_key_blob(pub_path: &Path) -> String {
    let text = fs::read_to_string(pub_path).unwrap();
    let mut parts = text.split_whitespace();
    let ty = parts.next().expect("key type");
    let b64 = parts.next().expect("key base64");
    format!("{ty} {b64}")
}

/// A real ferryd in a temporary directory. Killed, its mounts undone and its directory
/// removed on drop.
pub struct Server {
    /// Everything of this test lives here.
    pub tmp: tempfile::TempDir,
    /// The server directory (`ferryd init`).
    pub srv: PathBuf,
    /// The user's docroot.
    pub docroot: PathBuf,
    /// The authorized client key (private; `.pub` beside it).
    pub key: PathBuf,
    /// The client's known_hosts for this server.
    pub known_hosts: PathBuf,
    pub tcp_port: u16,
    pub udp_port: u16,
    /// The address clients reach ferryd at (`127.0.0.1` unless it runs in a namespace).
    pub host: String,
    /// The network namespace ferryd runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// The network namespace ferry runs in, if any.
    pub client_netns: Option<String>,
    /// Environment variables `run` gives ferryd (`FERRY_AEAD`, say).
    pub ferryd_env: Vec<(String, String)>,
    child: Option<Child>,
    mounts: Vec<PathBuf>,
    ferry_runs: u32,
}

impl Server {
    /// `ferryd init`, a fresh authorized client key; not running yet.
    pub fn init() -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("ferry-e2e.")
            .tempdir()
            .unwrap();
        let srv = tmp.path().join("srv");
        let out = Command::new(FERRYD)
            .arg("init")
            .arg(&srv)
            .output()
            .expect("run ferryd init");
        assert!(
            out.status.success(),
            "ferryd init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = tmp.path().join("id_client");
        keygen(&key, USER);
        let mut ak = fs::OpenOptions::new()
            .append(true)
            .open(srv.join("authorized_keys"))
            .unwrap();
        ak.write_all(&fs::read(key.with_extension("pub")).unwrap())
            .unwrap();
        let docroot = srv.join("docroot");
        assert!(docroot.is_dir(), "ferryd init made no docroot");
        let known_hosts = tmp.path().join("known_hosts");
        Server {
            tmp,
            srv,
            docroot,
            key,
            known_hosts,
            tcp_port: 0,
            udp_port: 0,
            host: "127.0.0.1".into(),
            netns: None,
            client_netns: None,
            ferryd_env: Vec::new(),
            child: None,
            mounts: Vec::new(),
            ferry_runs: 0,
        }
    }

    /// `init` and `run`.
    pub fn start() -> Server {
        let mut s = Server::init();
        s.run();
        s
    }

    /// A directory under this test's temporary directory (created).
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts a tmpfs of `size_mib` MiB at `path` (unmounted on drop). Fails the test with
    /// the reason when it cannot (not root, no tmpfs).
    pub fn mount_tmpfs(&mut self, path: &Path, size_mib: u32) {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {size_mib} MiB tmpfs at {} (this test needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.mounts.push(path.to_path_buf());
    }

    /// Replaces text in `ferryd.toml` (each `from` must be there); takes effect at the next
    /// `run`.
    #[allow(dead_code)] // not every test binary uses it
    pub fn edit_config(&self, edits: &[(&str, &str)]) {
        let path = self.srv.join("ferryd.toml");
        let mut text = fs::read_to_string(&path).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "no {from:?} in ferryd.toml:\n{text}");
            text = text.replace(from, to);
        }
        fs::write(&path, text).unwrap();
    }

    /// `ferryd run` with ports 0; waits for the ready line.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let err = fs::File::create(self.stderr_path()).unwrap();
        let mut child = command_in(self.netns.as_deref(), FERRYD)
            .arg("run")
            .arg("--config")
            .arg(self.srv.join("ferryd.toml"))
            .args(["--tcp-port", "0", "--udp-port", "0", "--ctl-socket"])
            .arg(self.ctl_socket())
            .envs(self.ferryd_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn ferryd run");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so that ferryd never blocks on a full pipe.
                    continue;
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.starts_with("ready ") => break l,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(200));
                    panic!(
                        "ferryd exited before its ready line ({:?}); stderr:\n{}",
                        self.child.as_mut().unwrap().try_wait(),
                        self.stderr()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "no ready line from ferryd within 60 s; stderr:\n{}",
                self.stderr()
            );
        };
        let port_of = |key: &str| -> u16 {
            let field = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in the ready line {line:?}"));
            field
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("bad {key} in the ready line {line:?}"))
        };
        self.tcp_port = port_of("tcp=");
        self.udp_port = port_of("udp=");
        assert_ne!(self.tcp_port, 0, "ready line: {line}");
        assert_ne!(self.udp_port, 0, "ready line: {line}");
    }

    /// Kills ferryd with SIGKILL (nothing flushed, nothing said) and reaps it; `run` starts
    /// it again, on new ports.
    #[allow(dead_code)] // not every test binary uses it
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("ferryd is running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The control socket `run` passes to ferryd.
    pub fn ctl_socket(&self) -> PathBuf {
        self.tmp.path().join("ctl.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("ferryd is running").id()
    }

    /// The ferryd child, for tests that signal it and wait themselves.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("ferryd was started")
    }

    /// `None` while ferryd runs, its exit status once it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child_mut().try_wait().unwrap()
    }

    /// Asserts that ferryd is still running.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(st) = self.exited() {
            panic!(
                "ferryd is no longer running {when}: {st}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    fn stderr_path(&self) -> PathBuf {
        self.tmp.path().join("ferryd.err")
    }

    /// What ferryd has written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// A `ferry SUB -P PORT -i KEY --known-hosts KH --accept-new --json ARGS...` command.
    pub fn ferry_cmd<S: AsRef<OsStr>>(&self, sub: &str, args: &[S]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            sub.into(),
            "-P".into(),
            self.tcp_port.to_string().into(),
            "-i".into(),
            self.key.clone().into(),
            "--known-hosts".into(),
            self.known_hosts.clone().into(),
            "--accept-new".into(),
            "--json".into(),
        ];
        v.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        v
    }

    /// `USER@HOST:PATH` (`127.0.0.1` unless ferryd runs in a namespace).
    pub fn remote(&self, path: &str) -> String {
        format!("{USER}@{}:{path}", self.host)
    }

    /// Starts ferry with exactly `args` (after the program name).
    pub fn spawn_ferry<S: AsRef<OsStr>>(&mut self, args: &[S]) -> Running {
        self.ferry_runs += 1;
        let err = self
            .tmp
            .path()
            .join(format!("ferry-{}.err", self.ferry_runs));
        Running::spawn(self.client_netns.as_deref(), args, &err)
    }

    /// Runs ferry with exactly `args` and the environment variables `env` to its end.
    #[allow(dead_code)] // not every test binary uses it
    pub fn ferry_env<S: AsRef<OsStr>>(&mut self, args: &[S], env: &[(&str, &OsStr)]) -> FerryRun {
        self.ferry_runs += 1;
        let err = self
            .tmp
            .path()
            .join(format!("ferry-{}.err", self.ferry_runs));
        Running::spawn_env(self.client_netns.as_deref(), args, env, &err).wait(FERRY_TIMEOUT)
    }

    /// Runs ferry with exactly `args` to its end.
    pub fn ferry_raw<S: AsRef<OsStr>>(&mut self, args: &[S]) -> FerryRun {
        self.spawn_ferry(args).wait(FERRY_TIMEOUT)
    }

    /// `ferry send` with this server's port, key and known_hosts, `--accept-new --json`.
    pub fn send<S: AsRef<OsStr>>(&mut self, args: &[S]) -> FerryRun {
        let cmd = self.ferry_cmd("send", args);
        self.ferry_raw(&cmd)
    }

    /// `ferry recv` with this server's port, key and known_hosts, `--accept-new --json`.
    pub fn recv<S: AsRef<OsStr>>(&mut self, args: &[S]) -> FerryRun {
        let cmd = self.ferry_cmd("recv", args);
        self.ferry_raw(&cmd)
    }

    /// Asserts that `run` succeeded, with every detail when it did not.
    pub fn assert_ok(&self, run: &FerryRun, what: &str) {
        let status = run.json_str("status");
        assert!(
            run.status.success() && status.as_deref() == Some("ok"),
            "{what}: expected success, got exit {} and status {status:?}\n{}\nferryd stderr:\n{}",
            run.status,
            run.describe(),
            self.stderr()
        );
    }

    /// Asserts that `run` failed with error `code`.
    pub fn assert_code(&self, run: &FerryRun, code: u64, what: &str) {
        assert!(
            !run.status.success() && run.code() == Some(code),
            "{what}: expected a non-zero exit and code {code}, got exit {} and code {:?}\n{}\n\
             ferryd stderr:\n{}",
            run.status,
            run.code(),
            run.describe(),
            self.stderr()
        );
        assert_eq!(
            run.json_str("status").as_deref(),
            Some("error"),
            "{what}: {}",
            run.describe()
        );
    }

    /// ferryd's peak resident set (VmHWM), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&m).status();
        }
    }
}

/// `program`, run in the network namespace `netns` (through `ip netns exec`, which execs
/// it: the child's pid is the program's) or in this one.
fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// A ferry process under way; stdout lines arrive on `lines`.
pub struct Running {
    child: Child,
    pub lines: mpsc::Receiver<String>,
    reader: Option<thread::JoinHandle<()>>,
    seen: Vec<String>,
    stderr_path: PathBuf,
    args: Vec<OsString>,
}

impl Running {
    fn spawn<S: AsRef<OsStr>>(netns: Option<&str>, args: &[S], stderr_path: &Path) -> Running {
        Self::spawn_env(netns, args, &[], stderr_path)
    }

    fn spawn_env<S: AsRef<OsStr>>(
        netns: Option<&str>,
        args: &[S],
        env: &[(&str, &OsStr)],
        stderr_path: &Path,
    ) -> Running {
        let err = fs::File::create(stderr_path).unwrap();
        let mut child = command_in(netns, FERRY)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn ferry");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines: rx,
            reader: Some(reader),
            seen: Vec::new(),
            stderr_path: stderr_path.to_path_buf(),
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
        }
    }

    /// Waits up to `timeout` for a stdout line that `pred` accepts; every line read is kept.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// ferry's process id.
    #[allow(dead_code)] // not every test binary uses it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills ferry with SIGKILL (nothing flushed, nothing said).
    #[allow(dead_code)] // not every test binary uses it
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the end (killing ferry after `timeout`, which fails the test).
    pub fn wait(mut self, timeout: Duration) -> FerryRun {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = fs::read_to_string(&self.stderr_path).unwrap_or_default();
                let out: Vec<String> = self
                    .seen
                    .iter()
                    .chain(self.lines.try_iter().collect::<Vec<_>>().iter())
                    .cloned()
                    .collect();
                panic!(
                    "ferry {:?} did not finish within {timeout:?}; killed.\nstdout tail: {:?}\nstderr:\n{err}",
                    self.args,
                    out.iter().rev().take(5).collect::<Vec<_>>()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut stdout = std::mem::take(&mut self.seen);
        stdout.extend(self.lines.try_iter());
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let json = stdout
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok());
        FerryRun {
            args: self.args.clone(),
            status,
            json,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One finished ferry run.
pub struct FerryRun {
    pub args: Vec<OsString>,
    pub status: ExitStatus,
    /// The last JSON line of stdout.
    pub json: Option<serde_json::Value>,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl FerryRun {
    /// The done line's `code`.
    pub fn code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    pub fn json_str(&self, field: &str) -> Option<String> {
        Some(self.json.as_ref()?.get(field)?.as_str()?.to_string())
    }

    pub fn json_u64(&self, field: &str) -> Option<u64> {
        self.json.as_ref()?.get(field)?.as_u64()
    }

    /// Everything about this run, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "ferry {:?}\nexit: {}\nstdout: {} line(s)\nlast JSON line: {}\nstderr:\n{}",
            self.args,
            self.status,
            self.stdout.len(),
            self.json
                .as_ref()
                .map_or_else(|| "(none)".to_string(), |j| j.to_string()),
            self.stderr.trim_end()
        )
    }
}

/// A fast deterministic generator of test bytes (xorshift64*).
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A seed that differs from run to run.
    pub fn from_time() -> Prng {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Prng::new(t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Writes `size` pseudo-random bytes (from `seed`) to `path`, in 1 MiB pieces.
pub fn write_random_file(path: &Path, size: u64, seed: u64) {
    let mut prng = Prng::new(seed);
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        prng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// Whether two files hold the same bytes; on a difference, where the first one is.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let ma = fs::metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = match fs::metadata(b) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", b.display())),
    };
    if ma.len() != mb.len() {
        return Some(format!(
            "sizes differ: {} has {} bytes, {} has {}",
            a.display(),
            ma.len(),
            b.display(),
            mb.len()
        ));
    }
    let mut fa = BufReader::with_capacity(1 << 20, fs::File::open(a).unwrap());
    let mut fb = BufReader::with_capacity(1 << 20, fs::File::open(b).unwrap());
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        if n != m {
            return Some(format!("short read at {off}"));
        }
        if n == 0 {
            return None;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            return Some(format!(
                "{} and {} differ first at byte {}",
                a.display(),
                b.display(),
                off + i as u64
            ));
        }
        off += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// What a tree comparison looks at for one entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { size: u64, mode: u32, mtime_s: i64 },
    Other(String),
}

/// Every entry below `root`, by relative path (symbolic links are not followed).
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let m = fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else if m.is_file() {
                out.insert(
                    rel,
                    Node::File {
                        size: m.len(),
                        mode: m.permissions().mode() & 0o7777,
                        mtime_s: m.mtime(),
                    },
                );
            } else {
                out.insert(rel, Node::Other(format!("{:?}", m.file_type())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts that `got` holds what `want` holds: the same entries, each file with the same
/// bytes, mode bits and modification time (to the second).
pub fn assert_same_tree(want: &Path, got: &Path, what: &str) {
    let a = tree(want);
    let b = tree(got);
    let mut problems = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => problems.push(format!("missing: {k:?} ({v:?})")),
            Some(w) if w != v => problems.push(format!("{k:?}: want {v:?}, got {w:?}")),
            Some(_) => {}
        }
    }
    for (k, v) in &b {
        if !a.contains_key(k) {
            problems.push(format!("extra: {k:?} ({v:?})"));
        }
    }
    for (k, v) in &a {
        if matches!(v, Node::File { .. })
            && matches!(b.get(k), Some(Node::File { .. }))
            && let Some(d) = first_difference(&want.join(k), &got.join(k))
        {
            problems.push(format!("{k:?}: contents differ: {d}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} differs from {}:\n  {}",
        got.display(),
        want.display(),
        problems.join("\n  ")
    );
}

/// Every path below `root` whose name ends with `.partial`.
pub fn partials(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|k| k.ends_with(".partial"))
        .collect()
}

/// Every path below `root` that is a partial file or a checkpoint.
#[allow(dead_code)] // not every test binary uses it
pub fn leftovers(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|k| k.contains(".partial") || k.contains("ckpt"))
        .collect()
}

/// The names directly in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether this process runs as root; when not, prints that `test` is skipped and why.
/// Tests that mount filesystems or make network namespaces call it first and return early
/// when it says no, so that an unprivileged `cargo test` passes and says what it left out.
#[allow(dead_code)] // not every test binary uses it
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: it needs root ({needs})");
    }
    root
}

/// Fills the filesystem holding `dir` with a file `dir/NAME` until writes fail with
/// ENOSPC; returns the bytes written. Panics on any other error.
#[allow(dead_code)] // not every test binary uses it
pub fn fill_disk(dir: &Path, name: &str) -> u64 {
    let path = dir.join(name);
    let mut f = fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut total = 0u64;
    // Large writes first, then pages, so the last free page goes too.
    for chunk in [1usize << 20, 4096, 512] {
        let buf = vec![0xA5u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    total
}
