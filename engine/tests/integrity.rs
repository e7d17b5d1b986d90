//! End-to-end checksums (`--checksum`, `--manifest`) with real processes: each algorithm
//! both ways, the manifest's digests against independent tools, and a partial damaged on
//! the server's disk that is caught before its rename and repaired.

#[allow(dead_code)]
mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{FerryRun, Server, first_difference, leftovers, write_random_file};
use ferry_engine::resume::partial_path;

const MIB: u64 = 1 << 20;

/// The manifest's lines, by path.
fn manifest(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `ALGORITHM:HEX` of the file at `path`, computed without ferry: `sha256sum`, or the
/// `crc32c` crate over the whole file.
fn reference_digest(algo: &str, path: &Path) -> String {
    match algo {
        "sha256" => {
            let out = Command::new("sha256sum").arg(path).output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            format!("sha256:{}", text.split_whitespace().next().unwrap())
        }
        "crc32c" => format!("crc32c:{:08x}", crc32c::crc32c(&fs::read(path).unwrap())),
        _ => unreachable!(),
    }
}

fn checksum_events(run: &FerryRun, event: &str) -> Vec<serde_json::Value> {
    run.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

#[test]
fn each_algorithm_both_ways_with_a_manifest_that_matches_independent_tools() {
    let mut s = Server::start();
    let src = s.dir("src").join("set");
    fs::create_dir_all(src.join("sub")).unwrap();
    write_random_file(&src.join("big.bin"), 5 * MIB + 4321, 7);
    write_random_file(&src.join("sub/small.bin"), 1000, 8);
    write_random_file(&src.join("empty"), 0, 9);
    let names = ["set/big.bin", "set/empty", "set/sub/small.bin"];
    for algo in ["sha256", "crc32c"] {
        let up_manifest = s.dir("out").join(format!("up-{algo}.jsonl"));
        let dest = format!("/{algo}");
        fs::create_dir_all(s.docroot.join(algo)).unwrap();
        let up = s.send(&[
            "--checksum".as_ref(),
            algo.as_ref(),
            "--manifest".as_ref(),
            up_manifest.as_os_str(),
            src.as_os_str(),
            s.remote(&dest).as_ref(),
        ]);
        s.assert_ok(&up, &format!("upload with {algo}"));
        assert_eq!(up.json_str("checksum").as_deref(), Some(algo));
        assert_eq!(up.json_u64("repaired"), Some(0));
        let lines = manifest(&up_manifest);
        assert_eq!(lines.len(), names.len(), "{lines:?}");
        for line in &lines {
            let path = line["path"].as_str().unwrap();
            assert!(names.contains(&path), "{path}");
            let local = src.parent().unwrap().join(path);
            let remote = s.docroot.join(algo).join(path);
            assert!(first_difference(&local, &remote).is_none(), "{path}");
            let want = reference_digest(algo, &local);
            assert_eq!(line["checksum"], want.as_str(), "{path}: {line}");
            assert_eq!(line["size"], fs::metadata(&local).unwrap().len());
            assert_eq!(line["action"], "sent");
            assert!(line["mtime"].as_str().unwrap().contains('T'), "{line}");
        }
        assert_eq!(checksum_events(&up, "checksum").len(), names.len());

        let back = s.dir(&format!("back-{algo}"));
        let down_manifest = s.dir("out").join(format!("down-{algo}.jsonl"));
        let down = s.recv(&[
            "--checksum".as_ref(),
            algo.as_ref(),
            "--manifest".as_ref(),
            down_manifest.as_os_str(),
            s.remote(&format!("{dest}/set")).as_ref(),
            back.as_os_str(),
        ]);
        s.assert_ok(&down, &format!("download with {algo}"));
        for line in manifest(&down_manifest) {
            let path = line["path"].as_str().unwrap();
            let got = back.join(path);
            assert!(
                first_difference(&src.parent().unwrap().join(path), &got).is_none(),
                "{path}"
            );
            assert_eq!(line["checksum"], reference_digest(algo, &got).as_str());
        }
        assert_eq!(leftovers(&back), Vec::<String>::new());
        assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
    }
}

#[test]
fn a_manifest_alone_means_sha256_and_no_checksum_sends_no_digest() {
    let mut s = Server::start();
    let src = s.dir("src").join("f.bin");
    write_random_file(&src, 300_000, 3);
    let m = s.dir("out").join("m.jsonl");
    let run = s.send(&[
        "--manifest".as_ref(),
        m.as_os_str(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "upload with a manifest");
    let lines = manifest(&m);
    assert_eq!(
        lines[0]["checksum"],
        reference_digest("sha256", &src).as_str()
    );
    let plain = s.send(&[
        "-k".as_ref(),
        "0".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&plain, "upload without a checksum");
    assert!(plain.json.as_ref().unwrap()["checksum"].is_null());
    assert!(checksum_events(&plain, "checksum").is_empty());
}

/// Bytes flipped in `NAME.partial` on the server's disk while a rate-limited upload runs,
/// in a region already written and checkpointed: the writer's in-order hash saw the good
/// bytes go by, so the damage shows when the upload resumes and the held ranges are hashed
/// from the partial. The file fails its checksum, stays partial, and the one re-send at
/// resume level 3 carries only the damaged MiB.
#[test]
fn a_partial_damaged_on_the_servers_disk_is_caught_before_its_rename_and_repaired() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    let size = 32 * MIB;
    write_random_file(&src, size, 11);
    let args = s.ferry_cmd(
        "send",
        &[
            "-k".as_ref(),
            "1".as_ref(),
            "--checksum".as_ref(),
            "sha256".as_ref(),
            "-l".as_ref(),
            "200m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let mut run = s.spawn_ferry(&args);
    let past = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["bytes"].as_u64())
            .is_some_and(|b| b > size * 4 / 10)
    };
    assert!(
        run.wait_line(Duration::from_secs(60), past).is_some(),
        "the upload never got past 40 %"
    );
    // Written over a second ago, so a checkpoint names it.
    let partial = partial_path(&s.docroot.join("src.bin"));
    let at = 3 * MIB + 12_345;
    let f = fs::OpenOptions::new().write(true).open(&partial).unwrap();
    f.write_all_at(&[0x5a; 64], at).unwrap();
    drop(f);
    run.kill9();

    let again = s.send(&[
        "-k".as_ref(),
        "1".as_ref(),
        "--checksum".as_ref(),
        "sha256".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&again, "the resumed upload, repaired");
    assert!(
        first_difference(&src, &s.docroot.join("src.bin")).is_none(),
        "{}",
        again.describe()
    );
    assert_eq!(again.json_u64("repaired"), Some(1), "{}", again.describe());
    let caught = checksum_events(&again, "checksum_mismatch");
    assert_eq!(caught.len(), 1, "{}", again.describe());
    assert_eq!(caught[0]["path"], "src.bin");
    // The resume sent what was missing; the repair one MiB chunk, not the file again.
    let resumed = again.json_u64("resumed_bytes").unwrap();
    let wire = again.json_u64("wire_bytes").unwrap();
    assert!(
        wire < size - resumed + 4 * MIB,
        "{wire} wire bytes for {} missing and one damaged MiB\n{}",
        size - resumed,
        again.describe()
    );
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
    let checksums = checksum_events(&again, "checksum");
    assert_eq!(
        checksums[0]["checksum"],
        reference_digest("sha256", &src).as_str()
    );
}

/// The same for a download: the client's partial is damaged while the download runs; the
/// resumed download catches it and fetches the damaged chunk again.
#[test]
fn a_partial_damaged_on_the_clients_disk_is_caught_and_repaired_on_download() {
    let mut s = Server::start();
    let size = 24 * MIB;
    fs::create_dir_all(s.docroot.join("d")).unwrap();
    let src = s.docroot.join("d/src.bin");
    write_random_file(&src, size, 12);
    let dest = s.dir("dest");
    let args = s.ferry_cmd(
        "recv",
        &[
            "-k".as_ref(),
            "1".as_ref(),
            "--checksum".as_ref(),
            "crc32c".as_ref(),
            "-l".as_ref(),
            "200m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            s.remote("/d").as_ref(),
            dest.as_os_str(),
        ],
    );
    let mut run = s.spawn_ferry(&args);
    let past = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["bytes"].as_u64())
            .is_some_and(|b| b > size * 4 / 10)
    };
    assert!(
        run.wait_line(Duration::from_secs(60), past).is_some(),
        "the download never got past 40 %"
    );
    let partial = partial_path(&dest.join("d/src.bin"));
    let f = fs::OpenOptions::new().write(true).open(&partial).unwrap();
    f.write_all_at(&[0xa5; 16], MIB + 7).unwrap();
    drop(f);
    // SIGTERM: the client checkpoints what it has (kill -9 could leave nothing named).
    let pid = run.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let first = run.wait(Duration::from_secs(20));
    assert_eq!(first.code(), Some(23), "{}", first.describe());

    let again = s.recv(&[
        "-k".as_ref(),
        "1".as_ref(),
        "--checksum".as_ref(),
        "crc32c".as_ref(),
        s.remote("/d").as_ref(),
        dest.as_os_str(),
    ]);
    s.assert_ok(&again, "the resumed download, repaired");
    assert!(first_difference(&src, &dest.join("d/src.bin")).is_none());
    assert_eq!(again.json_u64("repaired"), Some(1), "{}", again.describe());
    assert_eq!(leftovers(&dest), Vec::<String>::new());
}

/// Two in-process data planes, with the digest relay in the test's hands: a wrong digest
/// for a complete file keeps it `NAME.partial` with its checkpoint and fails the session
/// with 38, naming the file; the right one for the other file renames it.
#[test]
fn a_digest_that_differs_keeps_the_partial_and_fails_with_38() {
    use ferry_engine::control::ErrorCode;
    use ferry_engine::data::{DataPlane, FileEntry, Role, SessionOp, SessionSpec};
    use ferry_engine::integrity::{Algorithm, Digest};
    use ferry_engine::resume::checkpoint_path;
    use ferry_proto::crypto::{Cipher, Direction};
    use ferry_tuning::{Policy, RateLimits};

    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    let sizes = [300_000u64, 70_000];
    let files: Vec<FileEntry> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = format!("f{i}");
            write_random_file(&src.join(&name), size, 20 + i as u64);
            let meta = fs::metadata(src.join(&name)).unwrap();
            FileEntry {
                path: name,
                size,
                mtime: ferry_engine::data::mtime_of(&meta),
                mode: 0o644,
                part: None,
            }
        })
        .collect();
    let local: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (tx_plane, rx_plane) = (
        DataPlane::start(local).unwrap(),
        DataPlane::start(local).unwrap(),
    );
    let spec = |role, root: &Path, peer| SessionSpec {
        role,
        session: 77,
        secret: [9; 32],
        cipher: Cipher::Aes128Gcm,
        direction: Direction::ClientToServer,
        block_size: 8192,
        policy: Policy::Fixed,
        limits: RateLimits::new(2_000_000_000, 0),
        root: root.to_path_buf(),
        files: files.clone(),
        peer,
        no_fsync: true,
        initial_rtt: Duration::from_millis(1),
        user: "t".into(),
        ceiling_bps: None,
        plans: Vec::new(),
        checksum: Algorithm::Sha256,
        transfer: None,
        fallback: Default::default(),
    };
    let receiving = rx_plane.start_session(spec(Role::Receiver, &dst, None));
    let sending = tx_plane.start_session(spec(Role::Sender, &src, Some(rx_plane.local_addr())));
    let sent = sending
        .report
        .recv_timeout(Duration::from_secs(30))
        .unwrap();
    assert!(sent.error.is_none(), "{:?}", sent.error);
    // The sender published both digests; relay the second, and a wrong first.
    let published: Vec<SessionOp> = sending.remote_ops.try_iter().collect();
    assert_eq!(published.len(), 2, "{published:?}");
    let want: Vec<Digest> = (0..2)
        .map(|i| {
            Digest::of(
                Algorithm::Sha256,
                &fs::read(src.join(format!("f{i}"))).unwrap(),
            )
        })
        .map(Option::unwrap)
        .collect();
    assert_eq!(sent.digests, [Some(want[0]), Some(want[1])]);
    let wrong = Digest::of(Algorithm::Sha256, b"something else").unwrap();
    for (file, digest) in [(0, wrong), (1, want[1])] {
        rx_plane
            .control(77, SessionOp::Digest { file, digest })
            .unwrap();
    }
    let got = receiving
        .report
        .recv_timeout(Duration::from_secs(30))
        .unwrap();
    let (code, message) = got.error.clone().expect("a mismatch");
    assert_eq!(code, ErrorCode::ChecksumMismatch, "{message}");
    assert!(
        message.contains("f0") && message.contains(&wrong.to_string()),
        "{message}"
    );
    assert_eq!(got.mismatched, [0]);
    assert_eq!(
        got.digests[0],
        Some(want[0]),
        "the receiver's own digest is right"
    );
    assert!(first_difference(&src.join("f1"), &dst.join("f1")).is_none());
    assert!(!dst.join("f0").exists());
    assert!(partial_path(&dst.join("f0")).exists());
    assert!(
        checkpoint_path(&dst.join("f0")).exists(),
        "kept for a level-3 re-run"
    );
}
