//! The sending side of a session: block scheduling, pacing, retransmission and the tail.
//!
//! The sender walks the manifest's blocks in order, asks the caller to read each one into a
//! slot of its packet buffers ([`SenderEvent::Read`]), and when the pacer allows, seals the
//! slot in place and hands it out ([`Sender::poll_transmit`]). Blocks the receiver NACKs are
//! read again and go ahead of new data, within the same pacing budget; the file is never
//! held in memory, only a bounded window of block numbers.
//!
//! The end of a transfer is the hard case: the last blocks have nothing behind them to
//! reveal their loss, and the link idles while they are recovered. Two things shorten it:
//! the final block leaves with redundant copies and is probed again if the receiver has
//! not seen it after a probe timeout, and once no new data is left, each re-sent block
//! takes a few copies into the otherwise idle capacity, as many as the measured loss rate
//! says are needed, within a redundancy budget.

use core::time::Duration;
use std::collections::{BTreeSet, HashSet, VecDeque};

use ferry_tuning::{CapLease, Controller, PathSignal, Policy, PolicyController, RateLimits};

use crate::Timestamp;
use crate::crypto::{Aead, Cipher, DefaultAead, Direction, PacketKey};
use crate::manifest::Manifest;
use crate::ranges::RangeSet;
use crate::session::{DropCounters, Failure, FailureCode, Inbound, RttEstimator};
use crate::wire::{self, BlockRef, Close, Feedback, Header, Kind, Packet, data_flags};

/// How a sender is set up; both sides agree on it over the control channel.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Session id carried in every datagram.
    pub session: u32,
    /// Cipher for both directions.
    pub cipher: Cipher,
    /// The session secret both directions' keys derive from.
    pub secret: [u8; 32],
    /// Direction of the data (this side seals with it; feedback opens with the other).
    pub direction: Direction,
    /// Rate policy.
    pub policy: Policy,
    /// Target and minimum rate.
    pub limits: RateLimits,
    /// Most blocks beyond the receiver's contiguous point that may be in flight: bounds the
    /// memory of both sides whatever the file size.
    pub window_blocks: u64,
    /// Packet buffers (slots) the sender reads ahead into.
    pub read_ahead: u32,
    /// Datagrams per paced burst.
    pub burst: u32,
    /// Fail when nothing authentic arrives from the receiver for this long.
    pub data_timeout: Duration,
    /// Send a keepalive when nothing else left for this long.
    pub keepalive_interval: Duration,
    /// Round-trip guess before the first measurement (the control channel's RTT).
    pub initial_rtt: Duration,
    /// Share of the payload the tail may spend on redundant copies.
    pub tail_redundancy: f64,
}

impl SenderConfig {
    /// Defaults for everything but the session identity.
    pub fn new(session: u32, cipher: Cipher, secret: [u8; 32], direction: Direction) -> Self {
        SenderConfig {
            session,
            cipher,
            secret,
            direction,
            policy: Policy::Fair,
            limits: RateLimits::new(10_000_000_000, 0),
            window_blocks: 1 << 18,
            read_ahead: 64,
            burst: 4,
            data_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_millis(500),
            initial_rtt: Duration::from_millis(200),
            tail_redundancy: 0.015,
        }
    }
}

/// What the sender asks of its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// Read `block` into slot `slot` of the packet buffers, at
    /// `[wire::DATA_HEADER_LEN .. wire::DATA_HEADER_LEN + block.len]` (or point the slot at
    /// the bytes where they lie: [`TxBuffers::slot_and_source`]), then call
    /// [`Sender::handle_read_done`]. Until then the slot belongs to the read.
    Read {
        /// Packet buffer index, below `read_ahead`.
        slot: u32,
        /// The bytes to read.
        block: BlockRef,
    },
    /// The receiver holds every byte; the session is over.
    Complete,
    /// The session failed; nothing more will happen.
    Failed(Failure),
}

/// Where a transmit's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxBuffer {
    /// In packet buffer `slot` (a data datagram).
    Slot(u32),
    /// In the control buffer.
    Control,
}

/// A datagram ready to go: `len` bytes at the front of `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Which buffer.
    pub buffer: TxBuffer,
    /// Datagram length.
    pub len: usize,
}

/// The caller's packet buffers: one per read-ahead slot, each at least
/// `DATA_HEADER_LEN + block_size + trailer` long, and one control buffer of at least a
/// keepalive or close datagram.
pub trait TxBuffers {
    /// Packet buffer `slot`.
    fn slot(&mut self, slot: u32) -> &mut [u8];
    /// Packet buffer `slot`, and the block's bytes if the caller answered the slot's
    /// [`SenderEvent::Read`] by pointing at them where they already lie (a mapped file)
    /// rather than copying them into the slot: the block is then sealed from there into
    /// the slot, one pass over the bytes. The source is exactly the block's length.
    fn slot_and_source(&mut self, slot: u32) -> (&mut [u8], Option<&[u8]>) {
        (self.slot(slot), None)
    }
    /// The control buffer.
    fn control(&mut self) -> &mut [u8];
}

/// Plain owned packet buffers: one `Vec` per slot and one for control datagrams, sized
/// for blocks of `block_size` bytes sealed with `trailer` bytes.
#[derive(Clone, Debug)]
pub struct SlotBuffers {
    /// One buffer per read-ahead slot.
    pub slots: Vec<Vec<u8>>,
    /// The control buffer.
    pub control: Vec<u8>,
}

impl SlotBuffers {
    /// `slots` buffers large enough for a data datagram of `block_size` payload bytes.
    pub fn new(slots: u32, block_size: u32, trailer: usize) -> Self {
        let len = wire::DATA_HEADER_LEN + block_size as usize + trailer;
        SlotBuffers {
            slots: vec![vec![0; len]; slots as usize],
            control: vec![0; 256],
        }
    }

    /// The bytes of a transmit.
    pub fn bytes(&self, tx: &Transmit) -> &[u8] {
        match tx.buffer {
            TxBuffer::Slot(i) => &self.slots[i as usize][..tx.len],
            TxBuffer::Control => &self.control[..tx.len],
        }
    }
}

impl TxBuffers for SlotBuffers {
    fn slot(&mut self, slot: u32) -> &mut [u8] {
        &mut self.slots[slot as usize]
    }
    fn control(&mut self) -> &mut [u8] {
        &mut self.control
    }
}

