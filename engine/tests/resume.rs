//! Resume and overwrite with real processes: transfers interrupted by kill -9 of either
//! side resume from the checkpoint and send little more than what was missing; damaged
//! checkpoints restart cleanly; each overwrite policy against existing files, both ways.

#[allow(dead_code)]
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::{FerryRun, Server, first_difference, leftovers, write_random_file};
use ferry_engine::resume::{checkpoint_path, partial_path, write_checkpoint};
use ferry_proto::RangeSet;
use ferry_proto::checkpoint::Checkpoint;

const MIB: u64 = 1 << 20;

/// The `file` events of a run, as `(path, action)`.
fn file_events(run: &FerryRun) -> Vec<(String, String)> {
    run.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "file")
        .map(|v| {
            (
                v["path"].as_str().unwrap_or_default().to_string(),
                v["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The `reason` of the first `file` event.
fn first_reason(run: &FerryRun) -> String {
    run.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "file")
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn assert_same(src: &Path, got: &Path, what: &str, run: &FerryRun) {
    if let Some(d) = first_difference(src, got) {
        panic!("{what}: {d}\n{}", run.describe());
    }
}

/// How an upload is interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Interrupt {
    /// kill -9 of the client.
    KillClient,
    /// kill -9 of ferryd.
    KillServer,
    /// SIGTERM to ferryd: an orderly stop.
    TermServer,
}

/// Starts an upload of `src` at 100 Mbit/s and interrupts it once more than `fraction` of
/// it has arrived; ferryd runs again afterwards.
fn interrupt_upload(s: &mut Server, src: &Path, fraction: f64, how: Interrupt) {
    let size = fs::metadata(src).unwrap().len();
    let args = s.ferry_cmd(
        "send",
        &[
            "-k".as_ref(),
            "1".as_ref(),
            "-l".as_ref(),
            "100m".as_ref(),
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
            .is_some_and(|b| b as f64 > fraction * size as f64)
    };
    assert!(
        run.wait_line(Duration::from_secs(60), past).is_some(),
        "the upload never got past {fraction} of the file"
    );
    match how {
        Interrupt::KillClient => run.kill9(),
        Interrupt::KillServer | Interrupt::TermServer => {
            if how == Interrupt::KillServer {
                s.kill9();
            } else {
                let pid = s.pid().to_string();
                let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
                assert!(st.success());
                let status = s.child_mut().wait().unwrap();
                assert_eq!(
                    status.code(),
                    Some(0),
                    "ferryd after SIGTERM: {}",
                    s.stderr()
                );
                s.kill9(); // reaps it
            }
            // The client notices the control connection is gone and fails at once.
            let r = run.wait(Duration::from_secs(20));
            assert!(!r.status.success(), "{}", r.describe());
            assert_eq!(r.code(), Some(22), "{}", r.describe());
            s.run();
        }
    }
    assert!(
        !s.docroot.join("src.bin").exists(),
        "complete name too early"
    );
    assert!(partial_path(&s.docroot.join("src.bin")).exists());
}

/// UDP payload bytes sent for the first time: re-sends (loopback drops under load) aside.
fn first_sends(run: &FerryRun) -> u64 {
    let wire = run.json_u64("wire_bytes").unwrap();
    wire - run.json_u64("retransmitted_bytes").unwrap().min(wire)
}

/// Resumes the upload of `src` with `-k 1` and checks the result.
fn resume_upload(s: &mut Server, src: &Path, what: &str) -> FerryRun {
    let size = fs::metadata(src).unwrap().len();
    let run = s.send(&[
        "-k".as_ref(),
        "1".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, what);
    assert_same(src, &s.docroot.join("src.bin"), what, &run);
    assert_eq!(file_events(&run), [("src.bin".into(), "resumed".into())]);
    assert_eq!(run.json_u64("resumed"), Some(1), "{}", run.describe());
    let wire = first_sends(&run);
    let resumed = run.json_u64("resumed_bytes").unwrap();
    assert!(resumed > size / 4, "{what}: only {resumed} bytes resumed");
    assert!(
        wire < size - resumed + size / 20,
        "{what}: {wire} wire bytes for {} missing\n{}",
        size - resumed,
        run.describe()
    );
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new(), "{what}");
    run
}

#[test]
fn upload_resumes_after_the_client_is_killed() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 48 * MIB, 1);
    interrupt_upload(&mut s, &src, 0.4, Interrupt::KillClient);
    // At once: ferryd hands the file from the dead client's session to the new one.
    resume_upload(&mut s, &src, "resume after the client was killed");
}

#[test]
fn upload_resumes_after_ferryd_is_killed() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 64 * MIB, 2);
    interrupt_upload(&mut s, &src, 0.6, Interrupt::KillServer);
    assert!(checkpoint_path(&s.docroot.join("src.bin")).exists());
    resume_upload(&mut s, &src, "resume after ferryd was killed");
}

