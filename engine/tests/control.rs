//! The SSH control channel end to end, in process: a real russh server and client on
//! loopback, with a fake data plane that reports at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use ferry_engine::config::{self, FerrydConfig};
use ferry_engine::control::messages::{FileAction, FilePlan, secret_from_hex};
use ferry_engine::control::{
    ClientOptions, Control, DownloadRequest, ErrorCode, ServerHandle, SessionStarter,
    TransferParams, UploadRequest, serve,
};
use ferry_engine::data::{FileEntry, Role, SessionHandle, SessionReport, SessionSpec};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, PrivateKey};

#[derive(Clone, Default)]
struct Fake {
    specs: Arc<Mutex<Vec<SessionSpec>>>,
    fail: Option<(ErrorCode, String)>,
}

impl SessionStarter for Fake {
    fn start(&self, spec: SessionSpec) -> SessionHandle {
        let bytes = spec.files.iter().map(|f| f.size).sum();
        self.specs.lock().unwrap().push(spec);
        let (tx, rx) = mpsc::channel();
        tx.send(SessionReport {
            error: self.fail.clone(),
            bytes,
            wire_bytes: bytes,
            retransmitted_bytes: 0,
            data_secs: 0.01,
            ..SessionReport::default()
        })
        .unwrap();
        SessionHandle {
            report: rx,
            progress: Default::default(),
            remote_ops: mpsc::channel().1,
            udp_port: self.udp_port(),
            ceiling_bps: None,
        }
    }

    fn udp_port(&self) -> u16 {
        45_678
    }
}

struct Server {
    tmp: tempfile::TempDir,
    handle: Option<ServerHandle>,
    fake: Fake,
    docroot: PathBuf,
    port: u16,
}

fn random_key(comment: &str) -> PrivateKey {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).unwrap();
    let mut k = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    k.set_comment(comment);
    k
}

fn write_key(dir: &Path, name: &str, key: &PrivateKey) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(key.to_openssh(LineEnding::LF).unwrap().as_bytes())
        .unwrap();
    path
}

fn authorize(srv: &Path, key: &PrivateKey) {
    let mut text = fs::read_to_string(srv.join("authorized_keys")).unwrap();
    text.push_str(&key.public_key().to_openssh().unwrap());
    text.push('\n');
    fs::write(srv.join("authorized_keys"), text).unwrap();
}

fn start(fake: Fake) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    config::init(&srv).unwrap();
    let config = FerrydConfig::load(&srv.join(config::CONFIG_FILE)).unwrap();
    let docroot = config.docroot.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = serve(config, fake.clone(), listener).unwrap();
    let port = handle.local_addr().port();
    Server {
        tmp,
        handle: Some(handle),
        fake,
        docroot,
        port,
    }
}

impl Server {
    fn srv(&self) -> PathBuf {
        self.tmp.path().join("srv")
    }

    /// A client key authorized as `user`, and options that trust the host on first sight.
    fn client(&self, user: &str) -> ClientOptions {
        let key = random_key(user);
        authorize(&self.srv(), &key);
        let path = write_key(self.tmp.path(), &format!("id-{user}-{}", rand_u32()), &key);
        ClientOptions {
            host: "127.0.0.1".into(),
            port: self.port,
            user: user.into(),
            identity: Some(path),
            known_hosts: self.tmp.path().join("known_hosts"),
            accept_new: true,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.wait();
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u32::from_le_bytes(b)
}

fn err_code(r: Result<Control, (ErrorCode, String)>) -> (ErrorCode, String) {
    match r {
        Ok(c) => panic!("connected as {} but expected an error", c.user()),
        Err(e) => e,
    }
}

fn entry(path: &str, size: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        size,
        mtime: (1_700_000_000, 0),
        mode: 0o644,
        part: None,
    }
}

#[test]
fn host_keys_unknown_accepted_then_known_and_changed_refused() {
    let s = start(Fake::default());
    let mut opts = s.client("accept");

    // Unknown host, no --accept-new: refused, nothing recorded.
    opts.accept_new = false;
    let (code, msg) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::HostKeyUnknown, "{msg}");
    assert!(
        msg.contains("--accept-new") && msg.contains("SHA256:"),
        "{msg}"
    );
    assert!(!opts.known_hosts.exists());

