//! The control protocol spoken over the SSH channel: JSON, one message per line.
//!
//! The client opens a session channel, asks for the `ferry` subsystem (or execs `ferry`),
//! and sends [`ClientMsg::Hello`] then one request, without waiting. The server answers
//! [`ServerMsg::Hello`], then [`ServerMsg::Ready`] (upload) or [`ServerMsg::Manifest`]
//! (download), or [`ServerMsg::Error`]; when the data plane is done it sends
//! [`ServerMsg::Done`] and closes the channel. One transfer per channel.
//!
//! Resume and overwrite are decided by the receiving side, file by file ([`FilePlan`]):
//! for an upload ferryd decides and its [`Ready`] carries the plans; a download that sets
//! [`DownloadRequest::negotiate`] first gets the file list ([`ServerMsg::Offer`]), answers
//! with its plans ([`ClientMsg::Plans`]), and only then gets the [`ServerMsg::Manifest`].

use crate::control::ErrorCode;
use crate::data::FileEntry;
use crate::integrity::Digest;
pub use crate::resume::{FileAction, FilePlan};
pub use crate::sums::FileSums;

/// The control protocol version; both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts (a manifest of many files is one line).
pub const MAX_LINE: usize = 256 << 20;

/// Client to server.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message: the protocol version.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Send files to the server.
    Upload(UploadRequest),
    /// Fetch files from the server.
    Download(DownloadRequest),
    /// The answer to [`ServerMsg::Offer`]: what the client does with each file.
    Plans(Plans),
    /// `ferry doctor`: exchange UDP probes on the data port instead of a transfer. The
    /// server answers [`ServerMsg::ProbeReady`], probes for a while, then
    /// [`ServerMsg::ProbeResult`].
    Probe(ProbeRequest),
    /// During an upload: the client's sender has hashed a whole file.
    Digest(FileDigest),
    /// The TCP fallback: on a second channel of the same SSH connection, instead of a
    /// transfer, carry the datagrams of a running session of this connection. The server
    /// answers [`ServerMsg::Tunnel`]; from then on the channel carries datagrams, each
    /// framed by a 2-byte big-endian length, both ways (see `crate::tunnel`).
    Tunnel(TunnelRequest),
}

/// Which session a fallback channel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelRequest {
    /// A session started on another channel of this SSH connection.
    pub session: u32,
}

/// `ferry doctor`'s UDP probe: which datagrams pass between the client's `client_udp`
/// port and the server's data port, each way, and how large.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRequest {
    /// The client's probe socket (the server sends its probes there, to the address the
    /// SSH connection comes from).
    pub client_udp: u16,
    /// Carried in every probe, so that stray datagrams are not counted.
    pub token: u64,
    /// UDP payload sizes to send, each with "don't fragment" set.
    pub sizes: Vec<u32>,
    /// How long the server probes and listens, milliseconds (clamped to 200..=5000).
    pub millis: u32,
}

/// The server is listening for probes and sending its own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeReady {
    /// The data port probed.
    pub udp_port: u16,
    /// The server's clock, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
}

/// What the server saw of the client's probes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    /// Payload sizes of the client's probes that arrived (each size once).
    pub received: Vec<u32>,
    /// Payload sizes the server could send (a size over its own route's MTU cannot leave).
    pub sent: Vec<u32>,
}

/// A file's end-to-end checksum, sent by the side whose data plane sends the file, as soon
/// as it has read every byte of it ([`TransferParams::checksum`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    /// The file's index in the session's manifest.
    pub file: u32,
    /// `ALGORITHM:HEX`.
    pub checksum: Digest,
}

/// The receiving client's decision for each offered file, in the offer's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plans {
    /// One plan per file.
    pub files: Vec<FilePlan>,
}

