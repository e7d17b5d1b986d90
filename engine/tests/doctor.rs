//! `ferry doctor` against real ferryds: a healthy one, a TCP port where nothing listens,
//! and one whose data port's inbound UDP an nftables rule drops (inside a network
//! namespace of the test's own, skipped with a reason where `ip netns`/`nft` are missing).

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{FERRY, FERRYD, Server, USER};
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

/// A network namespace with a veth pair to this one on a private /30, removed (with
/// everything in it: its end of the pair, its nftables table, the processes' sockets) on
/// drop, failure included.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    /// `None` (with the reason) where namespaces cannot be made here.
    fn create() -> Result<Netns, String> {
        let have = |prog: &str, arg: &str| {
            Command::new(prog)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have("ip", "-V") {
            return Err("no ip(8)".into());
        }
        if !have("nft", "--version") {
            return Err("no nft(8) (apt-get install nftables)".into());
        }
        let pid = std::process::id();
        let name = format!("ferrydoc{pid}");
        let ns = Netns {
            name: name.clone(),
            host_ip: format!("10.213.{}.{}", (pid >> 6) & 0xff, (pid & 0x3f) * 4 + 1),
            ns_ip: format!("10.213.{}.{}", (pid >> 6) & 0xff, (pid & 0x3f) * 4 + 2),
        };
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let (a, b) = (format!("fdoc{pid}a"), format!("fdoc{pid}b"));
        let ns_name = name.as_str();
        let (host_cidr, ns_cidr) = (format!("{}/30", ns.host_ip), format!("{}/30", ns.ns_ip));
        let steps: Vec<Vec<&str>> = vec![
            vec!["link", "add", &a, "type", "veth", "peer", "name", &b],
            vec!["link", "set", &b, "netns", ns_name],
            vec!["addr", "add", &host_cidr, "dev", &a],
            vec!["link", "set", &a, "up"],
            vec!["-n", ns_name, "addr", "add", &ns_cidr, "dev", &b],
            vec!["-n", ns_name, "link", "set", &b, "up"],
            vec!["-n", ns_name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(&step).output().unwrap();
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                // Dropping `ns` deletes the namespace; the host end of the pair goes too.
                let _ = Command::new("ip").args(["link", "del", &a]).output();
                return Err(format!("ip {step:?}: {err}"));
            }
        }
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end (and so the pair) and its nftables.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A ferryd inside the namespace; killed on drop (before the namespace goes).
struct NsFerryd(std::process::Child);

impl Drop for NsFerryd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let ctl = s.tmp.path().join("ctl.sock");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, FERRYD, "run", "--config"])
        .arg(s.srv.join("ferryd.toml"))
        .args(["--tcp-port", "0", "--udp-port", "0", "--ctl-socket"])
        .arg(&ctl)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip netns exec ferryd");
    let stdout = child.stdout.take().unwrap();
    let ferryd = NsFerryd(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a ready line from ferryd in the namespace");
    let port = |key: &str| -> u16 {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {ready:?}"))
    };
    let (tcp, udp) = (port("tcp="), port("udp="));
    ns.exec(&["nft", "add", "table", "inet", "ferrydoc"])
        .unwrap();
    ns.exec(&[
        "nft",
        "add chain inet ferrydoc input { type filter hook input priority 0; policy accept; }",
    ])
    .unwrap();
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "ferrydoc",
        "input",
        "udp",
        "dport",
        &udp.to_string(),
        "drop",
    ])
    .unwrap();

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
