//! One direction of a simulated network path: a drop-tail bottleneck queue serialised at a fixed
//! rate, then random or bursty loss, propagation delay with jitter, reordering, duplication and
//! corruption.
//!
//! The queue is not stored: it is the interval between now and the departure time of the last
//! admitted byte. Each packet's delivery time is computed when it is sent and the packet goes
//! straight into a FIFO whose delivery times never decrease (or, when reordering hits it, into a
//! heap). Sending and delivering are O(1) (O(log n) for reordered packets), whatever the number of
//! packets in flight.

use core::cmp::Ordering;
use core::time::Duration;
use std::collections::{BinaryHeap, VecDeque};

use ferry_tuning::Timestamp;
use serde::Serialize;

use crate::rng::Rng;

/// A packet that can cross a [`Link`].
pub trait SimPacket: Sized {
    /// Size in bytes the packet occupies on the wire, before the link's
    /// [`LinkConfig::overhead_bytes`] are added.
    fn wire_len(&self) -> usize;

    /// Damage the packet (a ferry datagram: flip one random byte). Returns `false` if the damage
    /// makes the packet undeliverable, as when a checksum the receiver's stack verifies would
    /// discard it; the link then drops it.
    fn corrupt(&mut self, rng: &mut Rng) -> bool;

    /// A copy of the packet, for duplication.
    fn duplicate(&self) -> Self;
}

impl SimPacket for Vec<u8> {
    fn wire_len(&self) -> usize {
        self.len()
    }

    fn corrupt(&mut self, rng: &mut Rng) -> bool {
        if !self.is_empty() {
            let i = rng.below(self.len() as u64) as usize;
            // XOR with a non-zero value, so the byte really changes.
            self[i] ^= 1 + rng.below(255) as u8;
        }
        true
    }

    fn duplicate(&self) -> Self {
        self.clone()
    }
}

/// How packets are lost after they leave the bottleneck.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub enum LossModel {
    /// No random loss.
    #[default]
    None,
    /// Each packet is lost independently with this probability.
    Random(f64),
    /// A two-state Markov chain evaluated per packet: first the state moves (good to bad with
    /// `p_good_to_bad`, bad to good with `p_bad_to_good`), then the packet is lost with the
    /// state's loss probability.
    GilbertElliott {
        /// Probability per packet of moving from the good to the bad state.
        p_good_to_bad: f64,
        /// Probability per packet of moving from the bad to the good state.
        p_bad_to_good: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl LossModel {
    /// The long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Random(p) => p.clamp(0.0, 1.0),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let total = p_good_to_bad + p_bad_to_good;
                if total <= 0.0 {
                    // The chain never moves: it stays in its initial (good) state.
                    return loss_good;
                }
                let bad = p_good_to_bad / total;
                (1.0 - bad) * loss_good + bad * loss_bad
            }
        }
    }
}

/// The configuration of one link direction. The default is an ideal link: no delay, no loss,
/// infinite rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per packet. Order is preserved: a packet is
    /// never delivered before one sent earlier through the same link (unless reordered).
    pub jitter: Duration,
    /// Random or bursty loss, applied after the bottleneck.
    pub loss: LossModel,
    /// Bottleneck rate in bits per second; `None` is infinite (and means no queue). `Some(0)`
    /// carries nothing: every packet is dropped at the queue.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue capacity, as time at the link rate (bytes = rate × queue / 8). An empty
    /// link always admits one packet, whatever its size.
    pub queue: Duration,
    /// Bytes charged per packet on top of [`SimPacket::wire_len`] (28: IPv4 + UDP headers). They
    /// count toward the rate, the queue and the MTU.
    pub overhead_bytes: usize,
    /// Probability that a packet is held back an extra [`LinkConfig::reorder_delay`].
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a delivered copy is corrupted ([`SimPacket::corrupt`]).
    pub corrupt: f64,
    /// Largest packet (wire length + overhead) the link carries; larger ones are dropped.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: LossModel::None,
            rate_bps: None,
            queue: Duration::from_millis(100),
            overhead_bytes: 28,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            duplicate: 0.0,
            corrupt: 0.0,
            mtu: 65_535,
        }
    }
}

