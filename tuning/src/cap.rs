//! A host-wide bandwidth cap shared by every session on every core.
//!
//! The cap is a token bucket in atomics. Sessions never touch it per datagram: each holds a
//! [`CapLease`] and draws tokens from the shared bucket in chunks (one compare-and-swap and
//! one fetch-sub per chunk), so cores do not contend in the per-packet path.

use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use core::time::Duration;
use std::sync::Arc;

use crate::Timestamp;

#[derive(Debug)]
struct Bucket {
    /// Cap in bytes per second; `u64::MAX` is uncapped.
    rate: AtomicU64,
    /// Tokens in bytes; may go briefly negative while a draw is rolled back.
    tokens: AtomicI64,
    /// Time (ns) up to which tokens have been added.
    filled_to: AtomicU64,
    /// Most tokens the bucket holds (burst), bytes.
    depth: i64,
}

/// A shared aggregate cap (a "virtual link"). Clone it freely: clones share the bucket.
#[derive(Clone, Debug)]
pub struct HostCap {
    bucket: Arc<Bucket>,
}

impl HostCap {
    /// A cap of `rate_bps` bits per second (`None`: uncapped), holding at most `depth` bytes
    /// of burst.
    pub fn new(rate_bps: Option<u64>, depth: usize) -> Self {
        HostCap {
            bucket: Arc::new(Bucket {
                rate: AtomicU64::new(rate_bps.map_or(u64::MAX, |r| r / 8)),
                tokens: AtomicI64::new(depth as i64),
                filled_to: AtomicU64::new(0),
                depth: depth as i64,
            }),
        }
    }

    /// Changes the cap; sessions see it on their next draw.
    pub fn set_rate(&self, rate_bps: Option<u64>) {
        self.bucket
            .rate
            .store(rate_bps.map_or(u64::MAX, |r| r / 8), Ordering::Relaxed);
    }

    /// The cap in bits per second, if any.
    pub fn rate_bps(&self) -> Option<u64> {
        let r = self.bucket.rate.load(Ordering::Relaxed);
        (r != u64::MAX).then(|| r.saturating_mul(8))
    }

    /// A session's handle, drawing `chunk` bytes at a time.
    pub fn lease(&self, chunk: usize) -> CapLease {
        CapLease {
            cap: self.clone(),
            chunk: chunk as i64,
            local: 0,
        }
    }

    fn refill(&self, now: Timestamp, rate: u64) {
        let b = &self.bucket;
        let now_ns = now.as_nanos();
        let mut from = b.filled_to.load(Ordering::Relaxed);
        loop {
            if now_ns <= from {
                return;
            }
            match b.filled_to.compare_exchange_weak(
                from,
                now_ns,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => from = seen,
            }
        }
        // Only the thread that advanced `filled_to` adds the tokens for that span.
        let add = ((now_ns - from) as u128 * rate as u128 / 1_000_000_000) as i64;
        let prev = b.tokens.fetch_add(add, Ordering::AcqRel);
        if prev + add > b.depth {
            // Clip the overflow; a concurrent draw may have taken some meanwhile, which only
            // errs on the side of the cap.
            b.tokens
                .fetch_sub((prev + add - b.depth).min(add), Ordering::AcqRel);
        }
    }

    /// Takes `want` bytes; on failure returns how long until they could be there.
    fn draw(&self, now: Timestamp, want: i64) -> Result<(), Duration> {
        let rate = self.bucket.rate.load(Ordering::Relaxed);
        if rate == u64::MAX {
            return Ok(());
        }
        self.refill(now, rate);
        let prev = self.bucket.tokens.fetch_sub(want, Ordering::AcqRel);
        if prev >= want {
            return Ok(());
        }
        self.bucket.tokens.fetch_add(want, Ordering::AcqRel);
        let missing = (want - prev.max(0)) as f64;
        Err(Duration::from_secs_f64(missing / rate.max(1) as f64))
    }
}

/// One session's handle on a [`HostCap`].
#[derive(Clone, Debug)]
pub struct CapLease {
    cap: HostCap,
    chunk: i64,
    local: i64,
}

impl CapLease {
    /// Takes `bytes` for a datagram leaving at `now`, or says when to try again.
    pub fn try_take(&mut self, now: Timestamp, bytes: usize) -> Result<(), Timestamp> {
        let bytes = bytes as i64;
        if self.local >= bytes {
            self.local -= bytes;
            return Ok(());
        }
        let want = self.chunk.max(bytes - self.local);
        match self.cap.draw(now, want) {
            Ok(()) => {
                self.local += want - bytes;
                Ok(())
            }
            Err(wait) => Err(now + wait),
        }
    }

    /// The cap this lease draws from.
    pub fn cap(&self) -> &HostCap {
        &self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `sessions` leases greedily for one simulated second; returns bytes each got.
    fn run(cap: &HostCap, sessions: usize) -> Vec<u64> {
        let mut leases: Vec<_> = (0..sessions).map(|_| cap.lease(64 * 1024)).collect();
        let mut got = vec![0u64; sessions];
        let mut next = vec![Timestamp::ZERO; sessions];
        let end = Timestamp::from_nanos(1_000_000_000);
        loop {
            // Ties go to the session that has had least, as concurrent cores would interleave.
            let i = (0..sessions).min_by_key(|&i| (next[i], got[i])).unwrap();
            let t = next[i];
            if t >= end {
                break;
            }
            match leases[i].try_take(t, 8192) {
                Ok(()) => {
                    got[i] += 8192;
                    next[i] = t + Duration::from_micros(1);
                }
                Err(retry) => next[i] = retry.max(t + Duration::from_micros(1)),
            }
        }
        got
    }

    #[test]
    fn aggregate_holds_the_cap() {
        let cap = HostCap::new(Some(300_000_000), 256 * 1024);
        let got = run(&cap, 3);
        let total: u64 = got.iter().sum();
        let expect = 300e6 / 8.0;
        assert!(
            (total as f64) < expect * 1.02 + 256.0 * 1024.0 + 3.0 * 65536.0,
            "{total}"
        );
        assert!((total as f64) > expect * 0.95, "{total}");
        for g in &got {
            assert!(*g as f64 > expect / 3.0 * 0.7, "{got:?}");
        }
    }

    #[test]
    fn threads_share_without_exceeding() {
        let cap = HostCap::new(Some(80_000_000), 64 * 1024);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mut lease = cap.lease(16 * 1024);
                std::thread::spawn(move || {
                    let mut got = 0u64;
                    let mut t = Timestamp::ZERO;
                    while t < Timestamp::from_nanos(500_000_000) {
                        match lease.try_take(t, 1000) {
                            Ok(()) => got += 1000,
                            Err(retry) => t = retry,
                        }
                    }
                    got
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // 0.5 s at 10 MB/s, plus the initial depth and what leases hold locally.
        assert!(total <= 5_000_000 + 64 * 1024 + 4 * 16 * 1024, "{total}");
    }

    #[test]
    fn uncapped_never_waits() {
        let cap = HostCap::new(None, 0);
        let mut l = cap.lease(1);
        assert!(l.try_take(Timestamp::ZERO, 1 << 30).is_ok());
    }
}
