//! `cargo xtask bench loopback`: ferry beside iperf3, scp, rsync and dd on loopback.
//!
//! One file (1 GiB by default) moves on loopback, twice over: with every file on a tmpfs
//! (engine-bound: what ferry's engine costs) and with every file on the real disk
//! (disk-bound, beside `dd … conv=fdatasync`, that disk's own ceiling). ferry goes up and
//! down through a real ferryd with each cipher; iperf3 UDP (8 KiB datagrams, one per
//! syscall) and TCP move the same number of bytes memory to memory, and iperf3 UDP's rate,
//! measured in the same run, is every row's yardstick; scp and rsync go through a real
//! OpenSSH server this benchmark starts on a spare port with its own host key and
//! authorized_keys. For each tool: the rate, its ratio to iperf3 UDP, and the CPU its
//! sender and its receiver spent, as seconds per GiB and cycles per byte (at the CPU's
//! nominal clock) — the figure that carries over to bigger hosts. The table is printed and
//! written to `benches/results/loopback-DATE.md` with the machine, date and command.
//!
//! CPU time comes from the kernel's accounting: `wait4` for the processes the benchmark
//! starts and waits for (their reaped children included: `ssh` under `scp`), and
//! `/proc/PID/stat` deltas for the long-lived servers (ferryd's own threads; sshd's
//! listener with the per-connection processes it has reaped).

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::{Loopback, random_file, run_checked};

const GIB: f64 = (1u64 << 30) as f64;

/// `bench loopback` options.
#[derive(clap::Args)]
pub struct LoopbackArgs {
    /// A fast look: 256 MiB, one run, cipher aes128 only.
    #[arg(long)]
    quick: bool,
    /// File size, MiB (default 1024, 256 with --quick).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Runs of each measurement; the table shows medians (default 3, 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// ferry's ciphers, comma-separated (default aes128,aes256,none; aes128 with --quick).
    #[arg(long, value_delimiter = ',')]
    cipher: Vec<String>,
    /// Directory on the real disk for the disk-bound case (default /var/tmp).
    #[arg(long, default_value = "/var/tmp")]
    disk_dir: PathBuf,
    /// Leave out the disk-bound case.
    #[arg(long)]
    no_disk: bool,
    /// Time limit for any one run, seconds.
    #[arg(long, default_value_t = 300)]
    limit_s: u64,
}

/// Nominal clock of this machine's CPU, Hz (from /proc/cpuinfo).
fn cpu_hz() -> Result<f64> {
    let info = fs::read_to_string("/proc/cpuinfo")?;
    let mhz = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .context("no 'cpu MHz' in /proc/cpuinfo")?;
    Ok(mhz * 1e6)
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .context("no VmHWM")
}

/// Fields of `/proc/PID/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

fn ticks(v: &str) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(v.parse::<f64>()? / tick)
}

/// CPU seconds of a live process and of the children it has reaped (utime, stime, cutime,
/// cstime): for a server that forks a process per connection.
fn cpu_with_reaped(pid: u32) -> Result<f64> {
    let f = stat_fields(pid)?;
    Ok(ticks(&f[11])? + ticks(&f[12])? + ticks(&f[13])? + ticks(&f[14])?)
}

/// CPU seconds of a live process's own threads.
fn cpu_own(pid: u32) -> Result<f64> {
    let f = stat_fields(pid)?;
    Ok(ticks(&f[11])? + ticks(&f[12])?)
}

/// Whether `pid` has live (or unreaped) children.
fn has_children(pid: u32) -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|p| stat_fields(p).is_ok_and(|f| f[1].parse::<u32>() == Ok(pid)))
}

