//! `ferry doctor` against real ferryds: a healthy one, a TCP port where nothing listens,
//! and one whose data port's inbound UDP an nftables rule drops (inside a network
//! namespace of the test's own, skipped with a reason where `ip netns`/`nft` are missing).

#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};

use common::netns::Netns;
use common::{FERRY, Server, USER};
use serde_json::Value;

/// `ferry doctor --json` with the server's key and known_hosts; the exit status and the
/// check lines by name.
fn doctor(s: &Server, host: &str, tcp_port: u16) -> (bool, Vec<Value>, String) {
    let out = Command::new(FERRY)
        .arg("doctor")
        .args(["-P", &tcp_port.to_string(), "-i"])
        .arg(&s.key)
        .arg("--known-hosts")
        .arg(&s.known_hosts)
        .args(["--accept-new", "--json", "--connect-timeout", "3s"])
        .arg(format!("{USER}@{host}"))
        .stdin(Stdio::null())
        .output()
        .expect("run ferry doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let checks = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "check")
        .collect();
    let all = format!(
        "{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), checks, all)
}

fn status<'a>(checks: &'a [Value], name: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("missing")
}

fn detail(checks: &[Value], name: &str) -> String {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

const NAMES: [&str; 9] = [
    "dns",
    "tcp",
    "ssh",
    "host_key",
    "auth",
    "udp_to_server",
    "udp_from_server",
    "mtu",
    "clock",
];

#[test]
fn a_healthy_server_passes_every_check() {
    let s = Server::start();
    let (ok, checks, out) = doctor(&s, "127.0.0.1", s.tcp_port);
    let names: Vec<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(names, NAMES, "{out}");
    for n in NAMES {
        assert_eq!(status(&checks, n), "pass", "{n}: {out}");
    }
    assert!(ok, "exit status: {out}");
    assert!(detail(&checks, "auth").contains(USER), "{out}");
}

#[test]
fn a_closed_tcp_port_is_named_and_the_rest_skipped() {
    let s = Server::init();
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, checks, out) = doctor(&s, "127.0.0.1", port);
    assert!(!ok, "{out}");
    assert_eq!(status(&checks, "dns"), "pass", "{out}");
    assert_eq!(status(&checks, "tcp"), "fail", "{out}");
    let tcp = checks.iter().find(|c| c["check"] == "tcp").unwrap();
    assert_eq!(tcp["code"], 10, "{out}");
    let d = detail(&checks, "tcp");
    assert!(
        d.contains(&format!("nothing listens on TCP port {port}")) && d.contains("refused"),
        "{out}"
    );
    for n in &NAMES[2..] {
        assert_eq!(status(&checks, n), "skip", "{n}: {out}");
    }
}

#[test]
fn udp_blocked_towards_the_server_is_named_with_its_port() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipping udp_blocked_towards_the_server_is_named_with_its_port: {why}");
            return;
        }
    };
    let s = Server::init();
    let ferryd = ns.ferryd(
        &s.srv.join("ferryd.toml"),
        &s.tmp.path().join("ctl.sock"),
        &s.tmp.path().join("ferryd-ns.err"),
    );
    let (tcp, udp) = (ferryd.tcp_port, ferryd.udp_port);
    ns.nft_rule("ferrydoc", "input", &format!("udp dport {udp} drop"));

    let (ok, checks, out) = doctor(&s, &ns.ns_ip, tcp);
    drop(ferryd);
    assert!(!ok, "{out}");
    for n in [
        "dns",
        "tcp",
        "ssh",
        "host_key",
        "auth",
        "udp_from_server",
        "clock",
    ] {
        assert_eq!(status(&checks, n), "pass", "{n}: {out}");
    }
    assert_eq!(status(&checks, "udp_to_server"), "fail", "{out}");
    let c = checks
        .iter()
        .find(|c| c["check"] == "udp_to_server")
        .unwrap();
    assert_eq!(c["code"], 25, "{out}");
    let d = detail(&checks, "udp_to_server");
    assert!(
        d.contains(&format!("UDP {udp} from client to server is blocked"))
            && d.contains(&format!("allow inbound UDP port {udp} on {}", ns.ns_ip)),
        "{out}"
    );
    // One direction still works, so the path MTU is measured that way.
    assert_eq!(status(&checks, "mtu"), "pass", "{out}");
}