#[test]
fn upload_resumes_after_ferryd_stops_on_sigterm() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 32 * MIB, 6);
    interrupt_upload(&mut s, &src, 0.3, Interrupt::TermServer);
    // An orderly stop checkpoints everything that arrived: the resume sends the rest only.
    let run = resume_upload(&mut s, &src, "resume after ferryd's SIGTERM");
    let (resumed, wire) = (run.json_u64("resumed_bytes").unwrap(), first_sends(&run));
    // Everything acknowledged before the signal (30 % at least) was kept.
    assert!(resumed > 32 * MIB * 3 / 10 - MIB, "{}", run.describe());
    assert!(wire < 32 * MIB - resumed + MIB, "{}", run.describe());
}

/// Puts `NAME.partial` (the source's first `upto` bytes, or junk there with `junk`) and a
/// checkpoint naming those bytes next to `dest`.
fn plant_partial(src: &Path, dest: &Path, upto: u64, junk: bool) -> Vec<u8> {
    let data = fs::read(src).unwrap();
    let mut partial = vec![0u8; data.len()];
    if junk {
        partial[..upto as usize].fill(0xEE);
    } else {
        partial[..upto as usize].copy_from_slice(&data[..upto as usize]);
    }
    fs::write(partial_path(dest), partial).unwrap();
    let meta = fs::metadata(src).unwrap();
    let ckpt = Checkpoint {
        block_size: 8192,
        size: meta.len(),
        mtime: ferry_engine::data::mtime_of(&meta),
        bytes: RangeSet::from_ranges(std::iter::once(0..upto)),
    };
    write_checkpoint(dest, &ckpt).unwrap();
    ckpt.encode()
}

/// A checkpoint damaged in the named way.
fn damage(what: &str, good: &[u8]) -> Vec<u8> {
    match what {
        "truncated" => good[..good.len() - 5].to_vec(),
        "bit flip" => {
            let mut b = good.to_vec();
            b[50] ^= 0x10;
            b
        }
        // Intact, but written for another version of the source.
        "foreign" => {
            let mut c = Checkpoint::decode(good).unwrap();
            c.mtime.0 += 1;
            c.encode()
        }
        "empty" => Vec::new(),
        _ => unreachable!("{what}"),
    }
}

#[test]
fn damaged_or_foreign_checkpoints_restart_the_file_cleanly() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 8 * MIB, 3);
    let dest = s.docroot.join("src.bin");
    for what in ["truncated", "bit flip", "foreign", "empty"] {
        let good = plant_partial(&src, &dest, 6 * MIB, true);
        let bytes = damage(what, &good);
        fs::write(checkpoint_path(&dest), &bytes).unwrap();
        let run = s.send(&[
            "-k".as_ref(),
            "1".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ]);
        s.assert_ok(&run, what);
        assert_same(&src, &dest, what, &run);
        assert_eq!(
            run.json_u64("resumed"),
            Some(0),
            "{what}: {}",
            run.describe()
        );
        assert!(
            first_reason(&run).starts_with("restarted"),
            "{what}: {}",
            run.describe()
        );
        assert!(run.json_u64("bytes").unwrap() >= 8 * MIB, "{what}");
        assert_eq!(leftovers(&s.docroot), Vec::<String>::new(), "{what}");
        fs::remove_file(&dest).unwrap();
    }
}