/// Waits (at most `limit`) until `pid` has reaped every child, so their CPU time is in its
/// `cutime`/`cstime`.
fn wait_reaped(pid: u32, limit: Duration) {
    let t = Instant::now();
    while has_children(pid) && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished process left: exit status, wall time, output and CPU time (its own and
/// its reaped children's).
struct Finished {
    ok: bool,
    wall: f64,
    stdout: String,
    stderr: String,
    cpu: f64,
}

/// Runs `cmd` to completion (killed after `limit`), with its CPU time from `wait4`.
fn run_rusage(cmd: &mut Command, limit: Duration) -> Result<Finished> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let (ok, cpu) = wait_child(child, limit)?;
    Ok(Finished {
        ok,
        wall: started.elapsed().as_secs_f64(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        cpu,
    })
}

/// Reaps `child` with `wait4` (std's wait drops the resource usage), killing it after
/// `limit`; returns whether it exited with status 0 and its CPU seconds.
fn wait_child(child: Child, limit: Duration) -> Result<(bool, f64)> {
    let pid = child.id() as libc::pid_t;
    // From here on the pid is reaped by hand: std must not wait for it again.
    std::mem::forget(child);
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: pid is our unreaped child; status and usage are valid out-parameters.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if !killed && started.elapsed() > limit {
            // SAFETY: a signal to our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        !killed && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        secs(usage.ru_utime) + secs(usage.ru_stime),
    ))
}

/// A server process this benchmark started, killed and reaped however the run ends.
struct Server(Option<Child>);

impl Server {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a benchmark).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Drops `path` from the page cache, so the next read comes from the disk.
fn evict(path: &Path) -> Result<()> {
    let f = fs::File::open(path)?;
    f.sync_all()?;
    // SAFETY: a valid descriptor; advice only.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        bail!("posix_fadvise: {}", std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Whether `path` is on a tmpfs.
fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; c is a valid C string.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == 0x0102_1994 }
}

fn free_bytes(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: a zeroed statvfs is a valid out-parameter; c is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    s.f_bavail as u64 * s.f_frsize as u64
}

/// One measurement.
#[derive(Clone)]
struct Sample {
    /// The tool's own rate, bit/s.
    bps: f64,
    wall: f64,
    /// CPU seconds per GiB moved, sender side (None where one process does both).
    sender: Option<f64>,
    receiver: Option<f64>,
}

