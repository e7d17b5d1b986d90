//! What each data lane has done since it started: counters and latency histograms
//! (hdrhistogram), for `ferryctl stats` and the Prometheus endpoint.
//!
//! The lane's thread owns a [`LaneStats`] and records into it without locks or atomics;
//! about once a second it publishes a copy behind a mutex that readers clone. Sessions
//! that end fold their totals into the lane's, so the counters only grow.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies a lane records, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Latency {
    /// Each round-trip sample a sending session takes from feedback.
    FeedbackRtt,
    /// The queueing delay a sending session's controller sees, at each feedback.
    QueueDelay,
    /// One positioned read of a block from the source file.
    DiskRead,
    /// One positioned write of a block into `NAME.partial`.
    DiskWrite,
    /// A block's first departure until the receiver held it and all before it (sampled,
    /// sending side).
    BlockDelivery,
}

impl Latency {
    /// Every kind, in display order.
    pub const ALL: [Latency; 5] = [
        Latency::FeedbackRtt,
        Latency::QueueDelay,
        Latency::DiskRead,
        Latency::DiskWrite,
        Latency::BlockDelivery,
    ];

    /// Stable name for scripts and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Latency::FeedbackRtt => "feedback_rtt",
            Latency::QueueDelay => "queue_delay",
            Latency::DiskRead => "disk_read",
            Latency::DiskWrite => "disk_write",
            Latency::BlockDelivery => "block_delivery",
        }
    }
}

/// Totals of one lane, including the sessions that have ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Sessions started and ended.
    pub sessions_started: u64,
    /// Sessions that ended (well or not).
    pub sessions_ended: u64,
    /// Of them, the ones that ended with an error.
    pub sessions_failed: u64,
    /// Payload delivered by sessions this host sends.
    pub bytes_sent: u64,
    /// Payload delivered to sessions this host receives.
    pub bytes_received: u64,
    /// UDP payload bytes sent, all kinds.
    pub wire_bytes_sent: u64,
    /// Payload bytes sent again (NACKs, probes, tail copies).
    pub retransmitted_bytes: u64,
    /// Inbound datagrams dropped, by reason.
    pub drops: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counters) {
        self.sessions_started += other.sessions_started;
        self.sessions_ended += other.sessions_ended;
        self.sessions_failed += other.sessions_failed;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.wire_bytes_sent += other.wire_bytes_sent;
        self.retransmitted_bytes += other.retransmitted_bytes;
        for (k, v) in &other.drops {
            *self.drops.entry(k).or_default() += v;
        }
    }
}

/// One lane's record: counters, busy time and latency histograms.
#[derive(Clone, Debug)]
pub struct LaneStats {
    /// The core the lane's thread is pinned to, if any.
    pub core: Option<usize>,
    /// Its UDP port.
    pub port: u16,
    /// Totals of the sessions that ended; [`LaneStats::live`] holds the running ones'.
    pub ended: Counters,
    /// Totals of the sessions running at the last publication.
    pub live: Counters,
    /// Time since the lane started.
    pub uptime: Duration,
    /// Of it, time the thread spent working rather than asleep waiting for datagrams.
    pub busy: Duration,
    histograms: Vec<(Latency, Histogram<u64>)>,
}

impl LaneStats {
    /// An empty record for the lane on `core` (if pinned) and `port`.
    pub fn new(core: Option<usize>, port: u16) -> Self {
        let histograms = Latency::ALL
            .iter()
            // 1 µs to an hour at 2 significant digits: a few KiB each.
            .map(|&l| {
                let h = Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds");
                (l, h)
            })
            .collect();
        LaneStats {
            core,
            port,
            ended: Counters::default(),
            live: Counters::default(),
            uptime: Duration::ZERO,
            busy: Duration::ZERO,
            histograms,
        }
    }

    /// Records one latency.
    pub fn record(&mut self, what: Latency, value: Duration) {
        let us = (value.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Some((_, h)) = self.histograms.iter_mut().find(|(l, _)| *l == what) {
            // Saturated above: the bound is an hour.
            let _ = h.record(us);
        }
    }

    /// The totals, ended and running sessions together.
    pub fn totals(&self) -> Counters {
        let mut t = self.ended.clone();
        t.add(&self.live);
        t
    }

    /// Percentiles of each latency recorded so far.
    pub fn latencies(&self) -> Vec<Percentiles> {
        self.histograms
            .iter()
            .map(|(l, h)| Percentiles {
                name: l.name(),
                count: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p90_us: h.value_at_quantile(0.9),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
            })
            .collect()
    }
}

/// A latency's distribution, microseconds (zeros when nothing was recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Percentiles {
    /// [`Latency::name`].
    pub name: &'static str,
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_what_was_recorded() {
        let mut s = LaneStats::new(Some(1), 33001);
        for ms in 1..=100 {
            s.record(Latency::DiskWrite, Duration::from_millis(ms));
        }
        let w = s
            .latencies()
            .into_iter()
            .find(|p| p.name == "disk_write")
            .unwrap();
        assert_eq!(w.count, 100);
        // Two significant digits: within 1 %.
        assert!((49_500..=50_500).contains(&w.p50_us), "{w:?}");
        assert!((98_000..=100_500).contains(&w.p99_us), "{w:?}");
        let r = s
            .latencies()
            .into_iter()
            .find(|p| p.name == "disk_read")
            .unwrap();
        assert_eq!((r.count, r.max_us), (0, 0));
    }

    #[test]
    fn totals_add_ended_and_live_sessions() {
        let mut s = LaneStats::new(None, 1);
        s.ended.bytes_sent = 10;
        s.ended.drops.insert("auth", 2);
        s.live.bytes_sent = 5;
        s.live.drops.insert("auth", 1);
        s.live.drops.insert("replay", 4);
        let t = s.totals();
        assert_eq!(t.bytes_sent, 15);
        assert_eq!(t.drops.get("auth"), Some(&3));
        assert_eq!(t.drops.get("replay"), Some(&4));
    }
}
