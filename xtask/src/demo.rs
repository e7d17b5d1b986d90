//! `cargo xtask demo`: a real transfer on loopback, from nothing, in one command.
//!
//! Builds the binaries, initialises a ferryd in a temporary directory, authorises a fresh
//! key, starts the daemon, uploads a file, downloads it back, checks both copies and
//! prints the rates.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

fn run(cmd: &mut Command) -> Result<String> {
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
fn random_file(path: &Path, size: u64) -> Result<()> {
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

/// Runs the demo with a file of `size_mib` MiB.
pub fn run_demo(size_mib: u64) -> Result<()> {
    let root = root();
    eprintln!("==> building ferryd and ferry (release)");
    run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "-q",
        "-p",
        "ferry-engine",
        "--bins",
    ]))?;
    let bin = root.join("target/release");
    let dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let srv = dir.join("srv");
    run(Command::new(bin.join("ferryd")).arg("init").arg(&srv))?;
    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "demo", "-f"])
        .arg(&key))
    .context("ssh-keygen (package openssh-client) makes the demo's key")?;
    let public = fs::read_to_string(key.with_extension("pub"))?;
    fs::OpenOptions::new()
        .append(true)
        .open(srv.join("authorized_keys"))?
        .write_all(public.as_bytes())?;

    eprintln!("==> starting ferryd");
    let mut child = Command::new(bin.join("ferryd"))
        .arg("run")
        .arg("--config")
        .arg(srv.join("ferryd.toml"))
        .args(["--tcp-port", "0", "--udp-port", "0", "--ctl-socket"])
        .arg(dir.join("ctl.sock"))
        .stdout(Stdio::piped())
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

    let src = dir.join("demo.bin");
    random_file(&src, size_mib << 20)?;
    let common = |cmd: &mut Command| {
        cmd.args(["-P", &port, "-i"])
            .arg(&key)
            .arg("--known-hosts")
            .arg(dir.join("known_hosts"))
            .args(["--accept-new", "--json"]);
    };
    eprintln!("==> ferry send demo.bin ({size_mib} MiB) demo@127.0.0.1:/");
    let mut send = Command::new(bin.join("ferry"));
    send.arg("send");
    common(&mut send);
    send.arg(&src).arg("demo@127.0.0.1:/");
    let up = last_json(&run(&mut send)?)?;
    let back = dir.join("back");
    fs::create_dir_all(&back)?;
    eprintln!("==> ferry recv demo@127.0.0.1:/demo.bin back/");
    let mut recv = Command::new(bin.join("ferry"));
    recv.arg("recv");
    common(&mut recv);
    recv.arg("demo@127.0.0.1:/demo.bin").arg(&back);
    let down = last_json(&run(&mut recv)?)?;
    drop(daemon);
    for copy in [srv.join("docroot/demo.bin"), back.join("demo.bin")] {
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
    let _ = fs::remove_dir_all(&dir);
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}