/// Counters of what a link did. Byte counts are wire bytes (including the overhead).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Packets handed to [`Link::send`].
    pub packets_sent: u64,
    /// Bytes handed to [`Link::send`].
    pub bytes_sent: u64,
    /// Packets that went through the bottleneck (consumed capacity), lost ones included.
    pub packets_serialised: u64,
    /// Bytes that went through the bottleneck, lost ones included.
    pub bytes_serialised: u64,
    /// Packets delivered at the far end (duplicates included).
    pub packets_delivered: u64,
    /// Bytes delivered at the far end (duplicates included).
    pub bytes_delivered: u64,
    /// Packets dropped because the queue was full.
    pub dropped_queue: u64,
    /// Packets dropped because they exceeded the MTU.
    pub dropped_mtu: u64,
    /// Packets lost by the loss model.
    pub lost: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies corrupted (delivered damaged, or dropped when [`SimPacket::corrupt`] says so).
    pub corrupted: u64,
    /// Corrupted copies the link dropped because [`SimPacket::corrupt`] returned `false`.
    pub dropped_corrupt: u64,
    /// Packets held back for reordering.
    pub reordered: u64,
    /// The longest queueing delay an admitted packet saw before its serialisation began.
    pub max_queue_delay: Duration,
}

/// A packet in flight with its delivery time; ordered by (time, sequence) for the heap.
#[derive(Debug)]
struct InFlight<P> {
    at: Timestamp,
    seq: u64,
    pkt: P,
}

impl<P> PartialEq for InFlight<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<P> Eq for InFlight<P> {}
impl<P> PartialOrd for InFlight<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for InFlight<P> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest delivery first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Independent random streams, one per effect, so enabling one effect does not change which
/// packets another effect hits.
#[derive(Debug)]
struct Streams {
    loss: Rng,
    jitter: Rng,
    reorder: Rng,
    duplicate: Rng,
    corrupt: Rng,
}

