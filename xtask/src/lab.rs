//! `cargo xtask lab up|down`: the WAN lab, two network namespaces joined through ferry's
//! userspace link emulator (`ferry-lab`), left running in the background between the two.
//!
//! `up` creates the namespaces, starts the emulator as a detached daemon (this same binary,
//! `lab run-emulator`, in its own session) with its pid file and log under
//! `/run/ferry-lab/NAME/`, waits until a ping crosses, and prints
//! `lab a=NS:ADDR b=NS:ADDR`. `down` stops the daemon (found by pid file, or by its command
//! line if the pid file is gone) and removes the namespaces; it is idempotent.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ferry_lab::netns;
use ferry_lab::{Emulator, EmulatorConfig, LinkConfig, Loss};

/// The lab's subcommands.
#[derive(Subcommand)]
pub enum Lab {
    /// Build the two namespaces and the emulated link, print `lab a=NS:ADDR b=NS:ADDR`.
    Up {
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        name: NameArg,
    },
    /// Stop the emulator and remove the namespaces (safe to repeat, also after a crash).
    Down {
        #[command(flatten)]
        name: NameArg,
    },
    /// The emulator daemon itself (started by `up`).
    #[command(hide = true)]
    RunEmulator {
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        name: NameArg,
    },
}

/// Which lab: the namespaces are NAME-a and NAME-b.
#[derive(Args, Clone)]
pub struct NameArg {
    /// Name of the lab (namespaces NAME-a and NAME-b); tests use their own.
    #[arg(long = "name", default_value = "ferrylab", value_parser = parse_name)]
    pub name: String,
}

/// The emulated path; every setting applies to each direction.
#[derive(Args, Clone)]
pub struct LinkArgs {
    /// Round-trip propagation delay, ms (each direction gets half).
    #[arg(long, default_value_t = 100.0)]
    pub rtt_ms: f64,
    /// Per-packet delay variation, ± ms each direction (order is kept unless --reorder).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Random loss probability per packet, each direction.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Gilbert–Elliott burst loss "G2B,B2G,LOSS_BAD" (replaces --loss).
    #[arg(long)]
    pub burst_loss: Option<String>,
    /// Bottleneck rate, Mbit/s of IP packets, each direction (0: unlimited).
    #[arg(long, default_value_t = 1000.0)]
    pub rate_mbps: f64,
    /// Drop-tail queue at the bottleneck, ms at the link rate.
    #[arg(long, default_value_t = 100.0)]
    pub queue_ms: f64,
    /// Probability that a packet is held back 1 ms and overtaken.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// MTU of the emulated link.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Seed of the loss, jitter and reordering draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How often a busy emulator thread wakes, µs (releases are within ± half of it, and
    /// what is released together reaches the receiver as one burst, like a NIC's interrupt
    /// moderation).
    #[arg(long, default_value_t = 100)]
    pub tick_us: u64,
}

impl Default for LinkArgs {
    fn default() -> Self {
        LinkArgs {
            rtt_ms: 100.0,
            jitter_ms: 0.0,
            loss: 0.0,
            burst_loss: None,
            rate_mbps: 1000.0,
            queue_ms: 100.0,
            reorder: 0.0,
            mtu: 1500,
            seed: 1,
            tick_us: 100,
        }
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 12
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("1 to 12 characters of a-z, 0-9 and '-'".into())
    }
}

impl LinkArgs {
    fn loss(&self) -> Result<Loss> {
        if !(0.0..1.0).contains(&self.loss) {
            bail!("--loss must be in [0, 1)");
        }
        let Some(spec) = &self.burst_loss else {
            return Ok(if self.loss > 0.0 {
                Loss::Random(self.loss)
            } else {
                Loss::None
            });
        };
        let v: Vec<f64> = spec
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .context("--burst-loss takes G2B,B2G,LOSS_BAD")?;
        let [to_bad, to_good, loss_bad] = v[..] else {
            bail!("--burst-loss takes three numbers: G2B,B2G,LOSS_BAD");
        };
        Ok(Loss::GilbertElliott {
            to_bad,
            to_good,
            loss_good: 0.0,
            loss_bad,
        })
    }

