//! The receiving side of a session: accept blocks, track what is held, NACK what is missing.
//!
//! Every authentic data datagram whose block is new becomes a write for the caller
//! ([`Delivery`]); duplicates are counted and dropped. A gap (blocks below the highest one
//! held that are missing) is NACKed once it has outlived a small reordering allowance, and
//! NACKed again only after the measured re-send round trip has passed without the block
//! arriving — so a block is not requested twice while its first re-send is in flight.
//! Feedback leaves every few milliseconds while data flows; it carries the NACKs, the
//! bytes taken in, the least one-way delay of the interval and a capacity estimate from
//! the dispersion of the sender's bursts.

use core::cmp::Reverse;
use core::time::Duration;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::Timestamp;
use crate::blockset::{BlockSet, Insert};
use crate::crypto::{Aead, Cipher, DefaultAead, Direction, PacketKey};
use crate::manifest::Manifest;
use crate::ranges::RangeSet;
use crate::session::{DropCounters, Failure, FailureCode, Inbound, RttEstimator};
use crate::wire::{self, Close, Feedback, Header, Kind, NackRange, Packet, data_flags};

/// How a receiver is set up; both sides agree on it over the control channel.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Session id carried in every datagram.
    pub session: u32,
    /// Cipher for both directions.
    pub cipher: Cipher,
    /// The session secret.
    pub secret: [u8; 32],
    /// Direction of the data (this side opens with it; feedback seals with the other).
    pub direction: Direction,
    /// Must equal the sender's `window_blocks`.
    pub window_blocks: u64,
    /// Time between feedbacks while data flows.
    pub feedback_interval: Duration,
    /// ... or this many data datagrams, whichever comes first.
    pub feedback_packets: u32,
    /// Time between feedbacks while nothing arrives.
    pub idle_feedback_interval: Duration,
    /// Least time a gap waits before its first NACK (reordering allowance).
    pub reorder_delay: Duration,
    /// Round-trip guess before the first measured re-send (the control channel's RTT).
    pub initial_rtt: Duration,
    /// Fail when nothing authentic arrives from the sender for this long.
    pub data_timeout: Duration,
    /// Largest feedback datagram, bytes (the path's datagram size).
    pub max_datagram: usize,
    /// After completing, how long to repeat the final feedback while waiting for the close.
    pub linger: Duration,
}

impl ReceiverConfig {
    /// Defaults for everything but the session identity.
    pub fn new(session: u32, cipher: Cipher, secret: [u8; 32], direction: Direction) -> Self {
        ReceiverConfig {
            session,
            cipher,
            secret,
            direction,
            window_blocks: 1 << 18,
            feedback_interval: Duration::from_millis(5),
            feedback_packets: 32,
            idle_feedback_interval: Duration::from_millis(100),
            reorder_delay: Duration::from_millis(1),
            initial_rtt: Duration::from_millis(200),
            data_timeout: Duration::from_secs(60),
            max_datagram: 1472,
            linger: Duration::from_secs(2),
        }
    }
}

/// A block to write: `datagram[payload]` belongs at `offset` of file `file`. Write it before
/// reusing the datagram buffer, then call [`Receiver::handle_write_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// File index in the manifest.
    pub file: u32,
    /// Offset in the file.
    pub offset: u64,
    /// Where the plaintext lies in the datagram buffer.
    pub payload: core::ops::Range<usize>,
}

/// What the receiver tells its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Every block is held and written.
    Complete,
    /// The sender acknowledged completion (or the linger ran out); nothing more to send.
    Closed,
    /// The session failed.
    Failed(Failure),
}

/// Counters of a receiver.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReceiverStats {
    /// Data datagrams accepted (authentic, in the session).
    pub data_datagrams: u64,
    /// Payload bytes of new blocks.
    pub new_bytes: u64,
    /// Payload bytes of blocks already held.
    pub duplicate_bytes: u64,
    /// Data datagrams beyond the window (dropped).
    pub beyond_window: u64,
    /// Data datagrams whose block is not on the manifest's grid (dropped).
    pub bad_blocks: u64,
    /// Feedback datagrams sent.
    pub feedbacks: u64,
    /// Blocks NACKed (each NACK of each block counts).
    pub nacked_blocks: u64,
    /// When the last new block arrived.
    pub last_new_at: Option<Timestamp>,
}

/// How many later feedbacks repeat each NACK.
const NACK_REPEATS: u8 = 2;

