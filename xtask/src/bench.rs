//! `cargo xtask bench loopback`: ferry's engine on loopback, with what each side costs.
//!
//! Uploads and downloads one file through a real ferryd on loopback, files on tmpfs (so the
//! engine is measured, not the disk), and reports for each direction the data-phase rate
//! and the CPU each side spent, as seconds per GiB and cycles per byte (at the CPU's
//! nominal clock): the figure that carries over to bigger hosts, where each core runs one
//! such sender or receiver. Also ferryd's peak resident memory.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::demo::{Loopback, proc_cpu, random_file};

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

/// Runs the loopback benchmark with a file of `size_mib` MiB, `runs` times each way.
pub fn loopback(size_mib: u64, runs: usize, cipher: &str) -> Result<()> {
    let base = Path::new("/dev/shm");
    let lab = Loopback::start(if base.is_dir() {
        base
    } else {
        Path::new("/tmp")
    })?;
    let src = lab.dir.join("bench.bin");
    random_file(&src, size_mib << 20)?;
    let back = lab.dir.join("back");
    fs::create_dir_all(&back)?;
    let hz = cpu_hz()?;
    let bytes = (size_mib << 20) as f64;
    println!(
        "ferry loopback, {size_mib} MiB, cipher {cipher}, files on tmpfs, CPU {:.0} MHz nominal",
        hz / 1e6
    );
    println!(
        "| direction | run | Gbit/s | sender s/GiB | receiver s/GiB | sender cycles/B | receiver cycles/B |"
    );
    println!("|---|---|---|---|---|---|---|");
    let pid = lab.server_pid();
    for verb in ["send", "recv"] {
        for run in 1..=runs {
            let before = proc_cpu(pid)?;
            let (json, client) = if verb == "send" {
                lab.ferry(
                    "send",
                    &[
                        "-c".as_ref(),
                        cipher.as_ref(),
                        src.as_os_str(),
                        "demo@127.0.0.1:/".as_ref(),
                    ],
                )?
            } else {
                lab.ferry(
                    "recv",
                    &[
                        "-c".as_ref(),
                        cipher.as_ref(),
                        "demo@127.0.0.1:/bench.bin".as_ref(),
                        back.as_os_str(),
                    ],
                )?
            };
            let after = proc_cpu(pid)?;
            let server = after.total() - before.total();
            let (sender, receiver) = if verb == "send" {
                (client.total(), server)
            } else {
                (server, client.total())
            };
            let gib = bytes / (1u64 << 30) as f64;
            println!(
                "| {} | {run} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                if verb == "send" { "upload" } else { "download" },
                json["rate_bps"].as_f64().unwrap_or(0.0) / 1e9,
                sender / gib,
                receiver / gib,
                sender * hz / bytes,
                receiver * hz / bytes,
            );
        }
    }
    println!(
        "ferryd peak resident memory: {} MiB",
        peak_rss_kib(pid)? / 1024
    );
    println!(
        "CPU seconds include each process's control plane (SSH handshake) and, for ferryd, \
         everything it did during the run; the clock is /proc/cpuinfo's nominal one."
    );
    Ok(())
}