    // --accept-new: trusted and recorded.
    opts.accept_new = true;
    let c = Control::connect(&opts).unwrap();
    assert_eq!(c.user(), "accept");
    assert!(c.host_fingerprint().starts_with("SHA256:"));
    assert_eq!(c.notes().len(), 1, "{:?}", c.notes());
    c.close();
    let recorded = fs::read_to_string(&opts.known_hosts).unwrap();
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", s.port)),
        "{recorded}"
    );

    // Known now: no flag needed, nothing new recorded.
    opts.accept_new = false;
    let c = Control::connect(&opts).unwrap();
    assert!(c.notes().is_empty());
    c.close();
    assert_eq!(fs::read_to_string(&opts.known_hosts).unwrap(), recorded);

    // Another key recorded for this host: refused, even with --accept-new.
    let other = random_key("x");
    fs::write(
        &opts.known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            s.port,
            other.public_key().to_openssh().unwrap()
        ),
    )
    .unwrap();
    opts.accept_new = true;
    let (code, msg) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::HostKeyMismatch, "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn keys_and_users_are_checked() {
    let s = start(Fake::default());
    let good = s.client("accept");
    Control::connect(&good).unwrap().close();

    // A key that is not in authorized_keys.
    let stranger = random_key("accept");
    let mut opts = good.clone();
    opts.identity = Some(write_key(s.tmp.path(), "stranger", &stranger));
    let (code, msg) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::Auth, "{msg}");
    assert!(msg.contains("stranger") && msg.contains("accept"), "{msg}");

    // The right key, but another user than its comment names.
    let mut opts = good.clone();
    opts.user = "bob".into();
    let (code, msg) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::Auth, "{msg}");

    // A key file that is not there.
    let mut opts = good.clone();
    opts.identity = Some(s.tmp.path().join("no-such-key"));
    let (code, _) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::Identity);
}

#[test]
fn closed_port_is_a_tcp_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut opts = ClientOptions::new("127.0.0.1", "accept");
    opts.port = port;
    opts.identity = Some(PathBuf::from("/nonexistent"));
    let (code, msg) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::TcpConnect, "{msg}");
    assert!(msg.contains(&port.to_string()), "{msg}");
}

#[test]
fn upload_creates_directories_and_starts_a_receiver() {
    let s = start(Fake::default());
    let opts = s.client("accept");
    fs::create_dir(s.docroot.join("in box")).unwrap();
    let mut c = Control::connect(&opts).unwrap();
    let ready = c
        .upload(UploadRequest {
            dest: "/in box".into(),
            files: vec![entry("tree/a.txt", 10), entry("tree/sub/b é.txt", 5)],
            dirs: vec!["tree".into(), "tree/empty".into(), "tree/sub".into()],
            params: TransferParams {
                target_bps: 10_000_000_000_000, // above the server's maximum
                ..Default::default()
            },
            client_udp: 40_000,
            sums: Vec::new(),
            transfer: None,
        })
        .unwrap();
    assert_ne!(ready.session, 0);
    assert_eq!(ready.udp_port, 45_678);
    assert_eq!(ready.cipher, "aes128");
    assert_eq!(ready.target_bps, 100_000_000_000);
    let secret = secret_from_hex(&ready.secret).unwrap();
    assert!(s.docroot.join("in box/tree/empty").is_dir());
    assert!(s.docroot.join("in box/tree/sub").is_dir());

    let done = c.wait_done(Some(Duration::from_secs(5))).unwrap();
    assert!(done.ok, "{done:?}");
    assert_eq!(done.bytes, 15);
    c.close();

    let specs = s.fake.specs.lock().unwrap();
    let spec = &specs[0];
    assert_eq!(spec.role, Role::Receiver);
    assert_eq!(spec.session, ready.session);
    assert_eq!(spec.secret, secret);
    assert_eq!(spec.peer, None);
    assert_eq!(spec.root, s.docroot.canonicalize().unwrap().join("in box"));
    assert_eq!(spec.files.len(), 2);
}