#[derive(Clone, Copy, Debug)]
struct NackState {
    first: Timestamp,
    count: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Burst {
    active: bool,
    last_pn: u64,
    first_arrival: Timestamp,
    last_arrival: Timestamp,
    first_send_us: u64,
    last_send_us: u64,
    bytes: u64,
    count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Receiving,
    /// Complete; repeating the final feedback until the sender closes or `until`.
    Lingering {
        until: Timestamp,
    },
    Done,
}

/// The receiving side of one session. See the module docs.
pub struct Receiver<A: Aead = DefaultAead> {
    cfg: ReceiverConfig,
    manifest: Manifest,
    inbound: Inbound<A>,
    seal: PacketKey<A>,
    state: State,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,

    blocks: BlockSet,
    /// Blocks held before the session started (a resumed transfer).
    preheld: RangeSet,
    highest: u64,
    writes_pending: u64,
    /// Ranges of blocks to check for a NACK at a time: `(due, first, end)`.
    nack_due: BinaryHeap<Reverse<(Timestamp, u64, u64)>>,
    nack_state: HashMap<u64, NackState>,
    nacks: Vec<NackRange>,
    /// NACKs already sent that ride along in the next few feedbacks too, since a lost
    /// feedback would otherwise cost a whole re-NACK timeout: `(range, sends left)`.
    repeats: VecDeque<(NackRange, u8)>,
    turnaround: RttEstimator,
    /// How late reordered blocks have arrived, at most, lately.
    reorder_seen: Duration,

    next_pn: u64,
    last_recv: Timestamp,
    last_feedback: Timestamp,
    recv_bytes: u64,
    interval_packets: u32,
    owd_min: Option<i64>,
    echo: Option<(u64, Timestamp)>,
    burst: Burst,
    pair_rate: f64,
}

impl<A: Aead> Receiver<A> {
    /// A receiver of `manifest` starting at `now`.
    pub fn new(cfg: ReceiverConfig, manifest: Manifest, now: Timestamp) -> Self {
        Self::new_resuming(cfg, manifest, RangeSet::new(), now)
    }

    /// A receiver that already holds the global blocks `held` (a resumed transfer, whose
    /// sender was told the same set): they are never written again, and count as held in
    /// every feedback. Completes at once if `held` covers the manifest; poll for
    /// [`ReceiverEvent::Complete`].
    pub fn new_resuming(
        cfg: ReceiverConfig,
        manifest: Manifest,
        held: RangeSet,
        now: Timestamp,
    ) -> Self {
        let total = manifest.total_blocks();
        let held = RangeSet::from_ranges(
            held.ranges()
                .iter()
                .map(|r| r.start.min(total)..r.end.min(total)),
        );
        let open = PacketKey::new(&cfg.secret, cfg.cipher, cfg.direction);
        let seal = PacketKey::new(&cfg.secret, cfg.cipher, cfg.direction.reverse());
        let mut r = Receiver {
            inbound: Inbound::new(open, cfg.session),
            seal,
            state: State::Receiving,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
            blocks: BlockSet::with_held(cfg.window_blocks, held.clone()),
            preheld: held,
            highest: 0,
            writes_pending: 0,
            nack_due: BinaryHeap::new(),
            nack_state: HashMap::new(),
            nacks: Vec::new(),
            repeats: VecDeque::new(),
            turnaround: RttEstimator::new(cfg.initial_rtt),
            reorder_seen: Duration::ZERO,
            next_pn: 0,
            last_recv: now,
            last_feedback: now,
            recv_bytes: 0,
            interval_packets: 0,
            owd_min: None,
            echo: None,
            burst: Burst::default(),
            pair_rate: 0.0,
            manifest,
            cfg,
        };
        r.check_complete(now);
        r
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Inbound datagrams dropped, by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.inbound.drops
    }

    /// Every block below this is held.
    pub fn cum_block(&self) -> u64 {
        self.blocks.cum()
    }

    /// Blocks held.
    pub fn held_blocks(&self) -> u64 {
        self.blocks.held()
    }

