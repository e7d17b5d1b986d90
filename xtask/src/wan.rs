//! `cargo xtask bench wan`: ferry beside the usual tools across emulated WAN paths.
//!
//! The paths are the grid RTT 0/50/100/200/400 ms × loss 0/0.1/1/5 % at 500 Mbit/s (or
//! `--quick`'s two, or what `--rtt-ms`/`--loss` name). For each path the lab (`cargo xtask
//! lab`) is brought up, a ferryd, an OpenSSH server and a uftpd are started in namespace B,
//! and each tool moves the same file (on tmpfs) from namespace A, or for iperf3 runs for a
//! fixed time. Every run has a time cap, so the whole grid takes bounded time (estimated
//! and printed before it starts): a run still going at its cap is stopped and its figure is
//! the goodput within the cap (marked †). A tool that is not installed is skipped with a
//! note. The result, a summary (one line per path, one column per tool) and every run, is
//! printed and written to `benches/results/` with the machine, the date and the command,
//! with a PNG plot beside it.

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
    /// Time cap of each run, seconds (default 20 with --quick, else 60): a run still going
    /// is stopped and its goodput is what arrived within the cap.
    #[arg(long)]
    limit_s: Option<u64>,
    /// RTTs of the grid, ms, comma-separated (default 0,50,100,200,400).
    #[arg(long, value_delimiter = ',')]
    rtt_ms: Vec<f64>,
    /// Loss rates of the grid, comma-separated (default 0,0.001,0.01,0.05).
    #[arg(long, value_delimiter = ',')]
    loss: Vec<f64>,
    /// Link rate, Mbit/s.
    #[arg(long, default_value_t = 500.0)]
    rate_mbps: f64,
    /// Print the paths and the time estimate, and run nothing.
    #[arg(long)]
    dry_run: bool,
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
    /// Stopped at the time cap: `mbps` is the goodput within it.
    capped: bool,
    emulator_cpu: Option<f64>,
    note: String,
}

/// What one run of a tool gives: goodput (Mbit/s), seconds, stopped at the cap, a note.
struct Outcome {
    mbps: Option<f64>,
    secs: f64,
    capped: bool,
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

/// Bytes written in the files directly under `dir`: uftpd writes blocks at their offsets,
/// so a file's length can run ahead of its data; its allocated blocks do not.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len().min(m.blocks() * 512))
            .sum()
    })
}