/// Counters of a sender, for reports and the simulator's metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SenderStats {
    /// Datagrams sent, all kinds.
    pub datagrams: u64,
    /// Bytes of all datagrams sent.
    pub wire_bytes: u64,
    /// Payload bytes sent for the first time.
    pub new_bytes: u64,
    /// Payload bytes re-sent after a NACK or probe.
    pub resent_bytes: u64,
    /// Payload bytes of redundant tail copies.
    pub copy_bytes: u64,
    /// Blocks NACKed by the receiver.
    pub nacked_blocks: u64,
    /// Feedback datagrams accepted.
    pub feedbacks: u64,
    /// Probe timeouts fired.
    pub probes: u64,
    /// When the first data datagram left.
    pub first_data_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    New,
    Resend,
    Copy,
}

#[derive(Clone, Copy, Debug)]
struct Ready {
    slot: u32,
    block: u64,
    origin: Origin,
}

/// One block in this many has its delivery latency measured.
pub const DELIVERY_SAMPLE: u64 = 64;
/// Delivery latencies kept between two [`Sender::drain_delivery_latencies`] calls.
pub const MAX_DELIVERY_SAMPLES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Sending,
    /// Sending close datagrams: `left` more, with `code`.
    Closing {
        code: u16,
        left: u8,
    },
    Done,
}

/// The sending side of one session. See the module docs.
pub struct Sender<A: Aead = DefaultAead> {
    cfg: SenderConfig,
    manifest: Manifest,
    seal: PacketKey<A>,
    inbound: Inbound<A>,
    controller: PolicyController,
    pacer: Pacer,
    cap: Option<CapLease>,
    rtt: RttEstimator,
    state: State,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,

    next_pn: u64,
    /// Next block never yet read for sending.
    next_new: u64,
    /// Highest block sent, plus one.
    sent_frontier: u64,
    /// From feedback: every block below is held.
    cum: u64,
    /// From feedback: one past the highest block held.
    highest: u64,
    /// From feedback: blocks missing below `highest`.
    missing: u64,

    /// NACKed blocks waiting for a read, lowest first.
    resend_order: BTreeSet<u64>,
    /// NACKed blocks not yet re-sent (in `resend_order`, being read, or ready).
    resend_pending: HashSet<u64>,
    /// Redundant copies waiting for a read.
    copies: VecDeque<u64>,
    /// When each block still below the receiver's horizon was last re-sent. The receiver
    /// repeats every NACK in a few feedbacks (feedback is lost too); a NACK that arrives
    /// within half a round trip of a re-send is such a repeat, not a new loss.
    resent_at: std::collections::BTreeMap<u64, Timestamp>,
    /// Every [`DELIVERY_SAMPLE`]th block and when it first left, until the receiver's
    /// cumulative point passes it.
    delivery_marks: VecDeque<(u64, Timestamp)>,
    /// Delivery latencies measured and not yet drained.
    delivery_latencies: Vec<Duration>,
    free_slots: Vec<u32>,
    ready_urgent: VecDeque<Ready>,
    ready_new: VecDeque<Ready>,
    /// Slot → what is being read into it.
    reading: Vec<Option<(u64, Origin)>>,

    sent_payload: u64,
    acked_payload: u64,
    nacked_payload: u64,
    sent_blocks: u64,
    copy_budget: u64,

    last_send: Timestamp,
    last_data_send: Timestamp,
    last_recv: Timestamp,
    /// When the receiver last reported progress (its cumulative point or its highest
    /// block moved), or the session was last paused.
    last_progress: Timestamp,
    last_feedback: Timestamp,
    last_silence: Timestamp,
    last_fb_recv_us: Option<(u64, u64)>,
    probe_deadline: Option<Timestamp>,
    probe_backoff: u32,
    /// The block the last tail probe re-sends, until it leaves.
    probe_block: Option<u64>,
    /// Smoothed time between feedbacks.
    feedback_gap: Duration,
    /// The receiver confirmed it holds everything.
    completed: bool,
    /// Data sending paused by the operator.
    paused: bool,

    /// Blocks the receiver held before the session started: never read nor sent.
    skip: RangeSet,
    /// The last block that is sent at all (the final block, unless the receiver holds it).
    last_new: Option<u64>,
    /// Payload bytes of the skipped blocks.
    skipped_bytes: u64,
    /// Send a keepalive at once: with nothing to send, it tells the receiver where we are.
    announce: bool,
}

use ferry_tuning::Pacer;

impl<A: Aead> Sender<A> {
    /// A sender of `manifest` starting at `now`.
    pub fn new(cfg: SenderConfig, manifest: Manifest, now: Timestamp) -> Self {
        Self::new_resuming(cfg, manifest, RangeSet::new(), now)
    }

