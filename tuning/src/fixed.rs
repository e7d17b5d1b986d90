//! `fixed`: the operator has chosen the rate; the path is not consulted.

use core::time::Duration;

use crate::Timestamp;
use crate::controller::{Controller, PathSignal, RateLimits};

/// Sends at the target rate, ignoring delay and loss (RFC 8085 leaves this to the operator).
#[derive(Clone, Debug)]
pub struct Fixed {
    limits: RateLimits,
}

impl Fixed {
    /// A controller pinned to `limits.target_bps`.
    pub fn new(limits: RateLimits) -> Self {
        Fixed { limits }
    }
}

impl Controller for Fixed {
    fn on_sent(&mut self, _now: Timestamp, _bytes: usize) {}
    fn on_feedback(&mut self, _now: Timestamp, _signal: &PathSignal) {}
    fn on_silence(&mut self, _now: Timestamp, _since: Duration) {}
    fn set_limits(&mut self, limits: RateLimits) {
        self.limits = limits;
    }
    fn limits(&self) -> RateLimits {
        self.limits
    }
    fn rate(&self) -> f64 {
        self.limits.target_bps as f64 / 8.0
    }
    fn phase(&self) -> &'static str {
        "fixed"
    }
}
