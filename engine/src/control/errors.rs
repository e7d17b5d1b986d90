//! Stable error codes: what a person sees when a transfer cannot start or does not finish.
//!
//! Every code has a number that never changes meaning, a short name, a one-line message and a
//! recommended action. The detail of one occurrence (which port, which path) travels beside
//! the code as a `String`.

use std::fmt;
use std::io;

/// A failure a person can act on. The numbers are a promise: never renumber, only add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The TCP (SSH) connection was refused or timed out.
    TcpConnect,
    /// The network or host is unreachable.
    NetworkUnreachable,
    /// The server rejected every key offered.
    Auth,
    /// The client's private key could not be read or used.
    Identity,
    /// The server's host key is not in known_hosts.
    HostKeyUnknown,
    /// The server's host key differs from the one recorded in known_hosts.
    HostKeyMismatch,
    /// The host name could not be resolved to an address.
    NameResolution,
    /// The two hosts' clocks differ by more than ferry tolerates.
    ClockSkew,
    /// No UDP datagram arrived either way within a few seconds of the start.
    UdpStart,
    /// UDP traffic stopped for longer than the data timeout.
    DataTimeout,
    /// The other side ended the session.
    PeerAborted,
    /// Stopped here by a signal (Ctrl-C, SIGTERM) or an operator's cancel.
    Interrupted,
    /// The control connection stopped answering (SSH keepalives went unanswered).
    ControlTimeout,
    /// UDP datagrams on the data port do not pass in one direction or both.
    UdpBlocked,
    /// The path drops datagrams as large as the ones ferry sends.
    PathMtu,
    /// The destination directory does not exist.
    DestinationMissing,
    /// The operating system refused access.
    PermissionDenied,
    /// The path leads outside the user's docroot (`..`, a symbolic link).
    OutsideDocroot,
    /// A file name is not acceptable (control characters, empty or `.` components).
    InvalidPath,
    /// A requested source file or directory does not exist.
    SourceMissing,
    /// No space left on the receiving disk (or quota exceeded).
    DiskFull,
    /// A source file disappeared during the transfer.
    SourceVanished,
    /// A source file changed (size or modification time) during the transfer.
    FileChanged,
    /// A file's checksum did not match after the transfer.
    ChecksumMismatch,
    /// Another session is receiving into the same file and would not let go of it.
    FileBusy,
    /// The two sides do not understand each other (version, malformed message).
    Protocol,
    /// A request or option is not valid (bad rate, unknown cipher or policy).
    BadRequest,
    /// Any other input/output error.
    Io,
    /// A bug: something that should not happen did.
    Internal,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 29] = [
        ErrorCode::TcpConnect,
        ErrorCode::NetworkUnreachable,
        ErrorCode::Auth,
        ErrorCode::Identity,
        ErrorCode::HostKeyUnknown,
        ErrorCode::HostKeyMismatch,
        ErrorCode::NameResolution,
        ErrorCode::ClockSkew,
        ErrorCode::UdpStart,
        ErrorCode::DataTimeout,
        ErrorCode::PeerAborted,
        ErrorCode::Interrupted,
        ErrorCode::ControlTimeout,
        ErrorCode::UdpBlocked,
        ErrorCode::PathMtu,
        ErrorCode::DestinationMissing,
        ErrorCode::PermissionDenied,
        ErrorCode::OutsideDocroot,
        ErrorCode::InvalidPath,
        ErrorCode::SourceMissing,
        ErrorCode::DiskFull,
        ErrorCode::SourceVanished,
        ErrorCode::FileChanged,
        ErrorCode::ChecksumMismatch,
        ErrorCode::FileBusy,
        ErrorCode::Protocol,
        ErrorCode::BadRequest,
        ErrorCode::Io,
        ErrorCode::Internal,
    ];

    /// The stable number: 1x connection and trust, 2x the UDP session, 3x files and paths,
    /// 4x the protocol and requests, 5x local I/O, 99 a bug.
    pub const fn code(self) -> u32 {
        match self {
            ErrorCode::TcpConnect => 10,
            ErrorCode::NetworkUnreachable => 11,
            ErrorCode::Auth => 12,
            ErrorCode::Identity => 13,
            ErrorCode::HostKeyUnknown => 14,
            ErrorCode::HostKeyMismatch => 15,
            ErrorCode::NameResolution => 16,
            ErrorCode::ClockSkew => 17,
            ErrorCode::UdpStart => 20,
            ErrorCode::DataTimeout => 21,
            ErrorCode::PeerAborted => 22,
            ErrorCode::Interrupted => 23,
            ErrorCode::ControlTimeout => 24,
            ErrorCode::UdpBlocked => 25,
            ErrorCode::PathMtu => 26,
            ErrorCode::DestinationMissing => 30,
            ErrorCode::PermissionDenied => 31,
            ErrorCode::OutsideDocroot => 32,
            ErrorCode::InvalidPath => 33,
            ErrorCode::SourceMissing => 34,
            ErrorCode::DiskFull => 35,
            ErrorCode::SourceVanished => 36,
            ErrorCode::FileChanged => 37,
            ErrorCode::ChecksumMismatch => 38,
            ErrorCode::FileBusy => 39,
            ErrorCode::Protocol => 40,
            ErrorCode::BadRequest => 41,
            ErrorCode::Io => 50,
            ErrorCode::Internal => 99,
        }
    }

    /// The code with this number, if there is one.
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short stable name (`tcp_connect`), for logs and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::TcpConnect => "tcp_connect",
            ErrorCode::NetworkUnreachable => "network_unreachable",
            ErrorCode::Auth => "auth",
            ErrorCode::Identity => "identity",
            ErrorCode::HostKeyUnknown => "host_key_unknown",
            ErrorCode::HostKeyMismatch => "host_key_mismatch",
            ErrorCode::NameResolution => "name_resolution",
            ErrorCode::ClockSkew => "clock_skew",
            ErrorCode::UdpStart => "udp_start",
            ErrorCode::DataTimeout => "data_timeout",
            ErrorCode::PeerAborted => "peer_aborted",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::ControlTimeout => "control_timeout",
            ErrorCode::UdpBlocked => "udp_blocked",
            ErrorCode::PathMtu => "path_mtu",
            ErrorCode::DestinationMissing => "destination_missing",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::OutsideDocroot => "outside_docroot",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::SourceMissing => "source_missing",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::SourceVanished => "source_vanished",
            ErrorCode::FileChanged => "file_changed",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::FileBusy => "file_busy",
            ErrorCode::Protocol => "protocol",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Io => "io",
            ErrorCode::Internal => "internal",
        }
    }

    /// What went wrong, in one line, without the detail of this occurrence.
    pub const fn message(self) -> &'static str {
        match self {
            ErrorCode::TcpConnect => "could not open the TCP (SSH) connection to ferryd",
            ErrorCode::NetworkUnreachable => "the network or host is unreachable",
            ErrorCode::Auth => {
                "authentication failed: the server accepted none of the keys offered"
            }
            ErrorCode::Identity => "the private key could not be read or used",
            ErrorCode::HostKeyUnknown => "the server's host key is not in known_hosts",
            ErrorCode::HostKeyMismatch => {
                "the server's host key differs from the one recorded in known_hosts"
            }
            ErrorCode::NameResolution => "the host name could not be resolved",
            ErrorCode::ClockSkew => "the clocks of the two hosts differ too much",
            ErrorCode::UdpStart => "the UDP session could not start: no datagrams either way",
            ErrorCode::DataTimeout => "no UDP data arrived for longer than the data timeout",
            ErrorCode::PeerAborted => "the other side ended the session",
            ErrorCode::Interrupted => "the transfer was interrupted",
            ErrorCode::ControlTimeout => {
                "the control connection to ferryd stopped answering (SSH keepalives timed out)"
            }
            ErrorCode::UdpBlocked => "UDP datagrams on the data port do not get through",
            ErrorCode::PathMtu => "the network path drops datagrams as large as ferry's",
            ErrorCode::DestinationMissing => "the destination directory does not exist",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::OutsideDocroot => "the path leads outside the user's docroot",
            ErrorCode::InvalidPath => "a file name is not acceptable",
            ErrorCode::SourceMissing => "a source file or directory does not exist",
            ErrorCode::DiskFull => "no space left on the receiving disk",
            ErrorCode::SourceVanished => "a source file disappeared during the transfer",
            ErrorCode::FileChanged => "a source file changed during the transfer",
            ErrorCode::ChecksumMismatch => "a file's checksum did not match after the transfer",
            ErrorCode::FileBusy => "another transfer is receiving into the same file",
            ErrorCode::Protocol => "the client and server do not understand each other",
            ErrorCode::BadRequest => "the request is not valid",
            ErrorCode::Io => "an input/output error",
            ErrorCode::Internal => "an internal error (a bug in ferry)",
        }
    }

    /// The recommended action.
    pub const fn action(self) -> &'static str {
        match self {
            ErrorCode::TcpConnect => {
                "check that ferryd is running on the host and that a firewall allows the TCP \
                 port (-P, default 33001)"
            }
            ErrorCode::NetworkUnreachable => {
                "check the host name, the route to it and the local network configuration"
            }
            ErrorCode::Auth => {
                "add your public key to ferryd's authorized_keys with the user name as its \
                 comment, or name the right key with -i"
            }
            ErrorCode::Identity => {
                "check the key file named with -i (it must be an unencrypted OpenSSH private \
                 key), or load the key into ssh-agent"
            }
            ErrorCode::HostKeyUnknown => {
                "check the fingerprint with the server's operator, then run again with \
                 --accept-new to record it"
            }
            ErrorCode::HostKeyMismatch => {
                "ask the server's operator whether the host key was changed; if it was, remove \
                 the old line from known_hosts (ssh-keygen -R) and connect again"
            }
            ErrorCode::NameResolution => {
                "check the host name, and the resolver configuration (/etc/resolv.conf, \
                 /etc/hosts)"
            }
            ErrorCode::ClockSkew => {
                "synchronise both clocks with NTP (timedatectl set-ntp true, or chrony): \
                 --overwrite older and the transfer log compare times across hosts"
            }
            ErrorCode::UdpStart => {
                "allow the UDP port in both directions on every firewall between the hosts \
                 (ferry doctor HOST tells which way is blocked)"
            }
            ErrorCode::DataTimeout => {
                "check the network path and firewalls, then resume the transfer (-k 1 or more)"
            }
            ErrorCode::PeerAborted => {
                "look at the other side's log for why it stopped, then resume the transfer"
            }
            ErrorCode::Interrupted => {
                "run the same command again; incomplete files are kept as NAME.partial"
            }
            ErrorCode::ControlTimeout => {
                "check the network path to the host, then resume the transfer (--retry does \
                 it by itself)"
            }
            ErrorCode::UdpBlocked => {
                "allow the UDP data port (-O, default 33001) in the direction named on every \
                 firewall between the hosts"
            }
            ErrorCode::PathMtu => {
                "raise the MTU along the path (tunnels and VPNs often lower it), or let ICMP \
                 'fragmentation needed' messages through so the path MTU can be discovered"
            }
            ErrorCode::DestinationMissing => {
                "create the destination directory first, or name an existing one"
            }
            ErrorCode::PermissionDenied => {
                "check the ownership and permissions of the file or directory named"
            }
            ErrorCode::OutsideDocroot => {
                "use a path inside your docroot, without `..` or links that lead out of it"
            }
            ErrorCode::InvalidPath => {
                "rename the file so that its name has no control characters or empty parts"
            }
            ErrorCode::SourceMissing => "check the source path (it is relative to your docroot)",
            ErrorCode::DiskFull => "free space on the receiving disk, then resume the transfer",
            ErrorCode::SourceVanished => "check what removed the file, then transfer it again",
            ErrorCode::FileChanged => {
                "transfer the file again once nothing is writing to it any more"
            }
            ErrorCode::ChecksumMismatch => "transfer the file again (resume level 0 re-sends it)",
            ErrorCode::FileBusy => {
                "wait for the other transfer to end (ferryctl sessions lists it), then resume"
            }
            ErrorCode::Protocol => "use the same ferry version on both sides",
            ErrorCode::BadRequest => "check the options given (see ferry --help)",
            ErrorCode::Io => "check the file system and the path named",
            ErrorCode::Internal => "report a bug with the log of both sides",
        }
    }

    /// The code for an I/O error, where one says more than [`ErrorCode::Io`].
    pub fn from_io(err: &io::Error) -> ErrorCode {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => return ErrorCode::DiskFull,
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
                return ErrorCode::NetworkUnreachable;
            }
            _ => {}
        }
        match err.kind() {
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::DiskFull,
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                ErrorCode::NetworkUnreachable
            }
            io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut => ErrorCode::TcpConnect,
            _ => ErrorCode::Io,
        }
    }

    /// One line for a person: `error 12 (auth): DETAIL. Action: ...`. An empty detail falls
    /// back to the code's own message.
    pub fn render(self, detail: &str) -> String {
        let detail = if detail.is_empty() {
            self.message()
        } else {
            detail
        };
        format!(
            "error {} ({}): {}. Action: {}",
            self.code(),
            self.name(),
            detail.trim_end_matches('.'),
            self.action()
        )
    }
}