    /// A sender whose receiver already holds the global blocks `held` (a resumed
    /// transfer, agreed over the control channel): they are never read nor sent, and
    /// progress counts only the rest. The receiver must start with the same set
    /// ([`Receiver::new_resuming`](crate::Receiver::new_resuming)).
    pub fn new_resuming(
        cfg: SenderConfig,
        manifest: Manifest,
        held: RangeSet,
        now: Timestamp,
    ) -> Self {
        let total = manifest.total_blocks();
        let skip = RangeSet::from_ranges(
            held.ranges()
                .iter()
                .map(|r| r.start.min(total)..r.end.min(total)),
        );
        let skipped_bytes = skip
            .ranges()
            .iter()
            .map(|r| manifest.bytes_in(r.clone()))
            .sum::<u64>();
        let last_new = skip.last_gap_below(total);
        // The receiver's contiguous point starts past a held prefix: so does the window.
        let cum = skip.range_at(0).map_or(0, |r| r.end);
        let seal = PacketKey::new(&cfg.secret, cfg.cipher, cfg.direction);
        let open = PacketKey::new(&cfg.secret, cfg.cipher, cfg.direction.reverse());
        let mss = manifest.block_size() as usize;
        let to_send = manifest.total_bytes() - skipped_bytes;
        let copy_budget = (to_send as f64 * cfg.tail_redundancy) as u64;
        Sender {
            controller: PolicyController::new(cfg.policy, cfg.limits, mss),
            // Bursts of about 256 KiB at most: enough datagrams to measure dispersion, not so
            // many bytes that a burst alone fills the bottleneck's share of the queue.
            pacer: Pacer::new(cfg.burst.min((256 * 1024 / mss as u32).max(2))),
            cap: None,
            rtt: RttEstimator::new(cfg.initial_rtt),
            inbound: Inbound::new(open, cfg.session),
            seal,
            state: State::Sending,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            next_pn: 0,
            next_new: cum,
            sent_frontier: 0,
            cum,
            highest: 0,
            missing: 0,
            resend_order: BTreeSet::new(),
            resend_pending: HashSet::new(),
            copies: VecDeque::new(),
            resent_at: Default::default(),
            delivery_marks: VecDeque::new(),
            delivery_latencies: Vec::new(),
            free_slots: (0..cfg.read_ahead.max(1)).rev().collect(),
            ready_urgent: VecDeque::new(),
            ready_new: VecDeque::new(),
            reading: vec![None; cfg.read_ahead.max(1) as usize],
            sent_payload: 0,
            acked_payload: 0,
            nacked_payload: 0,
            sent_blocks: 0,
            copy_budget,
            last_send: now,
            last_data_send: now,
            last_recv: now,
            last_progress: now,
            last_feedback: now,
            last_silence: now,
            last_fb_recv_us: None,
            probe_deadline: None,
            probe_backoff: 0,
            probe_block: None,
            feedback_gap: Duration::from_millis(5),
            completed: false,
            paused: false,
            announce: last_new.is_none(),
            skip,
            last_new,
            skipped_bytes,
            manifest,
            cfg,
        }
    }

