//! One direction of the emulated link, sans-IO: a drop-tail bottleneck serialised at a
//! fixed rate, then wire loss, then propagation delay with jitter and optional reordering.
//!
//! Time is nanoseconds from an epoch the caller chooses; the link never reads a clock.
//! Packets are opaque items (`T`) with a length: the caller keeps the bytes, the link keeps
//! their fate and release time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::loss::{Loss, LossState};
use crate::rng::Rng;

/// Nanoseconds from the caller's epoch.
pub type Nanos = u64;

/// Most packets a link holds in its delay line, whatever the settings: a guard against an
/// unlimited rate with a long delay eating the host's memory.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// What one direction of the link does to packets.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ± this (never below zero). Without
    /// reordering the link stays FIFO, so a packet never overtakes the one before it.
    pub jitter: Duration,
    /// Wire loss, drawn per packet after the bottleneck.
    pub loss: Loss,
    /// Bottleneck rate in bits per second of IP packet bytes; 0 means unlimited.
    pub rate_bps: u64,
    /// Drop-tail queue before the bottleneck, as time at the link rate.
    pub queue: Duration,
    /// Probability that a packet is held back by [`LinkConfig::reorder_gap`] so that later
    /// ones overtake it.
    pub reorder: f64,
    /// How much longer a reordered packet takes.
    pub reorder_gap: Duration,
    /// Seed of the loss, jitter and reordering draws.
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            rate_bps: 0,
            queue: Duration::from_millis(100),
            reorder: 0.0,
            reorder_gap: Duration::from_millis(1),
            seed: 1,
        }
    }
}

/// Why the link dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The bottleneck queue was full (congestion).
    Queue,
    /// Lost on the wire (the loss model).
    Wire,
    /// The delay line already holds [`MAX_IN_FLIGHT`] packets.
    Overflow,
}

/// Counters of one link direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets handed to the link.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Dropped because the queue was full.
    pub dropped_queue: u64,
    /// Lost on the wire.
    pub dropped_wire: u64,
    /// Dropped because the delay line was at its limit.
    pub dropped_overflow: u64,
    /// Held back to be overtaken.
    pub reordered: u64,
    /// Released at the far end.
    pub released: u64,
}