/// The download side of the test above, where the client judges its own partial, plus two
/// damages to the partial under an intact checkpoint, both ways: a partial cut shorter than
/// what its checkpoint names, and a checkpoint whose partial is gone. Each restarts the
/// file from nothing, and the result is exact with nothing left behind.
#[test]
fn damaged_checkpoints_or_partials_restart_cleanly_both_ways() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 8 * MIB, 13);
    let back = s.dir("back");
    let served = s.docroot.join("src.bin");
    fs::copy(&src, &served).unwrap();
    let meta = fs::metadata(&src).unwrap();
    fs::File::options()
        .write(true)
        .open(&served)
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    let cases = [
        "truncated",
        "bit flip",
        "foreign",
        "empty",
        "short partial",
        "no partial",
    ];
    for download in [false, true] {
        let (from, dest, to) = if download {
            (s.remote("/src.bin"), back.join("src.bin"), back.clone())
        } else {
            let up = s.docroot.join("up");
            fs::create_dir_all(&up).unwrap();
            (src.to_string_lossy().into_owned(), up.join("src.bin"), up)
        };
        for what in cases {
            let what_ = format!("{what}, {}", if download { "download" } else { "upload" });
            // Junk where the checkpoint says the source's bytes are: trusting it would
            // show in the result.
            let good = plant_partial(&src, &dest, 6 * MIB, true);
            match what {
                "short partial" => fs::File::options()
                    .write(true)
                    .open(partial_path(&dest))
                    .unwrap()
                    .set_len(3 * MIB)
                    .unwrap(),
                "no partial" => fs::remove_file(partial_path(&dest)).unwrap(),
                _ => fs::write(checkpoint_path(&dest), damage(what, &good)).unwrap(),
            }
            let remote_to = s.remote("/up/");
            let args: [&std::ffi::OsStr; 4] = if download {
                ["-k".as_ref(), "1".as_ref(), from.as_ref(), to.as_os_str()]
            } else {
                [
                    "-k".as_ref(),
                    "1".as_ref(),
                    from.as_ref(),
                    remote_to.as_ref(),
                ]
            };
            let run = if download {
                s.recv(&args)
            } else {
                s.send(&args)
            };
            s.assert_ok(&run, &what_);
            assert_same(&src, &dest, &what_, &run);
            assert_eq!(
                file_events(&run),
                [("src.bin".into(), "sent".into())],
                "{what_}"
            );
            assert_eq!(
                run.json_u64("resumed"),
                Some(0),
                "{what_}: {}",
                run.describe()
            );
            assert!(
                first_reason(&run).starts_with("restarted"),
                "{what_}: {}",
                run.describe()
            );
            assert!(run.json_u64("bytes").unwrap() >= 8 * MIB, "{what_}");
            assert_eq!(leftovers(&to), Vec::<String>::new(), "{what_}");
            fs::remove_file(&dest).unwrap();
        }
    }
}

#[test]
fn level_0_sends_everything_and_level_1_only_the_rest() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 8 * MIB, 4);
    let dest = s.docroot.join("src.bin");

    plant_partial(&src, &dest, 6 * MIB, false);
    let run = s.send(&[
        "-k".as_ref(),
        "1".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "-k 1");
    assert_same(&src, &dest, "-k 1", &run);
    // Whole blocks only: the partial block at the end of the held bytes is sent again.
    let resumed = run.json_u64("resumed_bytes").unwrap();
    assert!(
        resumed <= 6 * MIB && resumed > 6 * MIB - 65_536,
        "{}",
        run.describe()
    );
    assert!(first_sends(&run) < 3 * MIB, "{}", run.describe());
    fs::remove_file(&dest).unwrap();

    plant_partial(&src, &dest, 6 * MIB, true);
    let run = s.send(&[
        "-k".as_ref(),
        "0".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "-k 0");
    assert_same(&src, &dest, "-k 0", &run);
    assert_eq!(file_events(&run), [("src.bin".into(), "sent".into())]);
    assert!(run.json_u64("wire_bytes").unwrap() >= 8 * MIB);
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new());

    // An identical complete file: skipped at -k 1 (diff), sent again at -k 0.
    let run = s.send(&[
        "-k".as_ref(),
        "1".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "identical at -k 1");
    assert_eq!(file_events(&run), [("src.bin".into(), "skipped".into())]);
    assert!(
        run.json_u64("wire_bytes").unwrap() < 4096,
        "{}",
        run.describe()
    );
    let run = s.send(&[src.as_os_str(), s.remote("/").as_ref()]);
    s.assert_ok(&run, "identical at -k 0");
    assert_eq!(file_events(&run), [("src.bin".into(), "sent".into())]);
}

#[test]
fn download_resumes_from_the_clients_checkpoint() {
    let mut s = Server::start();
    let src = s.docroot.join("src.bin");
    write_random_file(&src, 8 * MIB, 5);
    let back = s.dir("back");
    let dest = back.join("src.bin");
    plant_partial(&src, &dest, 5 * MIB, false);
    let run = s.recv(&[
        "-k".as_ref(),
        "1".as_ref(),
        s.remote("/src.bin").as_ref(),
        back.as_os_str(),
    ]);
    s.assert_ok(&run, "download resume");
    assert_same(&src, &dest, "download resume", &run);
    assert_eq!(file_events(&run), [("src.bin".into(), "resumed".into())]);
    let wire = first_sends(&run);
    assert!(wire < 4 * MIB, "{wire} wire bytes\n{}", run.describe());
    assert_eq!(leftovers(&back), Vec::<String>::new());
}

#[test]
fn download_resumes_after_the_client_is_killed() {
    let mut s = Server::start();
    let src = s.docroot.join("src.bin");
    write_random_file(&src, 48 * MIB, 7);
    let back = s.dir("back");
    let args = |extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = vec!["-k".into(), "1".into()];
        a.extend(extra.iter().map(|&x| x.into()));
        a.push(s.remote("/src.bin").into());
        a.push(back.clone().into());
        s.ferry_cmd("recv", &a)
    };
    let slow = args(&["-l", "100m", "--policy", "fixed"]);
    let again = args(&[]);
    let mut run = s.spawn_ferry(&slow);
    let past = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["bytes"].as_u64())
            .is_some_and(|b| b > 48 * MIB * 6 / 10)
    };
    assert!(run.wait_line(Duration::from_secs(60), past).is_some());
    // Nothing is flushed by a kill -9: the periodic checkpoint is what remains.
    run.kill9();
    assert!(checkpoint_path(&back.join("src.bin")).exists());
    let run = s.ferry_raw(&again);
    s.assert_ok(&run, "download resume after a kill");
    assert_same(
        &src,
        &back.join("src.bin"),
        "download resume after a kill",
        &run,
    );
    assert_eq!(file_events(&run), [("src.bin".into(), "resumed".into())]);
    let resumed = run.json_u64("resumed_bytes").unwrap();
    assert!(resumed > 48 * MIB / 4, "{}", run.describe());
    assert!(
        first_sends(&run) < 48 * MIB - resumed + 2 * MIB,
        "{}",
        run.describe()
    );
    assert_eq!(leftovers(&back), Vec::<String>::new());
}

