//! What sender and receiver share: opening inbound datagrams, counting drops, RTT, failures.

use core::time::Duration;

use crate::Error;
use crate::crypto::{Aead, PacketKey};
use crate::replay::ReplayWindow;
use crate::wire::{self, Packet};

/// Why a session ended badly. Failures are values handed out through events, never panics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure, stable for scripts.
    pub code: FailureCode,
    /// One line for a person.
    pub reason: String,
}

/// The kinds of session failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// No datagram from the peer within the data timeout.
    DataTimeout,
    /// The peer closed the session before it completed.
    PeerAborted,
    /// The peer sent something the protocol does not allow.
    Protocol,
    /// The caller reported a failed disk read.
    ReadFailed,
    /// The caller reported a failed disk write.
    WriteFailed,
    /// Cancelled locally.
    Cancelled,
}

impl FailureCode {
    /// The close code sent to the peer for this failure.
    pub fn close_code(self) -> u16 {
        match self {
            FailureCode::DataTimeout => wire::close_code::DATA_TIMEOUT,
            FailureCode::Cancelled => wire::close_code::CANCELLED,
            FailureCode::Protocol | FailureCode::PeerAborted => wire::close_code::PROTOCOL_ERROR,
            FailureCode::ReadFailed | FailureCode::WriteFailed => wire::close_code::IO_ERROR,
        }
    }
}

/// Datagrams dropped on the way in, by reason. Nothing dropped here reaches the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Indexed by [`Error::index`].
    by_error: [u64; Error::COUNT],
    /// Authenticated, but for another session.
    pub wrong_session: u64,
    /// Well formed and authentic, but of a kind this side never receives.
    pub unexpected_kind: u64,
}

impl DropCounters {
    /// Drops for one decode or authentication error.
    pub fn get(&self, e: Error) -> u64 {
        self.by_error[e.index()]
    }

    /// Every drop.
    pub fn total(&self) -> u64 {
        self.by_error.iter().sum::<u64>() + self.wrong_session + self.unexpected_kind
    }

    /// `(reason, count)` for each non-zero reason.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = Error::ALL
            .iter()
            .filter(|e| self.get(**e) > 0)
            .map(|e| (e.as_str(), self.get(*e)))
            .collect();
        if self.wrong_session > 0 {
            v.push(("wrong_session", self.wrong_session));
        }
        if self.unexpected_kind > 0 {
            v.push(("unexpected_kind", self.unexpected_kind));
        }
        v
    }
}

/// The inbound half of a session: authenticate, decode, check the session and replay.
pub(crate) struct Inbound<A: Aead> {
    key: PacketKey<A>,
    replay: ReplayWindow,
    session: u32,
    pub(crate) drops: DropCounters,
}

impl<A: Aead> Inbound<A> {
    pub(crate) fn new(key: PacketKey<A>, session: u32) -> Self {
        Inbound {
            key,
            replay: ReplayWindow::new(),
            session,
            drops: DropCounters::default(),
        }
    }

    /// Opens `datagram` in place; `None` (and a count) if it must be dropped.
    pub(crate) fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Option<Packet<'a>> {
        let result = self
            .key
            .open(datagram)
            .and_then(|n| wire::parse(&datagram[..n]));
        let packet = match result {
            Ok(p) => p,
            Err(e) => {
                self.drops.by_error[e.index()] += 1;
                return None;
            }
        };
        let header = packet.header();
        if header.session != self.session {
            self.drops.wrong_session += 1;
            return None;
        }
        if let Err(e) = self.replay.check_and_mark(header.pn) {
            self.drops.by_error[e.index()] += 1;
            return None;
        }
        Some(packet)
    }

    pub(crate) fn unexpected(&mut self) {
        self.drops.unexpected_kind += 1;
    }
}

/// Round-trip estimation as RFC 6298 does it, plus the least sample seen.
#[derive(Clone, Copy, Debug)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Duration,
    initial: Duration,
    latest: Option<Duration>,
    samples: u64,
}

impl RttEstimator {
    /// An estimator answering `initial` until the first sample.
    pub fn new(initial: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: initial / 2,
            min: Duration::MAX,
            initial,
            latest: None,
            samples: 0,
        }
    }

    /// Adds a sample.
    pub fn update(&mut self, sample: Duration) {
        self.min = self.min.min(sample);
        self.latest = Some(sample);
        self.samples += 1;
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    /// Smoothed RTT (the initial guess before any sample).
    pub fn srtt(&self) -> Duration {
        self.srtt.unwrap_or(self.initial)
    }

    /// RTT variation.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Least sample (the initial guess before any sample).
    pub fn min(&self) -> Duration {
        if self.min == Duration::MAX {
            self.initial
        } else {
            self.min
        }
    }

    /// Whether any sample arrived.
    pub fn has_samples(&self) -> bool {
        self.srtt.is_some()
    }

    /// The last sample, if any.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// How many samples arrived (a caller that records each one compares counts).
    pub fn samples(&self) -> u64 {
        self.samples
    }
}