struct Pending<T> {
    at: Nanos,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Pending<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest release must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One direction of the emulated link.
pub struct Link<T> {
    cfg: LinkConfig,
    rng: Rng,
    loss: LossState,
    /// When the bottleneck finishes serialising everything it holds.
    busy_until: Nanos,
    /// Release time of the last in-order packet (FIFO under jitter).
    last_release: Nanos,
    seq: u64,
    pending: BinaryHeap<Pending<T>>,
    stats: LinkStats,
}

fn nanos(d: Duration) -> Nanos {
    d.as_nanos().min(u128::from(u64::MAX)) as Nanos
}

impl<T> Link<T> {
    /// An empty link.
    pub fn new(cfg: LinkConfig) -> Link<T> {
        Link {
            rng: Rng::new(cfg.seed),
            loss: LossState::new(cfg.loss),
            busy_until: 0,
            last_release: 0,
            seq: 0,
            pending: BinaryHeap::new(),
            stats: LinkStats::default(),
            cfg,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Packets in the queue or on the wire.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Time to serialise `len` bytes at the link rate.
    fn tx_time(&self, len: usize) -> Nanos {
        if self.cfg.rate_bps == 0 {
            return 0;
        }
        ((len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(self.cfg.rate_bps))) as Nanos
    }

    /// A packet of `len` IP bytes enters the link at `now`. On a drop the item comes back
    /// with the reason (so its buffer can be reused). Call [`Link::poll_timeout`] afterwards:
    /// the earliest release may have moved.
    pub fn handle_packet(&mut self, now: Nanos, len: usize, item: T) -> Result<(), (T, Drop)> {
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        if self.pending.len() >= MAX_IN_FLIGHT {
            self.stats.dropped_overflow += 1;
            return Err((item, Drop::Overflow));
        }
        let tx = self.tx_time(len);
        let backlog = self.busy_until.saturating_sub(now);
        // Drop-tail: the packet must fit behind what is queued. An empty queue always takes
        // one packet, however short the queue setting.
        if backlog > 0 && backlog + tx > nanos(self.cfg.queue) {
            self.stats.dropped_queue += 1;
            return Err((item, Drop::Queue));
        }
        self.busy_until = self.busy_until.max(now) + tx;
        let departed = self.busy_until;
        if self.loss.lose(&mut self.rng) {
            self.stats.dropped_wire += 1;
            return Err((item, Drop::Wire));
        }
        let mut at = departed + nanos(self.cfg.delay);
        let jitter = nanos(self.cfg.jitter);
        if jitter > 0 {
            let offset = (self.rng.f64() * (2 * jitter) as f64) as Nanos;
            at = (at + offset).saturating_sub(jitter).max(departed);
        }
        if self.cfg.reorder > 0.0 && self.rng.chance(self.cfg.reorder) {
            self.stats.reordered += 1;
            at = at.max(self.last_release) + nanos(self.cfg.reorder_gap);
        } else {
            at = at.max(self.last_release);
            self.last_release = at;
        }
        self.seq += 1;
        self.pending.push(Pending {
            at,
            seq: self.seq,
            item,
        });
        Ok(())
    }

    /// The next packet due at or before `now`, in release order. Poll until `None`.
    pub fn poll_release(&mut self, now: Nanos) -> Option<T> {
        if self.pending.peek()?.at > now {
            return None;
        }
        self.stats.released += 1;
        self.pending.pop().map(|p| p.item)
    }

    /// When the next packet is due, if any is held.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.pending.peek().map(|p| p.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Nanos = 1_000_000;

    fn drain(link: &mut Link<u32>) -> Vec<(Nanos, u32)> {
        let mut out = Vec::new();
        while let Some(t) = link.poll_timeout() {
            out.push((t, link.poll_release(t).unwrap()));
        }
        out
    }

    #[test]
    fn delay_only() {
        let mut l = Link::new(LinkConfig {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
        l.handle_packet(10 * MS, 100, 1).unwrap();
        assert_eq!(l.poll_release(59 * MS), None);
        assert_eq!(l.poll_timeout(), Some(60 * MS));
        assert_eq!(l.poll_release(60 * MS), Some(1));
    }

    #[test]
    fn rate_spaces_packets_and_queue_drops_tail() {
        // 12 Mbit/s: a 1500-byte packet takes 1 ms; the queue holds 10 ms.
        let mut l = Link::new(LinkConfig {
            rate_bps: 12_000_000,
            queue: Duration::from_millis(10),
            ..Default::default()
        });
        let accepted = (0..20)
            .filter(|i| l.handle_packet(0, 1500, *i).is_ok())
            .count();
        // Ten fit in 10 ms of queue (the first one counts as being serialised).
        assert_eq!(accepted, 10);
        assert_eq!(l.stats().dropped_queue, 10);
        let times: Vec<Nanos> = drain(&mut l).iter().map(|o| o.0).collect();
        assert_eq!(times, (1..=10).map(|k| k * MS).collect::<Vec<_>>());
    }

    #[test]
    fn random_loss_rate() {
        let mut l = Link::new(LinkConfig {
            loss: Loss::Random(0.01),
            ..Default::default()
        });
        for i in 0..200_000u32 {
            let _ = l.handle_packet(u64::from(i), 1000, i);
        }
        let lost = l.stats().dropped_wire as f64 / 200_000.0;
        assert!((lost - 0.01).abs() < 0.001, "{lost}");
    }

    #[test]
    fn reordering_lets_later_packets_overtake() {
        let mut l = Link::new(LinkConfig {
            delay: Duration::from_millis(5),
            reorder: 0.2,
            ..Default::default()
        });
        for i in 0..1000u32 {
            l.handle_packet(u64::from(i) * 10_000, 100, i).unwrap();
        }
        let out: Vec<u32> = drain(&mut l).into_iter().map(|o| o.1).collect();
        assert_eq!(out.len(), 1000);
        assert!(out.windows(2).any(|w| w[0] > w[1]));
        assert!(l.stats().reordered > 100);
    }

    proptest! {
        /// Whatever the settings: every accepted packet is released once, in order (no
        /// reordering asked), never before its delay, and never faster than the rate.
        #[test]
        fn link_invariants(
            delay_ms in 0u64..100,
            jitter_ms in 0u64..20,
            rate_mbps in 0u64..1000,
            queue_ms in 1u64..50,
            loss in 0.0f64..0.2,
            arrivals in proptest::collection::vec((0u64..200_000, 40usize..1500), 1..400),
        ) {
            let mut l = Link::new(LinkConfig {
                delay: Duration::from_millis(delay_ms),
                jitter: Duration::from_millis(jitter_ms),
                rate_bps: rate_mbps * 1_000_000,
                queue: Duration::from_millis(queue_ms),
                loss: Loss::Random(loss),
                ..Default::default()
            });
            let mut now = 0;
            let mut sent = Vec::new();
            for (i, (gap, len)) in arrivals.iter().enumerate() {
                now += gap;
                if l.handle_packet(now, *len, i as u32).is_ok() {
                    sent.push((now, *len, i as u32));
                }
            }
            let out = drain(&mut l);
            let ids: Vec<u32> = out.iter().map(|o| o.1).collect();
            let want: Vec<u32> = sent.iter().map(|s| s.2).collect();
            prop_assert_eq!(ids, want);
            let floor = delay_ms.saturating_sub(jitter_ms) * MS;
            for ((at, _), (t0, _, _)) in out.iter().zip(&sent) {
                prop_assert!(*at >= t0 + floor);
            }
            if rate_mbps > 0 && !sent.is_empty() {
                // Serialising the accepted bytes takes at least bytes / rate (in ns).
                let bytes: u128 = sent.iter().map(|s| s.1 as u128).sum();
                let serialise = (bytes * 8 * 1000 / u128::from(rate_mbps)) as u64;
                prop_assert!(out.last().unwrap().0 >= sent[0].0 + serialise + floor);
            }
        }
    }
}