/// Sets `path`'s contents and mtime (seconds).
fn put(path: &Path, contents: &[u8], mtime: u64) {
    fs::write(path, contents).unwrap();
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

#[test]
fn overwrite_policies_against_existing_files_both_ways() {
    let mut s = Server::start();
    let here = s.dir("here");
    let src = here.join("f.txt");
    put(&src, b"the source, version two", 2_000_000_000);
    let dest = s.docroot.join("f.txt");
    // (policy, existing contents, existing mtime, sent?)
    let same = (&b"the source, version two"[..], 2_000_000_000);
    let older = (&b"version one"[..], 1_000_000_000);
    let newer = (&b"version three, newer"[..], 2_100_000_000);
    let cases = [
        ("never", older, false),
        ("never", same, false),
        ("always", same, true),
        ("always", newer, true),
        ("diff", same, false),
        ("diff", older, true),
        ("diff", newer, true),
        ("older", older, true),
        ("older", same, false),
        ("older", newer, false),
        ("diff+older", same, false),
        ("diff+older", newer, false),
        ("diff+older", older, true),
    ];
    for (policy, (contents, mtime), sent) in cases {
        let what = format!("--overwrite {policy} over {contents:?}");
        // Upload: ferryd decides.
        put(&dest, contents, mtime);
        let run = s.send(&[
            "-k".as_ref(),
            "1".as_ref(),
            "--overwrite".as_ref(),
            policy.as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ]);
        s.assert_ok(&run, &what);
        let want = if sent { "sent" } else { "skipped" };
        assert_eq!(file_events(&run), [("f.txt".into(), want.into())], "{what}");
        let expect: &[u8] = if sent {
            b"the source, version two"
        } else {
            contents
        };
        assert_eq!(fs::read(&dest).unwrap(), expect, "upload, {what}");
        // Download: the client decides, the server's sender honours it.
        let back = s.dir("back");
        put(&back.join("f.txt"), contents, mtime);
        put(&dest, b"the source, version two", 2_000_000_000);
        let run = s.recv(&[
            "-k".as_ref(),
            "1".as_ref(),
            "--overwrite".as_ref(),
            policy.as_ref(),
            s.remote("/f.txt").as_ref(),
            back.as_os_str(),
        ]);
        s.assert_ok(&run, &what);
        assert_eq!(file_events(&run), [("f.txt".into(), want.into())], "{what}");
        assert_eq!(
            fs::read(back.join("f.txt")).unwrap(),
            expect,
            "download, {what}"
        );
    }
    // Nothing there: every policy sends, `never` included.
    let back = s.dir("back");
    for policy in ["never", "always", "diff", "older", "diff+older"] {
        let what = format!("--overwrite {policy} with no destination");
        fs::remove_file(&dest).unwrap();
        let run = s.send(&[
            "--overwrite".as_ref(),
            policy.as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ]);
        s.assert_ok(&run, &what);
        assert_eq!(
            file_events(&run),
            [("f.txt".into(), "sent".into())],
            "{what}"
        );
        assert_eq!(
            fs::read(&dest).unwrap(),
            b"the source, version two",
            "{what}"
        );
        fs::remove_file(back.join("f.txt")).unwrap();
        let run = s.recv(&[
            "--overwrite".as_ref(),
            policy.as_ref(),
            s.remote("/f.txt").as_ref(),
            back.as_os_str(),
        ]);
        s.assert_ok(&run, &what);
        assert_eq!(
            file_events(&run),
            [("f.txt".into(), "sent".into())],
            "{what}"
        );
        assert_eq!(
            fs::read(back.join("f.txt")).unwrap(),
            b"the source, version two",
            "download, {what}"
        );
    }
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
    assert_eq!(leftovers(&back), Vec::<String>::new());
}

#[test]
fn checksum_levels_check_partial_and_existing_files_by_content() {
    let mut s = Server::start();
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, 8 * MIB, 8);
    let dest = s.docroot.join("src.bin");
    let send = |s: &mut Server, level: &str| {
        let run = s.send(&[
            "-k".as_ref(),
            level.as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ]);
        s.assert_ok(&run, &format!("-k {level}"));
        assert_same(&src, &dest, &format!("-k {level}"), &run);
        assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
        run
    };

    // A checkpoint that lies (junk where it claims data): caught at 2 and 3.
    for level in ["2", "3"] {
        plant_partial(&src, &dest, 6 * MIB, true);
        let run = send(&mut s, level);
        assert_eq!(run.json_u64("resumed"), Some(0), "{}", run.describe());
        fs::remove_file(&dest).unwrap();
    }

    // At 3 a partial with one damaged MiB keeps the rest.
    plant_partial(&src, &dest, 6 * MIB, false);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(partial_path(&dest))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55; 1000], 2 * MIB + 10).unwrap();
    drop(f);
    let run = send(&mut s, "3");
    // Whole blocks of the 5 good MiB (block and chunk edges differ).
    let resumed = run.json_u64("resumed_bytes").unwrap();
    assert!(
        resumed <= 5 * MIB && resumed > 5 * MIB - 2 * 65_536,
        "{}",
        run.describe()
    );

    // The same content under another mtime: different at 1, the same at 2 and 3.
    let f = fs::File::options().write(true).open(&dest).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    assert_eq!(file_events(&send(&mut s, "2"))[0].1, "skipped");
    assert_eq!(file_events(&send(&mut s, "3"))[0].1, "skipped");
    assert_eq!(file_events(&send(&mut s, "1"))[0].1, "sent");

    // Downloads check the same way, the server summing its sources.
    let back = s.dir("back");
    plant_partial(&dest, &back.join("src.bin"), 6 * MIB, true);
    let run = s.recv(&[
        "-k".as_ref(),
        "2".as_ref(),
        s.remote("/src.bin").as_ref(),
        back.as_os_str(),
    ]);
    s.assert_ok(&run, "download -k 2");
    assert_same(&src, &back.join("src.bin"), "download -k 2", &run);
    assert!(
        first_reason(&run).starts_with("restarted"),
        "{}",
        run.describe()
    );
}

