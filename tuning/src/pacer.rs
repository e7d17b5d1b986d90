//! Turning a rate into departure times.

use crate::Timestamp;

/// Spaces datagrams at the controller's rate, in short back-to-back bursts.
///
/// Bursts are deliberate: a burst of `burst` datagrams leaves the bottleneck spaced by its
/// service time, which is how the receiver measures capacity (packet-pair dispersion), and
/// on a real host they are what GSO sends in one system call anyway. The average rate is
/// exact: a burst starts only when the credit for all of it has accrued.
#[derive(Clone, Debug)]
pub struct Pacer {
    burst: u32,
    left_in_burst: u32,
    credit: f64,
    last: Option<Timestamp>,
}

impl Pacer {
    /// A pacer sending `burst` datagrams back to back (at least 1).
    pub fn new(burst: u32) -> Self {
        Pacer {
            burst: burst.max(1),
            left_in_burst: 0,
            credit: 0.0,
            last: None,
        }
    }

    fn accrue(&self, now: Timestamp, rate: f64, len: usize) -> f64 {
        // Credit may build up to two bursts, or a millisecond at the rate: a sender woken a
        // little late (timers, scheduling) catches up instead of losing the time.
        let cap = (2.0 * f64::from(self.burst) * len as f64).max(rate * 1e-3);
        match self.last {
            None => f64::from(self.burst) * len as f64,
            Some(last) => (self.credit + now.saturating_since(last).as_secs_f64() * rate).min(cap),
        }
    }

    /// The earliest time a datagram of `len` bytes may leave at `rate` bytes per second.
    pub fn earliest_departure(&self, now: Timestamp, rate: f64, len: usize) -> Timestamp {
        if self.left_in_burst > 0 {
            return now;
        }
        let need = f64::from(self.burst) * len as f64;
        let credit = self.accrue(now, rate, len);
        if credit >= need || rate <= 0.0 {
            return now;
        }
        now + core::time::Duration::from_secs_f64((need - credit) / rate)
    }

    /// Records a departure at `now`; returns whether it opened a new burst.
    pub fn on_sent(&mut self, now: Timestamp, rate: f64, len: usize) -> bool {
        self.credit = self.accrue(now, rate, len);
        self.last = Some(now);
        let opened = self.left_in_burst == 0;
        if opened {
            self.left_in_burst = self.burst;
        }
        self.left_in_burst -= 1;
        self.credit -= len as f64;
        opened
    }

    /// Ends the current burst early (nothing more to send right now), so the next datagram
    /// waits for credit again rather than leaving back to back with an old burst.
    pub fn end_burst(&mut self) {
        self.left_in_burst = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_rate_is_exact() {
        let mut p = Pacer::new(4);
        let rate = 1.0e6; // bytes per second
        let mut now = Timestamp::ZERO;
        let mut sent = 0u64;
        let end = Timestamp::from_nanos(1_000_000_000);
        while now < end {
            now = p.earliest_departure(now, rate, 1000).max(now);
            if now >= end {
                break;
            }
            p.on_sent(now, rate, 1000);
            sent += 1000;
        }
        // The first burst leaves at once; after that exactly `rate`.
        assert!((sent as f64 - rate).abs() <= 4000.0 + 1000.0, "{sent}");
    }

    #[test]
    fn bursts_leave_back_to_back() {
        let mut p = Pacer::new(4);
        let now = Timestamp::from_nanos(5_000_000_000);
        assert!(p.on_sent(now, 1e6, 1000));
        for _ in 0..3 {
            assert_eq!(p.earliest_departure(now, 1e6, 1000), now);
            assert!(!p.on_sent(now, 1e6, 1000));
        }
        assert!(p.earliest_departure(now, 1e6, 1000) > now);
    }
}
