//! `ferryctl` against a real `ferryd`: sessions listed, rate changed, paused, resumed, all
//! while a real transfer runs; errors for the unreachable, the garbled and the unpermitted.
//!
//! Needs `ssh-keygen` (client keys). The permission test runs only as root (it connects
//! as another user); the `ferryctl top` test runs only where `tmux` is installed (it is
//! the terminal).

#[allow(dead_code)]
mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{FERRY_TIMEOUT, FERRYD, Running, Server, first_difference, write_random_file};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The `ferryctl` binary. It belongs to another package (`ferry-ctl`), so cargo builds it
/// for this package's tests only when asked: the first call runs `cargo build` for it with
/// the profile and target directory these tests were built with. `FERRYCTL=PATH` names a
/// binary instead.
pub fn ferryctl() -> &'static Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("FERRYCTL") {
            return PathBuf::from(p);
        }
        let profile_dir = Path::new(FERRYD)
            .parent()
            .expect("ferryd is in a directory");
        let target_dir = profile_dir.parent().expect("a target directory");
        let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
            Some("debug") | None => "dev",
            Some(p) => p,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .args([
                "build",
                "--quiet",
                "--package",
                "ferry-ctl",
                "--bin",
                "ferryctl",
            ])
            .args(["--profile", profile, "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build ferryctl: {e}"));
        assert!(
            out.status.success(),
            "cargo build --package ferry-ctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("ferryctl");
        assert!(
            bin.is_file(),
            "no ferryctl at {} after building it",
            bin.display()
        );
        bin
    })
}

/// Tests that measure rates run one at a time: cargo runs a file's tests in parallel, and
/// on a small machine their transfers would share the cores and each other's timings.
fn measuring() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `ferryctl --socket SOCKET ARGS...`.
fn ferryctl_at<S: AsRef<OsStr>>(socket: &Path, args: &[S]) -> Output {
    Command::new(ferryctl())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ferryctl")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ferryctl ARGS... --json` against `s`, which must succeed; its one JSON document.
fn ctl_json(s: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ferryctl_at(&s.ctl_socket(), &all);
    assert!(
        out.status.success(),
        "ferryctl {args:?} failed: {}\nferryd stderr:\n{}",
        describe(&out),
        s.stderr()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferryctl {args:?}: not one JSON document ({e}):\n{}",
            describe(&out)
        )
    })
}

/// Session `id` as `ferryctl sessions --json` lists it, if it does.
fn session(s: &Server, id: u64) -> Option<Value> {
    let v = ctl_json(s, &["sessions"]);
    v["sessions"]
        .as_array()
        .expect("a sessions array")
        .iter()
        .find(|x| x["id"].as_u64() == Some(id))
        .cloned()
}

/// Waits for the one session ferryd runs to be moving data; returns it.
fn wait_for_running_session(s: &Server, ferry: &mut Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = ctl_json(s, &["sessions"]);
        let list = v["sessions"].as_array().expect("a sessions array");
        assert!(list.len() <= 1, "one transfer, one session: {v}");
        if let Some(x) = list.first()
            && x["state"] == "running"
            && x["bytes"].as_u64() > Some(0)
        {
            return x.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no running session listed within 60 s: {v}\nferryd stderr:\n{}",
            s.stderr()
        );
        // Drain the client's progress lines so it never blocks on a full pipe.
        let _ = ferry.wait_line(Duration::from_millis(100), |_| false);
    }
}

