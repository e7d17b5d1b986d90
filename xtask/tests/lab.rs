//! The WAN lab for real: `cargo xtask lab up` with a 20 ms RTT, a ping across within 1 ms
//! of it, and `lab down` leaving nothing behind. Runs only as root with `ip`, `ping` and
//! /dev/net/tun; elsewhere it says why and passes.

use std::path::Path;
use std::process::Command;

/// Its own lab name, so it never touches a lab someone has up.
const NAME: &str = "ferrylabtest";

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["lab"])
        .args(args)
        .args(["--name", NAME])
        .output()
        .expect("running xtask")
}

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "ping"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("no `{tool}`"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

#[test]
fn lab_up_ping_down() {
    if let Some(why) = missing() {
        eprintln!("skipping the lab test: {why}");
        return;
    }
    let up = xtask(&["up", "--rtt-ms", "20", "--rate-mbps", "100"]);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "lab up failed: {stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("lab "))
        .expect("a lab line");
    assert_eq!(
        line,
        format!("lab a={NAME}-a:10.77.0.1 b={NAME}-b:10.77.0.2")
    );
    let ping = Command::new("ip")
        .args(["netns", "exec", &format!("{NAME}-a")])
        .args(["ping", "-c", "10", "-i", "0.05", "-q", "10.77.0.2"])
        .output()
        .expect("ping");
    let down = xtask(&["down"]);
    let text = String::from_utf8_lossy(&ping.stdout);
    // rtt min/avg/max/mdev = 20.1/20.2/20.3/0.05 ms
    let avg: f64 = text
        .lines()
        .find_map(|l| l.split(" = ").nth(1)?.split('/').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no RTT in ping's output: {text}"));
    assert!((avg - 20.0).abs() <= 1.0, "ping RTT {avg} ms, set 20 ms");
    assert!(down.status.success(), "lab down failed");
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(NAME),
        "namespaces left behind"
    );
    assert!(
        !Path::new("/run/ferry-lab")
            .join(NAME)
            .join("ready")
            .exists()
    );
    // Idempotent.
    assert!(xtask(&["down"]).status.success());
}
