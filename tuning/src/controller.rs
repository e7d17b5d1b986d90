//! The contract between a session and its rate controller.

use core::time::Duration;

use crate::Timestamp;

/// The four policies an operator can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Send at the target rate whatever the path says; the operator's explicit choice.
    Fixed,
    /// Delay-based like `Fair`, but claims about twice a fair share under congestion.
    High,
    /// Delay-based: shares evenly with other flows, holds its own against TCP.
    Fair,
    /// A scavenger: uses spare capacity only, falls to the minimum rate under contention.
    Low,
}

impl Policy {
    /// The policy's name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fixed => "fixed",
            Policy::High => "high",
            Policy::Fair => "fair",
            Policy::Low => "low",
        }
    }
}

impl core::str::FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed" => Ok(Policy::Fixed),
            "high" => Ok(Policy::High),
            "fair" => Ok(Policy::Fair),
            "low" => Ok(Policy::Low),
            _ => Err(UnknownPolicy),
        }
    }
}

impl core::fmt::Display for Policy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of `fixed`, `high`, `fair`, `low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownPolicy;

impl core::fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("unknown policy (expected fixed, high, fair or low)")
    }
}

impl std::error::Error for UnknownPolicy {}

/// Target and minimum rate, in bits per second. They may change at any moment; a controller
/// applies a change to the very next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// The most the session may send.
    pub target_bps: u64,
    /// The least it sends while the path is alive, congestion or not.
    pub min_bps: u64,
}

impl RateLimits {
    /// Limits with `min_bps` clamped to `target_bps`.
    pub fn new(target_bps: u64, min_bps: u64) -> Self {
        RateLimits {
            target_bps: target_bps.max(1),
            min_bps: min_bps.min(target_bps.max(1)),
        }
    }

    /// Clamps a rate in bytes per second into the limits.
    pub fn clamp_bytes(&self, rate: f64) -> f64 {
        rate.clamp(self.min_bps as f64 / 8.0, self.target_bps as f64 / 8.0)
    }
}

/// What one receiver feedback says about the path, already reduced by the session.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathSignal {
    /// Least one-way delay (receiver clock minus sender stamp, so offset by an unknown
    /// constant) over the feedback interval, in microseconds. Only differences matter.
    pub owd_us: Option<i64>,
    /// Smoothed round-trip time measured by the session.
    pub srtt: Duration,
    /// Least round-trip time measured by the session.
    pub min_rtt: Duration,
    /// Payload bytes per second the receiver took in since the previous feedback.
    pub delivery_rate: Option<f64>,
    /// Bottleneck capacity estimate from burst dispersion, bytes per second.
    pub capacity: Option<f64>,
    /// Bytes newly reported lost (first NACK of a block) by this feedback.
    pub lost_bytes: u64,
    /// Payload bytes newly accepted by the receiver since the previous feedback.
    pub delivered_bytes: u64,
}

/// A rate controller: events in, each stamped with `now`; a pacing rate out.
///
/// Controllers are deterministic and never read a clock. The session calls
/// [`on_feedback`](Self::on_feedback) for every receiver feedback,
/// [`on_sent`](Self::on_sent) for every datagram, and [`on_silence`](Self::on_silence) when
/// feedback stops arriving; it asks [`rate`](Self::rate) before every datagram.
pub trait Controller {
    /// A datagram of `bytes` left at `now`.
    fn on_sent(&mut self, now: Timestamp, bytes: usize);
    /// A receiver feedback arrived.
    fn on_feedback(&mut self, now: Timestamp, signal: &PathSignal);
    /// No feedback for `since`: the path may be gone or badly congested. Controllers back off
    /// toward the minimum rather than keep sending blind.
    fn on_silence(&mut self, now: Timestamp, since: Duration);
    /// New target and minimum; effective for the next datagram.
    fn set_limits(&mut self, limits: RateLimits);
    /// The current limits.
    fn limits(&self) -> RateLimits;
    /// The pacing rate in bytes per second, within the limits.
    fn rate(&self) -> f64;
    /// Bytes the session may have in flight (sent, neither received nor reported lost), or
    /// `None` for no limit. A session below its minimum rate sends regardless.
    fn window(&self) -> Option<f64> {
        None
    }
    /// The latest queueing-delay estimate, for traces and `ferryctl`.
    fn queue_delay(&self) -> Option<Duration> {
        None
    }
    /// A short name of the controller's internal state, for traces.
    fn phase(&self) -> &'static str {
        ""
    }
}
