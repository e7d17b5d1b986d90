//! `cargo xtask ci`: everything CI checks, in the order CI runs it, so a green run here is a
//! green run there. `.ci/run` installs what a fresh machine lacks and then calls this.
//!
//! Cheap checks go first (format, lints) so a typo fails in seconds, not after the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// `cargo` subcommands, run from the workspace root in this order.
const STEPS: &[&[&str]] = &[
    &["fmt", "--all", "--check"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ],
    // The pure-Rust AES-GCM backend alone: `--all-features` always builds aws-lc-rs too.
    &[
        "clippy",
        "-p",
        "ferry-proto",
        "--no-default-features",
        "--features",
        "rustcrypto",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    &["test", "--workspace", "--all-features"],
    &[
        "test",
        "-p",
        "ferry-proto",
        "--no-default-features",
        "--features",
        "rustcrypto",
    ],
    &["build", "--release", "-p", "xtask"],
];

/// A smoke grid for the simulator: small enough to take seconds, varied enough (loss, long
/// RTT, two flows sharing a queue) to catch a transfer that no longer finishes or corrupts.
/// The full grid with its thresholds is the acceptance script's job.
const SMOKE: &[&[&str]] = &[
    &["--rtt-ms", "50", "--loss", "0.01", "--bytes", "64MiB"],
    &["--rtt-ms", "200", "--loss", "0.05", "--bytes", "64MiB"],
    &["--flows", "2", "--rtt-ms", "100", "--bytes", "64MiB"],
];

/// Runs every CI step; the first failure stops the run.
pub fn run() -> Result<()> {
    let root = project_root();
    let started = Instant::now();
    for args in STEPS {
        let t = Instant::now();
        eprintln!("==> cargo {}", args.join(" "));
        let status = cargo(&root)
            .args(*args)
            .status()
            .with_context(|| format!("starting cargo {}", args.join(" ")))?;
        if !status.success() {
            bail!("ci step failed ({status}): cargo {}", args.join(" "));
        }
        eprintln!("    ok in {:.0}s", t.elapsed().as_secs_f64());
    }
    for args in SMOKE {
        smoke(&root, args)?;
    }
    eprintln!("==> ci passed in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One simulated transfer through `cargo xtask sim --json`; it must complete with every
/// byte intact.
fn smoke(root: &Path, args: &[&str]) -> Result<()> {
    let line = format!("cargo xtask sim --json {}", args.join(" "));
    eprintln!("==> {line}");
    let out = cargo(root)
        .args(["xtask", "sim", "--json"])
        .args(args)
        .output()
        .with_context(|| format!("starting {line}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{line} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("{line} printed no JSON report: {stdout:?}"))?;
    let ok = |key: &str| report[key].as_bool() == Some(true);
    if !ok("completed") || !ok("bytes_ok") {
        bail!(
            "{line}: completed={} bytes_ok={} (replay with --seed {}): {last}",
            report["completed"],
            report["bytes_ok"],
            report["seed"]
        );
    }
    eprintln!(
        "    ok: goodput {:.3}, steady {:.3}, retransmit {:.4}",
        report["goodput_ratio"].as_f64().unwrap_or(f64::NAN),
        report["steady_ratio"].as_f64().unwrap_or(f64::NAN),
        report["retransmit_ratio"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// `cargo` as the one running us (the `CARGO` variable `cargo run` sets), in the workspace
/// root so the `xtask` alias and `rust-toolchain.toml` apply.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_owned()
}