/// The rate and cipher a client asks for; zero and empty mean "the server's default".
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferParams {
    /// `aes128`, `aes256` or `none`; empty means `aes128`.
    pub cipher: String,
    /// `fixed`, `high`, `fair` or `low`; empty means the server's default.
    pub policy: String,
    /// Target rate, bits per second; 0 means the server's default. Clamped to the server's
    /// maximum.
    pub target_bps: u64,
    /// Minimum rate, bits per second; 0 means the server's default.
    pub min_bps: u64,
    /// Payload bytes per datagram; 0 means the server's default.
    pub block_size: u32,
    /// The client's estimate of the round-trip time, microseconds; 0 when unknown.
    #[serde(default)]
    pub rtt_hint_us: u64,
    /// Resume level 0..3 (`-k`): 0 sends whole files; 1 and up resume partial files whose
    /// checkpoint matches the source's size and mtime.
    #[serde(default)]
    pub resume_level: u8,
    /// Overwrite policy (`never`, `always`, `diff`, `older`, `diff+older`); empty means
    /// `diff`.
    #[serde(default)]
    pub overwrite: String,
    /// `--no-fsync`: the receiving side renames files without waiting for them to be on
    /// disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_fsync: bool,
    /// End-to-end checksum of each file (`sha256`, `crc32c`); empty or `none`: none. The
    /// sending side sends a [`FileDigest`] per file ([`ClientMsg::Digest`] or
    /// [`ServerMsg::Digest`]) and the receiving side renames a file only once its own
    /// digest is equal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    /// The client continues over the TCP fallback ([`ClientMsg::Tunnel`]) when no
    /// datagram passes over UDP: the server's session waits for it instead of failing
    /// after the UDP start timeout. Absent (older clients): it fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// An upload: the client sends `files` into the directory `dest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadRequest {
    /// Destination directory, relative to the user's docroot (`/` is the docroot). It must
    /// exist.
    pub dest: String,
    /// The files, paths relative to `dest`.
    pub files: Vec<FileEntry>,
    /// Directories to create below `dest` (empty ones included), parents first.
    pub dirs: Vec<String>,
    /// Cipher, rate and block size.
    #[serde(flatten)]
    pub params: TransferParams,
    /// The client's UDP port (informational: the server learns the address from the first
    /// authentic datagram).
    pub client_udp: u16,
    /// At resume levels 2 and 3: the checksums of each file, in `files` order, that ferryd
    /// checks existing and partial files against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sums: Vec<FileSums>,
    /// The sessions of one multi-session transfer share this tag (`t` and hex digits), so
    /// that `ferryctl` shows and steers them as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
}

/// Whether `tag` is a transfer tag as clients make them: `t` and 1 to 31 hex digits.
pub fn is_transfer_tag(tag: &str) -> bool {
    tag.strip_prefix('t').is_some_and(|hex| {
        (1..32).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// A dead-weight-free random transfer tag.
///
/// Straight from the kernel's `getrandom`: the client needs no other randomness, and the
/// first draw from aws-lc's generator seeds it from CPU jitter, 40 ms of CPU time on every
/// `ferry` command (`perf` on a 10,000-file upload: 10 % of the client's samples).
pub fn new_transfer_tag() -> String {
    let mut b = [0u8; 4];
    // The tag only groups sessions for display; a failed call leaves a constant one.
    // SAFETY: writes at most `b.len()` bytes into `b`.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    format!("t{}", to_hex(&b))
}

/// A download: the server sends `sources` to the client.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DownloadRequest {
    /// Files or directories, relative to the user's docroot. All must be in the same
    /// directory; a directory comes with everything below it.
    pub sources: Vec<String>,
    /// Cipher, rate and block size.
    #[serde(flatten)]
    pub params: TransferParams,
    /// The client's UDP port (informational).
    pub client_udp: u16,
    /// Offer the files first ([`ServerMsg::Offer`]) and wait for the client's
    /// [`ClientMsg::Plans`] before starting the session.
    #[serde(default)]
    pub negotiate: bool,
    /// Only list the files: the server answers [`ServerMsg::Offer`] and ends the channel
    /// (a multi-session download plans its sessions from it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list_only: bool,
    /// Send only these pieces of the listed files (one session of a multi-session
    /// download); empty: everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<Selection>,
    /// The multi-session transfer this session belongs to (see
    /// [`UploadRequest::transfer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
}

/// A piece of a listed file: bytes `[offset, offset + len)` of file `file` (its index in
/// the list a [`DownloadRequest::list_only`] request returned for the same sources).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// Index in the listing.
    pub file: u32,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message: the protocol version and who the client is.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The ferry user the key logged in as.
        user: String,
    },
    /// The upload may start: send datagrams to `udp_port`.
    Ready(Ready),
    /// The download's files; the server's sender waits for the client's first datagram.
    Manifest(Manifest),
    /// The files a negotiated download would send; the client answers
    /// [`ClientMsg::Plans`].
    Offer(Offer),
    /// The transfer ended (the server's data plane reported).
    Done(Done),
    /// During a download: the server's sender has hashed a whole file.
    Digest(FileDigest),
    /// An operator changed the session on the server (`ferryctl`), but the client sends
    /// the data: apply it there.
    Steer(Steer),
    /// The request was refused before any data moved.
    Error(ErrorMsg),
    /// `ferry doctor`: the server's probe socket is ready.
    ProbeReady(ProbeReady),
    /// `ferry doctor`: the probes the server received.
    ProbeResult(ProbeResult),
    /// The fallback channel is attached to the session: datagram frames follow.
    Tunnel(TunnelRequest),
}

