//! The transfer log: one line when a session starts and one when it ends, for people to
//! read and grep (`transfer_log` in ferryd.toml; empty turns it off).
//!
//! ```text
//! 2026-11-23T07:44:26.123Z start session=3357944928 peer=10.0.0.5:50112 user=alice direction=upload files=3 bytes=1048576 target_bps=500000000 policy=fair
//! 2026-11-23T07:44:30.456Z end session=3357944928 peer=10.0.0.5:50112 user=alice direction=upload files=3 bytes=1048576 duration_s=4.331 rate_bps=1936791 loss=- nacks=12 retransmitted_bytes=- status=ok code=0 message=-
//! ```
//!
//! Each line is `TIME EVENT key=value ...` with the keys always in the same order; a value
//! with spaces, quotes or nothing in it is written as a quoted Rust string, so a line
//! always splits back into its fields. Lines are appended with one `write` each (the file
//! is opened `O_APPEND`), so concurrent sessions never interleave within a line.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The log file, or nothing when it is off.
#[derive(Debug)]
pub struct TransferLog {
    file: Option<Mutex<File>>,
}

/// A session as it starts.
#[derive(Clone, Debug)]
pub struct Start {
    /// Session id.
    pub session: u32,
    /// The client's address (its SSH connection).
    pub peer: String,
    /// The user it logged in as.
    pub user: String,
    /// `upload` (to this host) or `download` (from it).
    pub direction: &'static str,
    /// Files in the session.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Target rate agreed, bits per second.
    pub target_bps: u64,
    /// Rate policy agreed.
    pub policy: String,
}

/// How it ended.
#[derive(Clone, Debug, Default)]
pub struct End {
    /// Payload delivered.
    pub bytes: u64,
    /// Seconds the data flowed.
    pub duration_s: f64,
    /// Share of sent blocks reported lost, where this host sent.
    pub loss: Option<f64>,
    /// Blocks this host asked again, where it received.
    pub nacks: Option<u64>,
    /// Payload bytes sent again, where this host sent.
    pub retransmitted_bytes: Option<u64>,
    /// The error code and message, if it failed.
    pub error: Option<(u32, String)>,
}

impl TransferLog {
    /// Appends to `path` (created mode 0640 if missing); an empty path is no log.
    pub fn open(path: &Path) -> io::Result<TransferLog> {
        if path.as_os_str().is_empty() {
            return Ok(TransferLog { file: None });
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        Ok(TransferLog {
            file: Some(Mutex::new(file)),
        })
    }

    /// Logs a start.
    pub fn start(&self, s: &Start) {
        let mut line = header("start", s);
        let _ = write!(
            line,
            " target_bps={} policy={}",
            s.target_bps,
            value(&s.policy)
        );
        self.append(line);
    }

    /// Logs an end.
    pub fn end(&self, s: &Start, e: &End) {
        let mut line = header("end", s);
        let rate = if e.duration_s > 0.0 {
            (e.bytes as f64 * 8.0 / e.duration_s) as u64
        } else {
            0
        };
        let (status, code, message) = match &e.error {
            None => ("ok", 0, String::new()),
            Some((c, m)) => ("error", *c, m.clone()),
        };
        let _ = write!(
            line,
            " bytes_done={} duration_s={:.3} rate_bps={rate} loss={} nacks={} \
             retransmitted_bytes={} status={status} code={code} message={}",
            e.bytes,
            e.duration_s,
            e.loss.map_or("-".into(), |l| format!("{l:.5}")),
            e.nacks.map_or("-".into(), |n| n.to_string()),
            e.retransmitted_bytes.map_or("-".into(), |n| n.to_string()),
            if message.is_empty() {
                "-".into()
            } else {
                value(&message)
            },
        );
        self.append(line);
    }

    fn append(&self, mut line: String) {
        let Some(file) = &self.file else { return };
        line.push('\n');
        if let Ok(mut f) = file.lock()
            && let Err(e) = f.write_all(line.as_bytes())
        {
            eprintln!("ferryd: cannot write the transfer log: {e}");
        }
    }
}

fn header(event: &str, s: &Start) -> String {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "-".into());
    format!(
        "{now} {event} session={} peer={} user={} direction={} files={} bytes={}",
        s.session,
        value(&s.peer),
        value(&s.user),
        s.direction,
        s.files,
        s.bytes
    )
}

/// A value as it goes in a line: bare when that is unambiguous, quoted otherwise.
fn value(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if plain {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Start {
        Start {
            session: 7,
            peer: "127.0.0.1:5000".into(),
            user: "alice".into(),
            direction: "upload",
            files: 2,
            bytes: 100,
            target_bps: 1_000_000,
            policy: "fair".into(),
        }
    }

    #[test]
    fn lines_are_greppable_and_split_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transfers.log");
        let log = TransferLog::open(&path).unwrap();
        log.start(&start());
        log.end(
            &start(),
            &End {
                bytes: 50,
                duration_s: 2.0,
                nacks: Some(3),
                error: Some((28, "disk full: \"x y\"\nthen".into())),
                ..End::default()
            },
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains(" start session=7 peer=127.0.0.1:5000 user=alice"));
        assert!(
            lines[0].ends_with("target_bps=1000000 policy=fair"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(" end session=7 ")
                && lines[1]
                    .contains(" bytes_done=50 duration_s=2.000 rate_bps=200 loss=- nacks=3 ")
                && lines[1]
                    .contains(" status=error code=28 message=\"disk full: \\\"x y\\\"\\nthen\""),
            "{}",
            lines[1]
        );
        // A second log on the same file appends.
        TransferLog::open(&path).unwrap().start(&start());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn an_empty_path_is_no_log() {
        let log = TransferLog::open(Path::new("")).unwrap();
        log.start(&start());
        assert!(log.file.is_none());
    }
}
