//! ferry-ctl: the messages of ferryd's control socket, as plain data, and the `ferryctl`
//! binary. It never depends on the engine.
//!
//! # The protocol
//!
//! A Unix stream socket (ferryd's `ctl_socket`, default [`DEFAULT_SOCKET`]) carrying
//! newline-delimited JSON: the client writes one [`Request`] per line, ferryd answers each
//! with one [`Response`] line, in order, on the same connection. A request line may hold
//! at most [`MAX_REQUEST`] bytes; a longer one is answered with an error and the
//! connection is closed (the rest of the line is never read). A line that is not a
//! request gets an error reply and the connection stays usable.
//!
//! ```text
//! → {"version":1,"command":{"op":"set-rate","id":7,"target_bps":400000000}}
//! ← {"ok":{"kind":"done"}}
//! → {"version":1,"command":{"op":"pause","id":9}}
//! ← {"error":{"code":"no_session","message":"no session 9 (ferryctl sessions lists them)"}}
//! ```
//!
//! Every request carries [`PROTOCOL_VERSION`]; a server answers another version with
//! [`ErrorCode::Version`]. Fields may be added to responses within a version (readers
//! ignore what they do not know, and missing fields take their defaults); anything else
//! is a new version.
#![warn(missing_docs)]

mod error;
mod rate;

use std::io::BufRead;

use serde::{Deserialize, Serialize};

pub use error::Error;
pub use rate::{human_bytes, human_rate, parse_rate};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request line, without its newline.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The longest response line a client accepts (a few thousand sessions fit).
pub const MAX_RESPONSE: usize = 16 << 20;
/// Where ferryd serves the control socket unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ferry/ctl.sock";
/// The rate policies a session can have, as they are typed.
pub const POLICIES: [&str; 4] = ["fixed", "high", "fair", "low"];

/// One request: the protocol version and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Always [`PROTOCOL_VERSION`] from this crate.
    pub version: u32,
    /// What to do.
    pub command: Command,
}