#[test]
fn uploads_that_escape_or_miss_are_refused() {
    let s = start(Fake::default());
    let opts = s.client("accept");
    let outside = s.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.docroot.join("out")).unwrap();

    let cases: Vec<(UploadRequest, ErrorCode)> = vec![
        (
            UploadRequest {
                dest: "/../".into(),
                files: vec![entry("x", 1)],
                ..Default::default()
            },
            ErrorCode::OutsideDocroot,
        ),
        (
            UploadRequest {
                dest: "/".into(),
                files: vec![entry("../../etc/evil", 1)],
                ..Default::default()
            },
            ErrorCode::OutsideDocroot,
        ),
        (
            UploadRequest {
                dest: "/".into(),
                files: vec![entry("/etc/evil", 1)],
                ..Default::default()
            },
            ErrorCode::OutsideDocroot,
        ),
        (
            UploadRequest {
                dest: "/out".into(),
                files: vec![entry("x", 1)],
                ..Default::default()
            },
            ErrorCode::OutsideDocroot,
        ),
        (
            UploadRequest {
                dest: "/".into(),
                files: vec![entry("out/x", 1)],
                ..Default::default()
            },
            ErrorCode::OutsideDocroot,
        ),
        (
            UploadRequest {
                dest: "/".into(),
                files: vec![entry("bad\nname", 1)],
                ..Default::default()
            },
            ErrorCode::InvalidPath,
        ),
        (
            UploadRequest {
                dest: "/no/such/dir".into(),
                files: vec![entry("x", 1)],
                ..Default::default()
            },
            ErrorCode::DestinationMissing,
        ),
        (
            UploadRequest {
                dest: "/".into(),
                files: vec![entry("x", 1)],
                params: TransferParams {
                    cipher: "rot13".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            ErrorCode::BadRequest,
        ),
    ];
    for (req, want) in cases {
        let mut c = Control::connect(&opts).unwrap();
        let shown = format!("{req:?}");
        let (code, msg) = c.upload(req).unwrap_err();
        assert_eq!(code, want, "{shown}: {msg}");
        c.close();
    }
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
    assert!(s.fake.specs.lock().unwrap().is_empty());
}

#[test]
fn download_lists_a_tree() {
    let s = start(Fake::default());
    let opts = s.client("accept");
    let t = s.docroot.join("tree");
    fs::create_dir_all(t.join("sub/deeper")).unwrap();
    fs::create_dir_all(t.join("empty")).unwrap();
    fs::write(t.join("a.txt"), b"hello").unwrap();
    fs::write(t.join("sub/b.bin"), vec![7u8; 1000]).unwrap();
    fs::write(t.join("sub/deeper/c"), b"").unwrap();
    fs::write(s.tmp.path().join("secret"), b"no").unwrap();
    std::os::unix::fs::symlink(s.tmp.path().join("secret"), t.join("leak")).unwrap();
    std::os::unix::fs::symlink("a.txt", t.join("alias")).unwrap();

    let mut c = Control::connect(&opts).unwrap();
    let m = c
        .download(DownloadRequest {
            sources: vec!["/tree/".into()],
            params: TransferParams::default(),
            client_udp: 0,
            negotiate: false,
            ..Default::default()
        })
        .unwrap();
    let paths: Vec<_> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tree/a.txt",
            "tree/alias",
            "tree/sub/b.bin",
            "tree/sub/deeper/c"
        ]
    );
    assert_eq!(m.files[0].size, 5);
    assert_eq!(m.files[2].size, 1000);
    assert_eq!(
        m.dirs,
        ["tree", "tree/empty", "tree/sub", "tree/sub/deeper"]
    );
    assert_eq!(m.skipped.len(), 1, "{:?}", m.skipped);
    assert!(m.skipped[0].starts_with("tree/leak"));
    assert_eq!(m.session.udp_port, 45_678);
    let done = c.wait_done(Some(Duration::from_secs(5))).unwrap();
    assert!(done.ok);
    assert_eq!(done.bytes, 1010);
    c.close();

    let specs = s.fake.specs.lock().unwrap();
    assert_eq!(specs[0].role, Role::Sender);
    assert_eq!(specs[0].root, s.docroot.canonicalize().unwrap());
    assert_eq!(specs[0].session, m.session.session);
    drop(specs);

    // A single file, and sources that do not exist or lead outside.
    let mut c = Control::connect(&opts).unwrap();
    let m = c
        .download(DownloadRequest {
            sources: vec!["tree/sub/b.bin".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].path, "b.bin");
    assert!(m.dirs.is_empty());
    c.close();

    // Negotiated: the file list comes first, and the client's plans reach the data plane.
    let mut c = Control::connect(&opts).unwrap();
    let req = DownloadRequest {
        sources: vec!["tree/sub/b.bin".into()],
        ..Default::default()
    };
    let (m, plans) = c
        .download_negotiated(req, |offer| {
            assert_eq!(offer.files.len(), 1);
            assert_eq!(offer.files[0].path, "b.bin");
            Ok(vec![FilePlan {
                action: FileAction::Resume,
                held: vec![(0, 1)],
                reason: String::new(),
            }])
        })
        .unwrap();
    assert_eq!(m.files.len(), 1);
    c.close();
    assert_eq!(s.fake.specs.lock().unwrap().last().unwrap().plans, plans);
    for (src, want) in [
        ("/nope", ErrorCode::SourceMissing),
        ("/tree/leak", ErrorCode::OutsideDocroot),
        ("/../secret", ErrorCode::OutsideDocroot),
    ] {
        let mut c = Control::connect(&opts).unwrap();
        let (code, msg) = c
            .download(DownloadRequest {
                sources: vec![src.into()],
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(code, want, "{src}: {msg}");
        c.close();
    }
}

#[test]
fn data_plane_failures_reach_the_client() {
    let s = start(Fake {
        fail: Some((ErrorCode::DiskFull, "no space left writing /big.bin".into())),
        ..Default::default()
    });
    let opts = s.client("accept");
    let mut c = Control::connect(&opts).unwrap();
    c.upload(UploadRequest {
        dest: "/".into(),
        files: vec![entry("big.bin", 1 << 20)],
        ..Default::default()
    })
    .unwrap();
    let done = c.wait_done(Some(Duration::from_secs(5))).unwrap();
    assert!(!done.ok);
    assert_eq!(
        done.error(),
        Some((ErrorCode::DiskFull, "no space left writing /big.bin".into()))
    );
}

#[test]
fn shutdown_stops_accepting() {
    let mut s = start(Fake::default());
    let opts = s.client("accept");
    Control::connect(&opts).unwrap().close();
    let h = s.handle.take().unwrap();
    h.shutdown();
    h.wait();
    let (code, _) = err_code(Control::connect(&opts));
    assert_eq!(code, ErrorCode::TcpConnect);
}