/// The server's answer to an upload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    /// Session id carried in every datagram.
    pub session: u32,
    /// The 32-byte session secret, hex.
    pub secret: String,
    /// The server's UDP port.
    pub udp_port: u16,
    /// Payload bytes per datagram.
    pub block_size: u32,
    /// Cipher.
    pub cipher: String,
    /// Rate policy.
    pub policy: String,
    /// Target rate after the server's clamp, bits per second.
    pub target_bps: u64,
    /// Minimum rate, bits per second.
    pub min_bps: u64,
    /// The session's share of the server's host cap, bits per second: the sender never
    /// exceeds it (later changes arrive as [`Steer::Ceiling`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_bps: Option<u64>,
    /// For an upload: what ferryd does with each file, in the request's order (empty: send
    /// every file whole).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<FilePlan>,
}

/// The files of a negotiated download, before its session starts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    /// The files, paths relative to the client's destination, in the order they travel.
    pub files: Vec<FileEntry>,
    /// The block size the session will use (the plans' held blocks count in it).
    pub block_size: u32,
    /// At resume levels 2 and 3: each file's checksums, in `files` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sums: Vec<FileSums>,
}

/// The server's answer to a download.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The files, paths relative to the client's destination, in the order they travel.
    pub files: Vec<FileEntry>,
    /// Directories to create (empty ones included), parents first.
    pub dirs: Vec<String>,
    /// What the server left out, one line each (links leading elsewhere, special files).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Session id, secret, port, block size, cipher and rates, as in [`Ready`].
    #[serde(flatten)]
    pub session: Ready,
}

/// A live change for the client's sender, relayed from the server's `ferryctl`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Steer {
    /// New target and/or minimum rate (bits per second) and/or policy.
    SetRate {
        /// New target rate.
        target_bps: Option<u64>,
        /// New minimum rate.
        min_bps: Option<u64>,
        /// New policy name.
        policy: Option<String>,
    },
    /// Stop sending data.
    Pause,
    /// Continue.
    Resume,
    /// End the session.
    Cancel,
    /// The session's share of the server's host cap changed (`None`: no cap applies).
    Ceiling {
        /// The new ceiling, bits per second.
        bps: Option<u64>,
    },
}

/// How the transfer ended on the server's side.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Done {
    /// Every file complete and verified.
    pub ok: bool,
    /// The [`ErrorCode`] number when not ok.
    pub code: Option<u32>,
    /// What went wrong, when not ok.
    pub message: Option<String>,
    /// File payload delivered.
    pub bytes: u64,
    /// UDP payload bytes the server sent.
    pub wire_bytes: u64,
    /// Payload bytes the server re-sent.
    pub retransmitted_bytes: u64,
    /// Seconds of the data phase, as the server measured it.
    pub data_secs: f64,
    /// Upload: the files (manifest indices) whose checksum did not match; they stay
    /// `NAME.partial` with a checkpoint, for a re-run at resume level 3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatched: Vec<u32>,
}