#[test]
fn an_interrupted_tree_upload_skips_the_complete_files_and_resumes_the_partial_one() {
    let mut s = Server::start();
    let tree = s.dir("src").join("tree");
    fs::create_dir_all(&tree).unwrap();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        write_random_file(&tree.join(name), 8 * MIB, 10 + i as u64);
    }
    let slow = s.ferry_cmd(
        "send",
        &[
            "-k".as_ref(),
            "1".as_ref(),
            "-l".as_ref(),
            "100m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            tree.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let mut run = s.spawn_ferry(&slow);
    // Past the middle of b.bin: a.bin is complete, c.bin not begun.
    let past = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["bytes"].as_u64())
            .is_some_and(|b| b > 12 * MIB)
    };
    assert!(run.wait_line(Duration::from_secs(60), past).is_some());
    run.kill9();
    let run = s.send(&[
        "-k".as_ref(),
        "1".as_ref(),
        tree.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "resumed tree");
    let actions: Vec<String> = file_events(&run).into_iter().map(|(_, a)| a).collect();
    assert_eq!(
        actions,
        ["skipped", "resumed", "sent"],
        "{}",
        run.describe()
    );
    for name in ["a.bin", "b.bin", "c.bin"] {
        assert_same(
            &tree.join(name),
            &s.docroot.join("tree").join(name),
            name,
            &run,
        );
    }
    assert_eq!(run.json_u64("skipped"), Some(1));
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
}

