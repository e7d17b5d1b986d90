//! `cargo xtask demo`: a real transfer on loopback, from nothing, in one command.
//!
//! Builds the binaries, initialises a ferryd in a temporary directory, authorises a fresh
//! key, starts the daemon, uploads a file, downloads it back, checks both copies and
//! prints the rates.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// Kills ferryd however the demo ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `cmd` to completion; its stdout, or an error with everything it printed.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A file of `size` pseudo-random bytes (incompressible, so nothing flatters the rate).
pub fn random_file(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = size;
    let mut chunk = vec![0u8; 1 << 20];
    while left > 0 {
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn last_json(out: &str) -> Result<serde_json::Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line from ferry")?;
    Ok(serde_json::from_str(line)?)
}

/// A ferryd on loopback in a temporary directory, with a fresh authorised key.
pub struct Loopback {
    /// The temporary directory (removed on drop).
    pub dir: PathBuf,
    /// The server's docroot.
    pub docroot: PathBuf,
    bin: PathBuf,
    key: PathBuf,
    port: String,
    daemon: Daemon,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = self.daemon.0.kill();
        let _ = self.daemon.0.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// CPU time of a process, seconds (user + system).
pub struct Cpu {
    /// User time.
    pub user: f64,
    /// System time.
    pub system: f64,
}

impl Cpu {
    /// User plus system.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// Reads a live process's CPU time from /proc.
pub fn proc_cpu(pid: u32) -> Result<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf is always safe to call.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(Cpu {
        user: f[11].parse::<f64>()? / tick,
        system: f[12].parse::<f64>()? / tick,
    })
}

impl Loopback {
    /// Builds the binaries (release) and starts a ferryd with its files under `base`
    /// (a tmpfs keeps the disk out of the figures).
    pub fn start(base: &Path) -> Result<Loopback> {
        let root = root();
        eprintln!("==> building ferryd and ferry (release)");
        run_checked(Command::new(env!("CARGO")).current_dir(&root).args([
            "build",
            "--release",
            "-q",
            "-p",
            "ferry-engine",
            "--bins",
        ]))?;
        let bin = root.join("target/release");
        let dir = base.join(format!("ferry-xtask-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let srv = dir.join("srv");
        run_checked(Command::new(bin.join("ferryd")).arg("init").arg(&srv))?;
        let key = dir.join("id_ed25519");
        run_checked(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "demo", "-f"])
                .arg(&key),
        )
        .context("ssh-keygen (package openssh-client) makes the key")?;
        let public = fs::read_to_string(key.with_extension("pub"))?;
        fs::OpenOptions::new()
            .append(true)
            .open(srv.join("authorized_keys"))?
            .write_all(public.as_bytes())?;
        let mut child = Command::new(bin.join("ferryd"))
            .arg("run")
            .arg("--config")
            .arg(srv.join("ferryd.toml"))
            .args(["--tcp-port", "0", "--udp-port", "0", "--ctl-socket"])
            .arg(dir.join("ctl.sock"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let daemon = Daemon(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tcp="))
            .and_then(|a| a.rsplit(':').next())
            .context("ferryd printed no ready line")?
            .to_string();
        eprintln!("    {}", line.trim());
        Ok(Loopback {
            docroot: srv.join("docroot"),
            dir,
            bin,
            key,
            port,
            daemon,
        })
    }

    /// ferryd's process id.
    pub fn server_pid(&self) -> u32 {
        self.daemon.0.id()
    }

    /// `ferry VERB --json` with this server's port, key and known_hosts; the caller adds
    /// the options and paths.
    pub fn ferry_command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("ferry"));
        cmd.arg(verb)
            .args(["-P", &self.port, "-i"])
            .arg(&self.key)
            .arg("--known-hosts")
            .arg(self.dir.join("known_hosts"))
            .args(["--accept-new", "--json"]);
        cmd
    }

    /// Runs `ferry VERB ARGS…` with this server's port, key and known_hosts and `--json`;
    /// returns the last JSON line and the client's CPU time.
    pub fn ferry(&self, verb: &str, args: &[&std::ffi::OsStr]) -> Result<(serde_json::Value, Cpu)> {
        let mut cmd = self.ferry_command(verb);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        // wait4 gives the child's CPU time; std's wait does not.
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let out = {
            let mut child = child;
            let mut stdout = String::new();
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .expect("piped")
                .read_to_string(&mut stdout)?;
            child
                .stderr
                .take()
                .expect("piped")
                .read_to_string(&mut stderr)?;
            // SAFETY: pid is our child; status and usage are valid out-parameters.
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            std::mem::forget(child);
            (stdout, stderr)
        };
        if status != 0 {
            bail!("ferry {verb} failed:\n{}{}", out.0, out.1);
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok((
            last_json(&out.0)?,
            Cpu {
                user: secs(usage.ru_utime),
                system: secs(usage.ru_stime),
            },
        ))
    }
}

/// Runs the demo with a file of `size_mib` MiB.
pub fn run_demo(size_mib: u64) -> Result<()> {
    let lab = Loopback::start(&std::env::temp_dir())?;
    let src = lab.dir.join("demo.bin");
    random_file(&src, size_mib << 20)?;
    eprintln!("==> ferry send demo.bin ({size_mib} MiB) demo@127.0.0.1:/");
    let (up, _) = lab.ferry("send", &[src.as_os_str(), "demo@127.0.0.1:/".as_ref()])?;
    let back = lab.dir.join("back");
    fs::create_dir_all(&back)?;
    eprintln!("==> ferry recv demo@127.0.0.1:/demo.bin back/");
    let (down, _) = lab.ferry(
        "recv",
        &["demo@127.0.0.1:/demo.bin".as_ref(), back.as_os_str()],
    )?;
    for copy in [lab.docroot.join("demo.bin"), back.join("demo.bin")] {
        if fs::read(&copy)? != fs::read(&src)? {
            bail!("{} differs from the source", copy.display());
        }
    }
    let gbps = |v: &serde_json::Value| v["rate_bps"].as_f64().unwrap_or(0.0) / 1e9;
    println!(
        "demo ok: {size_mib} MiB up at {:.2} Gbit/s, down at {:.2} Gbit/s, both copies exact (AES-128-GCM, loopback)",
        gbps(&up),
        gbps(&down)
    );
    Ok(())
}