/// One direction of a path. All flows crossing it share its queue.
#[derive(Debug)]
pub struct Link<P> {
    cfg: LinkConfig,
    rng: Streams,
    /// Gilbert–Elliott state: true while in the bad state.
    ge_bad: bool,
    /// When the last admitted byte finishes serialisation.
    last_departure: Timestamp,
    /// Sub-nanosecond remainder of `last_departure`, in units of 1/rate ns (bits × 1e9 mod rate),
    /// so back-to-back packets add up to exactly the right time.
    departure_rem: u64,
    /// Delivery time of the last packet in `fifo` (kept so that jitter never reorders).
    last_fifo_delivery: Timestamp,
    fifo: VecDeque<InFlight<P>>,
    reordered: BinaryHeap<InFlight<P>>,
    next_seq: u64,
    stats: LinkStats,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl<P: SimPacket> Link<P> {
    /// A link with configuration `cfg`, drawing its randomness from `rng` (give each link its own
    /// stream, e.g. via [`Rng::fork`]).
    pub fn new(cfg: LinkConfig, mut rng: Rng) -> Link<P> {
        let rng = Streams {
            loss: rng.fork(),
            jitter: rng.fork(),
            reorder: rng.fork(),
            duplicate: rng.fork(),
            corrupt: rng.fork(),
        };
        Link {
            cfg,
            rng,
            ge_bad: false,
            last_departure: Timestamp::ZERO,
            departure_rem: 0,
            last_fifo_delivery: Timestamp::ZERO,
            fifo: VecDeque::new(),
            reordered: BinaryHeap::new(),
            next_seq: 0,
            stats: LinkStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// The configuration, to change it at run time. Changes apply to packets sent afterwards;
    /// packets already in flight keep the delivery time computed when they were sent.
    pub fn config_mut(&mut self) -> &mut LinkConfig {
        &mut self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Packets in flight (queued, on the wire or held for reordering), not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.fifo.len() + self.reordered.len()
    }

    /// The queueing delay a packet arriving at `now` would wait before its serialisation starts.
    pub fn queue_delay(&self, now: Timestamp) -> Duration {
        match self.cfg.rate_bps {
            Some(_) => self.last_departure.saturating_since(now),
            None => Duration::ZERO,
        }
    }

    /// Bytes in the queue at `now` not yet serialised (the one being serialised counts in part).
    pub fn queued_bytes(&self, now: Timestamp) -> u64 {
        match self.cfg.rate_bps {
            Some(rate) => bytes_at_rate(self.queue_delay(now), rate),
            None => 0,
        }
    }

    /// Hand a packet to the link at `now`. It is delivered later by [`Link::poll_deliver`], or
    /// dropped (see [`LinkStats`]).
    pub fn send(&mut self, now: Timestamp, pkt: P) {
        let wire = pkt.wire_len() + self.cfg.overhead_bytes;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += wire as u64;
        if wire > self.cfg.mtu {
            self.stats.dropped_mtu += 1;
            return;
        }

        let departure = match self.cfg.rate_bps {
            None => now,
            Some(0) => {
                self.stats.dropped_queue += 1;
                return;
            }
            Some(rate) => {
                let waiting = self.last_departure.saturating_since(now);
                let queued = bytes_at_rate(waiting, rate);
                let capacity = bytes_at_rate(self.cfg.queue, rate);
                if queued > 0 && queued + wire as u64 > capacity.max(wire as u64) {
                    self.stats.dropped_queue += 1;
                    return;
                }
                self.stats.max_queue_delay = self.stats.max_queue_delay.max(waiting);
                if now >= self.last_departure {
                    self.last_departure = now;
                    self.departure_rem = 0;
                }
                let numer = wire as u128 * 8 * NANOS_PER_SEC + u128::from(self.departure_rem);
                let rate = u128::from(rate);
                let nanos = (numer / rate) as u64;
                self.departure_rem = (numer % rate) as u64;
                self.last_departure = Timestamp::from_nanos(self.last_departure.as_nanos() + nanos);
                self.last_departure
            }
        };
        self.stats.packets_serialised += 1;
        self.stats.bytes_serialised += wire as u64;

        if self.is_lost() {
            self.stats.lost += 1;
            return;
        }

        let mut at = departure + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let jitter = self.rng.jitter.below(duration_nanos(self.cfg.jitter) + 1);
            at = Timestamp::from_nanos(at.as_nanos().saturating_add(jitter));
        }
        let reorder = self.cfg.reorder > 0.0 && self.rng.reorder.chance(self.cfg.reorder);
        if reorder {
            self.stats.reordered += 1;
            at += self.cfg.reorder_delay;
        } else {
            at = at.max(self.last_fifo_delivery);
            self.last_fifo_delivery = at;
        }

        let copy = if self.cfg.duplicate > 0.0 && self.rng.duplicate.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            Some(pkt.duplicate())
        } else {
            None
        };
        self.enqueue(at, reorder, pkt);
        if let Some(copy) = copy {
            self.enqueue(at, reorder, copy);
        }
    }

    /// Draws the loss model for one serialised packet.
    fn is_lost(&mut self) -> bool {
        match self.cfg.loss {
            LossModel::None => false,
            LossModel::Random(p) => p > 0.0 && self.rng.loss.chance(p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.ge_bad {
                    p_bad_to_good
                } else {
                    p_good_to_bad
                };
                if self.rng.loss.chance(flip) {
                    self.ge_bad = !self.ge_bad;
                }
                let p = if self.ge_bad { loss_bad } else { loss_good };
                self.rng.loss.chance(p)
            }
        }
    }

    /// Applies corruption to one copy and schedules it.
    fn enqueue(&mut self, at: Timestamp, reordered: bool, mut pkt: P) {
        if self.cfg.corrupt > 0.0 && self.rng.corrupt.chance(self.cfg.corrupt) {
            self.stats.corrupted += 1;
            if !pkt.corrupt(&mut self.rng.corrupt) {
                self.stats.dropped_corrupt += 1;
                return;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let item = InFlight { at, seq, pkt };
        if reordered {
            self.reordered.push(item);
        } else {
            self.fifo.push_back(item);
        }
    }

    /// Which queue holds the earliest delivery: `Some(true)` for the FIFO, `Some(false)` for the
    /// reorder heap, `None` when nothing is in flight.
    fn earliest(&self) -> Option<(Timestamp, bool)> {
        match (self.fifo.front(), self.reordered.peek()) {
            (None, None) => None,
            (Some(f), None) => Some((f.at, true)),
            (None, Some(h)) => Some((h.at, false)),
            (Some(f), Some(h)) => {
                if (f.at, f.seq) <= (h.at, h.seq) {
                    Some((f.at, true))
                } else {
                    Some((h.at, false))
                }
            }
        }
    }

    /// The earliest time a packet pops out at the far end, if any is in flight.
    pub fn next_delivery(&self) -> Option<Timestamp> {
        self.earliest().map(|(at, _)| at)
    }

    /// The next packet due at or before `now`, in delivery order; `None` when none is due.
    pub fn poll_deliver(&mut self, now: Timestamp) -> Option<P> {
        let (at, from_fifo) = self.earliest()?;
        if at > now {
            return None;
        }
        let item = if from_fifo {
            self.fifo.pop_front()
        } else {
            self.reordered.pop()
        }?;
        self.stats.packets_delivered += 1;
        self.stats.bytes_delivered += (item.pkt.wire_len() + self.cfg.overhead_bytes) as u64;
        Some(item.pkt)
    }
}

/// Bytes a link at `rate` bits/s carries in `d` (rounded down).
fn bytes_at_rate(d: Duration, rate: u64) -> u64 {
    let bits = d.as_nanos() * u128::from(rate) / NANOS_PER_SEC;
    u64::try_from(bits / 8).unwrap_or(u64::MAX)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test packet: an id and a size; corruption marks it.
    #[derive(Clone, Debug, PartialEq)]
    struct Pkt {
        id: u64,
        len: usize,
        corrupted: bool,
    }

    impl SimPacket for Pkt {
        fn wire_len(&self) -> usize {
            self.len
        }
        fn corrupt(&mut self, _rng: &mut Rng) -> bool {
            self.corrupted = true;
            true
        }
        fn duplicate(&self) -> Self {
            self.clone()
        }
    }

    fn pkt(id: u64, len: usize) -> Pkt {
        Pkt {
            id,
            len,
            corrupted: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at_ms(n: u64) -> Timestamp {
        Timestamp::ZERO + ms(n)
    }

    /// Sends `n` packets of `len` bytes, one every `gap`, and collects every delivery with its time.
    fn run(link: &mut Link<Pkt>, n: u64, len: usize, gap: Duration) -> Vec<(Timestamp, Pkt)> {
        let mut out = Vec::new();
        let mut now = Timestamp::ZERO;
        for id in 0..n {
            while let Some(t) = link.next_delivery().filter(|&t| t <= now) {
                out.push((t, link.poll_deliver(t).unwrap()));
            }
            link.send(now, pkt(id, len));
            now += gap;
        }
        while let Some(t) = link.next_delivery() {
            assert!(t >= now || out.last().is_none_or(|l| l.0 <= t));
            out.push((t, link.poll_deliver(t).unwrap()));
        }
        out
    }

    #[test]
    fn ideal_link_delivers_immediately_in_order() {
        let mut link: Link<Pkt> = Link::new(LinkConfig::default(), Rng::new(1));
        let out = run(&mut link, 100, 1000, Duration::from_micros(10));
        assert_eq!(out.len(), 100);
        for (i, (t, p)) in out.iter().enumerate() {
            assert_eq!(p.id, i as u64);
            assert_eq!(*t, Timestamp::ZERO + Duration::from_micros(10) * i as u32);
        }
    }

    #[test]
    fn delay_is_exact() {
        let cfg = LinkConfig {
            delay: ms(25),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(1));
        link.send(at_ms(3), pkt(0, 1200));
        assert_eq!(link.next_delivery(), Some(at_ms(28)));
        assert_eq!(link.poll_deliver(at_ms(27)), None);
        assert_eq!(link.poll_deliver(at_ms(28)).map(|p| p.id), Some(0));
        assert_eq!(link.next_delivery(), None);

        // With a rate: serialisation time, then the delay. 1000 + 28 bytes at 8.224 Mbit/s = 1 ms.
        let cfg = LinkConfig {
            delay: ms(25),
            rate_bps: Some(8_224_000),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(1));
        link.send(at_ms(0), pkt(0, 1000));
        link.send(at_ms(0), pkt(1, 1000));
        assert_eq!(link.queue_delay(at_ms(0)), ms(2));
        assert_eq!(link.queued_bytes(at_ms(1)), 1028);
        assert_eq!(link.poll_deliver(at_ms(26)).map(|p| p.id), Some(0));
        assert_eq!(link.next_delivery(), Some(at_ms(27)));
        assert_eq!(link.stats().max_queue_delay, ms(1));
    }

    #[test]
    fn serialisation_time_has_no_rounding_drift() {
        // 1 Gbit/s, 1000-byte packets with 28 bytes of overhead: 8224 ns each, exactly; and at
        // 3 bit/s-awkward rates the remainder carries over, so n packets take n × size / rate.
        let cfg = LinkConfig {
            rate_bps: Some(999_999_937),
            queue: Duration::from_secs(10),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(1));
        let n = 100_000u64;
        for id in 0..n {
            link.send(Timestamp::ZERO, pkt(id, 972));
        }
        let expect = (n as u128 * 1000 * 8 * NANOS_PER_SEC).div_ceil(999_999_937) as u64;
        let last = link.last_departure.as_nanos();
        assert!(expect - last <= 1, "expected {expect} got {last}");
    }

    #[test]
    fn rate_and_queue_cap_throughput_and_drop_the_excess() {
        // Offer 200 Mbit/s for 1 s to a 100 Mbit/s link with a 50 ms queue.
        let rate = 100_000_000u64;
        let cfg = LinkConfig {
            delay: ms(10),
            rate_bps: Some(rate),
            queue: ms(50),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(5));
        let len = 1222; // 1250 bytes on the wire: 100 µs at 100 Mbit/s
        let out = run(&mut link, 20_000, len, Duration::from_micros(50));
        let wire = 1250u64;
        let s = link.stats().clone();
        assert_eq!(s.packets_sent, 20_000);
        assert_eq!(s.packets_delivered, out.len() as u64);
        assert_eq!(s.dropped_queue + s.packets_delivered, 20_000);
        // Delivered within the first second (plus the propagation delay): the link rate.
        let in_first_second = out.iter().filter(|(t, _)| *t <= at_ms(1010)).count() as u64;
        let bits = in_first_second * wire * 8;
        assert!(
            (rate * 99 / 100..=rate).contains(&bits),
            "{bits} bits in the first second"
        );
        // In total: one second at the rate plus the queue that drains afterwards.
        let total = s.bytes_delivered * 8;
        let expect = rate + rate / 20;
        assert!(
            total.abs_diff(expect) < expect / 100,
            "{total} bits delivered, expected about {expect}"
        );
        assert!(s.dropped_queue > 9_000 && s.dropped_queue < 10_000, "{s:?}");
        // The queue filled to about 50 ms and never beyond.
        assert!(
            s.max_queue_delay <= ms(50) && s.max_queue_delay > ms(49),
            "{s:?}"
        );
        // Delivery times are spaced by exactly the serialisation time once the queue is busy.
        for w in out.windows(2).take(1000) {
            assert_eq!(w[1].0 - w[0].0, Duration::from_micros(100));
        }
    }

    #[test]
    fn lost_packets_still_use_capacity() {
        let rate = 10_000_000u64;
        let cfg = LinkConfig {
            rate_bps: Some(rate),
            loss: LossModel::Random(0.5),
            queue: Duration::from_secs(100),
            overhead_bytes: 0,
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(5));
        for id in 0..10_000 {
            link.send(Timestamp::ZERO, pkt(id, 1250)); // 1 ms each
        }
        let out: Vec<_> = std::iter::from_fn(|| {
            let t = link.next_delivery()?;
            Some((t, link.poll_deliver(t).unwrap()))
        })
        .collect();
        // The last survivor leaves at (its id + 1) ms: lost packets took their slot.
        let (t, p) = out.last().unwrap();
        assert_eq!(*t, at_ms(p.id + 1));
        assert_eq!(link.stats().packets_serialised, 10_000);
    }

    #[test]
    fn random_loss_fraction() {
        let cfg = LinkConfig {
            loss: LossModel::Random(0.02),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(11));
        let out = run(&mut link, 100_000, 100, Duration::from_micros(1));
        let lost = link.stats().lost;
        assert_eq!(lost + out.len() as u64, 100_000);
        // Binomial: mean 2000, sd about 44.
        assert!((1850..2150).contains(&lost), "lost {lost}");
    }

    #[test]
    fn gilbert_elliott_mean_loss_and_burstiness() {
        let loss = LossModel::GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.2,
            loss_good: 0.001,
            loss_bad: 0.5,
        };
        let expect = loss.mean_loss();
        assert!((expect - (0.2 / 0.21 * 0.001 + 0.01 / 0.21 * 0.5)).abs() < 1e-12);
        let cfg = LinkConfig {
            loss,
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(12));
        let n = 400_000;
        let out = run(&mut link, n, 100, Duration::from_micros(1));
        let lost = link.stats().lost as f64;
        let frac = lost / n as f64;
        assert!(
            (frac - expect).abs() < expect * 0.1,
            "loss {frac}, expected {expect}"
        );
        // Bursty: P(loss | previous lost) is far above the mean.
        let mut delivered = vec![false; n as usize];
        for (_, p) in &out {
            delivered[p.id as usize] = true;
        }
        let pairs = delivered.windows(2).filter(|w| !w[0]).count() as f64;
        let both = delivered.windows(2).filter(|w| !w[0] && !w[1]).count() as f64;
        assert!(both / pairs > 0.3, "conditional loss {}", both / pairs);
    }

    #[test]
    fn jitter_without_reordering_keeps_fifo() {
        let cfg = LinkConfig {
            delay: ms(20),
            jitter: ms(5),
            rate_bps: Some(1_000_000_000),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(3));
        let out = run(&mut link, 50_000, 1000, Duration::from_micros(20));
        assert_eq!(out.len(), 50_000);
        let mut spread = Duration::ZERO;
        for (i, w) in out.windows(2).enumerate() {
            assert_eq!(w[0].1.id, i as u64);
            assert_eq!(w[1].1.id, i as u64 + 1);
            assert!(w[0].0 <= w[1].0);
        }
        for (t, p) in &out {
            let sent = Timestamp::ZERO + Duration::from_micros(20) * p.id as u32;
            let d = *t - sent;
            assert!(d >= ms(20), "{d:?}");
            spread = spread.max(d);
        }
        assert!(spread > ms(24) && spread <= ms(26), "max delay {spread:?}");
    }

    #[test]
    fn reordering_happens_at_the_configured_rate() {
        let cfg = LinkConfig {
            delay: ms(10),
            reorder: 0.05,
            reorder_delay: ms(1),
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(4));
        let n = 100_000;
        let out = run(&mut link, n, 100, Duration::from_micros(10));
        assert_eq!(out.len() as u64, n);
        let reordered = link.stats().reordered;
        assert!((4_700..5_300).contains(&reordered), "reordered {reordered}");
        // Every reordered packet arrives after packets sent after it: count packets delivered
        // after a higher id was already delivered.
        let mut highest = 0;
        let mut late = 0;
        for (i, (t, p)) in out.iter().enumerate() {
            if i > 0 && p.id < highest {
                late += 1;
            }
            highest = highest.max(p.id);
            assert!(i == 0 || out[i - 1].0 <= *t);
        }
        assert_eq!(late, reordered);
    }

    #[test]
    fn duplication_and_corruption_rates() {
        let cfg = LinkConfig {
            duplicate: 0.01,
            corrupt: 0.02,
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(8));
        let n = 100_000;
        let out = run(&mut link, n, 100, Duration::from_micros(10));
        let s = link.stats();
        assert_eq!(out.len() as u64, n + s.duplicated);
        assert!((850..1150).contains(&s.duplicated), "{s:?}");
        let corrupted = out.iter().filter(|(_, p)| p.corrupted).count() as u64;
        assert_eq!(corrupted, s.corrupted);
        assert!((1800..2200).contains(&corrupted), "{s:?}");
    }

    #[test]
    fn corrupting_bytes_changes_exactly_one_byte() {
        let cfg = LinkConfig {
            corrupt: 1.0,
            ..LinkConfig::default()
        };
        let mut link: Link<Vec<u8>> = Link::new(cfg, Rng::new(8));
        for _ in 0..1000 {
            let orig = vec![0xa5u8; 64];
            link.send(Timestamp::ZERO, orig.clone());
            let got = link.poll_deliver(Timestamp::ZERO).unwrap();
            assert_eq!(got.iter().zip(&orig).filter(|(a, b)| a != b).count(), 1);
        }
    }

    #[test]
    fn mtu_drops_oversized_packets() {
        let cfg = LinkConfig {
            mtu: 1500,
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(1));
        link.send(Timestamp::ZERO, pkt(0, 1472));
        link.send(Timestamp::ZERO, pkt(1, 1473));
        assert_eq!(link.stats().dropped_mtu, 1);
        assert_eq!(link.poll_deliver(Timestamp::ZERO).map(|p| p.id), Some(0));
        assert_eq!(link.poll_deliver(Timestamp::ZERO), None);
    }

    #[test]
    fn rate_change_at_run_time() {
        let cfg = LinkConfig {
            rate_bps: Some(8_000_000),
            overhead_bytes: 0,
            ..LinkConfig::default()
        };
        let mut link: Link<Pkt> = Link::new(cfg, Rng::new(1));
        link.send(at_ms(0), pkt(0, 1000)); // 1 ms
        link.config_mut().rate_bps = Some(4_000_000);
        link.send(at_ms(0), pkt(1, 1000)); // 2 ms more
        assert_eq!(link.poll_deliver(at_ms(1)).map(|p| p.id), Some(0));
        assert_eq!(link.next_delivery(), Some(at_ms(3)));
    }

    #[test]
    fn same_seed_same_outcome() {
        let cfg = LinkConfig {
            delay: ms(5),
            jitter: ms(2),
            loss: LossModel::Random(0.05),
            rate_bps: Some(50_000_000),
            queue: ms(20),
            reorder: 0.01,
            duplicate: 0.01,
            corrupt: 0.01,
            ..LinkConfig::default()
        };
        let go = |seed| {
            let mut link: Link<Pkt> = Link::new(cfg.clone(), Rng::new(seed));
            let out = run(&mut link, 20_000, 1200, Duration::from_micros(100));
            (out, link.stats().clone())
        };
        let a = go(77);
        assert_eq!(a, go(77));
        assert_ne!(a.0, go(78).0);
    }

    #[test]
    fn enabling_one_effect_does_not_change_another() {
        let base = LinkConfig {
            loss: LossModel::Random(0.1),
            ..LinkConfig::default()
        };
        let lost_ids = |cfg: LinkConfig| {
            let mut link: Link<Pkt> = Link::new(cfg, Rng::new(21));
            let mut got: Vec<u64> = run(&mut link, 10_000, 100, Duration::from_micros(10))
                .into_iter()
                .map(|(_, p)| p.id)
                .collect();
            got.sort_unstable();
            got.dedup();
            got
        };
        let with_jitter = LinkConfig {
            jitter: ms(3),
            duplicate: 0.05,
            ..base.clone()
        };
        assert_eq!(lost_ids(base), lost_ids(with_jitter));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Every packet is accounted for exactly once, and deliveries come out in time order,
        /// with FIFO order among packets that were not reordered.
        #[test]
        fn conservation_and_order(
            seed in 0u64..1000,
            rate in proptest::option::of(1_000_000u64..1_000_000_000),
            queue_ms in 0u64..50,
            jitter_us in 0u64..5000,
            loss in 0.0f64..0.3,
            reorder in 0.0f64..0.2,
            duplicate in 0.0f64..0.2,
            gap_us in 1u64..200,
            len in 1usize..9000,
        ) {
            let cfg = LinkConfig {
                delay: ms(7),
                jitter: Duration::from_micros(jitter_us),
                loss: LossModel::Random(loss),
                rate_bps: rate,
                queue: ms(queue_ms),
                reorder,
                reorder_delay: ms(2),
                duplicate,
                mtu: 8000,
                ..LinkConfig::default()
            };
            let mut link: Link<Pkt> = Link::new(cfg, Rng::new(seed));
            let out = run(&mut link, 3000, len, Duration::from_micros(gap_us));
            let s = link.stats();
            proptest::prop_assert_eq!(s.packets_delivered, out.len() as u64);
            proptest::prop_assert_eq!(
                s.packets_delivered,
                s.packets_sent - s.dropped_mtu - s.dropped_queue - s.lost + s.duplicated
            );
            proptest::prop_assert_eq!(s.packets_serialised, s.packets_sent - s.dropped_mtu - s.dropped_queue);
            proptest::prop_assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
            let mut last_fifo = None;
            for (t, p) in &out {
                let sent = Timestamp::ZERO + Duration::from_micros(gap_us) * p.id as u32;
                proptest::prop_assert!(*t >= sent + ms(7));
                // A packet arriving within the reorder delay of its send cannot have been held.
                if *t < sent + ms(9) {
                    proptest::prop_assert!(last_fifo.is_none_or(|l| l <= p.id));
                    last_fifo = Some(p.id);
                }
            }
        }
    }

    /// Sends `n` packets through a 1 Gbit/s, 300 ms link at just under its rate, polling for
    /// deliveries after each send; returns (seconds, packets delivered, most in flight).
    fn speed<P: SimPacket>(n: u64, mut make: impl FnMut() -> P) -> (f64, u64, usize) {
        let cfg = LinkConfig {
            delay: ms(300),
            rate_bps: Some(1_000_000_000),
            queue: ms(100),
            loss: LossModel::Random(0.001),
            ..LinkConfig::default()
        };
        let mut link: Link<P> = Link::new(cfg, Rng::new(1));
        let gap = Duration::from_nanos(66_000); // 8220 wire bytes at just under 1 Gbit/s
        let start = std::time::Instant::now();
        let mut now = Timestamp::ZERO;
        let mut delivered = 0u64;
        let mut max_in_flight = 0;
        for _ in 0..n {
            link.send(now, make());
            max_in_flight = max_in_flight.max(link.in_flight());
            while link.poll_deliver(now).is_some() {
                delivered += 1;
            }
            now += gap;
        }
        (start.elapsed().as_secs_f64(), delivered, max_in_flight)
    }

    /// Packets per second through send + poll_deliver, for the report. Run with
    /// `cargo test -p ferry-sim --release --lib -- --ignored --nocapture link_speed`.
    #[test]
    #[ignore]
    fn link_speed() {
        let n = 2_000_000u64;
        let payload = vec![0u8; 8192];
        let (secs, delivered, max) = speed(n, || payload.clone());
        println!(
            "link, 8 KiB Vec<u8> (allocation and copy included): {:.2} M packets/s (delivered {delivered}, max in flight {max})",
            n as f64 / secs / 1e6
        );
        let (secs, delivered, max) = speed(n, || pkt(0, 8192));
        println!(
            "link, small packet struct: {:.2} M packets/s (delivered {delivered}, max in flight {max})",
            n as f64 / secs / 1e6
        );
    }
}
