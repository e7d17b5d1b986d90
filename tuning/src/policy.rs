//! One controller per policy, switchable while the session runs.

use core::time::Duration;

use crate::controller::{Controller, PathSignal, Policy, RateLimits};
use crate::delay::DelayBased;
use crate::fixed::Fixed;
use crate::{Timestamp, fair, high, low};

/// The controller of a session: an enum rather than a `Box<dyn Controller>` so the per-packet
/// calls are static.
#[derive(Clone, Debug)]
// One per session, never moved in the per-packet path: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum PolicyController {
    /// `fixed`.
    Fixed(Fixed),
    /// `high`, `fair` or `low`.
    Delay(Policy, DelayBased),
}

impl PolicyController {
    /// A controller for `policy` with datagrams of `mss` payload bytes.
    pub fn new(policy: Policy, limits: RateLimits, mss: usize) -> Self {
        match policy {
            Policy::Fixed => PolicyController::Fixed(Fixed::new(limits)),
            Policy::High => {
                PolicyController::Delay(policy, DelayBased::new(high::config(mss), limits))
            }
            Policy::Fair => {
                PolicyController::Delay(policy, DelayBased::new(fair::config(mss), limits))
            }
            Policy::Low => {
                PolicyController::Delay(policy, DelayBased::new(low::config(mss), limits))
            }
        }
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        match self {
            PolicyController::Fixed(_) => Policy::Fixed,
            PolicyController::Delay(p, _) => *p,
        }
    }

    /// Switches policy, keeping the limits; effective for the next datagram.
    pub fn set_policy(&mut self, policy: Policy, mss: usize) {
        if policy != self.policy() {
            *self = PolicyController::new(policy, self.limits(), mss);
        }
    }

    fn inner(&self) -> &dyn Controller {
        match self {
            PolicyController::Fixed(c) => c,
            PolicyController::Delay(_, c) => c,
        }
    }
}

macro_rules! dispatch_mut {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            PolicyController::Fixed($c) => $e,
            PolicyController::Delay(_, $c) => $e,
        }
    };
}

impl Controller for PolicyController {
    fn on_sent(&mut self, now: Timestamp, bytes: usize) {
        dispatch_mut!(self, c => c.on_sent(now, bytes))
    }
    fn on_feedback(&mut self, now: Timestamp, signal: &PathSignal) {
        dispatch_mut!(self, c => c.on_feedback(now, signal))
    }
    fn on_silence(&mut self, now: Timestamp, since: Duration) {
        dispatch_mut!(self, c => c.on_silence(now, since))
    }
    fn set_limits(&mut self, limits: RateLimits) {
        dispatch_mut!(self, c => c.set_limits(limits))
    }
    fn limits(&self) -> RateLimits {
        self.inner().limits()
    }
    fn rate(&self) -> f64 {
        match self {
            PolicyController::Fixed(c) => c.rate(),
            PolicyController::Delay(_, c) => c.rate(),
        }
    }
    fn window(&self) -> Option<f64> {
        match self {
            PolicyController::Fixed(c) => c.window(),
            PolicyController::Delay(_, c) => c.window(),
        }
    }
    fn queue_delay(&self) -> Option<Duration> {
        self.inner().queue_delay()
    }
    fn phase(&self) -> &'static str {
        self.inner().phase()
    }
}
