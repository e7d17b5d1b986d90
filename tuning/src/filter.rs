//! Small windowed estimators shared by the controllers.

use core::time::Duration;

use crate::Timestamp;

/// The least one-way delay seen, kept as LEDBAT (RFC 6817) keeps its base delay: one minimum
/// per bucket of time, the oldest bucket forgotten, so a route change or clock drift is
/// followed within `buckets × bucket` instead of poisoning the estimate forever.
#[derive(Clone, Debug)]
pub struct BaseDelay {
    bucket: Duration,
    mins: Vec<(Timestamp, i64)>,
    capacity: usize,
}

impl BaseDelay {
    /// `buckets` minima of `bucket` each.
    pub fn new(bucket: Duration, buckets: usize) -> Self {
        BaseDelay {
            bucket,
            mins: Vec::with_capacity(buckets),
            capacity: buckets.max(1),
        }
    }

    /// Adds a sample; returns the base delay (least sample in the window).
    pub fn update(&mut self, now: Timestamp, sample: i64) -> i64 {
        match self.mins.last_mut() {
            Some((start, min)) if now.saturating_since(*start) < self.bucket => {
                *min = (*min).min(sample);
            }
            _ => {
                if self.mins.len() == self.capacity {
                    self.mins.remove(0);
                }
                self.mins.push((now, sample));
            }
        }
        self.get().unwrap_or(sample)
    }

    /// The base delay, if any sample arrived.
    pub fn get(&self) -> Option<i64> {
        self.mins.iter().map(|&(_, m)| m).min()
    }
}

/// Running maximum over a sliding time window (BBR's bandwidth filter, simplified to the
/// three-sample form of Kathleen Nichols' algorithm).
#[derive(Clone, Debug)]
pub struct WindowedMax {
    window: Duration,
    samples: [(Timestamp, f64); 3],
    len: usize,
}

impl WindowedMax {
    /// A filter remembering the maximum over `window`.
    pub fn new(window: Duration) -> Self {
        WindowedMax {
            window,
            samples: [(Timestamp::ZERO, 0.0); 3],
            len: 0,
        }
    }

    /// Adds a sample taken at `now`.
    pub fn update(&mut self, now: Timestamp, value: f64) {
        if self.len == 0
            || value >= self.samples[0].1
            || now.saturating_since(self.samples[2].0) > self.window
        {
            self.samples = [(now, value); 3];
            self.len = 3;
            return;
        }
        if value >= self.samples[1].1 {
            self.samples[1] = (now, value);
            self.samples[2] = (now, value);
        } else if value >= self.samples[2].1 {
            self.samples[2] = (now, value);
        }
        // Age out the best sample when it leaves the window.
        if now.saturating_since(self.samples[0].0) > self.window {
            self.samples[0] = self.samples[1];
            self.samples[1] = self.samples[2];
            self.samples[2] = (now, value);
            if now.saturating_since(self.samples[0].0) > self.window {
                self.samples[0] = self.samples[1];
                self.samples[1] = self.samples[2];
            }
        } else if self.samples[1].0 == self.samples[0].0
            && now.saturating_since(self.samples[1].0) > self.window / 4
        {
            self.samples[1] = (now, value);
            self.samples[2] = (now, value);
        } else if self.samples[2].0 == self.samples[1].0
            && now.saturating_since(self.samples[2].0) > self.window / 2
        {
            self.samples[2] = (now, value);
        }
    }

    /// The maximum over the window, if any sample arrived.
    pub fn get(&self) -> Option<f64> {
        (self.len > 0).then_some(self.samples[0].1)
    }

    /// Forgets every sample.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_nanos(n * 1_000_000)
    }

    #[test]
    fn base_delay_forgets_old_minima() {
        let mut b = BaseDelay::new(Duration::from_secs(1), 3);
        assert_eq!(b.update(ms(0), 100), 100);
        assert_eq!(b.update(ms(500), 50), 50);
        assert_eq!(b.update(ms(1500), 80), 50);
        assert_eq!(b.update(ms(2500), 90), 50);
        // The bucket holding 50 falls out of the three-bucket window.
        assert_eq!(b.update(ms(3500), 95), 80);
    }

    #[test]
    fn windowed_max_follows_the_window() {
        let mut m = WindowedMax::new(Duration::from_secs(1));
        m.update(ms(0), 10.0);
        m.update(ms(100), 5.0);
        assert_eq!(m.get(), Some(10.0));
        m.update(ms(1200), 4.0);
        assert!(m.get().unwrap() <= 5.0);
        m.update(ms(1300), 7.0);
        assert_eq!(m.get(), Some(7.0));
    }
}
