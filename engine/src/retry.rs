//! What `ferry` does when an attempt fails: which failures are worth another attempt
//! (`--retry`, `--retry-interval`), and what happens to a source that changed while it was
//! being sent (`--on-change`).
//!
//! Every further attempt resumes (resume level 1 at least): the receiver's checkpoints keep
//! what already arrived, and a file whose source changed restarts from nothing because its
//! checkpoint names the old size and mtime, so it is never delivered mixed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::control::ErrorCode;

/// The default `--retry`.
pub const DEFAULT_RETRIES: u32 = 3;
/// The default `--retry-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How many times `--on-change resend` sends a changed source again before giving up: a
/// file that keeps changing (a live log) would otherwise be sent forever.
pub const MAX_RESENDS: u32 = 3;

/// What to do with a source that changed (size or mtime) during its transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnChange {
    /// Fail with [`ErrorCode::FileChanged`].
    #[default]
    Fail,
    /// Send it again from its new state afterwards (at most [`MAX_RESENDS`] times).
    Resend,
}

impl FromStr for OnChange {
    type Err = String;

    fn from_str(s: &str) -> Result<OnChange, String> {
        match s {
            "fail" => Ok(OnChange::Fail),
            "resend" => Ok(OnChange::Resend),
            _ => Err(format!("{s:?}: expected fail or resend")),
        }
    }
}

impl fmt::Display for OnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnChange::Fail => "fail",
            OnChange::Resend => "resend",
        })
    }
}

/// `30s`, `500ms`, `2m`, `1h`, or a plain number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 30s, 500ms, 2m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{s:?}: too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Whether a failure may go away by itself, so that trying again later makes sense: the
/// network or the peer was unreachable or silent for a while. Refusals (authentication,
/// host keys, a refused connection, paths, a full disk, bad requests) are not, and neither
/// is a control connection the server closed ([`ErrorCode::PeerAborted`]: ferryd stopped,
/// and its operator should be asked why).
pub fn is_retryable(code: ErrorCode, message: &str) -> bool {
    match code {
        ErrorCode::DataTimeout | ErrorCode::UdpStart | ErrorCode::NetworkUnreachable => true,
        ErrorCode::ControlTimeout => true,
        // The same code covers "refused", which is an answer, and "timed out", which is not.
        ErrorCode::TcpConnect => message.contains("timed out"),
        _ => false,
    }
}

/// Why another attempt follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Again {
    /// A retryable failure: wait, then resume.
    Retry,
    /// A source changed and `--on-change resend`: resume at once, the changed file from
    /// its new state.
    Resend,
}

impl Again {
    /// The `kind` field of the JSON `retry` event.
    pub fn name(self) -> &'static str {
        match self {
            Again::Retry => "retry",
            Again::Resend => "resend",
        }
    }
}

/// Counts the attempts of one command and decides whether a failure gets another.
#[derive(Clone, Debug)]
pub struct Attempts {
    retries: u32,
    interval: Duration,
    on_change: OnChange,
    retried: u32,
    resent: u32,
}

impl Attempts {
    /// Up to `retries` retries `interval` apart, and `on_change` for changed sources.
    pub fn new(retries: u32, interval: Duration, on_change: OnChange) -> Attempts {
        Attempts {
            retries,
            interval,
            on_change,
            retried: 0,
            resent: 0,
        }
    }

    /// Attempts made after the first.
    pub fn again_count(&self) -> u32 {
        self.retried + self.resent
    }

    /// After a failure: `Some((why, wait))` when another attempt follows after `wait`,
    /// `None` when the failure is final. Counts the attempt.
    pub fn after_failure(&mut self, code: ErrorCode, message: &str) -> Option<(Again, Duration)> {
        if code == ErrorCode::FileChanged && self.on_change == OnChange::Resend {
            if self.resent >= MAX_RESENDS {
                return None;
            }
            self.resent += 1;
            return Some((Again::Resend, Duration::ZERO));
        }
        if is_retryable(code, message) && self.retried < self.retries {
            self.retried += 1;
            return Some((Again::Retry, self.interval));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1e99").is_err());
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(is_retryable(ErrorCode::DataTimeout, ""));
        assert!(is_retryable(ErrorCode::UdpStart, ""));
        assert!(is_retryable(ErrorCode::NetworkUnreachable, ""));
        assert!(is_retryable(ErrorCode::ControlTimeout, ""));
        assert!(is_retryable(
            ErrorCode::TcpConnect,
            "connecting to h:1 timed out after 15 s"
        ));
        assert!(!is_retryable(
            ErrorCode::TcpConnect,
            "h:1 refused the connection: ferryd is not running there"
        ));
        for c in [
            ErrorCode::PeerAborted,
            ErrorCode::Auth,
            ErrorCode::HostKeyUnknown,
            ErrorCode::HostKeyMismatch,
            ErrorCode::DiskFull,
            ErrorCode::BadRequest,
            ErrorCode::SourceMissing,
            ErrorCode::OutsideDocroot,
            ErrorCode::FileChanged,
            ErrorCode::Interrupted,
        ] {
            assert!(!is_retryable(c, "timed out"), "{c}");
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let mut a = Attempts::new(2, Duration::from_secs(1), OnChange::Fail);
        assert_eq!(
            a.after_failure(ErrorCode::DataTimeout, ""),
            Some((Again::Retry, Duration::from_secs(1)))
        );
        assert!(a.after_failure(ErrorCode::Auth, "").is_none());
        assert!(a.after_failure(ErrorCode::DataTimeout, "").is_some());
        assert!(a.after_failure(ErrorCode::DataTimeout, "").is_none());
        assert!(a.after_failure(ErrorCode::FileChanged, "").is_none());

        let mut a = Attempts::new(0, Duration::from_secs(1), OnChange::Resend);
        for _ in 0..MAX_RESENDS {
            assert_eq!(
                a.after_failure(ErrorCode::FileChanged, ""),
                Some((Again::Resend, Duration::ZERO))
            );
        }
        assert!(a.after_failure(ErrorCode::FileChanged, "").is_none());
        assert!(a.after_failure(ErrorCode::DataTimeout, "").is_none());
        assert_eq!(a.again_count(), MAX_RESENDS);
    }
}
