//! Link outages with real processes: ferryd and ferry each in a network namespace of their
//! own, joined by a veth pair, and the link cut by an nftables rule in both namespaces that
//! drops every IP packet arriving over it. Nothing is refused or reported to either side:
//! datagrams and TCP segments vanish, as behind a dead router.
//!
//! - 30 s (less than the 60 s data timeout and the SSH keepalives' two minutes): the
//!   transfer stalls, then continues by itself over the same control connection and
//!   completes exact, both ways.
//! - longer than the data timeout: the transfer fails with 21 (data timeout); `--retry`
//!   retries, resumes once the link is back, and completes exact; without it, a second run
//!   resumes the partial.
//!
//! These tests need root, `ip` and `nft`; without them they print why and pass.

#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{FerryRun, Running, Server, first_difference, leftovers, write_random_file};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The client's and the server's addresses on the veth pair.
const ADDR_A: &str = "10.203.0.1";
const ADDR_B: &str = "10.203.0.2";

/// The table that cuts the link, in each namespace.
const CUT: &str = "table inet ferry_outage {
    chain input {
        type filter hook input priority -10; policy accept;
        iifname \"veth0\" drop
    }
}
";

/// Runs `cmd` (program and arguments) with `stdin`, failing with its stderr.
fn sh(cmd: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .map_err(|e| format!("{cmd:?}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two network namespaces joined by a veth pair (`veth0` in each), `ADDR_A` in the first
/// and `ADDR_B` in the second. Deleting the namespaces on drop deletes the pair and any
/// nftables table in them too.
struct Link {
    a: String,
    b: String,
    made: Vec<String>,
}

impl Link {
    /// The pair, or `None` after printing why the test is skipped.
    fn up_or_skip(test: &str) -> Option<Link> {
        if !common::root_or_skip(test, "network namespaces and nftables") {
            return None;
        }
        for tool in [&["ip", "-V"][..], &["nft", "--version"][..]] {
            if let Err(e) = sh(tool, None) {
                eprintln!("SKIPPED {test}: {e}");
                return None;
            }
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut link = Link {
            a: format!("ferryout-{tag}-a"),
            b: format!("ferryout-{tag}-b"),
            made: Vec::new(),
        };
        match link.make() {
            Ok(()) => Some(link),
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot set up the namespaces: {e}");
                None
            }
        }
    }

    fn make(&mut self) -> Result<(), String> {
        for ns in [self.a.clone(), self.b.clone()] {
            sh(&["ip", "netns", "add", &ns], None)?;
            self.made.push(ns.clone());
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"], None)?;
        }
        let (a, b) = (self.a.as_str(), self.b.as_str());
        sh(
            &[
                "ip", "-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0",
                "netns", b,
            ],
            None,
        )?;
        for (ns, addr) in [(a, ADDR_A), (b, ADDR_B)] {
            sh(
                &[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "veth0",
                ],
                None,
            )?;
            sh(&["ip", "-n", ns, "link", "set", "veth0", "up"], None)?;
        }
        // The drop rule must load here, or the test would only find out mid-transfer.
        self.cut()?;
        self.restore()
    }

    /// Drops every IP packet that arrives over the link, in both namespaces.
    fn cut(&self) -> Result<(), String> {
        for ns in [&self.a, &self.b] {
            sh(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(CUT))?;
        }
        Ok(())
    }

    /// Lets packets through again.
    fn restore(&self) -> Result<(), String> {
        for ns in [&self.a, &self.b] {
            sh(
                &[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "ferry_outage",
                ],
                None,
            )?;
        }
        Ok(())
    }

    /// Takes the client's end of the link down (a laptop's Wi-Fi gone): its sends now fail
    /// with "network unreachable" instead of vanishing, and the route to the server goes.
    fn down(&self) -> Result<(), String> {
        sh(&["ip", "-n", &self.a, "link", "set", "veth0", "down"], None)
    }

    /// Brings the client's end up again (with its address and route).
    fn up(&self) -> Result<(), String> {
        sh(&["ip", "-n", &self.a, "link", "set", "veth0", "up"], None)
    }

    /// ferryd in the second namespace, not started yet; ferry runs in the first.
    fn server(&self) -> Server {
        let mut s = Server::init();
        s.netns = Some(self.b.clone());
        s.client_netns = Some(self.a.clone());
        s.host = ADDR_B.into();
        s
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in self.made.drain(..).rev() {
            if let Err(e) = sh(&["ip", "netns", "del", &ns], None) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

fn json(l: &str) -> Option<Value> {
    serde_json::from_str::<Value>(l).ok()
}

/// Waits until a progress event shows more than `bytes` moved.
fn wait_past(mut running: Running, bytes: u64, what: &str) -> Running {
    let past = |l: &str| {
        json(l)
            .and_then(|v| v["bytes"].as_u64())
            .is_some_and(|b| b > bytes)
    };
    if running.wait_line(Duration::from_secs(60), past).is_none() {
        let run = running.wait(Duration::from_secs(1));
        panic!(
            "{what}: the transfer never got past {bytes} bytes\n{}",
            run.describe()
        );
    }
    running
}

/// The events of `kind` in a run's stdout.
fn events(run: &FerryRun, kind: &str) -> Vec<Value> {
    run.stdout
        .iter()
        .filter_map(|l| json(l))
        .filter(|v| v["event"] == kind)
        .collect()
}

/// `--retry 0` unless `extra` says otherwise: a failure must not hide behind a retry.
fn args(s: &Server, extra: &[&str], from: &str, to: &str) -> Vec<std::ffi::OsString> {
    let mut a: Vec<&str> = vec!["-l", "40m"];
    if !extra.contains(&"--retry") {
        a.extend(["--retry", "0"]);
    }
    a.extend(extra);
    a.extend([from, to]);
    s.ferry_cmd(if from.contains('@') { "recv" } else { "send" }, &a)
}

/// How a link is cut.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Every packet silently dropped (nftables), both ways.
    Drop,
    /// The client's interface down.
    Down,
}

/// A transfer of 32 MiB at 40 Mbit/s (about 7 s) whose link is cut for `outage` once 4
/// MiB have moved: ferry must still be running when it comes back, and then finish on
/// its own.
fn survives(download: bool, how: Cut, outage: Duration, test: &str) {
    let Some(link) = Link::up_or_skip(test) else {
        return;
    };
    let mut s = link.server();
    s.run();
    let size = 32 * MIB;
    let (src, dest, a) = if download {
        let src = s.docroot.join("big.bin");
        let back = s.dir("back");
        let a = args(&s, &[], &s.remote("/big.bin"), back.to_str().unwrap());
        (src, back.join("big.bin"), a)
    } else {
        let src = s.dir("src").join("big.bin");
        let a = args(&s, &[], src.to_str().unwrap(), &s.remote("/"));
        (src, s.docroot.join("big.bin"), a)
    };
    write_random_file(&src, size, 61);
    let mut running = wait_past(s.spawn_ferry(&a), 4 * MIB, test);
    match how {
        Cut::Drop => link.cut().unwrap(),
        Cut::Down => link.down().unwrap(),
    }
    let cut_at = Instant::now();
    let ended = running.wait_line(outage, |l| json(l).is_some_and(|v| v["event"] == "done"));
    assert_eq!(
        ended,
        None,
        "{test}: ferry ended {:?} into the outage",
        cut_at.elapsed()
    );
    match how {
        Cut::Drop => link.restore().unwrap(),
        Cut::Down => link.up().unwrap(),
    }
    eprintln!("{test}: link back after {:?}", cut_at.elapsed());
    let run = running.wait(common::FERRY_TIMEOUT);
    s.assert_ok(&run, test);
    eprintln!(
        "{test}: done {:?} after the cut, {} of {} bytes re-sent",
        cut_at.elapsed(),
        run.json_u64("retransmitted_bytes").unwrap_or(0),
        run.json_u64("wire_bytes").unwrap_or(0)
    );
    assert!(events(&run, "retry").is_empty(), "{}", run.describe());
    if let Some(d) = first_difference(&src, &dest) {
        panic!("{test}: {d}\n{}", run.describe());
    }
    assert_eq!(
        leftovers(dest.parent().unwrap()),
        Vec::<String>::new(),
        "{test}"
    );
    s.assert_alive("after the outage");
}

#[test]
fn an_upload_continues_by_itself_after_a_30_s_outage() {
    survives(
        false,
        Cut::Drop,
        Duration::from_secs(30),
        "an_upload_continues_by_itself_after_a_30_s_outage",
    );
}

#[test]
fn an_upload_continues_by_itself_after_its_interface_was_down_for_30_s() {
    survives(
        false,
        Cut::Down,
        Duration::from_secs(30),
        "an_upload_continues_by_itself_after_its_interface_was_down_for_30_s",
    );
}

#[test]
fn a_download_continues_by_itself_after_a_30_s_outage() {
    survives(
        true,
        Cut::Drop,
        Duration::from_secs(30),
        "a_download_continues_by_itself_after_a_30_s_outage",
    );
}

/// Waits for the link to have been cut for `outage`, then restores it.
fn restore_after(link: &Link, cut_at: Instant, outage: Duration) {
    if let Some(left) = outage.checked_sub(cut_at.elapsed()) {
        thread::sleep(left);
    }
    link.restore().unwrap();
}

/// The data timeout (60 s) fires during a 90 s outage; `--retry 3 --retry-interval 10s`
/// tries again at about 70 s (its TCP connection times out at about 85 s, still in the
/// outage), then again at about 95 s, after the link came back, and resumes the partial.
#[test]
fn a_90_s_outage_fails_with_the_data_timeout_and_retry_resumes_when_the_link_returns() {
    let test = "a_90_s_outage_fails_with_the_data_timeout_and_retry_resumes_when_the_link_returns";
    let Some(link) = Link::up_or_skip(test) else {
        return;
    };
    let mut s = link.server();
    s.run();
    let size = 32 * MIB;
    let src = s.dir("src").join("big.bin");
    write_random_file(&src, size, 62);
    let a = args(
        &s,
        &["--retry", "3", "--retry-interval", "10s"],
        src.to_str().unwrap(),
        &s.remote("/"),
    );
    let mut running = wait_past(s.spawn_ferry(&a), 4 * MIB, test);
    link.cut().unwrap();
    let cut_at = Instant::now();
    let first = running
        .wait_line(Duration::from_secs(85), |l| {
            json(l).is_some_and(|v| v["event"] == "retry" || v["event"] == "done")
        })
        .and_then(|l| json(&l));
    let failed_after = cut_at.elapsed();
    let first = first.expect("no retry within 85 s of the cut");
    assert_eq!(first["event"], "retry", "{first}");
    assert!(
        first["code"] == 21 || first["code"] == 24,
        "the first attempt should fail with 21 (data timeout) or 24 (control timeout): {first}"
    );
    assert!(
        failed_after >= Duration::from_secs(55),
        "the first attempt gave up after {failed_after:?}, before the 60 s data timeout: {first}"
    );
    restore_after(&link, cut_at, Duration::from_secs(90));
    let run = running.wait(common::FERRY_TIMEOUT);
    s.assert_ok(&run, "after the retries");
    eprintln!(
        "{test}: first attempt failed {failed_after:?} after the cut; done {:?} after it; \
         retries: {:?}",
        cut_at.elapsed(),
        events(&run, "retry")
    );
    if let Some(d) = first_difference(&src, &s.docroot.join("big.bin")) {
        panic!("{test}: {d}\n{}", run.describe());
    }
    let files = events(&run, "file");
    assert_eq!(
        files.last().map(|f| f["action"].clone()),
        Some("resumed".into()),
        "the last attempt should resume the partial: {files:?}"
    );
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
    s.assert_alive("after the outage");
}

/// A download whose link is cut for longer than the data timeout fails with 21 within
/// seconds of it (no retry asked for); ferryd stays up, the client keeps its partial, and
/// a second run once the link is back resumes it.
#[test]
fn a_download_cut_for_longer_than_the_data_timeout_fails_with_21_and_resumes_later() {
    let test = "a_download_cut_for_longer_than_the_data_timeout_fails_with_21_and_resumes_later";
    let Some(link) = Link::up_or_skip(test) else {
        return;
    };
    let mut s = link.server();
    s.run();
    let size = 32 * MIB;
    let src = s.docroot.join("big.bin");
    write_random_file(&src, size, 63);
    let back = s.dir("back");
    let dest = back.join("big.bin");
    let a = args(
        &s,
        &["-k", "1"],
        &s.remote("/big.bin"),
        back.to_str().unwrap(),
    );
    let running = wait_past(s.spawn_ferry(&a), 4 * MIB, test);
    link.cut().unwrap();
    let cut_at = Instant::now();
    let run = running.wait(Duration::from_secs(90));
    let failed_after = cut_at.elapsed();
    s.assert_code(&run, 21, "a download cut for good");
    assert!(
        (Duration::from_secs(55)..Duration::from_secs(75)).contains(&failed_after),
        "failed {failed_after:?} after the cut, not about the 60 s data timeout\n{}",
        run.describe()
    );
    assert!(!dest.exists(), "the file got its final name");
    assert!(
        ferry_engine::resume::checkpoint_path(&dest).exists(),
        "no checkpoint kept: {:?}",
        common::listing(&back)
    );
    s.assert_alive("after the data timeout");
    restore_after(&link, cut_at, Duration::from_secs(70));
    let a = args(
        &s,
        &["-k", "1"],
        &s.remote("/big.bin"),
        back.to_str().unwrap(),
    );
    let run = s.ferry_raw(&a);
    s.assert_ok(&run, "the download again, link back");
    if let Some(d) = first_difference(&src, &dest) {
        panic!("{test}: {d}\n{}", run.describe());
    }
    let resumed = run.json_u64("resumed_bytes").unwrap_or(0);
    assert!(resumed >= 2 * MIB, "{}", run.describe());
    assert_eq!(leftovers(&back), Vec::<String>::new());
}