impl Done {
    /// The error as a code and a message, when not ok.
    pub fn error(&self) -> Option<(ErrorCode, String)> {
        if self.ok {
            return None;
        }
        let code = self
            .code
            .and_then(ErrorCode::from_code)
            .unwrap_or(ErrorCode::Internal);
        Some((code, self.message.clone().unwrap_or_default()))
    }
}

/// A refusal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorMsg {
    /// The [`ErrorCode`] number.
    pub code: u32,
    /// The detail of this occurrence.
    pub message: String,
    /// The recommended action.
    pub action: String,
}

impl ErrorMsg {
    /// A refusal with `code`'s recommended action.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
        ErrorMsg {
            code: code.code(),
            message: message.into(),
            action: code.action().to_string(),
        }
    }

    /// The code (an unknown number reads as [`ErrorCode::Internal`]) and the message.
    pub fn to_error(&self) -> (ErrorCode, String) {
        (
            ErrorCode::from_code(self.code).unwrap_or(ErrorCode::Internal),
            self.message.clone(),
        )
    }
}

/// One message as a line (JSON and `\n`).
pub fn encode_line<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("control messages always serialise");
    v.push(b'\n');
    v
}

/// Splits complete lines off the front of a receive buffer.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Appends received bytes; fails once a line grows past [`MAX_LINE`].
    pub fn push(&mut self, data: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_LINE && !self.buf[..MAX_LINE].contains(&b'\n') {
            return Err(format!("a control message is longer than {MAX_LINE} bytes"));
        }
        Ok(())
    }

    /// Whatever follows the last line taken (the start of a byte stream that follows the
    /// control lines on a fallback channel).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The next complete line, without its `\n`.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let i = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=i).collect();
        line.pop();
        Some(line)
    }

    /// Whether bytes of an incomplete line are waiting.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Hex of `bytes`, lowercase.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// The 32-byte session secret from its hex form.