/// The error catalogue as Markdown: every code, its name, what it means and what to do.
/// `docs/errors.md` is this text; a test fails when the two differ, so it cannot drift.
pub fn catalogue() -> String {
    let mut out = String::from(
        "# ferry's errors\n\n\
         Every failure ferry and ferryd report carries a stable number (for scripts: the \
         `code` field of `--json` output, never reused or renumbered), a name, a one-line \
         message and a recommended action. Generated from `engine/src/control/errors.rs` \
         by `FERRY_BLESS=1 cargo test -p ferry-engine --test errors_doc`.\n\n\
         | code | name | meaning | what to do |\n|---:|---|---|---|\n",
    );
    for c in ErrorCode::ALL {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            c.code(),
            c.name(),
            c.message(),
            c.action()
        ));
    }
    out
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure of the control plane: a code and the detail of this occurrence.
pub type ControlError = (ErrorCode, String);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbers_and_names_are_unique_and_round_trip() {
        let mut numbers = HashSet::new();
        let mut names = HashSet::new();
        for c in ErrorCode::ALL {
            assert!(numbers.insert(c.code()), "duplicate number {}", c.code());
            assert!(names.insert(c.name()), "duplicate name {}", c.name());
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!(!c.message().is_empty() && !c.action().is_empty());
            assert!(!c.message().contains('\n') && !c.action().contains('\n'));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
        }
        assert_eq!(ErrorCode::from_code(0), None);
    }

    #[test]
    fn numbers_are_stable() {
        // These numbers are a promise to scripts; this test fails if one moves.
        assert_eq!(ErrorCode::TcpConnect.code(), 10);
        assert_eq!(ErrorCode::Auth.code(), 12);
        assert_eq!(ErrorCode::HostKeyMismatch.code(), 15);
        assert_eq!(ErrorCode::UdpStart.code(), 20);
        assert_eq!(ErrorCode::DiskFull.code(), 35);
        assert_eq!(ErrorCode::Internal.code(), 99);
    }

    #[test]
    fn io_errors_map_to_codes() {
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(ErrorCode::from_io(&e), ErrorCode::DiskFull);
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(ErrorCode::from_io(&e), ErrorCode::PermissionDenied);
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(ErrorCode::from_io(&e), ErrorCode::TcpConnect);
        let e = io::Error::other("x");
        assert_eq!(ErrorCode::from_io(&e), ErrorCode::Io);
    }

    #[test]
    fn render_is_one_line_with_action() {
        let s = ErrorCode::UdpStart.render("no datagrams on UDP port 33001 within 5 s");
        assert!(s.starts_with("error 20 (udp_start): no datagrams on UDP port 33001"));
        assert!(s.contains("Action: allow the UDP port"));
        assert!(!s.contains('\n'));
    }
}