    fn link(&self, seed: u64) -> Result<LinkConfig> {
        if self.rtt_ms < 0.0 || self.jitter_ms < 0.0 || self.queue_ms < 0.0 || self.rate_mbps < 0.0
        {
            bail!("delays, rates and queues cannot be negative");
        }
        Ok(LinkConfig {
            delay: Duration::from_secs_f64(self.rtt_ms / 2e3),
            jitter: Duration::from_secs_f64(self.jitter_ms / 1e3),
            loss: self.loss()?,
            rate_bps: (self.rate_mbps * 1e6) as u64,
            queue: Duration::from_secs_f64(self.queue_ms / 1e3),
            reorder: self.reorder,
            reorder_gap: Duration::from_millis(1),
            seed,
        })
    }

    /// The same settings as command-line arguments (for the daemon).
    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--rtt-ms={}", self.rtt_ms),
            format!("--jitter-ms={}", self.jitter_ms),
            format!("--loss={}", self.loss),
            format!("--rate-mbps={}", self.rate_mbps),
            format!("--queue-ms={}", self.queue_ms),
            format!("--reorder={}", self.reorder),
            format!("--mtu={}", self.mtu),
            format!("--seed={}", self.seed),
            format!("--tick-us={}", self.tick_us),
        ];
        if let Some(b) = &self.burst_loss {
            a.push(format!("--burst-loss={b}"));
        }
        a
    }
}

/// The names and paths of one lab.
struct Names {
    name: String,
}

impl Names {
    fn ns_a(&self) -> String {
        format!("{}-a", self.name)
    }
    fn ns_b(&self) -> String {
        format!("{}-b", self.name)
    }
    fn dir(&self) -> PathBuf {
        Path::new("/run/ferry-lab").join(&self.name)
    }
    fn pid_file(&self) -> PathBuf {
        self.dir().join("emulator.pid")
    }
    fn ready_file(&self) -> PathBuf {
        self.dir().join("ready")
    }
    fn log_file(&self) -> PathBuf {
        self.dir().join("emulator.log")
    }
}

const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Runs a lab subcommand.
pub fn run(cmd: Lab) -> Result<()> {
    match cmd {
        Lab::Up { link, name } => {
            println!("{}", up(&link, &Names { name: name.name })?);
            Ok(())
        }
        Lab::Down { name } => down(&Names { name: name.name }),
        Lab::RunEmulator { link, name } => run_emulator(&link, &Names { name: name.name }),
    }
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces and TUN devices); run it with sudo");
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .context("`ip` is missing (apt-get install iproute2)")?;
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing (modprobe tun)");
    }
    Ok(())
}

/// Brings up the lab `name` (replacing one that is up); returns its `lab a=… b=…` line.
pub fn up_named(link: &LinkArgs, name: &str) -> Result<String> {
    up(
        link,
        &Names {
            name: name.to_string(),
        },
    )
}

/// Takes the lab `name` down, quietly.
pub fn down_quietly_named(name: &str) -> Result<()> {
    down_quietly(&Names {
        name: name.to_string(),
    })
}