/// Starts a download of a fresh `size`-byte `big.bin` at a fixed 200 Mbit/s into a new
/// directory `back`; returns the source, that directory and the running client.
fn fixed_download(s: &mut Server, size: u64, seed: u64) -> (PathBuf, PathBuf, Running) {
    let src = s.docroot.join("big.bin");
    write_random_file(&src, size, seed);
    let back = s.dir("back");
    let cmd = s.ferry_cmd(
        "recv",
        &[
            OsStr::new("-l"),
            OsStr::new("200m"),
            OsStr::new("--policy"),
            OsStr::new("fixed"),
            OsStr::new(&s.remote("/big.bin")),
            back.as_os_str(),
        ],
    );
    let ferry = s.spawn_ferry(&cmd);
    (src, back, ferry)
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

/// Payload bits per second delivered by session `id` over about `window`, from two
/// `bytes` readings (the acceptance script's way of measuring).
fn measured_rate(s: &Server, id: u64, window: Duration) -> f64 {
    let t0 = Instant::now();
    let b0 = u64_of(&session(s, id).expect("session listed"), "bytes");
    thread::sleep(window);
    let b1 = u64_of(&session(s, id).expect("session listed"), "bytes");
    let secs = t0.elapsed().as_secs_f64();
    b1.saturating_sub(b0) as f64 * 8.0 / secs
}

/// Runs ferryctl with the given args and asserts success; returns stdout.
fn ctl_ok(s: &Server, args: &[&str]) -> String {
    let out = ferryctl_at(&s.ctl_socket(), args);
    assert!(
        out.status.success(),
        "ferryctl {args:?}: {}\nferryd stderr:\n{}",
        describe(&out),
        s.stderr()
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_download_is_listed_steered_paused_and_resumed() {
    let _serial = measuring();
    // Build ferryctl first: on a fresh checkout that takes longer than the transfer.
    let _ = ferryctl();
    let mut s = Server::start();
    // Large enough that the transfer is still running after a second at 200 Mbit/s and
    // two at 400 Mbit/s (64 MiB would be over by then).
    let size = 128 * MIB;
    let (src, back, mut ferry) = fixed_download(&mut s, size, 0xC71);

    let first = wait_for_running_session(&s, &mut ferry);
    let id = u64_of(&first, "id");
    let ids = id.to_string();
    assert_eq!(
        first["direction"], "send",
        "ferryd sends a download: {first}"
    );
    assert_eq!(u64_of(&first, "target_bps"), 200_000_000, "{first}");
    assert_eq!(first["policy"], "fixed", "{first}");
    assert_eq!(
        first["user"], "tester",
        "the user the key logged in as: {first}"
    );
    assert_eq!(u64_of(&first, "total"), size, "{first}");
    assert_eq!(u64_of(&first, "files"), 1, "{first}");
    for field in [
        "id",
        "peer",
        "user",
        "direction",
        "files",
        "bytes",
        "total",
        "rate_bps",
        "target_bps",
        "min_bps",
        "policy",
        "loss",
        "rtt_ms",
        "state",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }
    // `show` is the same session; the table names it too.
    let shown = ctl_json(&s, &["show", &ids]);
    assert_eq!(shown["id"], first["id"], "{shown}");
    assert_eq!(shown["direction"], "send", "{shown}");
    let table = ctl_ok(&s, &["sessions"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&ids) && table.contains("fixed"), "{table}");
    let status = ctl_json(&s, &["status"]);
    assert_eq!(status["sessions"], 1, "{status}");
    assert_eq!(status["sending"], 1, "{status}");
    assert_eq!(u64_of(&status, "pid"), u64::from(s.pid()), "{status}");

    let r1 = measured_rate(&s, id, Duration::from_millis(800));
    assert!(
        (120e6..=260e6).contains(&r1),
        "at -l 200m the session moved {:.0} Mbit/s",
        r1 / 1e6
    );

    // set-rate: the listed target changes within a second, and the rate follows.
    let out = ctl_ok(&s, &["set-rate", &ids, "--target", "400m"]);
    assert!(out.contains("400 Mbit/s"), "{out}");
    let t = Instant::now();
    loop {
        let x = session(&s, id).expect("still listed");
        if u64_of(&x, "target_bps") == 400_000_000 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "target not changed: {x}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let r2 = measured_rate(&s, id, Duration::from_millis(800));
    eprintln!(
        "rate before set-rate {:.0} Mbit/s, after {:.0} Mbit/s",
        r1 / 1e6,
        r2 / 1e6
    );
    assert!(
        r2 > 1.4 * r1 && r2 > 250e6,
        "after set-rate --target 400m the rate went from {:.0} to {:.0} Mbit/s",
        r1 / 1e6,
        r2 / 1e6
    );
    assert!(
        session(&s, id).is_some(),
        "the transfer ended too soon for the pause test (make the file larger)"
    );

    // pause: data stops within a second; the session stays.
    let paused_at = Instant::now();
    let out = ctl_json(&s, &["pause", &ids]);
    assert_eq!(out["ok"], true, "{out}");
    thread::sleep(Duration::from_millis(300));
    let a = session(&s, id).expect("a paused session stays listed");
    thread::sleep(Duration::from_millis(500));
    let b = session(&s, id).expect("a paused session stays listed");
    assert!(paused_at.elapsed() < Duration::from_millis(1500));
    assert_eq!(b["state"], "paused", "{b}");
    let paused_rate = (u64_of(&b, "bytes") - u64_of(&a, "bytes")) as f64 * 8.0 / 0.5;
    assert!(
        paused_rate < 2e6,
        "paused, yet {:.1} Mbit/s delivered ({a} then {b})",
        paused_rate / 1e6
    );
    assert!(u64_of(&b, "rate_bps") < 2_000_000, "{b}");
    assert!(u64_of(&b, "bytes") < size, "{b}");

    // resume: it completes, the file exact.
    ctl_ok(&s, &["resume", &ids]);
    let run = ferry.wait(FERRY_TIMEOUT);
    s.assert_ok(&run, "the download after pause and resume");
    if let Some(d) = first_difference(&src, &back.join("big.bin")) {
        panic!("after pause and resume: {d}\n{}", run.describe());
    }
    // Ended sessions leave the list.
    let t = Instant::now();
    while session(&s, id).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "session {id} still listed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let log = s.stderr();
    for what in ["set-rate target=400000000", "pause", "resume"] {
        assert!(
            log.contains(&format!("session {id}: {what}")),
            "ferryd did not log {what}:\n{log}"
        );
    }
    s.assert_alive("after the steered download");
}

#[test]
fn an_upload_is_steered_through_its_sender() {
    let _serial = measuring();
    // ferryd receives an upload; its ferryctl changes travel over the control channel to
    // the client, whose sender applies them.
    let _ = ferryctl();
    let mut s = Server::start();
    let src = s.dir("src").join("up.bin");
    write_random_file(&src, 128 * MIB, 0xC72);
    let cmd = s.ferry_cmd(
        "send",
        &[
            OsStr::new("-l"),
            OsStr::new("200m"),
            OsStr::new("--policy"),
            OsStr::new("fixed"),
            src.as_os_str(),
            OsStr::new(&s.remote("/")),
        ],
    );
    let mut ferry = s.spawn_ferry(&cmd);
    let x = wait_for_running_session(&s, &mut ferry);
    let id = u64_of(&x, "id");
    let ids = id.to_string();
    assert_eq!(x["direction"], "recv", "ferryd receives an upload: {x}");

    let r1 = measured_rate(&s, id, Duration::from_millis(800));
    assert!(
        (120e6..=260e6).contains(&r1),
        "at -l 200m the upload moved {:.0} Mbit/s",
        r1 / 1e6
    );
    ctl_ok(&s, &["set-rate", &ids, "--target", "400m"]);
    thread::sleep(Duration::from_millis(500));
    let r2 = measured_rate(&s, id, Duration::from_millis(800));
    assert!(
        (300e6..=480e6).contains(&r2),
        "after set-rate 400m the upload moved {:.0} Mbit/s",
        r2 / 1e6
    );
    ctl_ok(&s, &["pause", &ids]);
    thread::sleep(Duration::from_millis(500));
    let r3 = measured_rate(&s, id, Duration::from_millis(500));
    assert!(
        r3 < 5e6,
        "paused, the upload still moved {:.0} Mbit/s",
        r3 / 1e6
    );
    ctl_ok(&s, &["resume", &ids]);
    let run = ferry.wait(FERRY_TIMEOUT);
    s.assert_ok(&run, "the upload after set-rate, pause and resume");
    if let Some(d) = first_difference(&src, &s.docroot.join("up.bin")) {
        panic!("upload: {d}");
    }
}

#[test]
fn ferryctl_without_ferryd_says_how_to_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("nobody-here.sock");
    for args in [&["status"][..], &["sessions"], &["top", "--once"]] {
        let out = ferryctl_at(&sock, args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let p = sock.display();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&format!("cannot reach ferryd at {p}: "))
                && err.contains(&format!("is ferryd running with --ctl-socket {p}?")),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    // Unknown sessions are one clear line too (against a live ferryd).
    let s = Server::start();
    let out = ferryctl_at(&s.ctl_socket(), &["pause", "12345"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no session 12345"), "{err}");
    let out = ferryctl_at(&s.ctl_socket(), &["show", "12345"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

fn read_reply(stream: &UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

#[test]
fn garbage_on_the_socket_gets_error_replies_and_ferryd_stays_up() {
    let mut s = Server::start();
    let mut c = UnixStream::connect(s.ctl_socket()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello ferryd, how are you?\n").unwrap();
    let r = read_reply(&c);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a control request"),
        "{r}"
    );
    c.write_all(b"\x00\xff\xfe{{{\n").unwrap();
    assert_eq!(read_reply(&c)["error"]["code"], "bad_request");
    c.write_all(b"{\"version\":1,\"command\":{\"op\":\"status\"}}\n")
        .unwrap();
    let r = read_reply(&c);
    assert_eq!(r["ok"]["kind"], "status", "the connection still works: {r}");

    // Over the 64 KiB limit: an error reply, then the connection closes.
    let mut big = UnixStream::connect(s.ctl_socket()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = big.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&vec![b'{'; 256 << 10]);
    });
    let mut all = String::new();
    big.read_to_string(&mut all).unwrap();
    writer.join().unwrap();
    let r: Value = serde_json::from_str(all.trim_end()).unwrap();
    assert_eq!(r["error"]["code"], "too_large", "{r}");

    s.assert_alive("after garbage on the control socket");
    let status = ctl_json(&s, &["status"]);
    assert_eq!(u64_of(&status, "sessions"), 0, "{status}");
    assert!(
        status["tcp"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", s.tcp_port)),
        "{status}"
    );
    assert!(
        status["udp"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", s.udp_port)),
        "{status}"
    );
    let text = ctl_ok(&s, &["status"]);
    assert!(text.starts_with("ferryd "), "{text}");

    // A transfer still works after all that.
    let src = s.dir("src").join("small.bin");
    write_random_file(&src, 3 * MIB, 0xC73);
    let run = s.send(&[src.as_os_str(), OsStr::new(&s.remote("/"))]);
    s.assert_ok(&run, "an upload after garbage on the control socket");

    // SIGTERM: ferryd stops and takes its socket with it.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(s.pid() as libc::pid_t, libc::SIGTERM);
    }
    let t = Instant::now();
    let st = loop {
        if let Some(st) = s.exited() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ferryd ignored SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st}\n{}", s.stderr());
    assert!(!s.ctl_socket().exists(), "the socket file outlived ferryd");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not_stolen() {
    let mut s = Server::init();
    // A socket file nobody answers on, as a crashed ferryd leaves it.
    drop(std::os::unix::net::UnixListener::bind(s.ctl_socket()).unwrap());
    s.run();
    let status = ctl_json(&s, &["status"]);
    assert_eq!(u64_of(&status, "pid"), u64::from(s.pid()), "{status}");
    // A second ferryd on the same socket refuses to start and leaves the first alone.
    let out = Command::new(FERRYD)
        .arg("run")
        .arg("--config")
        .arg(s.srv.join("ferryd.toml"))
        .args(["--tcp-port", "0", "--udp-port", "0", "--ctl-socket"])
        .arg(s.ctl_socket())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another ferryd already serves"), "{err}");
    let status = ctl_json(&s, &["status"]);
    assert_eq!(u64_of(&status, "pid"), u64::from(s.pid()), "{status}");
}

#[test]
fn only_root_and_ferryds_user_may_connect() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: connecting as another user needs root");
        return;
    }
    let s = Server::start();
    // Let uid 65534 reach the socket, so that ferryd's own check is what refuses it.
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(s.ctl_socket(), fs::Permissions::from_mode(0o666)).unwrap();
    let bin = s.tmp.path().join("ferryctl");
    fs::copy(ferryctl(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(s.ctl_socket())
        .arg("sessions")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied: uid 65534 may not control this ferryd"),
        "{err}"
    );
    assert!(
        s.stderr().contains("refused uid 65534"),
        "ferryd logs the refusal:\n{}",
        s.stderr()
    );
    // Root still may.
    ctl_json(&s, &["status"]);
}

/// Waits until ferryd lists `n` sessions that are moving data; returns them by id.
fn wait_for_running_sessions(s: &Server, n: usize, clients: &mut [&mut Running]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = ctl_json(s, &["sessions"]);
        let running: Vec<Value> = v["sessions"]
            .as_array()
            .expect("a sessions array")
            .iter()
            .filter(|x| x["state"] == "running" && x["bytes"].as_u64() > Some(0))
            .cloned()
            .collect();
        if running.len() == n {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} running sessions within 60 s: {v}\nferryd stderr:\n{}",
            s.stderr()
        );
        for c in clients.iter_mut() {
            let _ = c.wait_line(Duration::from_millis(50), |_| false);
        }
    }
}

/// Bits per second each of `ids` delivered over about `window`, from two readings.
fn measured_rates(s: &Server, ids: &[u64], window: Duration) -> Vec<f64> {
    let read = || -> Vec<u64> {
        let v = ctl_json(s, &["sessions"]);
        let list = v["sessions"].as_array().expect("a sessions array");
        ids.iter()
            .map(|id| {
                let x = list
                    .iter()
                    .find(|x| x["id"].as_u64() == Some(*id))
                    .unwrap_or_else(|| panic!("session {id} ended too soon: {v}"));
                u64_of(x, "bytes")
            })
            .collect()
    };
    let t0 = Instant::now();
    let b0 = read();
    thread::sleep(window);
    let b1 = read();
    let secs = t0.elapsed().as_secs_f64();
    b0.iter()
        .zip(&b1)
        .map(|(a, b)| b.saturating_sub(*a) as f64 * 8.0 / secs)
        .collect()
}

#[test]
fn an_inbound_cap_holds_across_two_uploads_on_two_cores() {
    let _serial = measuring();
    let _ = ferryctl();
    let cores = ferry_io::placement::available_cores();
    let mut s = Server::init();
    let pinned = format!("cores = [{}, {}]", cores[0], cores[cores.len() - 1]);
    s.edit_config(&[
        ("cores = []", &pinned),
        ("inbound = \"none\"", "inbound = \"300m\""),
    ]);
    s.run();
    let caps = ctl_json(&s, &["caps"]);
    assert_eq!(caps["inbound_bps"], 300_000_000u64, "{caps}");
    // About 4 s each at 150 Mbit/s: time to settle and measure while both run.
    let size = 80 * MIB;
    let up = s.dir("up");
    let mut clients = Vec::new();
    for name in ["a.bin", "b.bin"] {
        let src = up.join(name);
        write_random_file(&src, size, name.len() as u64 + 0xCA9);
        let cmd = s.ferry_cmd("send", &[src.as_os_str(), OsStr::new(&s.remote("/"))]);
        clients.push(s.spawn_ferry(&cmd));
    }
    let (a, b) = clients.split_at_mut(1);
    let running = wait_for_running_sessions(&s, 2, &mut [&mut a[0], &mut b[0]]);
    let ids: Vec<u64> = running.iter().map(|x| u64_of(x, "id")).collect();
    let lanes: Vec<&Value> = running.iter().map(|x| &x["core"]).collect();
    if cores.len() > 1 {
        assert_ne!(lanes[0], lanes[1], "two sessions, two cores: {running:?}");
    }
    // The second session's share reaches the first's sender within a round or two.
    thread::sleep(Duration::from_millis(700));
    let rates = measured_rates(&s, &ids, Duration::from_millis(1500));
    let sum: f64 = rates.iter().sum();
    eprintln!(
        "inbound cap 300 Mbit/s: sessions {:.0} + {:.0} = {:.0} Mbit/s",
        rates[0] / 1e6,
        rates[1] / 1e6,
        sum / 1e6
    );
    assert!(
        (270e6..=330e6).contains(&sum),
        "two uploads under a 300 Mbit/s cap moved {:.0} Mbit/s together ({rates:?})",
        sum / 1e6
    );
    for (r, x) in rates.iter().zip(&running) {
        assert!(*r > 75e6, "a fair session got {:.0} Mbit/s: {x}", r / 1e6);
    }
    // The shares follow demand (a session held back by a busy CPU leaves some of its
    // share to the other), but never add up to more than the cap.
    let listed = ctl_json(&s, &["sessions"]);
    let shares: Vec<u64> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["ceiling_bps"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(shares.len(), 2, "{listed}");
    assert!(shares.iter().sum::<u64>() <= 300_000_000, "{listed}");
    assert!(shares.iter().all(|&c| c >= 75_000_000), "{listed}");
    for c in clients {
        let run = c.wait(FERRY_TIMEOUT);
        s.assert_ok(&run, "an upload under the cap");
    }
    for name in ["a.bin", "b.bin"] {
        if let Some(d) = first_difference(&up.join(name), &s.docroot.join(name)) {
            panic!("{name}: {d}");
        }
    }
}

#[test]
fn a_fair_and_a_low_download_split_a_cap_set_live() {
    let _serial = measuring();
    let _ = ferryctl();
    let mut s = Server::start();
    let out = ctl_ok(&s, &["caps", "--outbound", "200m"]);
    assert!(out.contains("200 Mbit/s"), "{out}");
    let size = 64 * MIB;
    let back = s.dir("back");
    let mut clients = Vec::new();
    for (name, policy) in [("fair.bin", "fair"), ("low.bin", "low")] {
        write_random_file(&s.docroot.join(name), size, policy.len() as u64);
        let dest = back.join(policy);
        fs::create_dir_all(&dest).unwrap();
        let cmd = s.ferry_cmd(
            "recv",
            &[
                OsStr::new("--policy"),
                OsStr::new(policy),
                OsStr::new(&s.remote(&format!("/{name}"))),
                dest.as_os_str(),
            ],
        );
        clients.push(s.spawn_ferry(&cmd));
        // The fair one first, so the low one is the one that joins.
        if policy == "fair" {
            let c = clients.last_mut().unwrap();
            wait_for_running_session(&s, c);
        }
    }
    thread::sleep(Duration::from_millis(500));
    let listed = ctl_json(&s, &["sessions"]);
    let list = listed["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{listed}");
    let id_of = |policy: &str| {
        list.iter()
            .find(|x| x["policy"] == policy)
            .map(|x| u64_of(x, "id"))
            .unwrap_or_else(|| panic!("no {policy} session: {listed}"))
    };
    let ids = [id_of("fair"), id_of("low")];
    let rates = measured_rates(&s, &ids, Duration::from_millis(1200));
    let sum: f64 = rates.iter().sum();
    eprintln!(
        "outbound cap 200 Mbit/s: fair {:.0}, low {:.0} Mbit/s",
        rates[0] / 1e6,
        rates[1] / 1e6
    );
    assert!(
        (180e6..=220e6).contains(&sum),
        "under a 200 Mbit/s cap the two moved {:.0} Mbit/s ({rates:?})",
        sum / 1e6
    );
    assert!(
        rates[0] > 0.8 * sum && rates[1] < 0.15 * 200e6,
        "fair should take the cap and low only what is left: {rates:?}"
    );
    let caps = ctl_json(&s, &["caps"]);
    assert_eq!(caps["outbound_bps"], 200_000_000u64, "{caps}");
    // Both finish exact: the scavenger gets the whole cap once the fair one is done.
    for c in clients {
        let run = c.wait(FERRY_TIMEOUT);
        s.assert_ok(&run, "a download under the cap");
    }
    for (name, policy) in [("fair.bin", "fair"), ("low.bin", "low")] {
        if let Some(d) = first_difference(&s.docroot.join(name), &back.join(policy).join(name)) {
            panic!("{name}: {d}");
        }
    }
    let out = ctl_json(&s, &["caps", "--outbound", "none"]);
    assert!(out["outbound_bps"].is_null(), "{out}");
    s.assert_alive("after the capped downloads");
}

/// A private tmux server (its own socket), killed with everything in it on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Whether tmux can be run here at all.
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `tmux -S SOCKET ARGS...`, which must succeed; its stdout.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen of the one pane, as text.
    fn capture(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .output();
    }
}

/// A word for `sh -c`, quoted.
fn sh_quote(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

/// `ferryctl top` in a real terminal: tmux runs it against a ferryd sending a download at
/// a fixed 200 Mbit/s, and its screen shows the session with its direction and rate; p and
/// r pause and resume it; then ferryd is killed and the view says so and stays up. With `FERRY_TOP_CAPTURE=PATH` the
/// first screen is also written to PATH.
#[test]
fn ferryctl_top_shows_a_live_session_in_tmux() {
    let _serial = measuring();
    if !Tmux::available() {
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let _ = ferryctl();
    let mut s = Server::start();
    // About 5 s at 200 Mbit/s: still running when the screen is read.
    let (_, _, mut ferry) = fixed_download(&mut s, 128 * MIB, 0x709);
    let first = wait_for_running_session(&s, &mut ferry);
    let id = u64_of(&first, "id");

    let tmux = Tmux {
        socket: s.dir("tmux").join("sock"),
    };
    // The shell stays after ferryctl so that a crash leaves its message on the screen.
    let shell = format!(
        "{} --socket {} top; echo \"ferryctl exited with status $?\"; sleep 60",
        sh_quote(ferryctl().as_os_str()),
        sh_quote(s.ctl_socket().as_os_str()),
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &shell,
    ]);
    // Three polls at the default 1 s interval; keep draining the client's progress lines.
    let _ = ferry.wait_line(Duration::from_millis(2500), |_| false);
    let screen = tmux.capture();
    eprintln!("ferryctl top, 2.5 s in:\n{screen}");
    if let Some(path) = std::env::var_os("FERRY_TOP_CAPTURE") {
        fs::write(&path, &screen).expect("write FERRY_TOP_CAPTURE");
    }
    assert!(
        !screen.contains("ferryctl exited"),
        "ferryctl top stopped:\n{screen}"
    );
    assert!(
        screen.contains("ferryctl top") && screen.contains("sessions 1 (1 sending"),
        "no header:\n{screen}"
    );
    // The selected row: "> ID  tester  send  fixed  RATE Mbit/s ...".
    let row = screen
        .lines()
        .find(|l| l.contains(&format!("> {id} ")))
        .unwrap_or_else(|| panic!("no row for session {id}:\n{screen}"));
    let words: Vec<&str> = row.split_whitespace().collect();
    assert!(words.contains(&"send"), "direction in {row:?}");
    assert!(words.contains(&"fixed"), "policy in {row:?}");
    // The first rate in the row is the session's (the target follows it).
    let rate: f64 = words
        .windows(2)
        .find_map(|w| (w[1] == "Mbit/s").then(|| w[0].parse().ok()).flatten())
        .unwrap_or_else(|| panic!("no rate in {row:?}"));
    assert!(
        (100.0..=260.0).contains(&rate),
        "at -l 200m the row says {rate} Mbit/s: {row:?}"
    );
    assert!(
        screen.contains(&format!("session {id} rate, last 60 s (target 200 Mbit/s)")),
        "no chart:\n{screen}"
    );

    // p and r pause and resume the selected session, and the footer says so.
    for (key, state, note) in [("p", "paused", "paused"), ("r", "running", "resumed")] {
        tmux.run(&["send-keys", "-t", "top", key]);
        let t = Instant::now();
        loop {
            let listed = session(&s, id).expect("still listed");
            let screen = tmux.capture();
            if listed["state"] == state && screen.contains(&format!("session {id}: {note}")) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{key} did not leave session {id} {state}: {listed}\n{screen}"
            );
            let _ = ferry.wait_line(Duration::from_millis(100), |_| false);
        }
    }

    // ferryd goes away: the view says so and keeps trying.
    let ferryd = s.child_mut();
    ferryd.kill().expect("kill ferryd");
    let _ = ferryd.wait();
    thread::sleep(Duration::from_millis(2500));
    let screen = tmux.capture();
    eprintln!("ferryctl top, ferryd killed:\n{screen}");
    assert!(
        !screen.contains("ferryctl exited"),
        "ferryctl top stopped when ferryd went away:\n{screen}"
    );
    assert!(
        screen.contains("cannot reach ferryd") && screen.contains("retrying every 1 s"),
        "no error on the screen:\n{screen}"
    );

    // q quits, and the shell after it runs.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let t = Instant::now();
    loop {
        let screen = tmux.capture();
        if screen.contains("ferryctl exited with status 0") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "q did not quit:\n{screen}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on loopback (bound and released: another process could take it, which
/// only fails the test loudly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` from `port`; the body.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    reply
}

#[test]
fn a_session_is_in_the_transfer_log_stats_and_metrics() {
    let _ = ferryctl();
    let mut s = Server::init();
    let port = free_port();
    s.edit_config(&[(
        "# metrics_listen = \"127.0.0.1:9464\"",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    )]);
    s.run();
    let size = 8 * MIB;
    let src = s.dir("up").join("logged file.bin");
    write_random_file(&src, size, 0x106);
    let run = s.send(&[src.as_os_str(), OsStr::new(&s.remote("/"))]);
    s.assert_ok(&run, "the logged upload");

    // The transfer log: a start and an end line for the session, greppable.
    let log = fs::read_to_string(s.srv.join("transfers.log")).expect("a transfer log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains(" start session="), "{log}");
    assert!(
        lines[0].contains(" user=tester direction=upload files=1 bytes=8388608 "),
        "{log}"
    );
    assert!(lines[1].contains(" end session="), "{log}");
    assert!(
        lines[1].contains(" bytes_done=8388608 ") && lines[1].contains(" status=ok code=0 "),
        "{log}"
    );
    let id = |l: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with("session="))
            .map(String::from)
    };
    assert_eq!(id(lines[0]), id(lines[1]), "{log}");

    // Stats and metrics: published about once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let v = ctl_json(&s, &["stats"]);
        let received: u64 = v["lanes"]
            .as_array()
            .expect("lanes")
            .iter()
            .map(|l| u64_of(l, "bytes_received"))
            .sum();
        if received == size {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "stats never counted the upload: {v}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    let writes: u64 = stats["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["latencies"].as_array().unwrap().iter())
        .filter(|p| p["name"] == "disk_write")
        .map(|p| u64_of(p, "count"))
        .sum();
    // One latency per write the disk queue made: blocks that lie end to end go together,
    // so anywhere from one write to one per block.
    assert!(writes >= 1 && writes <= size / 4096, "{stats}");
    let table = ctl_ok(&s, &["stats"]);
    assert!(
        table.contains("disk_write") && table.contains("p99"),
        "{table}"
    );

    let metrics = scrape(port);
    let received: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("ferry_received_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(received, size, "{metrics}");
    for want in [
        "ferry_sessions{direction=\"recv\"} 0",
        "ferry_core_busy_seconds_total{",
        "ferry_latency_seconds{",
    ] {
        assert!(metrics.contains(want), "no {want} in:\n{metrics}");
    }
    let status = ctl_json(&s, &["status"]);
    assert!(!status["lanes"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn cancel_ends_a_transfer_and_leaves_the_partial_for_a_resume() {
    let _ = ferryctl();
    let mut s = Server::start();
    let size = 64 * MIB;
    let src = s.dir("src").join("cut.bin");
    write_random_file(&src, size, 0xCA7);
    let cmd = s.ferry_cmd(
        "send",
        &[
            OsStr::new("-l"),
            OsStr::new("100m"),
            OsStr::new("--policy"),
            OsStr::new("fixed"),
            src.as_os_str(),
            OsStr::new(&s.remote("/")),
        ],
    );
    let mut ferry = s.spawn_ferry(&cmd);
    let x = wait_for_running_session(&s, &mut ferry);
    let id = u64_of(&x, "id").to_string();
    thread::sleep(Duration::from_millis(800));
    let out = ctl_json(&s, &["cancel", &id]);
    assert_eq!(out["ok"], true, "{out}");
    let run = ferry.wait(Duration::from_secs(30));
    assert_ne!(
        run.code(),
        None,
        "a cancelled transfer fails: {}",
        run.describe()
    );
    assert_ne!(run.code(), Some(0), "{}", run.describe());
    // The receiver keeps what it has under the partial name; the final name never appears.
    let partial = s.docroot.join("cut.bin.partial");
    let kept = fs::metadata(&partial)
        .unwrap_or_else(|e| {
            panic!(
                "no {} after cancel ({e}): {}",
                partial.display(),
                run.describe()
            )
        })
        .len();
    assert!(kept > 0, "an empty partial");
    assert!(
        !s.docroot.join("cut.bin").exists(),
        "the final name exists after cancel"
    );
    s.assert_alive("after cancel");
}

#[test]
fn a_multi_session_transfer_is_one_row_and_set_rate_divides_it() {
    let _serial = measuring();
    let _ = ferryctl();
    let mut s = Server::start();
    let src = s.dir("src").join("split.bin");
    write_random_file(&src, 96 * MIB, 0x5E55);
    let cmd = s.ferry_cmd(
        "send",
        &[
            OsStr::new("--sessions"),
            OsStr::new("2"),
            OsStr::new("--split-threshold"),
            OsStr::new("1MB"),
            OsStr::new("-l"),
            OsStr::new("200m"),
            OsStr::new("--policy"),
            OsStr::new("fixed"),
            src.as_os_str(),
            OsStr::new(&s.remote("/")),
        ],
    );
    let mut ferry = s.spawn_ferry(&cmd);
    let running = wait_for_running_sessions(&s, 2, &mut [&mut ferry]);
    let tag = running[0]["transfer"]
        .as_str()
        .expect("a transfer tag")
        .to_string();
    assert_eq!(
        running[1]["transfer"], running[0]["transfer"],
        "{running:?}"
    );
    for x in &running {
        assert_eq!(
            u64_of(x, "target_bps"),
            100_000_000,
            "200m over 2 sessions: {x}"
        );
    }
    assert_ne!(
        running[0]["port"], running[1]["port"],
        "one session per lane: {running:?}"
    );

    // The table: the transfer's row, its two sessions beneath it.
    let table = ctl_ok(&s, &["sessions"]);
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&tag))
        .unwrap_or_else(|| panic!("no row for {tag}:\n{table}"));
    assert!(lines[at].contains("2 sessions"), "{table}");
    assert!(
        lines[at + 1].starts_with("├ ") && lines[at + 2].starts_with("└ "),
        "{table}"
    );

    let said = ctl_ok(&s, &["set-rate", &tag, "--target", "400m"]);
    assert!(said.contains(&tag), "{said}");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let v = ctl_json(&s, &["sessions"]);
        let targets: Vec<u64> = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["transfer"] == tag.as_str())
            .map(|x| u64_of(x, "target_bps"))
            .collect();
        if targets == [200_000_000, 200_000_000] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets after set-rate 400m: {targets:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let unknown = ferryctl_at(&s.ctl_socket(), &["set-rate", "tdead", "--target", "1m"]);
    assert!(!unknown.status.success(), "{}", describe(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no transfer tdead"),
        "{}",
        describe(&unknown)
    );
    let run = ferry.wait(FERRY_TIMEOUT);
    s.assert_ok(&run, "the two-session upload after set-rate");
    assert_eq!(first_difference(&src, &s.docroot.join("split.bin")), None);
}