    /// Whether every block is held and written.
    pub fn is_complete(&self) -> bool {
        self.blocks.held() == self.manifest.total_blocks() && self.writes_pending == 0
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The manifest being received.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A datagram from the sender, opened in place. Returns the write to perform if it
    /// carried a new block. Call the `poll_*` methods again afterwards.
    pub fn handle_datagram(&mut self, now: Timestamp, datagram: &mut [u8]) -> Option<Delivery> {
        let packet = self.inbound.open(datagram)?;
        self.last_recv = now;
        match packet {
            Packet::Data {
                header,
                block,
                payload,
            } => {
                let len = payload.len();
                let Some(g) = self.manifest.global(&block) else {
                    self.stats.bad_blocks += 1;
                    return None;
                };
                self.on_data_signals(now, &header, len as u64);
                self.accept(now, &header, g).then(|| Delivery {
                    file: block.file,
                    offset: block.offset,
                    payload: wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + len,
                })
            }
            Packet::Close { close, .. } => {
                match self.state {
                    State::Lingering { .. } => {
                        self.state = State::Done;
                        self.events.push_back(ReceiverEvent::Closed);
                    }
                    State::Receiving => {
                        self.state = State::Done;
                        self.events.push_back(ReceiverEvent::Failed(Failure {
                            code: FailureCode::PeerAborted,
                            reason: format!("sender closed the session (code {})", close.code),
                        }));
                    }
                    State::Done => {}
                }
                None
            }
            Packet::Keepalive { .. } => None,
            Packet::Feedback { .. } => {
                self.inbound.unexpected();
                None
            }
        }
    }

    fn on_data_signals(&mut self, now: Timestamp, header: &Header, len: u64) {
        self.stats.data_datagrams += 1;
        self.recv_bytes += len;
        self.interval_packets += 1;
        let owd = now.as_micros() as i64 - header.send_ts_us as i64;
        self.owd_min = Some(self.owd_min.map_or(owd, |m| m.min(owd)));
        if self.echo.is_none_or(|(ts, _)| header.send_ts_us >= ts) {
            self.echo = Some((header.send_ts_us, now));
        }
        // Burst dispersion: datagrams sent back to back leave the bottleneck spaced by its
        // service time.
        let b = &mut self.burst;
        if header.flags & data_flags::BURST != 0 {
            Self::finish_burst(b, &mut self.pair_rate);
            *b = Burst {
                active: true,
                last_pn: header.pn,
                first_arrival: now,
                last_arrival: now,
                first_send_us: header.send_ts_us,
                last_send_us: header.send_ts_us,
                bytes: 0,
                count: 1,
            };
        } else if b.active && header.pn == b.last_pn + 1 {
            b.last_pn = header.pn;
            b.last_arrival = now;
            b.last_send_us = header.send_ts_us;
            b.bytes += len;
            b.count += 1;
        } else {
            Self::finish_burst(b, &mut self.pair_rate);
        }
    }

    fn finish_burst(b: &mut Burst, pair_rate: &mut f64) {
        *pair_rate = pair_rate.max(Self::burst_rate(b));
        b.active = false;
    }

    /// The dispersion rate of the burst so far, or zero: bytes after the first datagram over
    /// the arrival spread, valid only if the datagrams left much closer together than they
    /// arrived.
    fn burst_rate(b: &Burst) -> f64 {
        if !b.active || b.count < 2 {
            return 0.0;
        }
        let spread = b
            .last_arrival
            .saturating_since(b.first_arrival)
            .as_secs_f64();
        let sent = (b.last_send_us - b.first_send_us) as f64 / 1e6;
        if spread > 0.0 && sent * 4.0 <= spread {
            b.bytes as f64 / spread
        } else {
            0.0
        }
    }

    /// Records block `g`; whether it was new.
    fn accept(&mut self, now: Timestamp, header: &Header, g: u64) -> bool {
        let len = u64::from(self.manifest.block(g).len);
        match self.blocks.insert(g) {
            Insert::New => {}
            Insert::Duplicate => {
                self.stats.duplicate_bytes += len;
                return false;
            }
            Insert::BeyondWindow => {
                self.stats.beyond_window += 1;
                return false;
            }
        }
        self.stats.new_bytes += len;
        self.stats.last_new_at = Some(now);
        self.writes_pending += 1;
        if g >= self.highest {
            if g > self.highest {
                let due = now + self.reorder_allowance();
                self.nack_due.push(Reverse((due, self.highest, g)));
            }
            self.highest = g + 1;
        } else if let Some(n) = self.nack_state.remove(&g) {
            // A re-sent block: its turnaround is the re-send round trip, if unambiguous.
            if n.count == 1 && header.flags & data_flags::RETRANSMIT != 0 {
                self.turnaround.update(now.saturating_since(n.first));
            }
        } else if header.flags & data_flags::RETRANSMIT == 0 {
            // Filled a gap before it was NACKed: reordering. Remember how late it was.
            self.reorder_seen = self
                .reorder_seen
                .max(Duration::from_micros(now.as_micros().saturating_sub(header.send_ts_us)) / 8);
        }
        true
    }

    fn reorder_allowance(&self) -> Duration {
        self.cfg.reorder_delay.max(self.reorder_seen)
    }

    /// How long a NACKed block may stay missing before it is NACKed again: the measured
    /// re-send round trip with margin, or twice the initial guess until one is measured.
    fn renack_timeout(&self) -> Duration {
        if !self.turnaround.has_samples() {
            return 2 * self.cfg.initial_rtt + self.cfg.feedback_interval;
        }
        self.turnaround.srtt()
            + (4 * self.turnaround.rttvar()).max(2 * self.cfg.feedback_interval)
            + self.cfg.feedback_interval
    }

    /// A write reported by the caller finished.
    pub fn handle_write_done(&mut self, now: Timestamp, result: Result<(), String>) {
        self.writes_pending = self.writes_pending.saturating_sub(1);
        if let Err(e) = result {
            if self.state == State::Receiving {
                self.state = State::Done;
                self.events.push_back(ReceiverEvent::Failed(Failure {
                    code: FailureCode::WriteFailed,
                    reason: e,
                }));
            }
            return;
        }
        self.check_complete(now);
    }

    fn check_complete(&mut self, now: Timestamp) {
        if self.state == State::Receiving && self.is_complete() {
            self.state = State::Lingering {
                until: now + self.cfg.linger,
            };
            self.events.push_back(ReceiverEvent::Complete);
            // The final feedback goes out at once.
            self.last_feedback = Timestamp::ZERO;
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Moves due gaps into the NACK list, rescheduling each for a later re-NACK.
    fn collect_nacks(&mut self, now: Timestamp, limit: usize) {
        let mut runs = Vec::new();
        while self.nacks.len() < limit {
            let Some(&Reverse((due, first, end))) = self.nack_due.peek() else {
                break;
            };
            if due > now {
                break;
            }
            self.nack_due.pop();
            runs.clear();
            self.blocks
                .missing_runs(first, end, limit - self.nacks.len(), &mut runs);
            let again = now + self.renack_timeout();
            let mut covered = first.max(self.blocks.cum());
            for &(start, count) in &runs {
                self.nacks.push(NackRange {
                    first: start,
                    count: count as u32,
                });
                self.stats.nacked_blocks += count;
                for b in start..start + count {
                    self.nack_state
                        .entry(b)
                        .and_modify(|n| n.count += 1)
                        .or_insert(NackState {
                            first: now,
                            count: 1,
                        });
                }
                self.nack_due.push(Reverse((again, start, start + count)));
                covered = start + count;
            }
            if covered < end && self.nacks.len() >= limit {
                // Ran out of room: the rest of this range stays due.
                self.nack_due.push(Reverse((due, covered, end)));
            }
        }
    }

    fn feedback_due(&self, now: Timestamp) -> bool {
        let since = now.saturating_since(self.last_feedback);
        match self.state {
            State::Done => false,
            State::Lingering { .. } => {
                since >= self.cfg.feedback_interval.max(self.turnaround.srtt() / 4)
            }
            // The first feedback leaves at once: it tells a sender that waits to learn the
            // receiver's address (a download) where to send, and opens NAT bindings.
            State::Receiving if self.stats.feedbacks == 0 => true,
            // At high rates every few milliseconds is too slow for the sender to see a
            // filling queue in time: feedback also leaves every `feedback_packets` datagrams
            // (but not more often than every `feedback_interval / 8`).
            State::Receiving => {
                (since >= self.cfg.feedback_interval
                    && (self.interval_packets > 0 || self.nack_is_due(now)))
                    || (self.interval_packets >= self.cfg.feedback_packets
                        && since >= self.cfg.feedback_interval / 8)
                    || since >= self.cfg.idle_feedback_interval
            }
        }
    }

    /// Blocks below `highest` not held (`highest` at least every block received).
    fn missing_below(&self, highest: u64) -> u64 {
        let above = self.preheld.count_in(highest, u64::MAX);
        let below = self.blocks.held().saturating_sub(above);
        highest - below.min(highest)
    }

    fn nack_is_due(&self, now: Timestamp) -> bool {
        self.nack_due
            .peek()
            .is_some_and(|Reverse((due, _, _))| *due <= now)
    }

    /// Writes a feedback datagram into `buf` if one is due; returns its length. Call again
    /// until `None`.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut [u8]) -> Option<usize> {
        if !self.feedback_due(now) {
            return None;
        }
        let room = self.cfg.max_datagram.min(buf.len());
        let body_room = room.checked_sub(wire::COMMON_HEADER_LEN + self.seal.trailer_len())?;
        let limit = Feedback::max_nacks(body_room);
        self.nacks.clear();
        if self.state == State::Receiving {
            self.collect_nacks(now, limit);
            let fresh = self.nacks.len();
            for _ in 0..self.repeats.len() {
                if self.nacks.len() >= limit {
                    break;
                }
                let (range, left) = self.repeats.pop_front().expect("counted");
                if !self.blocks.contains(range.first) {
                    self.nacks.push(range);
                    if left > 1 {
                        self.repeats.push_back((range, left - 1));
                    }
                }
            }
            for &range in &self.nacks[..fresh] {
                self.repeats.push_back((range, NACK_REPEATS));
            }
        }
        // A burst still arriving counts as far as it got; it goes on after this feedback.
        self.pair_rate = self.pair_rate.max(Self::burst_rate(&self.burst));
        // Blocks held from the start may put the contiguous point past every block
        // received so far; the highest block held is then at least that.
        let highest = self.highest.max(self.blocks.cum());
        let fb = Feedback {
            cum_block: self.blocks.cum(),
            highest_block: highest,
            missing_blocks: self.missing_below(highest),
            recv_bytes: self.recv_bytes,
            recv_time_us: now.as_micros(),
            owd_min_us: self.owd_min.take(),
            echo_ts_us: self.echo.map_or(0, |(ts, _)| ts),
            echo_delay_us: self.echo.map_or(0, |(_, at)| {
                now.saturating_since(at)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32
            }),
            interval_packets: core::mem::take(&mut self.interval_packets),
            pair_rate: core::mem::take(&mut self.pair_rate) as u64,
            complete: self.state != State::Receiving,
            nacks: core::mem::take(&mut self.nacks),
        };
        let header = Header {
            kind: Kind::Feedback,
            flags: fb.flags(),
            session: self.cfg.session,
            pn: self.next_pn,
            send_ts_us: now.as_micros(),
        };
        header.encode(buf);
        let body = fb
            .encode_body(&mut buf[wire::COMMON_HEADER_LEN..room])
            .ok()?;
        self.nacks = fb.nacks;
        let len = self.seal.seal(buf, wire::COMMON_HEADER_LEN, body).ok()?;
        self.next_pn += 1;
        self.last_feedback = now;
        self.stats.feedbacks += 1;
        Some(len)
    }

    /// Writes a close datagram (for a local failure or cancel) and ends the session.
    pub fn close(&mut self, now: Timestamp, code: FailureCode, buf: &mut [u8]) -> Option<usize> {
        let header = Header {
            kind: Kind::Close,
            flags: 0,
            session: self.cfg.session,
            pn: self.next_pn,
            send_ts_us: now.as_micros(),
        };
        header.encode(buf);
        let body = Close {
            code: code.close_code(),
        }
        .encode_body(&mut buf[wire::COMMON_HEADER_LEN..])
        .ok()?;
        self.next_pn += 1;
        self.state = State::Done;
        self.seal.seal(buf, wire::COMMON_HEADER_LEN, body).ok()
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) has something to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            State::Done => None,
            State::Lingering { until } => Some(until.min(
                self.last_feedback + self.cfg.feedback_interval.max(self.turnaround.srtt() / 4),
            )),
            State::Receiving if self.stats.feedbacks == 0 => Some(self.last_feedback),
            State::Receiving => {
                let mut t = self.last_recv + self.cfg.data_timeout;
                t = t.min(self.last_feedback + self.cfg.idle_feedback_interval);
                if self.interval_packets > 0 {
                    t = t.min(self.last_feedback + self.cfg.feedback_interval);
                }
                if self.interval_packets >= self.cfg.feedback_packets {
                    t = t.min(self.last_feedback + self.cfg.feedback_interval / 8);
                }
                if let Some(Reverse((due, _, _))) = self.nack_due.peek() {
                    t = t.min((*due).max(self.last_feedback + self.cfg.feedback_interval));
                }
                Some(t)
            }
        }
    }

    /// Time has reached `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.state {
            State::Receiving if now.saturating_since(self.last_recv) >= self.cfg.data_timeout => {
                self.state = State::Done;
                let secs = self.cfg.data_timeout.as_secs();
                self.events.push_back(ReceiverEvent::Failed(Failure {
                    code: FailureCode::DataTimeout,
                    reason: format!("no datagram from the sender for {secs} s"),
                }));
            }
            State::Lingering { until } if now >= until => {
                self.state = State::Done;
                self.events.push_back(ReceiverEvent::Closed);
            }
            _ => {}
        }
    }
}
