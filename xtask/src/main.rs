//! ferry's developer tasks. `cargo xtask --help` lists them.

mod bench;
mod ci;
mod demo;
mod lab;
mod plot;
mod wan;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ferry_sim::scenario::{self, ScenarioConfig, TcpAlgorithm};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ferry's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI checks: formatting, clippy, all tests, a simulator smoke grid.
    Ci,
    /// Run the sans-IO protocol over the simulated network.
    Sim(SimArgs),
    /// Benchmarks: `loopback` (ferry beside iperf3, scp, rsync and dd on one host), `wan`.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// The WAN lab: two network namespaces joined through ferry's link emulator.
    Lab {
        #[command(subcommand)]
        cmd: lab::Lab,
    },
    /// A real transfer on loopback: build, start a ferryd, send a file up and back.
    Demo {
        /// Size of the file, MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// ferry (each cipher, up and down) beside iperf3 UDP and TCP, scp, rsync and dd on
    /// loopback, files on tmpfs and on the disk: rates, ratios, CPU per GiB each side.
    Loopback(bench::LoopbackArgs),
    /// ferry beside iperf3, scp, rsync and uftp across emulated WAN paths (`cargo xtask lab`).
    Wan(wan::WanArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// Round-trip propagation delay, ms.
    #[arg(long, default_value_t = 50.0)]
    rtt_ms: f64,
    /// Random loss probability, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bottleneck rate, Mbit/s.
    #[arg(long, default_value_t = 1000.0)]
    link_mbps: f64,
    /// Bottleneck drop-tail queue, ms at the link rate.
    #[arg(long, default_value_t = 100.0)]
    queue_ms: f64,
    /// Payload per ferry flow (e.g. 1GiB, 64MiB, 10MB, 4096).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    bytes: u64,
    /// fixed | high | fair | low.
    #[arg(long, default_value = "fair")]
    policy: ferry_tuning::Policy,
    /// Number of ferry flows.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Number of competing TCP flows.
    #[arg(long, default_value_t = 0)]
    tcp_flows: usize,
    /// reno | cubic.
    #[arg(long, default_value = "cubic", value_parser = parse_tcp)]
    tcp: TcpAlgorithm,
    /// RNG seed (a failing run prints it; pass it back to replay).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-packet jitter, ms.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Gilbert–Elliott burst loss "G2B,B2G,LOSS_BAD" (replaces --loss).
    #[arg(long, value_parser = parse_burst)]
    burst_loss: Option<(f64, f64, f64)>,
    /// Reordering probability.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Duplication probability.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Corruption probability.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Path MTU (largest IP packet). The default, 64 KiB datagrams as on loopback, keeps
    /// ferry's 84 bytes of per-datagram overhead (IP, UDP, header, tag) at 0.13 % of the
    /// link; at 9000 they cost 0.9 % and at 1500 5.6 % of capacity.
    #[arg(long, default_value_t = 65_535)]
    mtu: usize,
    /// aes128 | aes256 | none.
    #[arg(long, default_value = "aes128")]
    cipher: ferry_proto::crypto::Cipher,
    /// Target rate per flow, Mbit/s.
    #[arg(long, default_value_t = 10_000.0)]
    target_mbps: f64,
    /// Minimum rate per flow, Mbit/s.
    #[arg(long, default_value_t = 0.0)]
    min_mbps: f64,
    /// Start the ferry flows this long after the TCP flows, ms.
    #[arg(long, default_value_t = 0.0)]
    ferry_start_ms: f64,
    /// Include a rate trace sampled this often, ms.
    #[arg(long)]
    trace_ms: Option<f64>,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        u => return Err(format!("unknown size unit {u:?}")),
    };
    Ok((n * mult) as u64)
}

fn parse_tcp(s: &str) -> Result<TcpAlgorithm, String> {
    match s {
        "reno" => Ok(TcpAlgorithm::Reno),
        "cubic" => Ok(TcpAlgorithm::Cubic),
        _ => Err("expected reno or cubic".into()),
    }
}

fn parse_burst(s: &str) -> Result<(f64, f64, f64), String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match v[..] {
        [a, b, c] => Ok((a, b, c)),
        _ => Err("expected G2B,B2G,LOSS_BAD".into()),
    }
}

fn ms(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0) / 1e3)
}

fn sim(a: SimArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.loss) {
        bail!("--loss must be in [0, 1)");
    }
    if a.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let cfg = ScenarioConfig {
        rtt: ms(a.rtt_ms),
        jitter: ms(a.jitter_ms),
        loss: a.loss,
        burst_loss: a.burst_loss,
        reorder: a.reorder,
        duplicate: a.duplicate,
        corrupt: a.corrupt,
        link_mbps: a.link_mbps,
        queue: ms(a.queue_ms),
        mtu: a.mtu,
        bytes: a.bytes,
        policy: a.policy,
        target_bps: (a.target_mbps * 1e6) as u64,
        min_bps: (a.min_mbps * 1e6) as u64,
        cipher: a.cipher,
        flows: a.flows,
        tcp_flows: a.tcp_flows,
        tcp_algorithm: a.tcp,
        ferry_start: ms(a.ferry_start_ms),
        seed: a.seed,
        trace_interval: a.trace_ms.map(ms),
    };
    let started = Instant::now();
    let report = scenario::run(&cfg);
    let wall = started.elapsed().as_secs_f64();
    let mut json = serde_json::to_value(&report).context("serialising the report")?;
    json["sim_wall_s"] = wall.into();
    if a.json {
        println!("{json}");
    } else {
        println!(
            "completed={} bytes_ok={} goodput={:.3} steady={:.3} tail_rtts={} retransmit={:.4} jain={:.3}{} elapsed={:.2}s (simulated in {:.1}s, seed {})",
            report.completed,
            report.bytes_ok,
            report.goodput_ratio,
            report.steady_ratio,
            report.tail_rtts.map_or("-".into(), |t| format!("{t:.2}")),
            report.retransmit_ratio,
            report.jain,
            report
                .tcp_share
                .map_or(String::new(), |s| format!(" tcp_share={s:.3}")),
            report.elapsed_s,
            wall,
            report.seed
        );
        for e in &report.errors {
            eprintln!("error: {e}");
        }
    }
    if !report.completed || !report.bytes_ok {
        eprintln!("the run failed; replay it with --seed {}", report.seed);
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::Sim(a) => sim(a),
        Task::Demo { size_mib } => demo::run_demo(size_mib),
        Task::Lab { cmd } => lab::run(cmd),
        Task::Bench {
            which: Bench::Loopback(args),
        } => bench::loopback(args),
        Task::Bench {
            which: Bench::Wan(args),
        } => wan::run(args),
    }
}