/// One row of the table: a tool on a medium, with its samples (or why it has none).
struct Row {
    medium: &'static str,
    tool: String,
    samples: Vec<Sample>,
    note: String,
    errors: Vec<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Row {
    fn med(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        median(self.samples.iter().filter_map(f).collect())
    }
}

/// An OpenSSH server on a spare port of 127.0.0.1, with its own host key and
/// authorized_keys in `dir`.
struct Sshd {
    server: Server,
    port: u16,
    user: String,
    key: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Result<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            bail!("no OpenSSH server (apt-get install openssh-server)");
        }
        let key = dir.join("ssh_id");
        for (k, comment) in [(&key, "bench"), (&dir.join("ssh_host_key"), "host")] {
            run_checked(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(k),
            )?;
        }
        fs::copy(key.with_extension("pub"), dir.join("authorized_keys"))?;
        let port = free_port()?;
        let cfg = dir.join("sshd_config");
        fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/ssh_host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                d = dir.display()
            ),
        )?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Privilege separation needs it; a fresh container may lack it.
            fs::create_dir_all("/run/sshd")?;
        }
        let server = Server(Some(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("sshd.log"))?)
                .spawn()?,
        ));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let user = run_checked(Command::new("id").arg("-un"))?
                    .trim()
                    .to_string();
                return Ok(Sshd {
                    server,
                    port,
                    user,
                    key,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "sshd did not listen on port {port}: {}",
            fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        )
    }

    fn ssh_opts(&self) -> Vec<String> {
        [
            "-i",
            &self.key.display().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The benchmark's state: where files live, what runs, what was measured.
struct Bench {
    bytes: u64,
    /// How long each iperf3 run lasts, seconds.
    iperf_s: u64,
    runs: usize,
    limit: Duration,
    rows: Vec<Row>,
}

impl Bench {
    /// Runs `f` `runs` times and records the samples (or errors) as one row.
    fn measure(
        &mut self,
        medium: &'static str,
        tool: &str,
        note: &str,
        mut f: impl FnMut(&Bench) -> Result<Sample>,
    ) {
        let mut row = Row {
            medium,
            tool: tool.into(),
            samples: Vec::new(),
            note: note.into(),
            errors: Vec::new(),
        };
        for _ in 0..self.runs {
            match f(self) {
                Ok(s) => {
                    eprintln!(
                        "    {medium} {tool}: {:.2} Gbit/s, CPU s/GiB sender {} receiver {}",
                        s.bps / 1e9,
                        s.sender.map_or("–".into(), |c| format!("{c:.2}")),
                        s.receiver.map_or("–".into(), |c| format!("{c:.2}")),
                    );
                    row.samples.push(s);
                }
                Err(e) => {
                    eprintln!("    {medium} {tool}: error: {e:#}");
                    row.errors.push(format!("{e:#}"));
                }
            }
        }
        self.rows.push(row);
    }

    fn gib(&self) -> f64 {
        self.bytes as f64 / GIB
    }

    /// iperf3 for `iperf_s` seconds, memory to memory; `udp` with 8 KiB datagrams, one
    /// per syscall, unpaced (as `shared/acceptance/loopback.sh` measures it). A time, not a
    /// byte count: unpaced UDP would push the bytes out long before the receiver has
    /// them, so a short sender decides the figure.
    fn iperf3(&self, udp: bool) -> Result<Sample> {
        let port = free_port()?.to_string();
        let server = Command::new("iperf3")
            .args(["-s", "-1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 (apt-get install iperf3)")?;
        std::thread::sleep(Duration::from_millis(300));
        let mut client = Command::new("iperf3");
        client.args(["-c", "127.0.0.1", "-p", &port, "-J", "-t"]);
        client.arg(self.iperf_s.to_string());
        if udp {
            client.args(["-u", "-b", "0", "-l", "8192"]);
        }
        let done = run_rusage(&mut client, self.limit);
        let (_, server_cpu) = wait_child(server, Duration::from_secs(10))?;
        let done = done?;
        if !done.ok {
            bail!("iperf3 failed: {}{}", done.stdout, done.stderr);
        }
        let j: serde_json::Value = serde_json::from_str(&done.stdout).context("iperf3 -J")?;
        let end = &j["end"];
        let recv = if end["sum_received"].is_object() {
            &end["sum_received"]
        } else {
            &end["sum"]
        };
        let sent = if end["sum_sent"].is_object() {
            &end["sum_sent"]
        } else {
            &end["sum"]
        };
        let bps = recv["bits_per_second"].as_f64().context("no rate")?;
        let sent_bytes = sent["bytes"].as_f64().context("no bytes sent")?;
        // UDP: what arrived is what the receiver's CPU handled.
        let recv_bytes = recv["bytes"].as_f64().context("no bytes received")?;
        Ok(Sample {
            bps,
            wall: done.wall,
            sender: Some(done.cpu / (sent_bytes / GIB)),
            receiver: Some(server_cpu / (recv_bytes.max(1.0) / GIB)),
        })
    }

    /// One ferry transfer through `lab`: `send` uploads `src` to the docroot, `recv`
    /// downloads the docroot's copy into `back`.
    fn ferry(
        &self,
        lab: &Loopback,
        verb: &str,
        cipher: &str,
        src: &Path,
        back: &Path,
        disk: bool,
    ) -> Result<Sample> {
        let name = src.file_name().context("source name")?;
        let served = lab.docroot.join(name);
        let mut cmd = lab.ferry_command(verb);
        cmd.args(["-c", cipher]);
        if verb == "send" {
            let _ = fs::remove_file(&served);
            if disk {
                evict(src)?;
            }
            cmd.arg(src).arg("demo@127.0.0.1:/");
        } else {
            fs::create_dir_all(back)?;
            let _ = fs::remove_file(back.join(name));
            if !served.exists() {
                fs::copy(src, &served)?;
            }
            if disk {
                evict(&served)?;
            }
            cmd.arg(format!("demo@127.0.0.1:/{}", name.to_string_lossy()))
                .arg(back);
        }
        let pid = lab.server_pid();
        let before = cpu_own(pid)?;
        let done = run_rusage(&mut cmd, self.limit)?;
        let server = cpu_own(pid)? - before;
        let last = done
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        let Some(j) = last.filter(|j| done.ok && j["status"] == "ok") else {
            bail!(
                "ferry {verb} failed: {}{}",
                done.stdout.lines().last().unwrap_or(""),
                done.stderr
            );
        };
        let copy = if verb == "send" {
            served
        } else {
            back.join(name)
        };
        let got = fs::metadata(&copy)?.len();
        if got != self.bytes {
            bail!("{} has {got} bytes, not {}", copy.display(), self.bytes);
        }
        let (sender, receiver) = if verb == "send" {
            (done.cpu, server)
        } else {
            (server, done.cpu)
        };
        Ok(Sample {
            bps: j["rate_bps"].as_f64().context("no rate_bps")?,
            wall: done.wall,
            sender: Some(sender / self.gib()),
            receiver: Some(receiver / self.gib()),
        })
    }

    /// scp or rsync (`tool`) uploading `src` to `dest` through `sshd`; on the disk the
    /// copy is `fdatasync`ed before the clock stops, as ferry and dd do.
    fn over_ssh(
        &self,
        sshd: &Sshd,
        tool: &str,
        extra: &[&str],
        src: &Path,
        dest: &Path,
        disk: bool,
    ) -> Result<Sample> {
        let _ = fs::remove_file(dest);
        if disk {
            evict(src)?;
        }
        let target = format!("{}@127.0.0.1:{}", sshd.user, dest.display());
        let mut cmd = Command::new(tool);
        if tool == "scp" {
            cmd.args(["-q", "-P", &sshd.port.to_string()])
                .args(sshd.ssh_opts())
                .args(extra);
        } else {
            let ssh = format!("ssh -p {} {}", sshd.port, sshd.ssh_opts().join(" "));
            cmd.args(["--whole-file", "--inplace", "-e", &ssh])
                .args(extra);
        }
        cmd.arg(src).arg(&target);
        let pid = sshd.server.pid();
        // The listener's CPU and what it has reaped: the per-connection processes and
        // their children (scp's sink, sftp-server, rsync --server) once they end.
        wait_reaped(pid, Duration::from_secs(5));
        let before = cpu_with_reaped(pid)?;
        let started = Instant::now();
        let done = run_rusage(&mut cmd, self.limit)?;
        if !done.ok {
            bail!("{tool} failed: {}{}", done.stdout, done.stderr);
        }
        if disk {
            fs::File::open(dest)?.sync_data()?;
        }
        let wall = started.elapsed().as_secs_f64();
        wait_reaped(pid, Duration::from_secs(10));
        let server = cpu_with_reaped(pid)? - before;
        let got = fs::metadata(dest)?.len();
        if got != self.bytes {
            bail!("{} has {got} bytes, not {}", dest.display(), self.bytes);
        }
        let _ = fs::remove_file(dest);
        Ok(Sample {
            bps: self.bytes as f64 * 8.0 / wall,
            wall,
            sender: Some(done.cpu / self.gib()),
            receiver: Some(server / self.gib()),
        })
    }

    /// `dd if=/dev/zero of=DEST bs=1M count=N conv=fdatasync`: the disk's write ceiling.
    fn dd(&self, dest: &Path) -> Result<Sample> {
        let _ = fs::remove_file(dest);
        let done = run_rusage(
            Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", dest.display()))
                .args(["bs=1M", &format!("count={}", self.bytes >> 20)])
                .arg("conv=fdatasync"),
            self.limit,
        )?;
        let _ = fs::remove_file(dest);
        if !done.ok {
            bail!("dd failed: {}", done.stderr);
        }
        Ok(Sample {
            bps: self.bytes as f64 * 8.0 / done.wall,
            wall: done.wall,
            sender: None,
            receiver: Some(done.cpu / self.gib()),
        })
    }
}

/// Where one case's files live.
struct Medium {
    name: &'static str,
    base: PathBuf,
    disk: bool,
}

/// Runs the loopback benchmark.
pub fn loopback(a: LoopbackArgs) -> Result<()> {
    let size_mib = a.size_mib.unwrap_or(if a.quick { 256 } else { 1024 });
    let runs = a.runs.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let ciphers: Vec<String> = if !a.cipher.is_empty() {
        a.cipher.clone()
    } else if a.quick {
        vec!["aes128".into()]
    } else {
        ["aes128", "aes256", "none"].map(String::from).to_vec()
    };
    let bytes = size_mib << 20;
    let mut media = vec![Medium {
        name: "tmpfs",
        base: PathBuf::from("/dev/shm"),
        disk: false,
    }];
    if !Path::new("/dev/shm").is_dir() || !is_tmpfs(Path::new("/dev/shm")) {
        bail!("/dev/shm is not a tmpfs: the engine-bound case needs one");
    }
    if !a.no_disk {
        fs::create_dir_all(&a.disk_dir)?;
        if is_tmpfs(&a.disk_dir) {
            bail!(
                "{} is a tmpfs; pass --disk-dir on a real disk (or --no-disk)",
                a.disk_dir.display()
            );
        }
        media.push(Medium {
            name: "disk",
            base: a.disk_dir.clone(),
            disk: true,
        });
    }
    for m in &media {
        // The source, the server's copy and a downloaded copy, plus room to spare.
        let need = bytes * 3 + (256 << 20);
        if free_bytes(&m.base) < need {
            bail!(
                "{} has {} MiB free; this run needs {} MiB",
                m.base.display(),
                free_bytes(&m.base) >> 20,
                need >> 20
            );
        }
    }
    let hz = cpu_hz()?;
    let mut bench = Bench {
        bytes,
        iperf_s: if a.quick { 3 } else { 5 },
        runs,
        limit: Duration::from_secs(a.limit_s),
        rows: Vec::new(),
    };
    let each = media.len() * (2 * ciphers.len() + 3) + 2 + usize::from(!a.no_disk);
    eprintln!(
        "==> bench loopback: {size_mib} MiB, {each} measurements, {runs} run(s) each, ciphers {}",
        ciphers.join(",")
    );
    let work = PathBuf::from(format!("/dev/shm/ferry-bench-ssh-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = run_all(&mut bench, &media, &ciphers, &work);
    let _ = fs::remove_dir_all(&work);
    for m in &media {
        let _ = fs::remove_dir_all(m.base.join(format!("ferry-bench-{}", std::process::id())));
    }
    let peak = result?;

    let mut cmd = String::from("cargo xtask bench loopback");
    if a.quick {
        cmd.push_str(" --quick");
    }
    if let Some(s) = a.size_mib {
        write!(cmd, " --size-mib {s}")?;
    }
    if let Some(r) = a.runs {
        write!(cmd, " --runs {r}")?;
    }
    if !a.cipher.is_empty() {
        write!(cmd, " --cipher {}", a.cipher.join(","))?;
    }
    if a.no_disk {
        cmd.push_str(" --no-disk");
    }
    let md = table(&bench, &cmd, size_mib, hz, peak, &a.disk_dir)?;
    print!("{md}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let results = root.join("benches/results");
    fs::create_dir_all(&results)?;
    let stamp = run_checked(Command::new("date").args(["-u", "+%Y%m%d-%H%M"]))?;
    let file = results.join(format!(
        "loopback-{}{}.md",
        stamp.trim(),
        if a.quick { "-quick" } else { "" }
    ));
    fs::write(&file, &md)?;
    eprintln!("written to {}", file.display());
    Ok(())
}

/// Every measurement, medium by medium; returns ferryd's peak resident memory, KiB.
fn run_all(bench: &mut Bench, media: &[Medium], ciphers: &[String], work: &Path) -> Result<u64> {
    let sshd = Sshd::start(work);
    if let Err(e) = &sshd {
        eprintln!("    no OpenSSH server, scp and rsync are skipped: {e:#}");
    }
    let mut peak = 0;
    for m in media {
        eprintln!("==> {} ({})", m.name, m.base.display());
        let dir = m.base.join(format!("ferry-bench-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let src = dir.join("bench.bin");
        random_file(&src, bench.bytes)?;
        if !m.disk {
            bench.measure(
                m.name,
                "iperf3 UDP, 8 KiB datagrams",
                &format!(
                    "{} s memory to memory, -b 0 -l 8192; receiver's rate",
                    bench.iperf_s
                ),
                |b| b.iperf3(true),
            );
            let note = format!("{} s memory to memory", bench.iperf_s);
            bench.measure(m.name, "iperf3 TCP", &note, |b| b.iperf3(false));
        } else {
            let dd = dir.join("dd.bin");
            bench.measure(
                m.name,
                "dd conv=fdatasync",
                "the disk's write ceiling: zeros, bs=1M, one process",
                |b| b.dd(&dd),
            );
        }
        let lab = Loopback::start(&dir)?;
        let back = dir.join("back");
        for c in ciphers {
            for (verb, way) in [("send", "upload"), ("recv", "download")] {
                bench.measure(
                    m.name,
                    &format!("ferry {c} {way}"),
                    "data phase (`rate_bps`); synced before rename",
                    |b| b.ferry(&lab, verb, c, &src, &back, m.disk),
                );
            }
        }
        peak = peak.max(peak_rss_kib(lab.server_pid()).unwrap_or(0));
        drop(lab);
        let dest = dir.join("copy.bin");
        let sync = if m.disk { "; + fdatasync" } else { "" };
        let tools: [(&str, &str, &[&str], String); 3] = [
            (
                "scp (chacha20-poly1305, default)",
                "scp",
                &[],
                format!("upload, wall time incl. SSH set-up{sync}"),
            ),
            (
                "scp -c aes128-gcm@openssh.com",
                "scp",
                &["-c", "aes128-gcm@openssh.com"],
                format!("upload, wall time incl. SSH set-up{sync}"),
            ),
            (
                "rsync -e ssh --whole-file",
                "rsync",
                &[],
                format!("upload, wall time incl. SSH set-up{sync}"),
            ),
        ];
        for (label, tool, extra, note) in tools {
            match &sshd {
                Ok(s) => bench.measure(m.name, label, &note, |b| {
                    b.over_ssh(s, tool, extra, &src, &dest, m.disk)
                }),
                Err(_) => bench.rows.push(Row {
                    medium: m.name,
                    tool: label.into(),
                    samples: Vec::new(),
                    note: "skipped: no OpenSSH server (apt-get install openssh-server)".into(),
                    errors: Vec::new(),
                }),
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(peak)
}

/// The markdown report.
fn table(
    bench: &Bench,
    cmd: &str,
    size_mib: u64,
    hz: f64,
    peak_kib: u64,
    disk_dir: &Path,
) -> Result<String> {
    let udp = bench
        .rows
        .iter()
        .find(|r| r.tool.starts_with("iperf3 UDP"))
        .and_then(|r| r.med(|s| Some(s.bps)));
    let dd = bench
        .rows
        .iter()
        .find(|r| r.tool.starts_with("dd"))
        .and_then(|r| r.med(|s| Some(s.bps)));
    let cyc = |s_per_gib: Option<f64>| s_per_gib.map(|s| s * hz / GIB);
    let f2 = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let mut md = String::new();
    writeln!(md, "# Loopback benchmark\n")?;
    writeln!(md, "- machine: {}", crate::wan::machine())?;
    writeln!(md, "- date: {}", crate::wan::date())?;
    writeln!(md, "- command: `{cmd}`")?;
    writeln!(
        md,
        "- file: {size_mib} MiB of random bytes; tmpfs = every file in /dev/shm (engine-bound), \
         disk = every file in {} (disk-bound; sources dropped from the page cache before each run)",
        disk_dir.display()
    )?;
    writeln!(
        md,
        "- medians of {} run(s); × iperf3 UDP = rate / iperf3 UDP's rate in this run{}; \
         CPU = user + system seconds per GiB of each side's processes (wait4 for clients, \
         /proc deltas for ferryd and for sshd with its per-connection children); \
         cycles/B at the nominal {:.0} MHz",
        bench.runs,
        udp.map_or(String::new(), |u| format!(" ({:.2} Gbit/s)", u / 1e9)),
        hz / 1e6
    )?;
    writeln!(
        md,
        "- sender and receiver share this machine's cores: the two sides compete for them\n"
    )?;
    writeln!(
        md,
        "| medium | tool | Gbit/s | min–max | × iperf3 UDP | × dd | wall s | sender CPU s/GiB | receiver CPU s/GiB | sender cycles/B | receiver cycles/B | note |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &bench.rows {
        let bps = r.med(|s| Some(s.bps));
        let lo = r
            .samples
            .iter()
            .map(|s| s.bps)
            .fold(f64::INFINITY, f64::min);
        let hi = r.samples.iter().map(|s| s.bps).fold(0.0, f64::max);
        let range = if r.samples.len() > 1 {
            format!("{:.2}–{:.2}", lo / 1e9, hi / 1e9)
        } else {
            "–".into()
        };
        let ratio = |base: Option<f64>| match (bps, base) {
            (Some(x), Some(b)) if b > 0.0 => format!("{:.2}", x / b),
            _ => "–".into(),
        };
        let sender = r.med(|s| s.sender);
        let receiver = r.med(|s| s.receiver);
        let mut note = r.note.clone();
        if !r.errors.is_empty() {
            write!(
                note,
                "; {} of {} runs failed: {}",
                r.errors.len(),
                r.errors.len() + r.samples.len(),
                r.errors[0].lines().next().unwrap_or("").replace('|', "/")
            )?;
        }
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.medium,
            r.tool,
            f2(bps.map(|b| b / 1e9)),
            range,
            ratio(udp),
            if r.medium == "disk" {
                ratio(dd)
            } else {
                "–".into()
            },
            f2(r.med(|s| Some(s.wall))),
            f2(sender),
            f2(receiver),
            f2(cyc(sender)),
            f2(cyc(receiver)),
            note
        )?;
    }
    writeln!(
        md,
        "\nferryd's peak resident memory: {} MiB.",
        peak_kib / 1024
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn cpu_of_this_process_is_read_from_proc() {
        let me = std::process::id();
        let own = cpu_own(me).unwrap();
        assert!(own >= 0.0);
        assert!(cpu_with_reaped(me).unwrap() >= own);
    }

    #[test]
    fn a_child_is_reaped_with_its_cpu_time() {
        let done = run_rusage(
            Command::new("sh").args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo hi",
            ]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(done.ok);
        assert_eq!(done.stdout.trim(), "hi");
        assert!(done.cpu > 0.0, "a busy loop used no CPU: {}", done.cpu);
        let slow = run_rusage(Command::new("sleep").arg("30"), Duration::from_millis(100)).unwrap();
        assert!(!slow.ok && slow.wall < 10.0);
    }
}