/// How long iperf3 runs for a time cap: half of it, between 5 and 20 s.
fn iperf3_secs(limit: Duration) -> u64 {
    (limit.as_secs() / 2).clamp(5, 20)
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
    fn measure(&mut self, path: &WanPath, tool: &str, f: impl FnOnce(&Bench) -> Result<Outcome>) {
        let cpu0 = emulator_cpu_seconds();
        let o = f(self).unwrap_or_else(|e| Outcome {
            mbps: None,
            secs: 0.0,
            capped: false,
            note: format!("error: {e:#}"),
        });
        let cpu = match (cpu0, emulator_cpu_seconds()) {
            (Some(a), Some(b)) if o.secs > 0.0 => Some((b - a) / o.secs * 100.0),
            _ => None,
        };
        eprintln!(
            "    {tool}: {}{} {}",
            if o.capped { "≥ " } else { "" },
            o.mbps.map_or("-".into(), |m| format!("{m:.0} Mbit/s")),
            o.note
        );
        self.rows.push(Row {
            path: path.label(),
            rtt_ms: path.rtt_ms,
            loss: path.loss,
            tool: tool.into(),
            mbps: o.mbps,
            secs: o.secs,
            capped: o.capped,
            emulator_cpu: cpu,
            note: o.note,
        });
    }

    /// Goodput from `got` bytes that arrived in `secs`, with a note when the run was cut
    /// short.
    fn rate_of(&self, got: u64, ok: bool, secs: f64) -> Outcome {
        let pct = got as f64 * 100.0 / self.bytes as f64;
        let capped = !(ok && got == self.bytes) && secs >= self.limit.as_secs_f64();
        let note = if ok && got == self.bytes {
            "wall time incl. connection set-up".to_string()
        } else if capped {
            format!(
                "stopped at the {} s cap, {pct:.0} % arrived: goodput within the cap",
                self.limit.as_secs()
            )
        } else {
            format!("failed after {secs:.1} s, {pct:.0} % arrived")
        };
        Outcome {
            mbps: Some(got as f64 * 8.0 / secs / 1e6),
            secs,
            capped,
            note,
        }
    }

    /// Goodput from the file `dest` (written in order) after `secs`.
    fn file_rate(&self, dest: &Path, ok: bool, secs: f64) -> Outcome {
        let got = fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        self.rate_of(got, ok, secs)
    }

    fn ferry(&self, policy: &str, rate_mbps: f64) -> Result<Outcome> {
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
        let _ = fs::remove_file(&dest);
        let json: Vec<serde_json::Value> = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        match json.last() {
            Some(j) if ok && j["status"] == "ok" => Ok(Outcome {
                mbps: j["rate_bps"].as_f64().map(|r| r / 1e6),
                secs,
                capped: false,
                note: format!(
                    "data phase; re-sent {:.1} % of payload",
                    j["retransmitted_bytes"].as_f64().unwrap_or(0.0) * 100.0 / self.bytes as f64
                ),
            }),
            _ => {
                // NAME.partial is preallocated, so its length says nothing: the last
                // progress event says what arrived.
                let got = json
                    .iter()
                    .rev()
                    .find(|j| j["event"] == "progress")
                    .and_then(|j| j["bytes"].as_u64())
                    .unwrap_or(0);
                let _ = fs::remove_file(dest.with_extension("bin.partial"));
                let o = self.rate_of(got, false, secs);
                Ok(Outcome {
                    note: format!("ferry did not finish: {} (wall time)", o.note),
                    ..o
                })
            }
        }
    }

    fn iperf3(&self, cc: &str) -> Result<Outcome> {
        let t = iperf3_secs(self.limit);
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
        Ok(Outcome {
            mbps: j["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e6),
            secs,
            capped: false,
            note: format!("{t} s memory to memory"),
        })
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

    fn scp(&self) -> Result<Outcome> {
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
        let o = self.file_rate(&dest, ok, secs);
        let _ = fs::remove_file(&dest);
        Ok(o)
    }

    fn rsync(&self) -> Result<Outcome> {
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
        let o = self.file_rate(&dest, ok, secs);
        let _ = fs::remove_file(&dest);
        Ok(o)
    }

    fn uftp(&self, rate_mbps: f64) -> Result<Outcome> {
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
        // What arrived, before uftpd is stopped (it may tidy away an unfinished file).
        let got = dir_bytes(&dir);
        // uftpd daemonises itself: stop it by the pid it wrote.
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a plain signal to the daemon this run started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let (ok, secs, _) = r?;
        let _ = fs::remove_dir_all(&dir);
        let o = self.rate_of(got, ok, secs);
        Ok(Outcome {
            note: format!("{}; -R {rate_mbps} Mbit/s", o.note),
            ..o
        })
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
    let limit = Duration::from_secs(args.limit_s.unwrap_or(if quick { 20 } else { 60 }));
    let paths = grid(&args);
    if paths.is_empty() {
        bail!("no paths: --rtt-ms and --loss each need at least one value");
    }
    let (lo, hi) = estimate(&paths, size_mib << 20, limit);
    eprintln!(
        "==> {} path(s), {size_mib} MiB, {} s cap per run: expect about {:.0} min, at most {:.0} min \
         (every run at its cap), plus the build",
        paths.len(),
        limit.as_secs(),
        lo / 60.0,
        hi / 60.0
    );
    if args.dry_run {
        for p in &paths {
            eprintln!("    {}", p.label());
        }
        return Ok(());
    }
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
        limit,
        bin: root.join("target/release"),
        rows: Vec::new(),
        dir,
    };
    let started = Instant::now();
    let result = run_paths(&mut bench, &paths);
    let took = started.elapsed().as_secs_f64();
    let _ = lab::down_quietly_named(name());
    let _ = fs::remove_dir_all(&bench.dir);
    result?;

    let mut cmd = format!(
        "cargo xtask bench wan{}",
        if quick { " --quick" } else { "" }
    );
    if let Some(s) = args.size_mib {
        write!(cmd, " --size-mib {s}")?;
    }
    if let Some(l) = args.limit_s {
        write!(cmd, " --limit-s {l}")?;
    }
    let list = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
    if !args.rtt_ms.is_empty() {
        write!(cmd, " --rtt-ms {}", list(&args.rtt_ms))?;
    }
    if !args.loss.is_empty() {
        write!(cmd, " --loss {}", list(&args.loss))?;
    }
    if args.rate_mbps != 500.0 {
        write!(cmd, " --rate-mbps {}", args.rate_mbps)?;
    }
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
        "- ferry rates are its data phase (`rate_bps`); file tools' rates are size / wall time (connection set-up included); iperf3 runs {} s memory to memory",
        iperf3_secs(bench.limit)
    )?;
    writeln!(
        md,
        "- every run has a {} s cap: a run still going then is stopped, and its figure (marked †) is the goodput within the cap, bytes that arrived / wall time; the whole run took {:.0} min\n",
        bench.limit.as_secs(),
        took / 60.0
    )?;
    summary(&mut md, &bench.rows)?;
    writeln!(md, "\n## Every run\n")?;
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
            cell(r),
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

/// The paths to run: `--quick`'s two, or the grid of `--rtt-ms` × `--loss`.
fn grid(args: &WanArgs) -> Vec<WanPath> {
    let path = |rtt_ms, loss| WanPath {
        rtt_ms,
        loss,
        rate_mbps: args.rate_mbps,
    };
    if args.quick && args.rtt_ms.is_empty() && args.loss.is_empty() {
        return vec![path(50.0, 0.0), path(100.0, 0.01)];
    }
    let rtts = if args.rtt_ms.is_empty() {
        vec![0.0, 50.0, 100.0, 200.0, 400.0]
    } else {
        args.rtt_ms.clone()
    };
    let losses = if args.loss.is_empty() {
        vec![0.0, 0.001, 0.01, 0.05]
    } else {
        args.loss.clone()
    };
    rtts.iter()
        .flat_map(|&r| losses.iter().map(move |&l| (r, l)))
        .map(|(r, l)| path(r, l))
        .collect()
}

/// Seconds the runs of `paths` take: (a rough expectation, the bound when every run hits
/// `limit`). The expectation's model, from earlier runs here: about 4 s of set-up a path
/// (lab, ferryd, sshd); ferry at 0.9 of the link minus loss, after 1 s and 4 RTTs of set-up;
/// scp and rsync held by OpenSSH's 2 MiB channel window to 2 MiB a round trip and to 45 %
/// of the link (measured 213 Mbit/s at 50 ms); uftp at 30 % of the link; iperf3 its fixed
/// time and 1.5 s.
fn estimate(paths: &[WanPath], bytes: u64, limit: Duration) -> (f64, f64) {
    let cap = limit.as_secs_f64();
    let iperf = 2.0 * (iperf3_secs(limit) as f64 + 1.5);
    let mut lo = 0.0;
    let mut hi = 0.0;
    let mbit = bytes as f64 * 8.0 / 1e6;
    for p in paths {
        let rtt = p.rtt_ms / 1e3;
        let link = p.rate_mbps * (1.0 - p.loss);
        let ferry = (1.0 + 4.0 * rtt + mbit / (0.9 * link)).min(cap);
        // 2 MiB a round trip, in Mbit.
        let ssh_rate = (0.45 * p.rate_mbps).min(16.777 / rtt.max(1e-3));
        let ssh = (1.0 + mbit / ssh_rate).min(cap);
        let uftp = (2.0 + mbit / (0.3 * link)).min(cap);
        lo += 4.0 + iperf + 2.0 * ferry + 2.0 * ssh + uftp;
        hi += 4.0 + iperf + 5.0 * cap;
    }
    (lo, hi)
}

/// A table cell: the rate, † when the run was stopped at its cap.
fn cell(r: &Row) -> String {
    match r.mbps {
        Some(m) if r.capped => format!("{m:.0} †"),
        Some(m) => format!("{m:.0}"),
        None => "–".into(),
    }
}

/// One line per path, one column per tool, and ferry (fair) against the best kernel TCP
/// and against scp.
fn summary(md: &mut String, rows: &[Row]) -> Result<()> {
    let mut tools: Vec<&str> = Vec::new();
    let mut paths: Vec<&str> = Vec::new();
    for r in rows {
        if !tools.contains(&r.tool.as_str()) {
            tools.push(&r.tool);
        }
        if !paths.contains(&r.path.as_str()) {
            paths.push(&r.path);
        }
    }
    writeln!(
        md,
        "## Goodput, Mbit/s († stopped at the cap: goodput within it)\n"
    )?;
    writeln!(
        md,
        "| path | {} | ferry (fair) ÷ best TCP | ferry (fair) ÷ scp |",
        tools.join(" | ")
    )?;
    writeln!(md, "|---|{}---|---|", "---|".repeat(tools.len()))?;
    for p in paths {
        let find = |t: &str| rows.iter().find(|r| r.path == p && r.tool == t);
        let rate = |t: &str| find(t).and_then(|r| r.mbps);
        let cells: Vec<String> = tools
            .iter()
            .map(|t| find(t).map_or("–".into(), cell))
            .collect();
        let ferry = rate("ferry (fair)");
        let tcp = match (rate("iperf3 TCP cubic"), rate("iperf3 TCP bbr")) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".into(),
        };
        writeln!(
            md,
            "| {p} | {} | {} | {} |",
            cells.join(" | "),
            ratio(ferry, tcp),
            ratio(ferry, rate("scp (OpenSSH)"))
        )?;
    }
    Ok(())
}

fn run_paths(bench: &mut Bench, paths: &[WanPath]) -> Result<()> {
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
    let started = Instant::now();
    for (i, p) in paths.iter().enumerate() {
        eprintln!(
            "==> path {} of {}: {} ({:.0} min so far)",
            i + 1,
            paths.len(),
            p.label(),
            started.elapsed().as_secs_f64() / 60.0
        );
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
            capped: false,
            emulator_cpu: None,
            note: format!("skipped: {why}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        wan: WanArgs,
    }

    fn args(a: &[&str]) -> WanArgs {
        Cli::parse_from(std::iter::once("wan").chain(a.iter().copied())).wan
    }

    #[test]
    fn the_full_grid_is_every_rtt_by_every_loss() {
        let p = grid(&args(&[]));
        assert_eq!(p.len(), 20);
        assert!(p.iter().all(|p| p.rate_mbps == 500.0));
        assert!(p.iter().any(|p| p.rtt_ms == 400.0 && p.loss == 0.05));
        assert!(p.iter().any(|p| p.rtt_ms == 0.0 && p.loss == 0.001));
        assert_eq!(grid(&args(&["--quick"])).len(), 2);
        let some = grid(&args(&["--rtt-ms", "200", "--loss", "0.01,0.05"]));
        assert_eq!(some.len(), 2);
        assert!(some.iter().all(|p| p.rtt_ms == 200.0));
    }

    #[test]
    fn the_estimate_is_bounded_by_the_caps() {
        let paths = grid(&args(&[]));
        let limit = Duration::from_secs(60);
        let (lo, hi) = estimate(&paths, 512 << 20, limit);
        // Per path: set-up, two iperf3 runs of 20 s, five file transfers at their cap.
        assert_eq!(hi, 20.0 * (4.0 + 2.0 * 21.5 + 5.0 * 60.0));
        assert!(lo > 0.0 && lo < hi);
        // A tiny file finishes well inside its caps.
        let (small, _) = estimate(&paths, 1 << 20, limit);
        assert!(small < lo / 2.0);
    }

    #[test]
    fn capped_runs_are_marked_in_the_summary() {
        let row = |tool: &str, mbps, capped| Row {
            path: "p".into(),
            rtt_ms: 200.0,
            loss: 0.01,
            tool: tool.into(),
            mbps: Some(mbps),
            secs: 60.0,
            capped,
            emulator_cpu: None,
            note: String::new(),
        };
        let rows = [
            row("ferry (fair)", 450.0, false),
            row("iperf3 TCP cubic", 2.0, false),
            row("iperf3 TCP bbr", 90.0, false),
            row("scp (OpenSSH)", 30.0, true),
        ];
        let mut md = String::new();
        summary(&mut md, &rows).unwrap();
        let line = md.lines().last().unwrap();
        assert_eq!(line, "| p | 450 | 2 | 90 | 30 † | 5.00 | 15.00 |");
    }
}
