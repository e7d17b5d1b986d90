//! `--retry` and `--on-change` with real processes: a server that does not answer at
//! first and then comes up is retried and the transfer completes; a refused connection is
//! not retried; a source that changes mid-transfer is sent again from its new state.

#[allow(dead_code)]
mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FERRYD, Server, first_difference, write_random_file};

const MIB: u64 = 1 << 20;
use serde_json::Value;

fn events(lines: &[String], kind: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

/// ferryd on a given TCP port; killed on drop.
struct Ferryd(Child);

impl Drop for Ferryd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ferryd_on(s: &Server, tcp_port: u16) -> Ferryd {
    let mut child = Command::new(FERRYD)
        .args(["run", "--config"])
        .arg(s.srv.join("ferryd.toml"))
        .args(["--tcp-port", &tcp_port.to_string(), "--udp-port", "0"])
        .arg("--ctl-socket")
        .arg(s.tmp.path().join("ctl.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferryd");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "ferryd: {line:?}");
    Ferryd(child)
}

#[test]
fn a_server_that_does_not_answer_at_first_is_retried_until_it_does() {
    let mut s = Server::init();
    let src = s.dir("src").join("later.bin");
    write_random_file(&src, 2 * MIB, 51);
    // Accepts TCP connections (into its backlog) but never speaks SSH: each attempt's
    // handshake times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.tcp_port = silent.local_addr().unwrap().port();
    let cmd = s.ferry_cmd(
        "send",
        &[
            "--connect-timeout".as_ref(),
            "1s".as_ref(),
            "--retry".as_ref(),
            "5".as_ref(),
            "--retry-interval".as_ref(),
            "3s".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let mut run = s.spawn_ferry(&cmd);
    let retry = run
        .wait_line(Duration::from_secs(30), |l| l.contains("\"retry\""))
        .expect("a retry event");
    // Now the real server takes the port, well within the retry interval.
    drop(silent);
    let _ferryd = ferryd_on(&s, s.tcp_port);
    let r = run.wait(common::FERRY_TIMEOUT);
    assert!(r.status.success(), "{}", r.describe());
    let ev: Value = serde_json::from_str(&retry).unwrap();
    assert_eq!(ev["code"], 10, "{retry}");
    assert_eq!(ev["attempt"], 2, "{retry}");
    assert_eq!(ev["kind"], "retry", "{retry}");
    assert!(
        ev["message"].as_str().unwrap().contains("timed out"),
        "{retry}"
    );
    assert_eq!(ev["in_s"], 3.0, "{retry}");
    assert!(r.stderr.contains("retrying in 3 s"), "{}", r.describe());
    assert!(first_difference(&src, &s.docroot.join("later.bin")).is_none());
}

#[test]
fn a_refused_connection_is_not_retried() {
    let mut s = Server::init();
    s.tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let src = s.dir("src").join("x.bin");
    write_random_file(&src, 1000, 52);
    let t = Instant::now();
    let r = s.send(&[
        "--retry".as_ref(),
        "3".as_ref(),
        "--retry-interval".as_ref(),
        "20s".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    assert!(!r.status.success(), "{}", r.describe());
    assert_eq!(r.code(), Some(10), "{}", r.describe());
    assert!(events(&r.stdout, "retry").is_empty(), "{}", r.describe());
    assert!(t.elapsed() < Duration::from_secs(10), "{}", r.describe());
}

/// The source grows while it is being sent (held at 8 Mbit/s so that there is time):
/// with `--on-change resend` the first attempt fails with 37, and the file is sent again
/// from its new state; what arrives is the new file, never a mix.
#[test]
fn a_source_that_changes_is_resent_from_its_new_state() {
    let mut s = Server::start();
    let src = s.dir("src").join("grows.bin");
    write_random_file(&src, 4 * MIB, 53);
    let cmd = s.ferry_cmd(
        "send",
        &[
            "-l".as_ref(),
            "8m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            "--on-change".as_ref(),
            "resend".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let mut run = s.spawn_ferry(&cmd);
    let moving = run.wait_line(Duration::from_secs(60), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "progress" && v["bytes"].as_u64().is_some_and(|b| b > 0))
    });
    assert!(moving.is_some(), "no progress");
    fs::OpenOptions::new()
        .append(true)
        .open(&src)
        .unwrap()
        .write_all(&[7u8; 65_536])
        .unwrap();
    let r = run.wait(common::FERRY_TIMEOUT);
    assert!(r.status.success(), "{}", r.describe());
    let retries = events(&r.stdout, "retry");
    assert_eq!(retries.len(), 1, "{}", r.describe());
    assert_eq!(retries[0]["kind"], "resend");
    assert_eq!(retries[0]["code"], 37);
    assert!(
        first_difference(&src, &s.docroot.join("grows.bin")).is_none(),
        "{}",
        r.describe()
    );
    assert!(common::leftovers(&s.docroot).is_empty());
}

#[test]
fn a_source_that_changes_fails_by_default() {
    let mut s = Server::start();
    let src = s.dir("src").join("grows.bin");
    write_random_file(&src, 4 * MIB, 54);
    let cmd = s.ferry_cmd(
        "send",
        &[
            "-l".as_ref(),
            "8m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let mut run = s.spawn_ferry(&cmd);
    run.wait_line(Duration::from_secs(60), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "progress" && v["bytes"].as_u64().is_some_and(|b| b > 0))
    });
    fs::OpenOptions::new()
        .append(true)
        .open(&src)
        .unwrap()
        .write_all(&[7u8; 65_536])
        .unwrap();
    let r = run.wait(common::FERRY_TIMEOUT);
    assert_eq!(r.code(), Some(37), "{}", r.describe());
    assert!(events(&r.stdout, "retry").is_empty(), "{}", r.describe());
    assert!(!s.docroot.join("grows.bin").exists());
}

/// The download side: ferryd's source grows while ferryd sends it. The client learns why
/// over the control channel (37, not "the sender closed the session"), so `--on-change
/// resend` fetches it again from its new state.
#[test]
fn a_served_source_that_changes_is_resent_from_its_new_state() {
    let mut s = Server::start();
    let src = s.docroot.join("grows.bin");
    write_random_file(&src, 4 * MIB, 55);
    let back = s.dir("back");
    let cmd = s.ferry_cmd(
        "recv",
        &[
            "-l".as_ref(),
            "8m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            "--on-change".as_ref(),
            "resend".as_ref(),
            s.remote("/grows.bin").as_ref(),
            back.as_os_str(),
        ],
    );
    let mut run = s.spawn_ferry(&cmd);
    let moving = run.wait_line(Duration::from_secs(60), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "progress" && v["bytes"].as_u64().is_some_and(|b| b > 0))
    });
    assert!(moving.is_some(), "no progress");
    fs::OpenOptions::new()
        .append(true)
        .open(&src)
        .unwrap()
        .write_all(&[7u8; 65_536])
        .unwrap();
    let r = run.wait(common::FERRY_TIMEOUT);
    assert!(r.status.success(), "{}", r.describe());
    let retries = events(&r.stdout, "retry");
    assert_eq!(retries.len(), 1, "{}", r.describe());
    assert_eq!(retries[0]["kind"], "resend");
    assert_eq!(retries[0]["code"], 37);
    assert!(
        first_difference(&src, &back.join("grows.bin")).is_none(),
        "{}",
        r.describe()
    );
    assert!(common::leftovers(&back).is_empty());
}
