//! Multi-session uploads with real processes: a tree and a split file over two sessions of
//! one ferryd, and one file split across three ferryd processes that share a docroot (a
//! cluster on one machine), one of them killed halfway and the transfer resumed.

#[allow(dead_code)]
mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A tree with a large file (split across the sessions), small ones, an empty file and an
/// empty directory.
fn mixed_tree(root: &Path) {
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("small/deeper")).unwrap();
    write_random_file(&root.join("large.bin"), 24 << 20, 1);
    write_random_file(&root.join("medium.bin"), 9 << 20, 2);
    fs::write(root.join("empty"), b"").unwrap();
    let mut rng = Prng::new(3);
    for i in 0..120 {
        let dir = if i % 3 == 0 { "small/deeper" } else { "small" };
        let size = 1 + rng.below(64 << 10);
        write_random_file(&root.join(dir).join(format!("f{i:03}")), size, 100 + i);
    }
}

#[test]
fn two_sessions_carry_a_tree_and_split_its_large_files() {
    let mut s = Server::start();
    let src = s.dir("src/tree");
    mixed_tree(&src);
    let total: u64 = tree(&src)
        .values()
        .map(|n| match n {
            Node::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let run = s.send(&[
        "--sessions".as_ref(),
        "2".as_ref(),
        "--split-threshold".as_ref(),
        "8MB".as_ref(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "two-session upload");
    assert_same_tree(&src, &s.docroot.join("tree"), "two-session upload");
    assert!(
        leftovers(&s.docroot).is_empty(),
        "{:?}",
        leftovers(&s.docroot)
    );
    assert_eq!(run.json_u64("bytes"), Some(total), "{}", run.describe());
    assert_eq!(run.json_u64("files"), Some(123), "{}", run.describe());
    // Both of ferryd's lanes took a session.
    let log = s.stderr();
    let sessions = log.matches("upload of").count();
    assert_eq!(sessions, 2, "two sessions in ferryd's log:\n{log}");
}

/// Three ferryd processes with one docroot: the first `Server`'s, and its client key.
fn cluster() -> Vec<Server> {
    let first = Server::init();
    let docroot = first.docroot.display().to_string();
    let key = fs::read(first.key.with_extension("pub")).unwrap();
    let mut nodes = vec![first];
    for _ in 0..2 {
        let n = Server::init();
        n.edit_config(&[("docroot = \"docroot\"", &format!("docroot = {docroot:?}"))]);
        fs::write(n.srv.join("authorized_keys"), &key).unwrap();
        nodes.push(n);
    }
    for n in &mut nodes {
        n.run();
    }
    nodes
}

fn hosts(nodes: &[Server]) -> String {
    nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.tcp_port))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_cluster_receives_one_file_split_across_it_and_resumes_only_what_is_missing() {
    let mut nodes = cluster();
    let src = nodes[0].dir("src").join("big.bin");
    let size = 48u64 << 20;
    write_random_file(&src, size, 9);
    let dest = nodes[0].docroot.join("big.bin");

    // Slow enough to be killed halfway: 3 sessions of 50 Mbit/s.
    let cmd = nodes[0].ferry_cmd(
        "send",
        &[
            "--hosts".as_ref(),
            hosts(&nodes).as_ref(),
            "--split-threshold".as_ref(),
            "1MB".as_ref(),
            "-k".as_ref(),
            "1".as_ref(),
            "-l".as_ref(),
            "150m".as_ref(),
            "--policy".as_ref(),
            "fixed".as_ref(),
            "--session-interval".as_ref(),
            "0".as_ref(),
            src.as_os_str(),
            nodes[0].remote("/").as_ref(),
        ],
    );
    let mut first = nodes[0].spawn_ferry(&cmd);
    let progressed = first.wait_line(Duration::from_secs(60), |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v.get("bytes")?.as_u64())
            .is_some_and(|b| b > size * 2 / 5)
    });
    assert!(progressed.is_some(), "no progress past 40 %");
    nodes[1].kill9();
    let run = first.wait(Duration::from_secs(60));
    assert!(!run.status.success(), "{}", run.describe());
    assert!(
        !dest.exists(),
        "the file is complete without the killed node's piece"
    );
    // The surviving nodes finished their pieces: what is left is most of the killed one's.
    let partial = ferry_engine::resume::partial_path(&dest);
    assert!(partial.exists());

    nodes[1].run();
    let cmd = nodes[0].ferry_cmd(
        "send",
        &[
            "--hosts".as_ref(),
            hosts(&nodes).as_ref(),
            "--split-threshold".as_ref(),
            "1MB".as_ref(),
            "-k".as_ref(),
            "1".as_ref(),
            src.as_os_str(),
            nodes[0].remote("/").as_ref(),
        ],
    );
    let rerun = nodes[0].ferry_raw(&cmd);
    assert!(rerun.status.success(), "{}", rerun.describe());
    assert_eq!(first_difference(&src, &dest), None);
    assert!(leftovers(&nodes[0].docroot).is_empty());
    let wire = rerun.json_u64("wire_bytes").unwrap();
    let fresh = wire - rerun.json_u64("retransmitted_bytes").unwrap().min(wire);
    assert!(
        fresh < size * 2 / 5,
        "the re-run sent {fresh} of {size} bytes: more than the killed node's missing range\n{}",
        rerun.describe()
    );
}

#[test]
fn two_sessions_download_a_tree_and_split_its_large_files() {
    let mut s = Server::start();
    let tree_root = s.docroot.join("tree");
    mixed_tree(&tree_root);
    let dest = s.dir("dest");
    let run = s.recv(&[
        "--sessions".as_ref(),
        "2".as_ref(),
        "--split-threshold".as_ref(),
        "8MB".as_ref(),
        s.remote("/tree").as_ref(),
        dest.as_os_str(),
    ]);
    s.assert_ok(&run, "two-session download");
    assert_same_tree(&tree_root, &dest.join("tree"), "two-session download");
    assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
    assert_eq!(run.json_u64("files"), Some(123), "{}", run.describe());
    let log = s.stderr();
    assert_eq!(
        log.matches("download of").count(),
        2,
        "two sessions in ferryd's log:\n{log}"
    );
}

#[test]
fn ferry_toml_turns_multi_session_on_above_its_trigger_rate() {
    let mut s = Server::start();
    let src = s.dir("src").join("f.bin");
    write_random_file(&src, 20 << 20, 11);
    let config = s.dir("cfg").join("ferry.toml");
    fs::write(
        &config,
        "[multi_session]\nenabled = true\nsessions = 2\ntrigger_rate = \"700m\"\n",
    )
    .unwrap();
    let env = [("FERRY_CONFIG", config.as_os_str())];
    let sessions_in_log = |s: &Server| s.stderr().matches("upload of").count();
    // No -l: above any trigger.
    let cmd = s.ferry_cmd(
        "send",
        &[
            "--split-threshold".as_ref(),
            "8MB".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let run = s.ferry_env(&cmd, &env);
    s.assert_ok(&run, "upload with multi-session configured");
    assert_eq!(sessions_in_log(&s), 2, "{}", s.stderr());
    // -l 500m: below the trigger, one session.
    let cmd = s.ferry_cmd(
        "send",
        &[
            "-l".as_ref(),
            "500m".as_ref(),
            "--split-threshold".as_ref(),
            "8MB".as_ref(),
            src.as_os_str(),
            s.remote("/").as_ref(),
        ],
    );
    let run = s.ferry_env(&cmd, &env);
    s.assert_ok(&run, "a slow upload with multi-session configured");
    assert_eq!(sessions_in_log(&s), 3, "{}", s.stderr());
    // A broken file is an error that says where.
    fs::write(&config, "[multi_session]\nenabled = yes\n").unwrap();
    let cmd = s.ferry_cmd("send", &[src.as_os_str(), s.remote("/").as_ref()]);
    let run = s.ferry_env(&cmd, &env);
    assert_eq!(run.code(), Some(41), "{}", run.describe());
    assert!(run.stderr.contains("ferry.toml"), "{}", run.describe());
    assert_eq!(first_difference(&src, &s.docroot.join("f.bin")), None);
}

/// `sha256:HEX` of bytes `[offset, offset + len)` of `path`, without ferry.
fn sha256_of_range(path: &Path, offset: u64, len: u64) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tail -c +{} \"$0\" | head -c {len} | sha256sum",
            offset + 1
        ))
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

#[test]
fn each_piece_of_a_split_file_is_checksummed_at_its_offset() {
    let mut s = Server::start();
    let src = s.dir("src").join("big.bin");
    let size = 21u64 << 20;
    write_random_file(&src, size, 5);
    let manifest = s.dir("out").join("manifest.jsonl");
    let run = s.send(&[
        "--sessions".as_ref(),
        "2".as_ref(),
        "--split-threshold".as_ref(),
        "1MB".as_ref(),
        "--checksum".as_ref(),
        "sha256".as_ref(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        src.as_os_str(),
        s.remote("/").as_ref(),
    ]);
    s.assert_ok(&run, "a split upload with checksums");
    assert_eq!(first_difference(&src, &s.docroot.join("big.bin")), None);
    let lines: Vec<serde_json::Value> = fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one line per piece: {lines:?}");
    let mut covered = 0;
    for l in &lines {
        let offset = l["offset"].as_u64().unwrap();
        let len = l["size"].as_u64().unwrap();
        assert_eq!(l["file_size"].as_u64(), Some(size), "{l}");
        assert_eq!(
            l["checksum"].as_str().unwrap(),
            sha256_of_range(&src, offset, len),
            "{l}"
        );
        covered += len;
    }
    assert_eq!(covered, size);
}