impl Request {
    /// A request of this crate's version.
    pub fn new(command: Command) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Command {
    /// The server: version, uptime, addresses, sessions and aggregate rate
    /// ([`Payload::Status`]).
    Status,
    /// Every running session ([`Payload::Sessions`]).
    Sessions,
    /// Changes a session's target rate, minimum rate and/or policy (what is `None` stays).
    SetRate {
        /// The session.
        id: u32,
        /// New target rate, bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_bps: Option<u64>,
        /// New minimum rate, bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_bps: Option<u64>,
        /// New policy, one of [`POLICIES`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    /// Changes the rates and/or policy of every session of a multi-session transfer: the
    /// target and minimum are divided evenly among its sessions.
    SetTransferRate {
        /// The transfer's tag (see [`Session::transfer`]).
        transfer: String,
        /// New target rate of the whole transfer, bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_bps: Option<u64>,
        /// New minimum rate of the whole transfer, bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_bps: Option<u64>,
        /// New policy, one of [`POLICIES`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    /// Stops a session sending data; it stays alive.
    Pause {
        /// The session.
        id: u32,
    },
    /// Continues a paused session.
    Resume {
        /// The session.
        id: u32,
    },
    /// Ends a session; the receiver keeps what it has as `.partial`.
    Cancel {
        /// The session.
        id: u32,
    },
    /// Counters and latency percentiles of each data lane (core) ([`Payload::Stats`]).
    Stats,
    /// Shows the host-wide caps ([`Payload::Caps`]) after changing those given (0 lifts a
    /// cap); sessions get their new shares within a second.
    Caps {
        /// New cap on all data this host receives, bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inbound_bps: Option<u64>,
        /// New cap on all data this host sends.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outbound_bps: Option<u64>,
        /// New cap on all `low`-policy sessions together.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        background_bps: Option<u64>,
    },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// One response per request line: its size on the stack does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    /// It worked; here is what was asked for.
    Ok(Payload),
    /// It did not; nothing changed.
    Error {
        /// A stable code for scripts.
        #[serde(default)]
        code: ErrorCode,
        /// One line for people: what is wrong and what to do.
        message: String,
    },
}

impl Response {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why a request failed, for scripts. New codes may appear within a version; readers see
/// them as [`ErrorCode::Other`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request.
    BadRequest,
    /// The line is over [`MAX_REQUEST`] bytes (the connection is closed).
    TooLarge,
    /// The request's protocol version is not the server's.
    Version,
    /// The connecting user may not control this ferryd.
    PermissionDenied,
    /// Too many control connections at once.
    Busy,
    /// No session has that id (it may have ended).
    NoSession,
    /// The session exists but cannot do that (for example, rate changes on the receiving
    /// side of an upload).
    Unsupported,
    /// Anything else.
    #[default]
    #[serde(other)]
    Other,
}

/// What a successful request returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// For [`Command::Status`].
    Status(Status),
    /// For [`Command::Sessions`].
    Sessions {
        /// The sessions, by id.
        sessions: Vec<Session>,
    },
    /// For the commands that change a session: done (effective on the wire within a
    /// second).
    Done,
    /// For [`Command::Caps`].
    Caps(Caps),
    /// For [`Command::Stats`].
    Stats {
        /// One entry per data lane.
        lanes: Vec<LaneStats>,
    },
}

/// What one data lane (a pinned thread with its own socket) has done since ferryd started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LaneStats {
    /// The CPU core its thread is pinned to (absent: not pinned).
    pub core: Option<u64>,
    /// Its UDP port.
    pub port: u16,
    /// Seconds since the lane started.
    pub uptime_s: f64,
    /// Of them, seconds its thread worked rather than slept.
    pub busy_s: f64,
    /// Sessions started on the lane.
    pub sessions_started: u64,
    /// Sessions that ended.
    pub sessions_ended: u64,
    /// Of them, those that ended with an error.
    pub sessions_failed: u64,
    /// Payload delivered by sessions this host sends.
    pub bytes_sent: u64,
    /// Payload delivered to sessions this host receives.
    pub bytes_received: u64,
    /// UDP payload bytes sent, all kinds.
    pub wire_bytes_sent: u64,
    /// Payload bytes sent again (NACKs, probes, tail copies).
    pub retransmitted_bytes: u64,
    /// Inbound datagrams dropped, by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Latency distributions.
    pub latencies: Vec<LatencyStats>,
}

/// One latency's distribution, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyStats {
    /// `feedback_rtt`, `queue_delay`, `disk_read`, `disk_write` or `block_delivery`.
    pub name: String,
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// The host-wide caps and what flows under them. A cap of `None` is no cap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Caps {
    /// Cap on all data this host receives, bits per second.
    pub inbound_bps: Option<u64>,
    /// Cap on all data this host sends.
    pub outbound_bps: Option<u64>,
    /// Cap on all `low`-policy sessions together.
    pub background_bps: Option<u64>,
    /// What the receiving sessions deliver now, bits per second.
    pub inbound_rate_bps: u64,
    /// What the sending sessions deliver now.
    pub outbound_rate_bps: u64,
    /// What the `low`-policy sessions deliver now.
    pub background_rate_bps: u64,
}

/// The server as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// ferryd's release.
    pub version: String,
    /// The control protocol version.
    pub protocol: u32,
    /// ferryd's process id.
    pub pid: u32,
    /// Seconds since ferryd started.
    pub uptime_s: f64,
    /// The SSH control channel's address.
    pub tcp: String,
    /// The data plane's UDP address.
    pub udp: String,
    /// This control socket.
    pub ctl: String,
    /// Sessions running now.
    pub sessions: u64,
    /// Of them, sessions this host sends (downloads).
    pub sending: u64,
    /// Of them, sessions this host receives (uploads).
    pub receiving: u64,
    /// Payload delivered per second by all sessions, bits per second.
    pub rate_bps: u64,
    /// Of it, by the sessions this host sends.
    pub send_rate_bps: u64,
    /// Of it, by the sessions this host receives.
    pub recv_rate_bps: u64,
    /// The host-wide caps.
    pub caps: Caps,
    /// The data lanes: one pinned thread per core, each with its socket and sessions.
    pub lanes: Vec<Lane>,
}