fn up(link: &LinkArgs, names: &Names) -> Result<String> {
    preflight()?;
    link.link(link.seed)?; // validate before building anything
    if names.pid_file().exists() || netns::exists(&names.ns_a()) || netns::exists(&names.ns_b()) {
        eprintln!("lab {}: replacing the lab that is up", names.name);
        down_quietly(names)?;
    }
    fs::create_dir_all(names.dir())
        .with_context(|| format!("creating {}", names.dir().display()))?;
    for ns in [names.ns_a(), names.ns_b()] {
        netns::create(&ns).with_context(|| format!("creating namespace {ns}"))?;
    }
    let log = fs::File::create(names.log_file())
        .with_context(|| format!("creating {}", names.log_file().display()))?;
    let mut exe = std::env::current_exe().context("finding this executable")?;
    // A build since this process started (`bench wan` builds every binary) may have
    // replaced the file: Linux then names it "PATH (deleted)"; the new one is at PATH.
    if let Some(live) = exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        exe = PathBuf::from(live);
    }
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "run-emulator", "--name", &names.name])
        .args(link.to_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the daemon leaves our session and terminal so
    // it outlives this command and ignores its hang-up.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the emulator daemon")?;
    fs::write(names.pid_file(), format!("{}\n", child.id()))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !names.ready_file().exists() {
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(names.log_file()).unwrap_or_default();
            let _ = down_quietly(names);
            bail!("the emulator exited ({status}) before it was ready:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = down_quietly(names);
            bail!("the emulator was not ready after 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check_path(names, link)?;
    Ok(format!(
        "lab a={}:{ADDR_A} b={}:{ADDR_B}",
        names.ns_a(),
        names.ns_b()
    ))
}

/// Sends pings across until one returns (the link may be lossy), so `up` returns only when
/// traffic passes. Skipped, with a note, without `ping`.
fn check_path(names: &Names, link: &LinkArgs) -> Result<()> {
    let wait = ((link.rtt_ms + 4.0 * link.jitter_ms) / 1e3 + 1.0).ceil() as u64;
    for _ in 0..10 {
        let out = Command::new("ip")
            .args(["netns", "exec", &names.ns_a(), "ping", "-c", "1", "-W"])
            .arg(wait.to_string())
            .arg(ADDR_B.to_string())
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No such file") => {
                eprintln!("note: no `ping` (apt-get install iputils-ping); not checking the path");
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(e).context("running ip netns exec … ping"),
        }
    }
    let log = fs::read_to_string(names.log_file()).unwrap_or_default();
    bail!("no ping crossed the lab in 10 tries; emulator log:\n{log}")
}

fn down(names: &Names) -> Result<()> {
    preflight()?;
    down_quietly(names)?;
    println!("lab {} down", names.name);
    Ok(())
}

/// Processes running `… lab run-emulator --name NAME …`, however they were started.
fn emulator_pids(names: &Names) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w == [b"lab".as_slice(), b"run-emulator"])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--name" && w[1] == names.name.as_bytes())
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn stop_process(pid: i32) {
    // SAFETY: plain signals to a process we started (identified by its command line).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) && Instant::now() < deadline {
        // Reap it if it is our child (it is when `up` fails); harmless otherwise.
        // SAFETY: WNOHANG never blocks; a null status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn down_quietly(names: &Names) -> Result<()> {
    let mut pids = emulator_pids(names);
    if let Some(pid) = fs::read_to_string(names.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        && !pids.contains(&pid)
        && alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(12).any(|w| w == b"run-emulator"))
    {
        pids.push(pid);
    }
    for pid in pids {
        stop_process(pid);
    }
    for ns in [names.ns_a(), names.ns_b()] {
        netns::delete(&ns).with_context(|| format!("removing namespace {ns}"))?;
    }
    let _ = fs::remove_file(names.pid_file());
    let _ = fs::remove_file(names.ready_file());
    Ok(())
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

fn run_emulator(link: &LinkArgs, names: &Names) -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut cfg = EmulatorConfig::new(&names.ns_a(), &names.ns_b(), ADDR_A, ADDR_B);
    cfg.mtu = link.mtu;
    cfg.tick = Duration::from_micros(link.tick_us.max(1));
    // Each direction its own stream of draws, so A→B and B→A losses are independent.
    cfg.a_to_b = link.link(link.seed)?;
    cfg.b_to_a = link.link(link.seed.wrapping_mul(0x9e37_79b9).wrapping_add(1))?;
    eprintln!(
        "ferry-lab emulator pid {}: {} <-> {}, {:?}",
        std::process::id(),
        cfg.ns_a,
        cfg.ns_b,
        cfg.a_to_b
    );
    let emu = Emulator::start(cfg).context("starting the emulator")?;
    fs::write(names.ready_file(), "ready\n")?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    let s = emu.stats();
    eprintln!(
        "up: realtime threads {}/{}, UDP segmentation offload {}",
        s[0].realtime, s[1].realtime, emu.uso
    );
    let mut last_log = Instant::now();
    while !TERMINATE.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last_log.elapsed() >= Duration::from_secs(10) {
            log_stats(&emu.stats(), started);
            last_log = Instant::now();
        }
    }
    let s = emu.stop();
    log_stats(&s, started);
    eprintln!("stopped");
    let _ = fs::remove_file(names.ready_file());
    Ok(())
}

fn log_stats(s: &[ferry_lab::emulator::DirectionStats; 2], started: Instant) {
    for (dir, d) in ["a->b", "b->a"].iter().zip(s) {
        eprintln!(
            "{:.0}s {dir}: reads {} (super-packets {}), segments {} ({} bytes), dropped queue {} wire {} overflow {}, reordered {}, released {}, malformed {}, write errors {}, writes {} (merged {})",
            started.elapsed().as_secs_f64(),
            d.reads,
            d.super_packets,
            d.link.packets,
            d.link.bytes,
            d.link.dropped_queue,
            d.link.dropped_wire,
            d.link.dropped_overflow,
            d.link.reordered,
            d.link.released,
            d.malformed,
            d.write_errors,
            d.writes,
            d.merged
        );
    }
}
