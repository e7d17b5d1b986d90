//! `cargo xtask bench wan`: ferry beside the usual tools across emulated WAN paths.
//!
//! For each path the lab (`cargo xtask lab`) is brought up, a ferryd, an OpenSSH server and
//! a uftpd are started in namespace B, and each tool moves the same file (on tmpfs) from
//! namespace A, or for iperf3 runs for a fixed time. A tool that is not installed is
//! skipped with a note; a run that does not finish within the time limit is stopped and its
//! rate is what arrived by then. The result is a markdown table, printed and written to
//! `benches/results/`, with the machine, the date and the command.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::random_file;
use crate::lab::{self, LinkArgs};
use crate::plot;

/// The lab's name (namespaces NAME-a, NAME-b), set once from `--name`.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn name() -> &'static str {
    NAME.get().map_or("ferrylab", String::as_str)
}
const B_IP: &str = "10.77.0.2";

/// `bench wan` options.
#[derive(clap::Args)]
pub struct WanArgs {
    /// Two paths, 128 MiB files, 20 s limit per run (under 5 minutes).
    #[arg(long)]
    quick: bool,
    /// File size, MiB (default 128 with --quick, else 512).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Name of the lab to use (namespaces NAME-a and NAME-b), so a benchmark does not
    /// take down someone else's lab.
    #[arg(long = "name", default_value = "ferrylab")]
    name: String,
}

struct WanPath {
    rtt_ms: f64,
    loss: f64,
    rate_mbps: f64,
}

impl WanPath {
    fn label(&self) -> String {
        format!(
            "{} ms, {} % loss, {} Mbit/s",
            self.rtt_ms,
            self.loss * 100.0,
            self.rate_mbps
        )
    }
}

struct Row {
    path: String,
    rtt_ms: f64,
    loss: f64,
    tool: String,
    mbps: Option<f64>,
    secs: f64,
    emulator_cpu: Option<f64>,
    note: String,
}