/// One data lane as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lane {
    /// The CPU core its thread is pinned to (absent: not pinned).
    pub core: Option<u64>,
    /// Its UDP port.
    pub port: u16,
    /// The sessions it runs, by id.
    pub sessions: Vec<u32>,
}

/// One running session, as `ferryctl sessions` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Session {
    /// Session id (what `set-rate`, `pause`, `resume` and `cancel` take).
    pub id: u32,
    /// The peer's UDP address, once known.
    pub peer: Option<String>,
    /// The user the peer logged in as, when the server knows it.
    pub user: Option<String>,
    /// `send` or `recv`: what this host does in the session.
    pub direction: String,
    /// Files in the session.
    pub files: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Payload bytes in all.
    pub total: u64,
    /// Payload delivered over the last moment, bits per second.
    pub rate_bps: u64,
    /// Target rate, bits per second (0 where the peer sends and decides).
    pub target_bps: u64,
    /// Minimum rate, bits per second.
    pub min_bps: u64,
    /// Rate policy (where the peer sends: the one agreed at the start).
    pub policy: String,
    /// The session's share of a host-wide cap, bits per second, when one applies.
    pub ceiling_bps: Option<u64>,
    /// Share of sent blocks reported lost.
    pub loss: f64,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Queueing delay the rate controller sees, milliseconds.
    pub queue_ms: f64,
    /// `starting`, `running`, `paused` or `finishing`.
    pub state: String,
    /// The CPU core whose data thread runs the session (absent: an unpinned thread).
    pub core: Option<u64>,
    /// The UDP port of that thread's socket.
    pub port: u16,
    /// The multi-session transfer the session belongs to (`t` and hex digits), if any:
    /// `set-rate` on it divides the rate among its sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
}

/// One message as a line: JSON and a newline.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // These types have string keys and no fallible Serialize impls: this cannot fail.
    let mut v = serde_json::to_vec(msg).expect("control messages always serialize");
    v.push(b'\n');
    v
}

/// Decodes a request line (without its newline). Checks the size and the version before
/// the shape, so that a client of another version learns that rather than a parse error.
pub fn decode_request(line: &[u8]) -> Result<Request, Error> {
    if line.len() > MAX_REQUEST {
        return Err(Error::TooLarge { max: MAX_REQUEST });
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| Error::Malformed(e.to_string()))?;
    match value.get("version").map(serde_json::Value::as_u64) {
        None => return Err(Error::Malformed("no \"version\" field".into())),
        Some(None) => {
            return Err(Error::Malformed(
                "\"version\" is not a non-negative integer".into(),
            ));
        }
        Some(Some(v)) if v != u64::from(PROTOCOL_VERSION) => {
            return Err(Error::Version {
                got: v,
                supported: PROTOCOL_VERSION,
            });
        }
        Some(Some(_)) => {}
    }
    Request::deserialize(value).map_err(|e| Error::Malformed(e.to_string()))
}

/// Decodes a response line (without its newline).
pub fn decode_response(line: &[u8]) -> Result<Response, Error> {
    if line.len() > MAX_RESPONSE {
        return Err(Error::TooLarge { max: MAX_RESPONSE });
    }
    serde_json::from_slice(line).map_err(|e| Error::Malformed(e.to_string()))
}