    /// Block delivery latencies measured since the last call: for a sample of blocks (every
    /// [`DELIVERY_SAMPLE`]th), the time from its first departure until the receiver held
    /// it and every block before it (its cumulative point passed it), as this side's clock
    /// tells. Loss recovery and queueing show up here; at most [`MAX_DELIVERY_SAMPLES`] are
    /// kept between calls.
    pub fn drain_delivery_latencies(&mut self) -> std::vec::Drain<'_, Duration> {
        self.delivery_latencies.drain(..)
    }

    /// Payload bytes the receiver held before the session started (not sent again).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Moves `next_new` past blocks the receiver held at the start.
    fn skip_held(&mut self) {
        if let Some(r) = self.skip.range_at(self.next_new) {
            self.next_new = r.end;
        }
    }

    /// Draws from a host-wide cap from now on.
    pub fn set_cap(&mut self, lease: CapLease) {
        self.cap = Some(lease);
    }

    /// New target and minimum rate, effective for the next datagram.
    pub fn set_limits(&mut self, limits: RateLimits) {
        self.controller.set_limits(limits);
    }

    /// Pauses or resumes sending data. While paused only keepalives leave, so the session
    /// stays alive (the receiver's data timeout does not fire) and resumes where it was.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether data sending is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// New policy, effective for the next datagram.
    pub fn set_policy(&mut self, policy: Policy) {
        self.controller
            .set_policy(policy, self.manifest.block_size() as usize);
    }

    /// The rate controller, for reports.
    pub fn controller(&self) -> &PolicyController {
        &self.controller
    }

    /// Counters.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Inbound datagrams dropped, by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.inbound.drops
    }

    /// The RTT estimate.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// The manifest being sent.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the session is over (completed or failed).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether a block handed over as a separate source (`TxBuffers::slot_and_source`) is
    /// sealed in one pass; otherwise it is copied into its slot first, and reading it there
    /// directly is as cheap.
    pub fn seals_from_in_one_pass(&self) -> bool {
        self.seal.seals_from_in_one_pass()
    }

    /// Payload bytes the receiver reports taken in (duplicates included, so an
    /// approximation for progress), at most what this session has to send: the
    /// manifest's total less [`skipped_bytes`](Self::skipped_bytes).
    pub fn acknowledged_bytes(&self) -> u64 {
        let to_send = self.manifest.total_bytes() - self.skipped_bytes;
        if self.state != State::Sending && self.events_completed() {
            return to_send;
        }
        self.acked_payload.min(to_send)
    }

    fn events_completed(&self) -> bool {
        self.completed
    }

    /// Payload bytes in flight: sent, neither reported received nor reported lost.
    pub fn in_flight(&self) -> u64 {
        self.sent_payload
            .saturating_sub(self.acked_payload)
            .saturating_sub(self.nacked_payload)
    }

    /// Cancels the session: a close goes to the receiver and [`SenderEvent::Failed`] out.
    pub fn cancel(&mut self, now: Timestamp) {
        self.fail(now, FailureCode::Cancelled, "cancelled".into());
    }

    fn fail(&mut self, _now: Timestamp, code: FailureCode, reason: String) {
        if !matches!(self.state, State::Sending) {
            return;
        }
        self.state = State::Closing {
            code: code.close_code(),
            left: 2,
        };
        self.events
            .push_back(SenderEvent::Failed(Failure { code, reason }));
    }

    /// A datagram from the receiver. `datagram` is opened in place; the caller may reuse it
    /// on return. Call [`poll_event`](Self::poll_event), [`poll_transmit`](Self::poll_transmit)
    /// and [`poll_timeout`](Self::poll_timeout) again afterwards.
    pub fn handle_datagram(&mut self, now: Timestamp, datagram: &mut [u8]) {
        let Some(packet) = self.inbound.open(datagram) else {
            return;
        };
        self.last_recv = now;
        match packet {
            Packet::Feedback { feedback, .. } => self.on_feedback(now, &feedback),
            Packet::Close { close, .. } => {
                if close.code == wire::close_code::COMPLETE {
                    self.complete();
                } else if self.state == State::Sending {
                    self.state = State::Done;
                    self.events.push_back(SenderEvent::Failed(Failure {
                        code: FailureCode::PeerAborted,
                        reason: format!("receiver closed the session (code {})", close.code),
                    }));
                }
            }
            Packet::Keepalive { .. } => {}
            Packet::Data { .. } => self.inbound.unexpected(),
        }
    }

    fn complete(&mut self) {
        self.completed = true;
        if self.state == State::Sending {
            self.state = State::Closing {
                code: wire::close_code::COMPLETE,
                left: 2,
            };
            self.events.push_back(SenderEvent::Complete);
        }
    }

    fn on_feedback(&mut self, now: Timestamp, fb: &Feedback) {
        self.stats.feedbacks += 1;
        let gap = now
            .saturating_since(self.last_feedback)
            .min(Duration::from_millis(100));
        self.feedback_gap = (self.feedback_gap * 7 + gap) / 8;
        self.last_feedback = now;
        let fresh = self
            .last_fb_recv_us
            .is_none_or(|(t, _)| fb.recv_time_us >= t);
        if fb.recv_bytes > 0 && fresh {
            let sample = now
                .as_micros()
                .saturating_sub(fb.echo_ts_us)
                .saturating_sub(u64::from(fb.echo_delay_us));
            self.rtt.update(Duration::from_micros(sample.max(1)));
        }
        let total = self.manifest.total_blocks();
        let cum = fb.cum_block.min(total);
        let mut progressed = cum > self.cum;
        if cum > self.cum {
            self.cum = cum;
            let keep = self.resend_order.split_off(&cum);
            for b in std::mem::replace(&mut self.resend_order, keep) {
                self.resend_pending.remove(&b);
            }
            self.resent_at = self.resent_at.split_off(&cum);
            while let Some(&(b, sent)) = self.delivery_marks.front() {
                if b >= cum {
                    break;
                }
                self.delivery_marks.pop_front();
                if self.delivery_latencies.len() < MAX_DELIVERY_SAMPLES {
                    self.delivery_latencies.push(now.saturating_since(sent));
                }
            }
        }
        let highest = fb.highest_block.min(self.sent_frontier);
        progressed |= highest > self.highest;
        if progressed {
            self.last_progress = now;
        }
        if highest > self.highest {
            self.highest = highest;
            self.probe_backoff = 0;
            self.probe_deadline =
                (self.sent_frontier > highest).then(|| now + self.probe_timeout());
        }
        if fresh {
            self.missing = fb.missing_blocks;
        }
        let mut lost = 0u64;
        for r in &fb.nacks {
            let first = r.first.max(self.cum);
            let end = r
                .first
                .saturating_add(u64::from(r.count))
                .min(self.sent_frontier);
            // Repeats follow within a few feedback intervals, re-NACKs a round trip later.
            let repeat_window = (self.rtt.srtt() / 2).max(self.feedback_gap * 4);
            for b in first..end {
                if self
                    .resent_at
                    .get(&b)
                    .is_some_and(|&t| now.saturating_since(t) < repeat_window)
                {
                    continue;
                }
                let len = u64::from(self.manifest.block(b).len);
                lost += len;
                self.stats.nacked_blocks += 1;
                if self.resend_pending.insert(b) {
                    self.resend_order.insert(b);
                }
            }
        }
        self.nacked_payload += lost;
        let mut delivered = 0;
        let mut delivery_rate = None;
        if fresh {
            if let Some((t0, b0)) = self.last_fb_recv_us {
                delivered = fb.recv_bytes.saturating_sub(b0);
                let dt = fb.recv_time_us.saturating_sub(t0);
                if dt > 0 {
                    delivery_rate = Some(delivered as f64 * 1e6 / dt as f64);
                }
            }
            self.acked_payload = self.acked_payload.max(fb.recv_bytes);
            self.last_fb_recv_us = Some((fb.recv_time_us, fb.recv_bytes));
        }
        let signal = PathSignal {
            owd_us: if fresh { fb.owd_min_us } else { None },
            srtt: self.rtt.srtt(),
            min_rtt: self.rtt.min(),
            delivery_rate,
            capacity: (fb.pair_rate > 0).then_some(fb.pair_rate as f64),
            lost_bytes: lost,
            delivered_bytes: delivered,
        };
        self.controller.on_feedback(now, &signal);
        if fb.complete {
            self.complete();
        }
    }

    /// Reports a finished read of `slot`. On error the session fails.
    pub fn handle_read_done(&mut self, now: Timestamp, slot: u32, result: Result<(), String>) {
        let Some((block, origin)) = self.reading.get_mut(slot as usize).and_then(Option::take)
        else {
            return;
        };
        if let Err(e) = result {
            self.free_slots.push(slot);
            let r = self.manifest.block(block);
            self.fail(
                now,
                FailureCode::ReadFailed,
                format!("reading file {} at {}: {e}", r.file, r.offset),
            );
            return;
        }
        let ready = Ready {
            slot,
            block,
            origin,
        };
        match origin {
            Origin::New => self.ready_new.push_back(ready),
            Origin::Resend | Origin::Copy => self.ready_urgent.push_back(ready),
        }
    }

    /// The next thing the caller must do: a disk read, or the end of the session.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        if self.state == State::Sending {
            self.schedule_reads();
        }
        self.events.pop_front()
    }

    fn schedule_reads(&mut self) {
        // When the window is full, new blocks wait in their slots; a tail probe with no
        // slot to be read into would never leave, nor ever reveal the losses that would
        // empty the window. It takes the newest new block's slot (read again later).
        if self.free_slots.is_empty()
            && self
                .probe_block
                .is_some_and(|b| self.resend_order.contains(&b))
            && let Some(newest) = self.ready_new.pop_back()
        {
            self.free_slots.push(newest.slot);
            self.next_new = self.next_new.min(newest.block);
        }
        while let Some(&slot) = self.free_slots.last() {
            let (block, origin) = if let Some(b) = self.resend_order.pop_first() {
                (b, Origin::Resend)
            } else if let Some(b) = self.copies.pop_front() {
                (b, Origin::Copy)
            } else if self.next_new < self.manifest.total_blocks()
                && self.next_new < self.cum + self.cfg.window_blocks
            {
                let block = self.next_new;
                self.next_new += 1;
                self.skip_held();
                (block, Origin::New)
            } else {
                return;
            };
            self.free_slots.pop();
            self.reading[slot as usize] = Some((block, origin));
            self.events.push_back(SenderEvent::Read {
                slot,
                block: self.manifest.block(block),
            });
        }
    }

    fn datagram_len(&self, payload: u32) -> usize {
        wire::DATA_HEADER_LEN + payload as usize + self.seal.trailer_len()
    }

    fn window_open(&self) -> bool {
        match self.controller.window() {
            // Lost datagrams count as in flight until their NACK arrives; at the channel's
            // loss rate they would otherwise eat the window's share of the queue.
            Some(w) => (self.in_flight() as f64) < w * (1.0 + self.loss_rate()),
            None => true,
        }
    }

    /// Where the flow stands, for the report of a stalled session.
    fn stall_state(&self, now: Timestamp) -> String {
        format!(
            "cum {} highest {} sent {} in flight {} window {:.0} rate {:.0} B/s pacing {:.0} \
             B/s urgent {} new {} resend {} reading {} free {} probes {} backoff {} \
             probe in {:?} paused {}",
            self.cum,
            self.highest,
            self.sent_frontier,
            self.in_flight(),
            self.controller.window().unwrap_or(-1.0),
            self.controller.rate(),
            self.pacing_rate(),
            self.ready_urgent.len(),
            self.ready_new.len(),
            self.resend_order.len(),
            self.reading.iter().filter(|r| r.is_some()).count(),
            self.free_slots.len(),
            self.stats.probes,
            self.probe_backoff,
            self.probe_deadline.map(|d| d.saturating_since(now)),
            self.paused,
        )
    }

    /// Share of sent blocks reported lost so far.
    fn loss_rate(&self) -> f64 {
        (self.stats.nacked_blocks as f64 / self.sent_blocks.max(1) as f64).min(0.5)
    }

    /// The pacing rate right now: the controller's, or the minimum rate while the window is
    /// full.
    fn pacing_rate(&self) -> f64 {
        if self.window_open() {
            self.controller.rate()
        } else {
            self.controller.limits().min_bps as f64 / 8.0
        }
    }

    /// The pacing rate for `ready`: as [`pacing_rate`](Self::pacing_rate), except that
    /// the tail probe itself leaves at the controller's rate even with the window full
    /// (only it: other re-sends wait for the window, which the NACKs it brings will open). A window full of datagrams lost beyond the receiver's highest
    /// block is only ever emptied by what the probe reveals; held back by that very window
    /// (at a minimum rate of 0) the probe would never leave, and the session would stall
    /// for good.
    fn pacing_rate_for(&self, ready: &Ready) -> f64 {
        let rate = self.pacing_rate();
        if rate <= 0.0 && self.probe_block == Some(ready.block) && ready.origin == Origin::Resend {
            self.controller.rate()
        } else {
            rate
        }
    }

    fn next_ready(&self) -> Option<&Ready> {
        self.ready_urgent.front().or_else(|| {
            self.ready_new
                .front()
                .filter(|r| r.block < self.cum + self.cfg.window_blocks)
        })
    }

    /// Writes the next datagram, if one may leave at `now`, into `buffers` and says where.
    /// Data datagrams are sealed in the slot their block was read into; the slot returns to
    /// the sender (a later [`SenderEvent::Read`] may name it), so send the datagram before
    /// acting on later events. No read is asked for before the next
    /// [`poll_event`](Self::poll_event), so a caller may gather several datagrams (a GSO
    /// burst) and send them together before polling events. Call again until it returns
    /// `None`.
    pub fn poll_transmit(
        &mut self,
        now: Timestamp,
        buffers: &mut impl TxBuffers,
    ) -> Option<Transmit> {
        match self.state {
            State::Done => return None,
            State::Closing { code, left } => {
                let len = self.write_control(buffers.control(), now, Kind::Close, code);
                self.state = if left <= 1 {
                    State::Done
                } else {
                    State::Closing {
                        code,
                        left: left - 1,
                    }
                };
                return len.map(|len| Transmit {
                    buffer: TxBuffer::Control,
                    len,
                });
            }
            State::Sending => {}
        }
        if self.paused {
            // A pause is not a stall: the progress clock starts again on resume.
            self.last_progress = now;
        }
        if let Some(&ready) = self.next_ready().filter(|_| !self.paused) {
            let len = self.manifest.block(ready.block).len;
            let wire_len = self.datagram_len(len);
            let rate = self.pacing_rate_for(&ready);
            if rate > 0.0 && self.pacer.earliest_departure(now, rate, wire_len) <= now {
                let capped = match &mut self.cap {
                    Some(lease) => lease.try_take(now, wire_len).is_err(),
                    None => false,
                };
                if !capped {
                    return self.transmit_data(now, ready, rate, wire_len, buffers);
                }
            }
        }
        if self.announce || now.saturating_since(self.last_send) >= self.cfg.keepalive_interval {
            self.announce = false;
            let len = self.write_control(buffers.control(), now, Kind::Keepalive, 0)?;
            return Some(Transmit {
                buffer: TxBuffer::Control,
                len,
            });
        }
        None
    }

    fn transmit_data(
        &mut self,
        now: Timestamp,
        ready: Ready,
        rate: f64,
        wire_len: usize,
        buffers: &mut impl TxBuffers,
    ) -> Option<Transmit> {
        match ready.origin {
            Origin::New => self.ready_new.pop_front(),
            Origin::Resend | Origin::Copy => self.ready_urgent.pop_front(),
        };
        self.free_slots.push(ready.slot);
        let block = self.manifest.block(ready.block);
        let opened = self.pacer.on_sent(now, rate, wire_len);
        let mut flags = if opened { data_flags::BURST } else { 0 };
        match ready.origin {
            Origin::New => {
                self.stats.new_bytes += u64::from(block.len);
                if ready.block.is_multiple_of(DELIVERY_SAMPLE) {
                    self.delivery_marks.push_back((ready.block, now));
                }
                self.sent_frontier = self.sent_frontier.max(ready.block + 1);
                if Some(ready.block) == self.last_new {
                    // Nothing follows the final block to reveal its loss: send copies.
                    for _ in 0..2 {
                        self.copies.push_back(ready.block);
                    }
                }
            }
            Origin::Resend => {
                flags |= data_flags::RETRANSMIT;
                if self.probe_block == Some(ready.block) {
                    self.probe_block = None;
                }
                self.stats.resent_bytes += u64::from(block.len);
                self.resend_pending.remove(&ready.block);
                self.resent_at.insert(ready.block, now);
                self.plan_tail_copies(ready.block, block.len);
            }
            Origin::Copy => {
                flags |= data_flags::RETRANSMIT | data_flags::PROBE;
                self.stats.copy_bytes += u64::from(block.len);
            }
        }
        if self.sent_frontier > self.highest && self.probe_deadline.is_none() {
            self.probe_deadline = Some(now + self.probe_timeout());
        }
        let header = Header {
            kind: Kind::Data,
            flags,
            session: self.cfg.session,
            pn: self.next_pn,
            send_ts_us: now.as_micros(),
        };
        self.next_pn += 1;
        let (buf, source) = buffers.slot_and_source(ready.slot);
        header.encode(buf);
        block.encode_at(buf);
        let len = match source {
            Some(body) => {
                debug_assert_eq!(body.len(), block.len as usize);
                self.seal.seal_from(buf, wire::DATA_HEADER_LEN, body)
            }
            None => self
                .seal
                .seal(buf, wire::DATA_HEADER_LEN, block.len as usize),
        }
        .expect("slot buffers are sized for a block");
        debug_assert_eq!(len, wire_len);
        self.sent_payload += u64::from(block.len);
        self.sent_blocks += 1;
        self.stats.datagrams += 1;
        self.stats.wire_bytes += len as u64;
        self.stats.first_data_at.get_or_insert(now);
        self.last_send = now;
        self.last_data_send = now;
        self.controller.on_sent(now, len);
        if self.next_ready().is_none() {
            self.pacer.end_burst();
        }
        Some(Transmit {
            buffer: TxBuffer::Slot(ready.slot),
            len,
        })
    }

    /// Once no new data is left, a re-sent block takes redundant copies into the idle
    /// capacity: enough that the expected number of blocks still missing after this round
    /// is small, within the redundancy budget spread over the blocks still outstanding.
    fn plan_tail_copies(&mut self, block: u64, len: u32) {
        if self.next_new < self.manifest.total_blocks() {
            return;
        }
        let loss = self.loss_rate().max(0.001);
        let outstanding = (self.resend_pending.len() as u64 + self.missing).max(1) as f64;
        let mut copies = 1;
        while copies < 6 && outstanding * loss.powi(copies) > 0.02 {
            copies += 1;
        }
        let queued = self.copies.len() as u64 * u64::from(len);
        let budget_left = self
            .copy_budget
            .saturating_sub(self.stats.copy_bytes + queued);
        let mut affordable = (budget_left as f64 / (outstanding * f64::from(len))).ceil() as i32;
        if outstanding <= 16.0 {
            // The last few blocks decide when the transfer ends; copies of them are cheap.
            affordable = affordable.max(3);
        }
        for _ in 1..copies.min(1 + affordable) {
            self.copies.push_back(block);
        }
    }

    fn probe_timeout(&self) -> Duration {
        let base = self.rtt.srtt() + 4 * self.rtt.rttvar() + Duration::from_millis(10);
        base * (1 << self.probe_backoff.min(6))
    }

    fn write_control(
        &mut self,
        buf: &mut [u8],
        now: Timestamp,
        kind: Kind,
        code: u16,
    ) -> Option<usize> {
        let header = Header {
            kind,
            flags: 0,
            session: self.cfg.session,
            pn: self.next_pn,
            send_ts_us: now.as_micros(),
        };
        header.encode(buf);
        let body = match kind {
            Kind::Close => Close { code }
                .encode_body(&mut buf[wire::COMMON_HEADER_LEN..])
                .ok()?,
            _ => 0,
        };
        let len = self.seal.seal(buf, wire::COMMON_HEADER_LEN, body).ok()?;
        self.next_pn += 1;
        self.last_send = now;
        self.stats.datagrams += 1;
        self.stats.wire_bytes += len as u64;
        Some(len)
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) has something to do, if any.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            State::Done => return None,
            State::Closing { .. } => return Some(Timestamp::ZERO),
            State::Sending => {}
        }
        if self.announce {
            return Some(Timestamp::ZERO);
        }
        let mut t = self.last_recv + self.cfg.data_timeout;
        if !self.paused {
            t = t.min(self.last_progress + self.cfg.data_timeout);
        }
        t = t.min(self.last_send + self.cfg.keepalive_interval);
        t = t.min(self.last_silence.max(self.last_feedback) + self.silence_timeout());
        if let Some(p) = self.probe_deadline {
            t = t.min(p);
        }
        if let Some(ready) = self.next_ready().filter(|_| !self.paused) {
            let rate = self.pacing_rate_for(ready);
            if rate > 0.0 {
                let len = self.datagram_len(self.manifest.block(ready.block).len);
                t = t.min(self.pacer.earliest_departure(self.last_send, rate, len));
            }
        }
        Some(t)
    }

    fn silence_timeout(&self) -> Duration {
        (self.rtt.srtt() * 3 + Duration::from_millis(50)).max(Duration::from_millis(200))
    }

    /// Time has reached `now`: data timeout, silence back-off, tail probes.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.state != State::Sending {
            return;
        }
        if now.saturating_since(self.last_recv) >= self.cfg.data_timeout {
            let secs = self.cfg.data_timeout.as_secs();
            self.fail(
                now,
                FailureCode::DataTimeout,
                format!("no datagram from the receiver for {secs} s"),
            );
            return;
        }
        if self.paused {
            self.last_progress = now;
        } else if now.saturating_since(self.last_progress) >= self.cfg.data_timeout {
            // The receiver answers but holds nothing new: whatever wedged the flow, a
            // failure that `--retry` resumes beats a session that hangs.
            let secs = self.cfg.data_timeout.as_secs();
            let state = self.stall_state(now);
            self.fail(
                now,
                FailureCode::DataTimeout,
                format!("the receiver got no new data for {secs} s ({state})"),
            );
            return;
        }
        let since = now.saturating_since(self.last_feedback.max(self.last_silence));
        if since >= self.silence_timeout() && self.sent_payload > 0 {
            self.last_silence = now;
            self.controller
                .on_silence(now, now.saturating_since(self.last_feedback));
        }
        if let Some(deadline) = self.probe_deadline
            && now >= deadline
        {
            self.probe_deadline = None;
            if self.sent_frontier > self.highest {
                // The receiver has not seen our newest block: re-send it, so whatever was
                // lost before it shows as a gap.
                let probe = self.sent_frontier - 1;
                self.stats.probes += 1;
                self.probe_backoff += 1;
                self.probe_block = Some(probe);
                if probe >= self.cum && self.resend_pending.insert(probe) {
                    self.resend_order.insert(probe);
                }
                self.probe_deadline = Some(now + self.probe_timeout());
            }
        }
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::*;
    use crate::crypto::{Cipher, Direction};
    use crate::{Receiver, ReceiverConfig};

    /// A lossless session over an in-memory path with `one_way` delay each way, stepped
    /// every 100 µs; returns the delivery latencies the sender measured.
    fn lossless_session(one_way: Duration) -> Vec<Duration> {
        session(Policy::Fixed, one_way, 4 << 20, |_| false)
    }

    /// A session of `policy` carrying one file of `size` bytes over an in-memory path with
    /// `one_way` delay each way, whose datagrams to the receiver vanish while `lost(now)`;
    /// stepped every 100 µs. Returns the delivery latencies the sender measured; panics,
    /// with the sender's state, if it does not finish in 20 s.
    fn session(
        policy: Policy,
        one_way: Duration,
        size: u64,
        lost: impl Fn(Timestamp) -> bool,
    ) -> Vec<Duration> {
        let path = Path {
            one_way,
            limits: RateLimits::new(200_000_000, 0),
            queue: usize::MAX,
            block: 8192,
        };
        session_on(policy, path, size, lost, |_| false)
    }

    /// The path of [`session_on`].
    struct Path {
        one_way: Duration,
        limits: RateLimits,
        /// Datagrams that may wait for a frozen receiver (its socket buffer); more are
        /// dropped.
        queue: usize,
        /// Payload bytes per block.
        block: u32,
    }

    /// As [`session`], with a receiver that does nothing at all while `frozen(now)` (a
    /// data thread stalled in a write): datagrams wait for it, up to `path.queue`.
    fn session_on(
        policy: Policy,
        path: Path,
        size: u64,
        lost: impl Fn(Timestamp) -> bool,
        frozen: impl Fn(Timestamp) -> bool,
    ) -> Vec<Duration> {
        let one_way = path.one_way;
        let secret = [7u8; 32];
        let manifest = Manifest::new(vec![size], path.block).unwrap();
        let mut cfg = SenderConfig::new(1, Cipher::Aes128Gcm, secret, Direction::ClientToServer);
        cfg.policy = policy;
        cfg.limits = path.limits;
        let mut s: Sender = Sender::new(cfg.clone(), manifest.clone(), Timestamp::ZERO);
        let rcfg = ReceiverConfig::new(1, Cipher::Aes128Gcm, secret, Direction::ClientToServer);
        let mut r: Receiver = Receiver::new(rcfg, manifest, Timestamp::ZERO);
        let mut bufs =
            SlotBuffers::new(cfg.read_ahead, path.block, Cipher::Aes128Gcm.trailer_len());
        let mut fb = vec![0u8; 2048];
        // Datagrams in flight each way, with their arrival times.
        let mut to_r: VecDeque<(Timestamp, Vec<u8>)> = VecDeque::new();
        let mut to_s: VecDeque<(Timestamp, Vec<u8>)> = VecDeque::new();
        let mut got = Vec::new();
        let mut now = Timestamp::ZERO;
        while !s.is_done() && now < Timestamp::from_nanos(20_000_000_000) {
            while let Some(ev) = s.poll_event() {
                if let SenderEvent::Read { slot, .. } = ev {
                    s.handle_read_done(now, slot, Ok(()));
                }
            }
            let frozen_now = frozen(now);
            while let Some(tx) = s.poll_transmit(now, &mut bufs) {
                if !lost(now) && (!frozen_now || to_r.len() < path.queue) {
                    to_r.push_back((now + one_way, bufs.bytes(&tx).to_vec()));
                }
            }
            if frozen_now {
                while to_s.front().is_some_and(|(t, _)| *t <= now) {
                    let (_, mut d) = to_s.pop_front().unwrap();
                    s.handle_datagram(now, &mut d);
                }
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                now += Duration::from_micros(100);
                continue;
            }
            while to_r.front().is_some_and(|(t, _)| *t <= now) {
                let (_, mut d) = to_r.pop_front().unwrap();
                if r.handle_datagram(now, &mut d).is_some() {
                    r.handle_write_done(now, Ok(()));
                }
            }
            while let Some(len) = r.poll_transmit(now, &mut fb) {
                to_s.push_back((now + one_way, fb[..len].to_vec()));
            }
            while to_s.front().is_some_and(|(t, _)| *t <= now) {
                let (_, mut d) = to_s.pop_front().unwrap();
                s.handle_datagram(now, &mut d);
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
            got.extend(s.drain_delivery_latencies());
            now += Duration::from_micros(100);
        }
        assert!(
            s.is_done(),
            "the session did not finish: cum {} highest {} frontier {} in flight {} window {:?} \
             probes {} urgent {} new {} resend {:?} state {:?}",
            s.cum,
            s.highest,
            s.sent_frontier,
            s.in_flight(),
            s.controller.window(),
            s.stats.probes,
            s.ready_urgent.len(),
            s.ready_new.len(),
            s.resend_order.iter().take(3).collect::<Vec<_>>(),
            s.state,
        );
        got
    }

    /// A black hole swallows everything in flight for 750 ms, tail included: no gap shows,
    /// so only the tail probe can restart the flow.
    #[test]
    fn a_full_window_lost_whole_recovers_through_the_probe() {
        let hole = |t: Timestamp| {
            (Timestamp::from_nanos(150_000_000)..Timestamp::from_nanos(900_000_000)).contains(&t)
        };
        session(Policy::Fair, Duration::from_millis(10), 64 << 20, hole);
    }

    /// The receiver answers (idle feedback, keepalives) but no data reaches it any more:
    /// the sender does not wait forever; it fails with a data timeout, which `--retry`
    /// resumes.
    #[test]
    fn a_receiver_that_answers_but_gets_nothing_new_times_out() {
        let secret = [7u8; 32];
        let manifest = Manifest::new(vec![64 << 20], 8192).unwrap();
        let mut cfg = SenderConfig::new(1, Cipher::Aes128Gcm, secret, Direction::ClientToServer);
        cfg.policy = Policy::Fair;
        cfg.data_timeout = Duration::from_secs(2);
        let mut s: Sender = Sender::new(cfg.clone(), manifest.clone(), Timestamp::ZERO);
        let rcfg = ReceiverConfig::new(1, Cipher::Aes128Gcm, secret, Direction::ClientToServer);
        let mut r: Receiver = Receiver::new(rcfg, manifest, Timestamp::ZERO);
        let mut bufs = SlotBuffers::new(cfg.read_ahead, 8192, Cipher::Aes128Gcm.trailer_len());
        let mut fb = vec![0u8; 2048];
        let mut now = Timestamp::ZERO;
        let mut failure = None;
        while failure.is_none() && now < Timestamp::from_nanos(10_000_000_000) {
            while let Some(ev) = s.poll_event() {
                match ev {
                    SenderEvent::Read { slot, .. } => s.handle_read_done(now, slot, Ok(())),
                    SenderEvent::Failed(f) => failure = Some((now, f)),
                    SenderEvent::Complete => {}
                }
            }
            // After 50 ms only the sender's keepalives (and no data) get through.
            let cut = now > Timestamp::from_nanos(50_000_000);
            while let Some(tx) = s.poll_transmit(now, &mut bufs) {
                let mut d = bufs.bytes(&tx).to_vec();
                if !(cut && matches!(tx.buffer, TxBuffer::Slot(_)))
                    && r.handle_datagram(now, &mut d).is_some()
                {
                    r.handle_write_done(now, Ok(()));
                }
            }
            while let Some(len) = r.poll_transmit(now, &mut fb) {
                s.handle_datagram(now, &mut fb[..len].to_vec());
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
            now += Duration::from_micros(500);
        }
        let (at, f) = failure.expect("the sender gave up");
        assert_eq!(f.code, FailureCode::DataTimeout, "{f:?}");
        assert!(f.reason.contains("no new data"), "{f:?}");
        assert!(at < Timestamp::from_nanos(2_200_000_000), "{at:?}");
    }

    /// The receiver's data thread stalls for `stall` (a write blocked in memory reclaim)
    /// on a fast short path: the sender hears nothing, what it sends queues up to
    /// `queue` datagrams (a socket buffer) and the rest is lost; the flow must pick up
    /// again after. The queued datagrams tell the receiver of a one-way delay of seconds.
    fn stalled_receiver(stall: Duration, queue: usize) {
        let path = Path {
            one_way: Duration::from_micros(25),
            limits: RateLimits::new(100_000_000_000, 0),
            queue,
            block: 8192,
        };
        let from = Timestamp::from_nanos(2_000_000);
        let frozen = move |t: Timestamp| t >= from && t < from + stall;
        let last = std::cell::Cell::new(Timestamp::ZERO);
        session_on(
            Policy::Fair,
            path,
            1 << 30,
            |_| false,
            |t| {
                last.set(t);
                frozen(t)
            },
        );
        assert!(last.get() > from + stall, "the stall came after the end");
    }

    #[test]
    fn a_receiver_stalled_for_a_second_is_caught_up_with() {
        stalled_receiver(Duration::from_secs(1), 500);
    }

    #[test]
    fn a_receiver_stalled_for_five_seconds_is_caught_up_with() {
        stalled_receiver(Duration::from_secs(5), 500);
    }

    #[test]
    fn a_receiver_stalled_with_an_empty_buffer_is_caught_up_with() {
        stalled_receiver(Duration::from_secs(5), 0);
    }

    /// A small socket buffer: some datagrams reach the receiver seconds late (a queueing
    /// delay of seconds in their one-way delay), the rest of the window is lost.
    #[test]
    fn a_receiver_stalled_behind_a_small_buffer_is_caught_up_with() {
        for queue in [5, 20, 40] {
            stalled_receiver(Duration::from_secs(5), queue);
        }
    }

    /// The state a real loopback session stalled in: the window full of datagrams lost
    /// beyond the receiver's highest block (so no NACK will come), every read-ahead slot
    /// holding a new block that the full window keeps in, and a tail probe due. The probe
    /// must still be read into a slot and leave, or nothing ever moves again.
    #[test]
    fn a_probe_finds_a_slot_when_new_blocks_wait_in_the_others() {
        let secret = [7u8; 32];
        let manifest = Manifest::new(vec![64 << 20], 8192).unwrap();
        let mut cfg = SenderConfig::new(1, Cipher::Aes128Gcm, secret, Direction::ClientToServer);
        cfg.policy = Policy::Fair;
        cfg.limits = RateLimits::new(10_000_000_000, 0);
        let mut s: Sender = Sender::new(cfg.clone(), manifest, Timestamp::ZERO);
        let mut bufs = SlotBuffers::new(cfg.read_ahead, 8192, Cipher::Aes128Gcm.trailer_len());
        let mut now = Timestamp::ZERO;
        let mut step = |s: &mut Sender, now: Timestamp| {
            while let Some(ev) = s.poll_event() {
                if let SenderEvent::Read { slot, .. } = ev {
                    s.handle_read_done(now, slot, Ok(()));
                }
            }
            while s.poll_transmit(now, &mut bufs).is_some() {}
        };
        for _ in 0..20 {
            step(&mut s, now);
            now += Duration::from_micros(100);
        }
        assert!(s.sent_frontier > s.highest, "some blocks left");
        // Everything sent is lost and counts in flight: the window is full.
        s.sent_payload += 1 << 40;
        step(&mut s, now);
        assert!(!s.window_open());
        assert_eq!(s.ready_new.len(), cfg.read_ahead as usize);
        let resent = s.stats.resent_bytes;
        s.probe_deadline = Some(now);
        s.handle_timeout(now);
        for _ in 0..50 {
            now += Duration::from_micros(100);
            step(&mut s, now);
        }
        assert!(
            s.stats.resent_bytes > resent,
            "the probe never left: {}",
            s.stall_state(now)
        );
    }

    #[test]
    fn delivery_latency_is_about_a_round_trip_without_loss() {
        let got = lossless_session(Duration::from_millis(10));
        // 512 blocks, one in 64 sampled.
        assert!(got.len() >= 6, "{got:?}");
        for d in &got {
            // A round trip (20 ms) plus the feedback interval and pacing, never less.
            assert!(
                *d >= Duration::from_millis(20) && *d < Duration::from_millis(60),
                "{got:?}"
            );
        }
    }
}