/// Kills (by pid) and reaps a process this benchmark started, however the run ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Runs `cmd` for at most `limit`; true when it exited successfully in time.
fn run_limited(cmd: &mut Command, limit: Duration) -> Result<(bool, f64, String)> {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut child = Guard(child);
    let out_pipe = child.0.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { out_pipe }, &mut s);
        s
    });
    let ok = loop {
        if let Some(status) = child.0.try_wait()? {
            break status.success();
        }
        if started.elapsed() > limit {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let stdout = reader.join().unwrap_or_default();
    Ok((ok, secs, format!("{stdout}{stderr}")))
}

fn emulator_cpu_seconds() -> Option<f64> {
    let pid = fs::read_to_string(format!("/run/ferry-lab/{}/emulator.pid", name())).ok()?;
    Some(
        crate::demo::proc_cpu(pid.trim().parse().ok()?)
            .ok()?
            .total(),
    )
}

struct Bench {
    dir: PathBuf,
    src: PathBuf,
    bytes: u64,
    limit: Duration,
    bin: PathBuf,
    rows: Vec<Row>,
}

impl Bench {
    fn ns_a() -> String {
        format!("{}-a", name())
    }
    fn ns_b() -> String {
        format!("{}-b", name())
    }

    /// Measures one run: `f` returns (rate Mbit/s, note) and the emulator's CPU share over
    /// the run is recorded beside it.
    fn measure(
        &mut self,
        path: &WanPath,
        tool: &str,
        f: impl FnOnce(&Bench) -> Result<(Option<f64>, f64, String)>,
    ) {
        let cpu0 = emulator_cpu_seconds();
        let (mbps, secs, note) = f(self).unwrap_or_else(|e| (None, 0.0, format!("error: {e:#}")));
        let cpu = match (cpu0, emulator_cpu_seconds()) {
            (Some(a), Some(b)) if secs > 0.0 => Some((b - a) / secs * 100.0),
            _ => None,
        };
        eprintln!(
            "    {tool}: {} {note}",
            mbps.map_or("-".into(), |m| format!("{m:.0} Mbit/s"))
        );
        self.rows.push(Row {
            path: path.label(),
            rtt_ms: path.rtt_ms,
            loss: path.loss,
            tool: tool.into(),
            mbps,
            secs,
            emulator_cpu: cpu,
            note,
        });
    }

    /// Rate from bytes that arrived in `secs`, with a note when the run was cut short.
    fn file_rate(&self, dest: &Path, ok: bool, secs: f64) -> (Option<f64>, f64, String) {
        let got = fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        let note = if ok && got == self.bytes {
            "wall time incl. connection set-up".to_string()
        } else if secs < self.limit.as_secs_f64() {
            format!(
                "failed after {secs:.1} s, {:.0} % arrived",
                got as f64 * 100.0 / self.bytes as f64
            )
        } else {
            format!(
                "stopped at {:.0} s limit, {:.0} % arrived",
                secs,
                got as f64 * 100.0 / self.bytes as f64
            )
        };
        (Some(got as f64 * 8.0 / secs / 1e6), secs, note)
    }

    fn ferry(&self, policy: &str, rate_mbps: f64) -> Result<(Option<f64>, f64, String)> {
        let dest = self.dir.join("srv/docroot/src.bin");
        let _ = fs::remove_file(&dest);
        let (ok, secs, out) = run_limited(
            in_ns(
                &Self::ns_a(),
                self.bin.join("ferry").to_str().expect("utf-8 path"),
            )
            .args(["send", "--json", "-P", "33001", "-i"])
            .arg(self.dir.join("id"))
            .arg("--known-hosts")
            .arg(self.dir.join("kh"))
            .args(["--accept-new", "--policy", policy, "-l"])
            .arg(format!("{}m", rate_mbps as u64))
            .arg(&self.src)
            .arg(format!("accept@{B_IP}:/")),
            self.limit,
        )?;
        let last = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        match last {
            Some(j) if ok && j["status"] == "ok" => Ok((
                j["rate_bps"].as_f64().map(|r| r / 1e6),
                secs,
                format!(
                    "data phase; re-sent {:.1} % of payload",
                    j["retransmitted_bytes"].as_f64().unwrap_or(0.0) * 100.0 / self.bytes as f64
                ),
            )),
            _ => {
                let (rate, secs, note) =
                    self.file_rate(&dest.with_extension("bin.partial"), false, secs);
                Ok((rate, secs, format!("ferry did not finish: {note}")))
            }
        }
    }

    fn iperf3(&self, cc: &str) -> Result<(Option<f64>, f64, String)> {
        let t = (self.limit.as_secs() / 2).clamp(5, 20);
        let _server = Guard(
            in_ns(&Self::ns_b(), "iperf3")
                .args(["-s", "-1", "-p", "5201"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        std::thread::sleep(Duration::from_millis(300));
        let (ok, secs, out) = run_limited(
            in_ns(&Self::ns_a(), "iperf3")
                .args(["-c", B_IP, "-p", "5201", "-J", "-C", cc, "-t"])
                .arg(t.to_string()),
            self.limit + Duration::from_secs(t),
        )?;
        if !ok {
            bail!("iperf3 failed: {}", out.lines().last().unwrap_or(""));
        }
        let j: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        Ok((
            j["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e6),
            secs,
            format!("{t} s memory to memory"),
        ))
    }

    fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.dir.join("id").display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    fn scp(&self) -> Result<(Option<f64>, f64, String)> {
        let dest = self.dir.join("scp.bin");
        let _ = fs::remove_file(&dest);
        let (ok, secs, _) = run_limited(
            in_ns(&Self::ns_a(), "scp")
                .args(["-q", "-P", "2222"])
                .args(self.ssh_opts())
                .arg(&self.src)
                .arg(format!("root@{B_IP}:{}", dest.display())),
            self.limit,
        )?;
        Ok(self.file_rate(&dest, ok, secs))
    }

    fn rsync(&self) -> Result<(Option<f64>, f64, String)> {
        let dest = self.dir.join("rsync.bin");
        let _ = fs::remove_file(&dest);
        let ssh = format!("ssh -p 2222 {}", self.ssh_opts().join(" "));
        let (ok, secs, _) = run_limited(
            in_ns(&Self::ns_a(), "rsync")
                .args(["--whole-file", "--inplace", "-e", &ssh])
                .arg(&self.src)
                .arg(format!("root@{B_IP}:{}", dest.display())),
            self.limit,
        )?;
        Ok(self.file_rate(&dest, ok, secs))
    }

    fn uftp(&self, rate_mbps: f64) -> Result<(Option<f64>, f64, String)> {
        let dir = self.dir.join("uftp");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let pid_file = self.dir.join("uftpd.pid");
        let status = in_ns(&Self::ns_b(), "uftpd")
            .arg("-D")
            .arg(&dir)
            .arg("-L")
            .arg(self.dir.join("uftpd.log"))
            .arg("-P")
            .arg(&pid_file)
            .args(["-B", "104857600", "-q"])
            .status()?;
        if !status.success() {
            bail!("uftpd did not start");
        }
        std::thread::sleep(Duration::from_millis(300));
        let r = run_limited(
            in_ns(&Self::ns_a(), "uftp")
                .args(["-M", B_IP, "-B", "104857600", "-R"])
                .arg(((rate_mbps * 1000.0) as u64).to_string())
                .arg(&self.src),
            self.limit,
        );
        // uftpd daemonises itself: stop it by the pid it wrote.
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a plain signal to the daemon this run started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let (ok, secs, _) = r?;
        let (rate, secs, note) = self.file_rate(&dir.join("src.bin"), ok, secs);
        Ok((rate, secs, format!("{note}; -R {rate_mbps} Mbit/s")))
    }

    fn start_ferryd(&self) -> Result<Guard> {
        let out = self.dir.join("ferryd.out");
        let g = Guard(
            in_ns(
                &Self::ns_b(),
                self.bin.join("ferryd").to_str().expect("utf-8"),
            )
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("srv/ferryd.toml"))
            .args(["--tcp-port", "33001", "--udp-port", "33001", "--ctl-socket"])
            .arg(self.dir.join("ctl.sock"))
            .stdout(fs::File::create(&out)?)
            .stderr(Stdio::null())
            .spawn()?,
        );
        for _ in 0..100 {
            if fs::read_to_string(&out).is_ok_and(|s| s.starts_with("ready ")) {
                return Ok(g);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("ferryd printed no ready line")
    }

    fn start_sshd(&self) -> Result<Guard> {
        let cfg = self.dir.join("sshd_config");
        fs::write(
            &cfg,
            format!(
                "Port 2222\nListenAddress {B_IP}\nHostKey {d}/ssh_host_key\nAuthorizedKeysFile {d}/id.pub\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                d = self.dir.display()
            ),
        )?;
        fs::create_dir_all("/run/sshd")?;
        let g = Guard(
            in_ns(&Self::ns_b(), "/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(fs::File::create(self.dir.join("sshd.log"))?)
                .spawn()?,
        );
        std::thread::sleep(Duration::from_millis(500));
        Ok(g)
    }
}

pub(crate) fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} × {cpu}, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

pub(crate) fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs the benchmark.
pub fn run(args: WanArgs) -> Result<()> {
    let _ = NAME.set(args.name.clone());
    let quick = args.quick;
    let size_mib = args.size_mib.unwrap_or(if quick { 128 } else { 512 });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    eprintln!("==> building ferryd and ferry (release)");
    let st = Command::new(env!("CARGO"))
        .current_dir(&root)
        // The same build as the acceptance scripts', so neither relinks the other's binaries.
        .args(["build", "--release", "-q", "--bins"])
        .status()?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("ferry-wan-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut bench = Bench {
        src: dir.join("src.bin"),
        bytes: size_mib << 20,
        limit: Duration::from_secs(if quick { 20 } else { 60 }),
        bin: root.join("target/release"),
        rows: Vec::new(),
        dir,
    };
    let result = run_paths(&mut bench, quick);
    let _ = lab::down_quietly_named(name());
    let _ = fs::remove_dir_all(&bench.dir);
    result?;

    let cmd = format!(
        "cargo xtask bench wan{}{}",
        if quick { " --quick" } else { "" },
        args.size_mib
            .map_or(String::new(), |s| format!(" --size-mib {s}"))
    );
    let mut md = String::new();
    writeln!(md, "# WAN lab benchmark\n")?;
    writeln!(md, "- machine: {}", machine())?;
    writeln!(md, "- date: {}", date())?;
    writeln!(md, "- command: `{cmd}`")?;
    writeln!(
        md,
        "- file: {size_mib} MiB of random bytes on tmpfs; link: ferry-lab emulator, MTU 1500, queue 100 ms, every setting in both directions; TCP tools use the namespace's default congestion control unless named"
    )?;
    writeln!(
        md,
        "- ferry rates are its data phase (`rate_bps`); file tools' rates are size / wall time (connection set-up included); a run past the {} s limit is stopped and counts what arrived\n",
        bench.limit.as_secs()
    )?;
    writeln!(
        md,
        "| path | tool | Mbit/s | s | emulator CPU % of a core | note |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for r in &bench.rows {
        writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} |",
            r.path,
            r.tool,
            r.mbps.map_or("–".into(), |m| format!("{m:.0}")),
            r.secs,
            r.emulator_cpu.map_or("–".into(), |c| format!("{c:.0}")),
            r.note
        )?;
    }
    print!("{md}");
    let results = root.join("benches/results");
    fs::create_dir_all(&results)?;
    let stamp = Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let file = results.join(format!(
        "wan-{stamp}{}.md",
        if quick { "-quick" } else { "" }
    ));
    let png = file.with_extension("png");
    let points: Vec<plot::Point> = bench
        .rows
        .iter()
        .filter_map(|r| {
            Some(plot::Point {
                tool: r.tool.clone(),
                loss: r.loss,
                rtt_ms: r.rtt_ms,
                mbps: r.mbps?,
            })
        })
        .collect();
    let title = format!("{cmd}, {} ({})", date(), machine());
    plot::throughput_vs_rtt(&points, &title, &png)?;
    let name = png.file_name().map(|n| n.to_string_lossy().into_owned());
    writeln!(
        md,
        "\n![throughput against RTT]({})",
        name.unwrap_or_default()
    )?;
    fs::write(&file, &md)?;
    eprintln!("written to {} and {}", file.display(), png.display());
    Ok(())
}

fn run_paths(bench: &mut Bench, quick: bool) -> Result<()> {
    let mut paths = vec![
        WanPath {
            rtt_ms: 50.0,
            loss: 0.0,
            rate_mbps: 500.0,
        },
        WanPath {
            rtt_ms: 100.0,
            loss: 0.01,
            rate_mbps: 500.0,
        },
    ];
    if !quick {
        paths.push(WanPath {
            rtt_ms: 200.0,
            loss: 0.05,
            rate_mbps: 500.0,
        });
    }
    random_file(&bench.src, bench.bytes)?;
    let srv = bench.dir.join("srv");
    crate::demo::run_checked(Command::new(bench.bin.join("ferryd")).arg("init").arg(&srv))?;
    crate::demo::run_checked(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "accept", "-f"])
            .arg(bench.dir.join("id")),
    )
    .context("ssh-keygen (package openssh-client) makes the key")?;
    crate::demo::run_checked(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(bench.dir.join("ssh_host_key")),
    )?;
    let public = fs::read_to_string(bench.dir.join("id.pub"))?;
    fs::write(srv.join("authorized_keys"), &public)?;
    let sshd = Path::new("/usr/sbin/sshd").exists();
    for p in &paths {
        eprintln!("==> path {}", p.label());
        let link = LinkArgs {
            rtt_ms: p.rtt_ms,
            loss: p.loss,
            rate_mbps: p.rate_mbps,
            ..LinkArgs::default()
        };
        lab::up_named(&link, name())?;
        let _ferryd = bench.start_ferryd()?;
        let _sshd = if sshd {
            Some(bench.start_sshd()?)
        } else {
            None
        };
        bench.measure(p, "ferry (fair)", |b| b.ferry("fair", p.rate_mbps));
        bench.measure(p, "ferry (fixed at link rate)", |b| {
            b.ferry("fixed", p.rate_mbps)
        });
        if have("iperf3") {
            for cc in ["cubic", "bbr"] {
                bench.measure(p, &format!("iperf3 TCP {cc}"), |b| b.iperf3(cc));
            }
        } else {
            bench.skip(p, "iperf3", "not installed (apt-get install iperf3)");
        }
        if sshd && have("scp") {
            bench.measure(p, "scp (OpenSSH)", |b| b.scp());
        } else {
            bench.skip(
                p,
                "scp",
                "no OpenSSH server (apt-get install openssh-server)",
            );
        }
        if sshd && have("rsync") {
            bench.measure(p, "rsync over ssh", |b| b.rsync());
        } else {
            bench.skip(
                p,
                "rsync",
                "not installed (apt-get install rsync openssh-server)",
            );
        }
        if have("uftp") && have("uftpd") {
            bench.measure(p, "uftp", |b| b.uftp(p.rate_mbps));
        } else {
            bench.skip(p, "uftp", "not installed (apt-get install uftp)");
        }
    }
    Ok(())
}

impl Bench {
    fn skip(&mut self, path: &WanPath, tool: &str, why: &str) {
        eprintln!("    {tool}: skipped, {why}");
        self.rows.push(Row {
            path: path.label(),
            rtt_ms: path.rtt_ms,
            loss: path.loss,
            tool: tool.into(),
            mbps: None,
            secs: 0.0,
            emulator_cpu: None,
            note: format!("skipped: {why}"),
        });
    }
}
