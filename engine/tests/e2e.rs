//! End to end with real processes: a `ferryd` and `ferry send`/`ferry recv` on loopback,
//! each test with its own server, keys and temporary directories.
//!
//! Needs `ssh-keygen` (client keys) and, for the full-disk test, root (it mounts a tmpfs).

mod common;

use std::ffi::OsString;
use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Prng, Server, USER, assert_same_tree, first_difference, keygen, listing, partials,
    public_key_blob, write_random_file,
};

const MIB: u64 = 1 << 20;

/// Writes a file of `size` pseudo-random bytes with the given mode and modification time.
fn make_file(path: &Path, size: u64, seed: u64, mode: u32, mtime: (u64, u32)) {
    write_random_file(path, size, seed);
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::new(mtime.0, mtime.1))
        .unwrap();
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn tree_upload_and_download_keep_contents_modes_and_mtimes() {
    let mut s = Server::start();
    let src = s.dir("src");
    let tree = src.join("tree");
    for d in [
        "tree/sub/deeper",
        "tree/empty dir",
        "tree/données été",
        "tree/sub/also empty",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    let files: [(&str, u64, u32); 9] = [
        ("one byte", 1, 0o644),
        ("zero", 0, 0o600),
        ("sub/4095.bin", 4095, 0o640),
        ("sub/4096.bin", 4096, 0o755),
        ("sub/deeper/65543.bin", 65_536 + 7, 0o444),
        ("données été/naïve file.txt", 1234, 0o664),
        ("日本語.bin", 8192 * 3 + 1, 0o700),
        ("big 3mib.bin", 3 * MIB, 0o600),
        ("sub/deeper/exec", 10, 0o750),
    ];
    for (i, (name, size, mode)) in files.iter().enumerate() {
        let mtime = (
            1_500_000_000 + 86_400 * i as u64,
            123_456_789 * (i as u32 % 8),
        );
        make_file(&tree.join(name), *size, 100 + i as u64, *mode, mtime);
    }

    let up = s.send(&[tree.as_os_str(), s.remote("/").as_ref()]);
    s.assert_ok(&up, "upload of the tree");
    assert_eq!(
        up.json_u64("files"),
        Some(files.len() as u64),
        "{}",
        up.describe()
    );
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert_eq!(up.json_u64("bytes"), Some(total), "{}", up.describe());
    assert_same_tree(&tree, &s.docroot.join("tree"), "after the upload");
    assert_eq!(
        listing(&s.docroot),
        ["tree"],
        "the docroot holds only the tree"
    );
    assert_eq!(partials(&s.docroot), Vec::<String>::new(), "partials left");

    let back = s.dir("back");
    let down = s.recv(&[s.remote("/tree").as_ref(), back.as_os_str()]);
    s.assert_ok(&down, "download of the tree");
    assert_eq!(
        down.json_u64("files"),
        Some(files.len() as u64),
        "{}",
        down.describe()
    );
    assert_same_tree(&tree, &back.join("tree"), "after the download");
    assert_eq!(
        listing(&back),
        ["tree"],
        "the destination holds only the tree"
    );
    assert_eq!(partials(&back), Vec::<String>::new(), "partials left");
    assert_eq!(partials(&s.docroot), Vec::<String>::new(), "partials left");
    s.assert_alive("after the transfers");
}

/// One upload and one download of a `size`-byte file, both byte-exact.
fn round_trip(s: &mut Server, name: &str, size: u64, seed: u64) {
    let src = s.dir("src").join(name);
    write_random_file(&src, size, seed);
    let up = s.send(&[src.as_os_str(), s.remote("/").as_ref()]);
    s.assert_ok(&up, &format!("upload of {name}"));
    let there = s.docroot.join(name);
    if let Some(d) = first_difference(&src, &there) {
        panic!("upload of {name}: {d}\n{}", up.describe());
    }
    let back = s.dir(&format!("back-{name}"));
    let down = s.recv(&[s.remote(&format!("/{name}")).as_ref(), back.as_os_str()]);
    s.assert_ok(&down, &format!("download of {name}"));
    if let Some(d) = first_difference(&src, &back.join(name)) {
        panic!("download of {name}: {d}\n{}", down.describe());
    }
    assert_eq!(partials(&s.docroot), Vec::<String>::new());
    assert_eq!(partials(&back), Vec::<String>::new());
    // Keep the disk use of the test small.
    fs::remove_file(&src).unwrap();
    fs::remove_file(&there).unwrap();
    fs::remove_file(back.join(name)).unwrap();
}

#[test]
fn large_file_both_ways_with_bounded_server_memory() {
    const LIMIT_KIB: u64 = 200 * 1024;
    let mut s = Server::start();
    round_trip(&mut s, "sixteen.bin", 16 * MIB, 16);
    let hwm16 = s.vm_hwm_kib();
    round_trip(&mut s, "sixtyfour.bin", 64 * MIB, 64);
    let hwm64 = s.vm_hwm_kib();
    eprintln!(
        "ferryd VmHWM: {hwm16} KiB ({:.1} MiB) after 16 MiB up+down, {hwm64} KiB ({:.1} MiB) \
         after 64 MiB up+down",
        hwm16 as f64 / 1024.0,
        hwm64 as f64 / 1024.0
    );
    assert!(
        hwm16 < LIMIT_KIB && hwm64 < LIMIT_KIB,
        "ferryd's peak RSS is too high: {hwm16} KiB after 16 MiB, {hwm64} KiB after 64 MiB \
         (limit {LIMIT_KIB} KiB)"
    );
    s.assert_alive("after the transfers");
}

#[test]
fn unauthorized_key_is_refused_with_code_12() {
    let mut s = Server::start();
    let other = s.tmp.path().join("id_other");
    keygen(&other, USER);
    let src = s.dir("src").join("f.txt");
    fs::write(&src, b"hello").unwrap();
    let mut cmd = s.ferry_cmd("send", &[src.as_os_str(), s.remote("/").as_ref()]);
    let i = cmd.iter().position(|a| a == "-i").unwrap();
    cmd[i + 1] = other.clone().into();
    let run = s.ferry_raw(&cmd);
    s.assert_code(&run, 12, "send with a key not in authorized_keys");
    assert_eq!(listing(&s.docroot), Vec::<String>::new(), "nothing written");
    s.assert_alive("after a refused login");
}

#[test]
fn unknown_host_key_gives_14_and_changed_host_key_gives_15() {
    let mut s = Server::start();
    let src = s.dir("src").join("f.txt");
    fs::write(&src, b"hello").unwrap();
    let dest = s.remote("/");

    // Unknown host, no --accept-new: a missing known_hosts file, then an empty one.
    for existing in [false, true] {
        if existing {
            fs::write(&s.known_hosts, "").unwrap();
        }
        let mut cmd = s.ferry_cmd("send", &[src.as_os_str(), dest.as_ref()]);
        cmd.retain(|a| a != "--accept-new");
        let run = s.ferry_raw(&cmd);
        s.assert_code(
            &run,
            14,
            &format!("unknown host key, known_hosts existing={existing}"),
        );
    }
    assert_eq!(listing(&s.docroot), Vec::<String>::new(), "nothing written");

    // Another key recorded for [127.0.0.1]:PORT: refused, with or without --accept-new.
    let fake = s.tmp.path().join("fake_host_key");
    keygen(&fake, "fake-host");
    let recorded = format!(
        "[127.0.0.1]:{} {}\n",
        s.tcp_port,
        public_key_blob(&fake.with_extension("pub"))
    );
    fs::write(&s.known_hosts, &recorded).unwrap();
    for accept_new in [true, false] {
        let mut cmd = s.ferry_cmd("send", &[src.as_os_str(), dest.as_ref()]);
        if !accept_new {
            cmd.retain(|a| a != "--accept-new");
        }
        let run = s.ferry_raw(&cmd);
        s.assert_code(
            &run,
            15,
            &format!("changed host key, --accept-new={accept_new}"),
        );
        assert_eq!(
            fs::read_to_string(&s.known_hosts).unwrap(),
            recorded,
            "a mismatch must leave known_hosts as it was"
        );
    }
    assert_eq!(listing(&s.docroot), Vec::<String>::new(), "nothing written");
    s.assert_alive("after refused host keys");
}

#[test]
fn paths_outside_the_docroot_are_refused_with_code_32() {
    let mut s = Server::start();
    let src = s.dir("src").join("x");
    fs::write(&src, b"must not escape").unwrap();
    let srv_before = listing(&s.srv);

    let run = s.send(&[src.as_os_str(), s.remote("/../").as_ref()]);
    s.assert_code(&run, 32, "upload to /../");
    let run = s.send(&[src.as_os_str(), s.remote("/../x").as_ref()]);
    s.assert_code(&run, 32, "upload to /../x");
    assert_eq!(
        listing(&s.srv),
        srv_before,
        "nothing written beside the docroot"
    );
    assert!(!s.srv.join("x").exists());
    assert_eq!(listing(&s.docroot), Vec::<String>::new());

    // A symbolic link inside the docroot that leads outside.
    let outside = tempfile::Builder::new()
        .prefix("ferry-e2e-outside.")
        .tempdir()
        .unwrap();
    fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
    symlink(outside.path(), s.docroot.join("escape")).unwrap();

    let run = s.send(&[src.as_os_str(), s.remote("/escape").as_ref()]);
    s.assert_code(&run, 32, "upload through a link leading outside");
    let run = s.send(&[src.as_os_str(), s.remote("/escape/").as_ref()]);
    s.assert_code(
        &run,
        32,
        "upload through a link leading outside (trailing /)",
    );
    assert_eq!(
        listing(outside.path()),
        ["secret.txt"],
        "nothing written through the link"
    );

    let back = s.dir("back");
    let run = s.recv(&[s.remote("/escape/secret.txt").as_ref(), back.as_os_str()]);
    s.assert_code(&run, 32, "download through a link leading outside");
    let run = s.recv(&[s.remote("/escape").as_ref(), back.as_os_str()]);
    s.assert_code(&run, 32, "download of a link leading outside");
    let run = s.recv(&[s.remote("/../ferryd.toml").as_ref(), back.as_os_str()]);
    s.assert_code(&run, 32, "download of /../ferryd.toml");
    assert_eq!(listing(&back), Vec::<String>::new(), "nothing downloaded");
    assert!(
        !s.tmp.path().join("x").exists() && !s.tmp.path().join("ferryd.toml").exists(),
        "something was written outside the docroot: {:?}",
        listing(s.tmp.path())
    );
    s.assert_alive("after refused paths");
}

#[test]
fn missing_destinations_give_code_30() {
    let mut s = Server::start();
    let src = s.dir("src").join("f.txt");
    fs::write(&src, b"hello").unwrap();
    let run = s.send(&[src.as_os_str(), s.remote("/no/such/dir").as_ref()]);
    s.assert_code(&run, 30, "upload into a missing remote directory");
    assert_eq!(listing(&s.docroot), Vec::<String>::new(), "nothing created");

    fs::write(s.docroot.join("there.txt"), b"there").unwrap();
    let missing = s.tmp.path().join("no-such-local-dir");
    let run = s.recv(&[s.remote("/there.txt").as_ref(), missing.as_os_str()]);
    s.assert_code(&run, 30, "download into a missing local directory");
    assert!(!missing.exists(), "the local destination was created");
    s.assert_alive("after refused destinations");
}

#[test]
fn full_disk_gives_code_35_and_the_server_survives() {
    let mut s = Server::init();
    let docroot = s.docroot.clone();
    s.mount_tmpfs(&docroot, 4);
    s.run();
    let src = s.dir("src").join("big.bin");
    write_random_file(&src, 8 * MIB, 8);
    let run = s.send(&[src.as_os_str(), s.remote("/").as_ref()]);
    s.assert_code(&run, 35, "upload of 8 MiB into a 4 MiB tmpfs");
    s.assert_alive("after a full disk");
    assert!(
        !s.docroot.join("big.bin").exists(),
        "a final-named file exists after a failed upload; docroot: {:?}",
        listing(&s.docroot)
    );

    let small = s.dir("src").join("small.bin");
    write_random_file(&small, 64 * 1024, 9);
    let run = s.send(&[small.as_os_str(), s.remote("/").as_ref()]);
    s.assert_ok(
        &run,
        &format!(
            "a small upload after the full-disk failure (docroot now holds {:?})",
            listing(&s.docroot)
        ),
    );
    assert_eq!(first_difference(&small, &s.docroot.join("small.bin")), None);
    s.assert_alive("after the second upload");
}

/// One datagram of junk aimed at the data plane.
fn junk(prng: &mut Prng) -> Vec<u8> {
    match prng.below(4) {
        // Random bytes, random length.
        0 => {
            let n = prng.below(9001) as usize;
            prng.bytes(n)
        }
        // A version-1 header, truncated.
        1 => {
            let mut h = prng.bytes(40);
            h[0] = 1;
            h[1] = 1 + prng.below(4) as u8;
            h.truncate(prng.below(40) as usize);
            h
        }
        // A bare 24-byte version-1 header with random fields.
        2 => {
            let mut h = prng.bytes(24);
            h[0] = 1;
            h[1] = 1 + prng.below(4) as u8;
            h
        }
        // A plausible data datagram: header, block reference, body, "tag".
        _ => {
            let body = prng.below(8193) as usize;
            let mut d = prng.bytes(40 + body + 16);
            d[0] = 1;
            d[1] = 1 + prng.below(4) as u8;
            d[2] = 0;
            d[3] = prng.below(8) as u8;
            d[24..28].copy_from_slice(&(prng.below(2) as u32).to_be_bytes());
            d[28..36].copy_from_slice(&(prng.below(64 * MIB) & !8191).to_be_bytes());
            d[36..40].copy_from_slice(&(body as u32).to_be_bytes());
            d
        }
    }
}

/// A thread that sprays junk at a UDP port, a few thousand datagrams a second, until
/// dropped.
struct Spray {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spray {
    fn start(port: u16) -> Spray {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut prng = Prng::from_time();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..4 {
                        let d = junk(&mut prng);
                        if sock.send_to(&d, ("127.0.0.1", port)).is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Spray {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Spray {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs ferry with `args` while `spray` runs; checks that enough junk went out meanwhile.
fn sprayed_run(s: &mut Server, spray: &Spray, args: &[OsString], what: &str) {
    let before = spray.sent();
    let started = Instant::now();
    let run = s.ferry_raw(args);
    let secs = started.elapsed().as_secs_f64();
    let n = spray.sent() - before;
    eprintln!(
        "garbage: {n} datagrams sprayed during a {secs:.2} s {what} ({:.0}/s)",
        n as f64 / secs
    );
    s.assert_ok(&run, &format!("{what} under a spray of garbage datagrams"));
    s.assert_alive(&format!("after the garbage during the {what}"));
    assert!(
        n as f64 > 1000.0 * secs,
        "the spray was too slow: {n} datagrams in {secs:.2} s"
    );
}

#[test]
fn garbage_datagrams_do_not_disturb_a_transfer() {
    let mut s = Server::start();
    let src = s.dir("src").join("garbage-test.bin");
    write_random_file(&src, 32 * MIB, 32);
    let back = s.dir("back");

    let spray = Spray::start(s.udp_port);
    // Let the spray reach full speed before the session starts.
    thread::sleep(Duration::from_millis(300));
    // Held to 200 Mbit/s so that each transfer lasts over a second and the spray overlaps
    // its whole data phase (unlimited, 32 MiB on loopback takes about 0.1 s).
    let remote = s.remote("/");
    let up = s.ferry_cmd(
        "send",
        &[
            "-l".as_ref(),
            "200m".as_ref(),
            src.as_os_str(),
            remote.as_ref(),
        ],
    );
    sprayed_run(&mut s, &spray, &up, "upload");
    if let Some(d) = first_difference(&src, &s.docroot.join("garbage-test.bin")) {
        panic!("upload under garbage: {d}");
    }
    let remote = s.remote("/garbage-test.bin");
    let down = s.ferry_cmd(
        "recv",
        &[
            "-l".as_ref(),
            "200m".as_ref(),
            remote.as_ref(),
            back.as_os_str(),
        ],
    );
    sprayed_run(&mut s, &spray, &down, "download");
    if let Some(d) = first_difference(&src, &back.join("garbage-test.bin")) {
        panic!("download under garbage: {d}");
    }
    drop(spray);
    s.assert_alive("after the garbage");
}

/// Starts an upload of a fresh 8 MiB `name` held at 8 Mbit/s (about 8 s), and waits for the
/// first progress event that shows data moving: time enough to change the source under the
/// sender. Returns the source, the running client and that event's line, if one came.
fn slow_upload(
    s: &mut Server,
    name: &str,
    seed: u64,
) -> (std::path::PathBuf, common::Running, Option<String>) {
    let src = s.dir("src").join(name);
    write_random_file(&src, 8 * MIB, seed);
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
    let mut running = s.spawn_ferry(&cmd);
    let moving = running.wait_line(Duration::from_secs(60), |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["event"] == "progress" && v["bytes"].as_u64().is_some_and(|b| b > 0))
    });
    (src, running, moving)
}

/// A source that changes under the sender, made deterministic with a slow transfer: the
/// rate is held at 8 Mbit/s so that an 8 MiB file takes about 8 s, and the source is
/// truncated as soon as the first progress event shows data moving. The sender must notice
/// (code 36 or 37) and the server must not put a final-named file in place.
#[test]
fn source_truncated_during_the_transfer_is_an_error() {
    let mut s = Server::start();
    let (src, running, moving) = slow_upload(&mut s, "shrinks.bin", 36);
    let truncated_at = SystemTime::now();
    fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(MIB / 2)
        .unwrap();
    let run = running.wait(common::FERRY_TIMEOUT);
    assert!(
        moving.is_some(),
        "no progress event with bytes > 0 before the end: {}",
        run.describe()
    );
    let progressed = moving
        .as_deref()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["bytes"].as_u64())
        .unwrap_or(0);
    assert!(
        progressed < 4 * MIB,
        "the rate limit did not hold ({progressed} bytes at the first progress event); the \
         test cannot tell whether the truncation came in time"
    );
    let code = run.code();
    assert!(
        !run.status.success() && matches!(code, Some(36 | 37)),
        "source truncated at {truncated_at:?} after {progressed} bytes: expected a non-zero \
         exit with code 36 (source vanished) or 37 (file changed), got exit {} code {code:?}\n\
         {}\nferryd stderr:\n{}",
        run.status,
        run.describe(),
        s.stderr()
    );
    assert!(
        !s.docroot.join("shrinks.bin").exists(),
        "a final-named file exists after a failed upload: {:?}",
        listing(&s.docroot)
    );
    s.assert_alive("after a source changed under the sender");
}

#[test]
fn sigterm_stops_an_idle_ferryd_with_status_0() {
    let mut s = Server::start();
    let pid = s.pid();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM {pid} failed");
    let signalled = Instant::now();
    let status = loop {
        if let Some(st) = s.exited() {
            break st;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "ferryd still runs 3 s after SIGTERM; stderr:\n{}",
            s.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    };
    eprintln!("ferryd exited {:?} after SIGTERM", signalled.elapsed());
    assert_eq!(
        status.code(),
        Some(0),
        "ferryd's exit after SIGTERM: {status}; stderr:\n{}",
        s.stderr()
    );
}

#[test]
fn a_source_that_grows_during_the_transfer_is_reported_not_delivered() {
    let mut s = Server::start();
    let (src, running, moving) = slow_upload(&mut s, "grows.bin", 37);
    assert!(moving.is_some(), "the transfer never moved");
    // Appended to while it is sent: every block read so far is still what it was, only
    // the size and mtime tell.
    use std::io::Write as _;
    fs::OpenOptions::new()
        .append(true)
        .open(&src)
        .unwrap()
        .write_all(&[1u8; 4096])
        .unwrap();
    let run = running.wait(common::FERRY_TIMEOUT);
    assert_eq!(
        run.code(),
        Some(37),
        "a source that grew should fail with 37 (file changed): {}\nferryd stderr:\n{}",
        run.describe(),
        s.stderr()
    );
    assert!(
        !s.docroot.join("grows.bin").exists(),
        "the changed file was delivered under its final name: {:?}",
        listing(&s.docroot)
    );
    s.assert_alive("after a source grew under the sender");
}

/// Starts a download of a fresh 8 MiB `name` from the docroot, held at 8 Mbit/s, and waits
/// until data moves: time enough to change the source under ferryd. Returns the source,
/// the directory it is downloaded into and the running client.
fn slow_download(s: &mut Server, name: &str, seed: u64) -> (PathBuf, PathBuf, common::Running) {
    let src = s.docroot.join(name);
    write_random_file(&src, 8 * MIB, seed);
    let back = s.dir("back");
    let cmd = s.ferry_cmd(
        "recv",
        &[
            "--retry".as_ref(),
            "0".as_ref(),
            "-l".as_ref(),
            "8m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            s.remote(&format!("/{name}")).as_ref(),
            back.as_os_str(),
        ],
    );
    let mut running = s.spawn_ferry(&cmd);
    let moving = running.wait_line(Duration::from_secs(60), |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["event"] == "progress" && v["bytes"].as_u64().is_some_and(|b| b > 0))
    });
    assert!(moving.is_some(), "the transfer never moved");
    (src, back, running)
}

/// Changes ferryd's source with `change` while ferryd sends it: the client must fail with
/// 37 and keep no final-named file, and ferryd must stay up.
fn changed_during_a_download(name: &str, seed: u64, what: &str, change: impl FnOnce(&Path)) {
    changed_during_a_download_on(None, name, seed, what, change)
}

/// As `changed_during_a_download`, with ferryd on the AES-GCM backend `aead` if given (it
/// decides whether large sources are mapped or read).
fn changed_during_a_download_on(
    aead: Option<&str>,
    name: &str,
    seed: u64,
    what: &str,
    change: impl FnOnce(&Path),
) {
    let mut s = Server::init();
    if let Some(aead) = aead {
        s.ferryd_env.push(("FERRY_AEAD".into(), aead.into()));
    }
    s.run();
    let (src, back, running) = slow_download(&mut s, name, seed);
    change(&src);
    let run = running.wait(common::FERRY_TIMEOUT);
    s.assert_alive(&format!("after a served source {what}"));
    s.assert_code(
        &run,
        37,
        &format!("a served file that {what} during the download"),
    );
    assert!(
        !back.join(name).exists(),
        "the changed file was delivered under its final name: {:?}",
        listing(&back)
    );
}

#[test]
fn a_source_that_grows_during_a_download_is_reported_not_delivered() {
    changed_during_a_download("grows.bin", 38, "grew", |src| {
        use std::io::Write as _;
        fs::OpenOptions::new()
            .append(true)
            .open(src)
            .unwrap()
            .write_all(&[1u8; 4096])
            .unwrap();
    });
}

/// On aws-lc, which seals out of place, ferryd reads a large source through a mapping:
/// truncated while it is sent, the pages past the new end would raise SIGBUS and kill the
/// daemon. On ring it reads the source into its buffers, and a short read must say the
/// same.
#[test]
fn a_source_truncated_during_a_download_fails_it_and_ferryd_survives() {
    for aead in ["aws-lc", "ring"] {
        changed_during_a_download_on(Some(aead), "shrinks.bin", 39, "was truncated", |src| {
            fs::OpenOptions::new()
                .write(true)
                .open(src)
                .unwrap()
                .set_len(MIB / 2)
                .unwrap();
        });
    }
}

/// Without the io_uring disk queue (`FERRY_DISK_QUEUE=off`: what a kernel that refuses
/// io_uring gets) each block is written with `pwrite` as it is opened: both ways exact.
#[test]
fn without_the_disk_queue_blocks_are_written_as_they_come() {
    let off: (&str, &std::ffi::OsStr) = ("FERRY_DISK_QUEUE", "off".as_ref());
    let mut s = Server::init();
    s.ferryd_env.push((off.0.into(), "off".into()));
    s.run();
    let src = s.dir("src").join("plain.bin");
    write_random_file(&src, 8 * MIB + 123, 77);
    let up = s.ferry_cmd("send", &[src.as_os_str(), s.remote("/").as_ref()]);
    let up = s.ferry_env(&up, &[off]);
    s.assert_ok(&up, "upload without the disk queue");
    if let Some(d) = first_difference(&src, &s.docroot.join("plain.bin")) {
        panic!("upload without the disk queue: {d}\n{}", up.describe());
    }
    let back = s.dir("back");
    let down = s.ferry_cmd("recv", &[s.remote("/plain.bin").as_ref(), back.as_os_str()]);
    let down = s.ferry_env(&down, &[off]);
    s.assert_ok(&down, "download without the disk queue");
    if let Some(d) = first_difference(&src, &back.join("plain.bin")) {
        panic!("download without the disk queue: {d}\n{}", down.describe());
    }
    assert_eq!(partials(&s.docroot), Vec::<String>::new());
    assert_eq!(partials(&back), Vec::<String>::new());
}