/// A disk that fills up while an upload runs (something else takes the space the
/// preallocated partial left): the upload fails with 35 (disk full), ferryd stays up, the
/// partial keeps its last good checkpoint and nothing but it, and once the space is freed
/// the upload resumes from it rather than starting again.
#[test]
fn a_disk_that_fills_mid_upload_gives_35_and_the_partial_resumes_once_space_is_freed() {
    if !common::root_or_skip(
        "a_disk_that_fills_mid_upload_gives_35_and_the_partial_resumes_once_space_is_freed",
        "a tmpfs mounted as the docroot",
    ) {
        return;
    }
    let mut s = Server::init();
    let docroot = s.docroot.clone();
    s.mount_tmpfs(&docroot, 24);
    s.run();
    let size = 16 * MIB;
    let src = s.dir("src").join("src.bin");
    write_random_file(&src, size, 41);
    let dest = s.docroot.join("src.bin");
    let args = s.ferry_cmd(
        "send",
        &[
            "-k".as_ref(),
            "1".as_ref(),
            "--retry".as_ref(),
            "0".as_ref(),
            "-l".as_ref(),
            "16m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let mut running = s.spawn_ferry(&args);
    let past = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["bytes"].as_u64())
            .is_some_and(|b| b > 3 * MIB)
    };
    assert!(
        running.wait_line(Duration::from_secs(60), past).is_some(),
        "the upload never got past 3 MiB"
    );
    // A checkpoint naming 2 MiB must be on disk before it fills (they are written once a
    // second, so progress alone does not say one has landed).
    let deadline = Instant::now() + Duration::from_secs(30);
    let landed = || {
        fs::read(checkpoint_path(&dest))
            .ok()
            .and_then(|b| Checkpoint::decode(&b).ok())
            .is_some_and(|c| c.bytes.len() >= 2 * MIB)
    };
    while !landed() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of 2 MiB within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The partial is preallocated whole; the next checkpoint finds no room.
    let ballast = common::fill_disk(&s.docroot, "ballast");
    let run = running.wait(common::FERRY_TIMEOUT);
    s.assert_code(
        &run,
        35,
        &format!("upload into a disk filled by {ballast} bytes"),
    );
    assert!(
        run.stderr.contains("free space"),
        "the message should say what to do: {}",
        run.describe()
    );
    s.assert_alive("after the disk filled");
    assert!(!dest.exists(), "the file got its final name");
    let ckpt = Checkpoint::decode(&fs::read(checkpoint_path(&dest)).unwrap())
        .expect("the last good checkpoint stays intact");
    assert!(ckpt.bytes.len() >= 2 * MIB, "checkpoint: {ckpt:?}");
    let mut left = leftovers(&s.docroot);
    left.sort();
    assert_eq!(
        left,
        ["src.bin.partial", "src.bin.partial.ckpt"],
        "only the partial and its checkpoint may stay"
    );

    fs::remove_file(s.docroot.join("ballast")).unwrap();
    let run = s.send(&[
        "-k".as_ref(),
        "1".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "the upload again, space freed");
    assert_same(&src, &dest, "after the disk was freed", &run);
    assert_eq!(file_events(&run), [("src.bin".into(), "resumed".into())]);
    let resumed = run.json_u64("resumed_bytes").unwrap();
    assert!(resumed >= 2 * MIB, "{}", run.describe());
    assert!(
        first_sends(&run) < size - resumed + 2 * MIB,
        "{}",
        run.describe()
    );
    assert_eq!(leftovers(&s.docroot), Vec::<String>::new());
    s.assert_alive("after the resumed upload");
}