pub fn secret_from_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mtime: (1_700_000_000, 5),
            mode: 0o644,
            part: None,
        }
    }

    #[test]
    fn transfer_tags_are_well_formed_and_random() {
        let tags: std::collections::HashSet<String> = (0..8).map(|_| new_transfer_tag()).collect();
        assert!(tags.iter().all(|t| is_transfer_tag(t)), "{tags:?}");
        assert!(tags.len() > 1, "eight draws, one tag: {tags:?}");
    }

    #[test]
    fn client_messages_round_trip() {
        let msgs = [
            ClientMsg::Hello {
                version: PROTOCOL_VERSION,
            },
            ClientMsg::Upload(UploadRequest {
                dest: "/in box".into(),
                files: vec![entry("a/b.txt", 10), entry("ü.bin", 0)],
                dirs: vec!["a".into(), "empty".into()],
                params: TransferParams {
                    cipher: "aes128".into(),
                    policy: "fair".into(),
                    target_bps: 500_000_000,
                    min_bps: 0,
                    block_size: 8192,
                    rtt_hint_us: 0,
                    resume_level: 2,
                    overwrite: "diff+older".into(),
                    checksum: "sha256".into(),
                    no_fsync: true,
                    fallback: true,
                },
                client_udp: 40000,
                sums: Vec::new(),
                transfer: None,
            }),
            ClientMsg::Download(DownloadRequest {
                sources: vec!["/src.bin".into()],
                params: TransferParams::default(),
                client_udp: 0,
                negotiate: true,
                ..Default::default()
            }),
            ClientMsg::Plans(Plans {
                files: vec![
                    FilePlan::default(),
                    FilePlan {
                        action: FileAction::Resume,
                        held: vec![(0, 10), (12, 20)],
                        reason: "resuming".into(),
                    },
                ],
            }),
            ClientMsg::Tunnel(TunnelRequest { session: 7 }),
        ];
        for m in msgs {
            let line = encode_line(&m);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let back: ClientMsg = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, m);
        }
        let hello = String::from_utf8(encode_line(&ClientMsg::Hello { version: 1 })).unwrap();
        assert_eq!(hello, "{\"type\":\"hello\",\"version\":1}\n");
    }

    #[test]
    fn server_messages_round_trip() {
        let ready = Ready {
            session: 7,
            secret: to_hex(&[0xab; 32]),
            udp_port: 33001,
            block_size: 8192,
            cipher: "aes128".into(),
            policy: "fair".into(),
            target_bps: 1,
            min_bps: 0,
            ceiling_bps: Some(300_000_000),
            plans: vec![FilePlan {
                action: FileAction::Skip,
                held: Vec::new(),
                reason: "same".into(),
            }],
        };
        let msgs = [
            ServerMsg::Hello {
                version: 1,
                user: "accept".into(),
            },
            ServerMsg::Ready(ready.clone()),
            ServerMsg::Steer(Steer::Ceiling { bps: None }),
            ServerMsg::Manifest(Manifest {
                files: vec![entry("t/x", 3)],
                dirs: vec!["t".into()],
                skipped: vec!["t/fifo: not a regular file or directory".into()],
                session: ready,
            }),
            ServerMsg::Done(Done {
                ok: false,
                code: Some(35),
                message: Some("disk full".into()),
                bytes: 1,
                wire_bytes: 2,
                retransmitted_bytes: 0,
                data_secs: 0.5,
                mismatched: vec![3],
            }),
            ServerMsg::Digest(FileDigest {
                file: 2,
                checksum: "crc32c:e3069283".parse().unwrap(),
            }),
            ServerMsg::Offer(Offer {
                files: vec![entry("y", 4)],
                block_size: 1000,
                sums: vec![FileSums {
                    chunk: 65536,
                    sums: vec![(0, 0xdead_beef)],
                }],
            }),
            ServerMsg::Error(ErrorMsg::new(ErrorCode::OutsideDocroot, "no")),
        ];
        for m in msgs {
            let line = encode_line(&m);
            let back: ServerMsg = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn done_and_error_give_codes_back() {
        let d = Done {
            ok: false,
            code: Some(ErrorCode::DiskFull.code()),
            message: Some("full".into()),
            bytes: 0,
            wire_bytes: 0,
            retransmitted_bytes: 0,
            data_secs: 0.0,
            mismatched: Vec::new(),
        };
        assert_eq!(d.error(), Some((ErrorCode::DiskFull, "full".into())));
        let e = ErrorMsg::new(ErrorCode::Auth, "x");
        assert_eq!(e.to_error(), (ErrorCode::Auth, "x".into()));
        assert_eq!(e.action, ErrorCode::Auth.action());
        let unknown = ErrorMsg {
            code: 12345,
            message: "?".into(),
            action: String::new(),
        };
        assert_eq!(unknown.to_error().0, ErrorCode::Internal);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"type\":\"nope\"}",
            b"{\"type\":\"upload\"}",
            b"\xff\xfe",
        ] {
            assert!(serde_json::from_slice::<ClientMsg>(bad).is_err());
        }
    }

    #[test]
    fn lines_split() {
        let mut lb = LineBuffer::default();
        lb.push(b"ab").unwrap();
        assert_eq!(lb.next_line(), None);
        lb.push(b"c\nde\n\nf").unwrap();
        assert_eq!(lb.next_line(), Some(b"abc".to_vec()));
        assert_eq!(lb.next_line(), Some(b"de".to_vec()));
        assert_eq!(lb.next_line(), Some(b"".to_vec()));
        assert_eq!(lb.next_line(), None);
        assert!(lb.has_partial());
    }

    #[test]
    fn hex_secret_round_trips() {
        let s: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        assert_eq!(secret_from_hex(&to_hex(&s)), Some(s));
        assert_eq!(secret_from_hex("00"), None);
        assert_eq!(secret_from_hex(&"zz".repeat(32)), None);
    }
}
