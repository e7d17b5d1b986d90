//! The TCP fallback with real processes: ferryd inside a network namespace of the test's
//! own whose nftables drop UDP (towards its data port, or everything it sends); uploads
//! and downloads then continue through the SSH connection, byte for byte, with a notice;
//! with `--no-fallback` the client fails with the UDP error naming the port, within 10 s.
//! Skipped, with the reason printed, where `ip`/`nft`/root are missing.

#[allow(dead_code)]
mod common;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use common::netns::{Netns, NsFerryd};
use common::{FerryRun, Server, USER, first_difference, write_random_file};

/// A server directory with one data lane (so that the session's UDP port is the announced
/// one, which the rules name), its ferryd running inside a fresh namespace.
fn setup(test: &str) -> Option<(Netns, Server, NsFerryd)> {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            return None;
        }
    };
    let mut s = Server::init();
    s.edit_config(&[("cores = []", "cores = [0]")]);
    let ferryd = ns.ferryd(
        &s.srv.join("ferryd.toml"),
        &s.tmp.path().join("ctl.sock"),
        &s.tmp.path().join("ferryd-ns.err"),
    );
    s.tcp_port = ferryd.tcp_port;
    s.udp_port = ferryd.udp_port;
    Some((ns, s, ferryd))
}

fn ns_stderr(s: &Server) -> String {
    std::fs::read_to_string(s.tmp.path().join("ferryd-ns.err")).unwrap_or_default()
}

/// The `fallback` JSON event of a run, if it printed one.
fn fallback_event(run: &FerryRun) -> Option<serde_json::Value> {
    run.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "fallback")
}

fn assert_fell_back(s: &Server, run: &FerryRun, what: &str) {
    assert!(
        run.status.success() && run.json_str("status").as_deref() == Some("ok"),
        "{what}: expected success\n{}\nferryd stderr:\n{}",
        run.describe(),
        ns_stderr(s)
    );
    let ev = fallback_event(run).unwrap_or_else(|| {
        panic!(
            "{what}: no fallback event\n{}\nferryd stderr:\n{}",
            run.describe(),
            ns_stderr(s)
        )
    });
    assert_eq!(ev["transport"], "tcp", "{what}: {ev}");
    assert!(
        ev["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("UDP port {}", s.udp_port))),
        "{what}: {ev}"
    );
}

/// An upload and a download across `rule` (an nftables chain on `hook` inside the
/// namespace), each completing byte for byte over the fallback.
fn both_ways_over_tcp(test: &str, hook: &str, rule: impl Fn(u16) -> String) {
    let Some((ns, mut s, ferryd)) = setup(test) else {
        return;
    };
    ns.nft_rule("ferryfb", hook, &rule(s.udp_port));
    let remote = |path: &str| format!("{USER}@{}:{path}", ns.ns_ip);

    let src = s.dir("src");
    write_random_file(&src.join("up.bin"), 6 << 20, 1);
    let up = s.send(&[
        src.join("up.bin").into_os_string(),
        OsString::from(remote("/")),
    ]);
    assert_fell_back(&s, &up, "upload");
    assert_eq!(
        first_difference(&src.join("up.bin"), &s.docroot.join("up.bin")),
        None
    );

    // The download without --json: the notice is one line on stderr.
    write_random_file(&s.docroot.join("down.bin"), 5 << 20, 2);
    let dest = s.dir("dest");
    let args: Vec<OsString> = s
        .ferry_cmd(
            "recv",
            &[
                OsString::from(remote("/down.bin")),
                dest.clone().into_os_string(),
            ],
        )
        .into_iter()
        .filter(|a| a != "--json")
        .collect();
    let down = s.ferry_raw(&args);
    assert!(
        down.status.success(),
        "download: {}\nferryd stderr:\n{}",
        down.describe(),
        ns_stderr(&s)
    );
    let notices: Vec<&str> = down
        .stderr
        .lines()
        .filter(|l| l.contains("continuing over TCP"))
        .collect();
    assert_eq!(notices.len(), 1, "download: {}", down.describe());
    assert!(
        notices[0].contains(&format!("UDP port {}", s.udp_port)),
        "{}",
        notices[0]
    );
    assert_eq!(
        first_difference(&s.docroot.join("down.bin"), &dest.join("down.bin")),
        None
    );
    assert!(
        ns_stderr(&s).contains("continuing over TCP"),
        "ferryd says nothing of the fallback:\n{}",
        ns_stderr(&s)
    );
    drop(ferryd);
}

#[test]
fn udp_dropped_towards_the_servers_data_port_falls_back_to_tcp() {
    both_ways_over_tcp(
        "udp_dropped_towards_the_servers_data_port_falls_back_to_tcp",
        "input",
        |port| format!("udp dport {port} drop"),
    );
}

#[test]
fn udp_dropped_from_the_server_falls_back_to_tcp() {
    both_ways_over_tcp(
        "udp_dropped_from_the_server_falls_back_to_tcp",
        "output",
        |_| "meta l4proto udp drop".to_string(),
    );
}

#[test]
fn no_fallback_fails_within_10_s_naming_the_udp_port() {
    let test = "no_fallback_fails_within_10_s_naming_the_udp_port";
    let Some((ns, mut s, ferryd)) = setup(test) else {
        return;
    };
    ns.nft_rule(
        "ferryfb",
        "input",
        &format!("udp dport {} drop", s.udp_port),
    );
    let src = s.dir("src");
    write_random_file(&src.join("f.bin"), 1 << 20, 3);
    let t = Instant::now();
    let run = s.send(&[
        src.join("f.bin").into_os_string(),
        OsString::from(format!("{USER}@{}:/", ns.ns_ip)),
        OsString::from("--no-fallback"),
    ]);
    let took = t.elapsed();
    s.assert_code(&run, 20, "--no-fallback with UDP dropped");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: {}",
        run.describe()
    );
    let message = run.json_str("message").unwrap_or_default();
    assert!(
        message.contains(&format!("UDP port {}", s.udp_port)),
        "the message does not name UDP port {}: {message}",
        s.udp_port
    );
    assert!(fallback_event(&run).is_none(), "{}", run.describe());
    assert!(!s.docroot.join("f.bin").exists());
    drop(ferryd);
}