/// Reads one line of at most `max` bytes (not counting the newline; a `\r` before it is
/// dropped too). `Ok(None)` at the end of the stream; a last line without a newline still
/// counts. On [`Error::TooLarge`] the stream is left inside the long line: close it.
pub fn read_line<R: BufRead>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, Error> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            let n = buf.len();
            r.consume(n);
            return Err(Error::TooLarge { max });
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(if end { take + 1 } else { take });
        if end {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};

    fn all_commands() -> Vec<Command> {
        vec![
            Command::Status,
            Command::Sessions,
            Command::SetRate {
                id: 7,
                target_bps: Some(400_000_000),
                min_bps: None,
                policy: Some("fixed".into()),
            },
            Command::SetRate {
                id: u32::MAX,
                target_bps: None,
                min_bps: Some(0),
                policy: None,
            },
            Command::Pause { id: 1 },
            Command::Resume { id: 2 },
            Command::Cancel { id: 3 },
            Command::Stats,
            Command::Caps {
                inbound_bps: Some(300_000_000),
                outbound_bps: None,
                background_bps: Some(0),
            },
            Command::Caps {
                inbound_bps: None,
                outbound_bps: None,
                background_bps: None,
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        for c in all_commands() {
            let req = Request::new(c);
            let line = encode_line(&req);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let back = decode_request(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn the_wire_form_is_readable() {
        let line = encode_line(&Request::new(Command::SetRate {
            id: 7,
            target_bps: Some(400_000_000),
            min_bps: None,
            policy: None,
        }));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"version\":1,\"command\":{\"op\":\"set-rate\",\"id\":7,\"target_bps\":400000000}}\n"
        );
        let line = encode_line(&Response::Ok(Payload::Done));
        assert_eq!(line, b"{\"ok\":{\"kind\":\"done\"}}\n");
        let line = encode_line(&Response::error(ErrorCode::NoSession, "no session 9"));
        assert_eq!(
            line,
            b"{\"error\":{\"code\":\"no_session\",\"message\":\"no session 9\"}}\n"
        );
    }

    #[test]
    fn responses_round_trip() {
        let session = Session {
            id: 42,
            peer: Some("127.0.0.1:5000".into()),
            user: None,
            direction: "send".into(),
            files: 1,
            bytes: 10,
            total: 20,
            rate_bps: 199_000_000,
            target_bps: 200_000_000,
            min_bps: 0,
            policy: "fixed".into(),
            ceiling_bps: Some(150_000_000),
            loss: 0.25,
            rtt_ms: 0.5,
            queue_ms: 0.0,
            state: "running".into(),
            core: Some(1),
            port: 33001,
            transfer: None,
        };
        let status = Status {
            version: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
            pid: 1,
            uptime_s: 1.5,
            tcp: "0.0.0.0:33001".into(),
            udp: "0.0.0.0:33001".into(),
            ctl: "/run/ferry/ctl.sock".into(),
            sessions: 1,
            sending: 1,
            receiving: 0,
            rate_bps: 5,
            send_rate_bps: 5,
            recv_rate_bps: 0,
            caps: Caps {
                inbound_bps: Some(300_000_000),
                ..Caps::default()
            },
            lanes: vec![Lane {
                core: Some(0),
                port: 33001,
                sessions: vec![42],
            }],
        };
        for r in [
            Response::Ok(Payload::Done),
            Response::Ok(Payload::Status(status.clone())),
            Response::Ok(Payload::Caps(status.caps)),
            Response::Ok(Payload::Stats {
                lanes: vec![LaneStats {
                    core: Some(0),
                    drops: [("auth".to_string(), 3)].into_iter().collect(),
                    latencies: vec![LatencyStats {
                        name: "disk_write".into(),
                        count: 5,
                        ..LatencyStats::default()
                    }],
                    ..LaneStats::default()
                }],
            }),
            Response::Ok(Payload::Sessions {
                sessions: vec![session.clone(), Session::default()],
            }),
            Response::Ok(Payload::Sessions { sessions: vec![] }),
            Response::error(ErrorCode::BadRequest, "no"),
        ] {
            let line = encode_line(&r);
            assert_eq!(decode_response(&line[..line.len() - 1]).unwrap(), r);
        }
    }

    #[test]
    fn newer_responses_still_read() {
        // A field this side does not know, a missing one, and an unknown error code.
        let line =
            br#"{"ok":{"kind":"sessions","sessions":[{"id":3,"state":"running","cores":[1,2]}]}}"#;
        let Response::Ok(Payload::Sessions { sessions }) = decode_response(line).unwrap() else {
            panic!("not sessions");
        };
        assert_eq!(sessions[0].id, 3);
        assert_eq!(sessions[0].state, "running");
        assert_eq!(sessions[0].bytes, 0);
        let line = br#"{"error":{"code":"quota","message":"over quota"}}"#;
        assert_eq!(
            decode_response(line).unwrap(),
            Response::error(ErrorCode::Other, "over quota")
        );
    }

    #[test]
    fn malformed_requests_are_typed_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"garbage",
            b"\xff\xfe\x00",
            b"{}",
            b"[]",
            b"null",
            b"{\"version\":\"1\",\"command\":{\"op\":\"status\"}}",
            b"{\"version\":-1,\"command\":{\"op\":\"status\"}}",
            b"{\"version\":1}",
            b"{\"version\":1,\"command\":{\"op\":\"reboot\"}}",
            b"{\"version\":1,\"command\":{\"op\":\"pause\"}}",
            b"{\"version\":1,\"command\":{\"op\":\"pause\",\"id\":-3}}",
            b"{\"version\":1,\"command\":{\"op\":\"pause\",\"id\":4294967296}}",
            b"{\"version\":1,\"command\":{\"op\":\"set-rate\",\"id\":1,\"target_bps\":-1}}",
            b"{\"version\":1,\"command\":{\"op\":\"set-rate\",\"id\":1,\"target_bps\":1.5}}",
            b"{\"version\":1,\"command\":\"status\"}",
            b"{\"version\":1,\"command\":{\"op\":\"status\"}} trailing",
        ];
        for c in cases {
            match decode_request(c) {
                Err(Error::Malformed(m)) => assert!(!m.is_empty()),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(c)),
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut line = b"{\"version\":1,\"command\":".to_vec();
        line.extend(std::iter::repeat_n(b'[', 50_000));
        assert!(matches!(decode_request(&line), Err(Error::Malformed(_))));
    }

    #[test]
    fn other_versions_are_named() {
        let e = decode_request(b"{\"version\":2,\"command\":{\"op\":\"launch\"}}").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Version {
                    got: 2,
                    supported: 1
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn oversized_requests_are_refused() {
        let mut line = encode_line(&Request::new(Command::Status));
        line.pop();
        line.resize(MAX_REQUEST + 1, b' ');
        assert!(matches!(
            decode_request(&line),
            Err(Error::TooLarge { max: MAX_REQUEST })
        ));
        line.truncate(MAX_REQUEST);
        assert!(
            decode_request(&line).is_ok(),
            "whitespace up to the limit is fine"
        );
    }

    #[test]
    fn lines_are_framed_with_a_limit() {
        let mut r = BufReader::with_capacity(4, Cursor::new(b"ab\r\ncdef\n\nlast".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), Some(b"ab".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), Some(b"cdef".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), Some(vec![]));
        assert_eq!(read_line(&mut r, 10).unwrap(), Some(b"last".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), None);

        let mut r = BufReader::with_capacity(3, Cursor::new(b"0123456789\nok\n".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), Some(b"0123456789".to_vec()));
        assert_eq!(read_line(&mut r, 10).unwrap(), Some(b"ok".to_vec()));

        let mut r = BufReader::with_capacity(3, Cursor::new(b"0123456789A\n".to_vec()));
        assert!(matches!(
            read_line(&mut r, 10),
            Err(Error::TooLarge { max: 10 })
        ));
        // A huge line is refused after reading only about the limit of it.
        let big = vec![b'x'; 10 << 20];
        let mut r = BufReader::with_capacity(8192, Cursor::new(big));
        assert!(matches!(
            read_line(&mut r, MAX_REQUEST),
            Err(Error::TooLarge { .. })
        ));
        assert!(r.get_ref().position() <= (MAX_REQUEST + 8192) as u64);
    }
}
