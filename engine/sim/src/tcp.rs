//! A segment-level model of a bulk TCP flow, to compete with ferry on a shared bottleneck.
//!
//! The sender always has data (optionally up to a limit) and sends full-sized segments on fixed
//! MSS boundaries, ACK-clocked and unpaced. Loss recovery is SACK-based (RFC 6675 in spirit, with
//! FACK-style loss marking: an unsacked segment is lost once a segment three or more above it has
//! been sacked), with one window reduction per recovery episode, and a retransmission timeout per
//! RFC 6298 (exponential backoff, cwnd = 1). Congestion control is Reno (RFC 5681) or CUBIC
//! (RFC 9438, including the Reno-friendly region and fast convergence).
//!
//! The receiver acknowledges every segment immediately. Its "SACK-lite" reports only the segment
//! that triggered the acknowledgement, when it lies above the cumulative ack; real SACK repeats up
//! to three blocks, so a lost ack here loses that information (the sender then finds out through
//! the cumulative ack or a timeout). Acks echo the send time of the segment that triggered them,
//! as TCP timestamps do, so every ack that acknowledges new data yields an RTT sample.

use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use ferry_tuning::Timestamp;
use serde::Serialize;

use crate::link::SimPacket;
use crate::rng::Rng;

/// The congestion control algorithm of a [`TcpSender`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum CongestionAlgorithm {
    /// Slow start, AIMD (one segment per RTT), halve on loss.
    Reno,
    /// CUBIC (RFC 9438): C = 0.4, β = 0.7.
    #[default]
    Cubic,
}

/// The configuration of a TCP flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpConfig {
    /// Maximum segment size (payload bytes per segment).
    pub mss: usize,
    /// Congestion control algorithm.
    pub algorithm: CongestionAlgorithm,
    /// Initial congestion window, in segments.
    pub initial_cwnd: u32,
    /// Lower bound of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout (backoff included).
    pub max_rto: Duration,
    /// Retransmission timeout before the first RTT sample.
    pub initial_rto: Duration,
    /// IP + TCP header bytes per segment and per ack (52: IPv4 + TCP with timestamps).
    pub header_bytes: usize,
    /// Total payload bytes to send; `None` is an endless bulk transfer.
    pub limit_bytes: Option<u64>,
    /// Receive window: the most bytes in flight the receiver allows; `None` is unlimited.
    pub rwnd_bytes: Option<u64>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            mss: 1448,
            algorithm: CongestionAlgorithm::Cubic,
            initial_cwnd: 10,
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            initial_rto: Duration::from_secs(1),
            header_bytes: 52,
            limit_bytes: None,
            rwnd_bytes: None,
        }
    }
}

/// A data segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number of the first payload byte (starting at 0).
    pub seq: u64,
    /// Payload bytes.
    pub len: u32,
    /// Whether this is a retransmission.
    pub retransmit: bool,
    /// When the sender sent it (echoed by the ack, like a TCP timestamp option).
    pub sent_at: Timestamp,
    /// IP + TCP header bytes.
    pub header_bytes: u16,
}

impl TcpSegment {
    /// Size of the whole IP packet: payload plus headers.
    pub fn wire_len(&self) -> usize {
        self.len as usize + usize::from(self.header_bytes)
    }

    /// One past the last payload byte.
    pub fn end(&self) -> u64 {
        self.seq + u64::from(self.len)
    }
}

/// An acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpAck {
    /// Cumulative ack: every byte below it has been received.
    pub ack: u64,
    /// The byte range `[start, end)` of the out-of-order segment that triggered this ack.
    pub sack: Option<(u64, u64)>,
    /// `sent_at` of the segment that triggered this ack.
    pub echo: Timestamp,
    /// IP + TCP header bytes.
    pub header_bytes: u16,
}

impl TcpAck {
    /// Size of the whole IP packet (headers only).
    pub fn wire_len(&self) -> usize {
        usize::from(self.header_bytes)
    }
}

/// TCP segments are whole IP packets: [`SimPacket::wire_len`] includes the IP and TCP headers,
/// so a link carrying them alone should have `overhead_bytes: 0`. A damaged segment fails the
/// TCP checksum and is dropped.
impl SimPacket for TcpSegment {
    fn wire_len(&self) -> usize {
        TcpSegment::wire_len(self)
    }
    fn corrupt(&mut self, _rng: &mut Rng) -> bool {
        false
    }
    fn duplicate(&self) -> Self {
        *self
    }
}

/// As for [`TcpSegment`]: the whole IP packet, dropped when damaged.
impl SimPacket for TcpAck {
    fn wire_len(&self) -> usize {
        TcpAck::wire_len(self)
    }
    fn corrupt(&mut self, _rng: &mut Rng) -> bool {
        false
    }
    fn duplicate(&self) -> Self {
        *self
    }
}

/// Counters of a [`TcpSender`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpSenderStats {
    /// Segments sent, retransmissions included.
    pub segments_sent: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// Fast-recovery episodes entered.
    pub recoveries: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
}

/// Per-segment scoreboard flags.
const SACKED: u8 = 1;
const LOST: u8 = 2;
const RETRANS: u8 = 4;
/// Segments sacked above an unsacked one before it is deemed lost.
const DUP_THRESH: u64 = 3;

const CUBIC_C: f64 = 0.4;
const CUBIC_BETA: f64 = 0.7;
const RENO_BETA: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Normal operation: the window grows.
    Open,
    /// Fast recovery until `snd_una` reaches `recover`; the window stays at ssthresh.
    Recovery { recover: u64 },
    /// After a timeout until `snd_una` reaches `recover`; slow start from one segment.
    Loss { recover: u64 },
}

/// CUBIC's state (RFC 9438), windows in segments.
#[derive(Clone, Debug, Default)]
struct Cubic {
    w_max: f64,
    k: f64,
    epoch_start: Option<Timestamp>,
    w_est: f64,
}

/// The sending side of a bulk TCP flow.
#[derive(Clone, Debug)]
pub struct TcpSender {
    cfg: TcpConfig,
    mss: u64,
    header: u16,
    /// Oldest unacknowledged byte.
    snd_una: u64,
    /// Next new byte to send.
    snd_nxt: u64,
    /// Scoreboard flags of the segments in `[snd_una / mss, snd_nxt / mss)`.
    board: VecDeque<u8>,
    sacked_out: u64,
    lost_out: u64,
    retrans_out: u64,
    /// Index (segment number) of the highest sacked segment + 1; 0 when none.
    high_sacked: u64,
    /// Segments below this index have been checked for loss.
    lost_frontier: u64,
    /// Where the search for the next segment to retransmit resumes.
    rexmit_next: u64,
    /// Congestion window and slow-start threshold, in segments.
    cwnd: f64,
    ssthresh: f64,
    state: State,
    cubic: Cubic,
    srtt: Option<f64>,
    rttvar: f64,
    /// RTO before backoff, in nanoseconds.
    base_rto: f64,
    backoff: u32,
    rto_deadline: Option<Timestamp>,
    stats: TcpSenderStats,
}

impl TcpSender {
    /// A sender that starts sending on the first [`TcpSender::poll_transmit`].
    pub fn new(cfg: TcpConfig) -> TcpSender {
        let mss = cfg.mss.max(1) as u64;
        let header = u16::try_from(cfg.header_bytes).unwrap_or(u16::MAX);
        TcpSender {
            mss,
            header,
            snd_una: 0,
            snd_nxt: 0,
            board: VecDeque::new(),
            sacked_out: 0,
            lost_out: 0,
            retrans_out: 0,
            high_sacked: 0,
            lost_frontier: 0,
            rexmit_next: 0,
            cwnd: f64::from(cfg.initial_cwnd.max(1)),
            ssthresh: f64::INFINITY,
            state: State::Open,
            cubic: Cubic::default(),
            srtt: None,
            rttvar: 0.0,
            base_rto: cfg.initial_rto.as_nanos() as f64,
            backoff: 0,
            rto_deadline: None,
            stats: TcpSenderStats::default(),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// Congestion window in bytes.
    pub fn cwnd(&self) -> u64 {
        (self.cwnd * self.mss as f64) as u64
    }

    /// Slow-start threshold in bytes (`u64::MAX` before the first loss).
    pub fn ssthresh(&self) -> u64 {
        if self.ssthresh.is_finite() {
            (self.ssthresh * self.mss as f64) as u64
        } else {
            u64::MAX
        }
    }

    /// Smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(|ns| Duration::from_nanos(ns as u64))
    }

    /// The current retransmission timeout, backoff included.
    pub fn rto(&self) -> Duration {
        let ns = self.base_rto * f64::from(1u32 << self.backoff.min(16));
        Duration::from_nanos(ns.min(self.cfg.max_rto.as_nanos() as f64) as u64)
    }

    /// Bytes cumulatively acknowledged.
    pub fn bytes_acked(&self) -> u64 {
        self.snd_una
    }

    /// Bytes sent at least once.
    pub fn bytes_sent(&self) -> u64 {
        self.snd_nxt
    }

    /// Bytes estimated to be in the network (RFC 6675 "pipe").
    pub fn bytes_in_flight(&self) -> u64 {
        self.pipe() * self.mss
    }

    /// Whether every byte of a limited flow has been acknowledged.
    pub fn is_finished(&self) -> bool {
        self.cfg.limit_bytes.is_some_and(|l| self.snd_una >= l)
    }

    /// Counters so far.
    pub fn stats(&self) -> &TcpSenderStats {
        &self.stats
    }

    fn una_idx(&self) -> u64 {
        self.snd_una / self.mss
    }

    fn nxt_idx(&self) -> u64 {
        self.snd_nxt.div_ceil(self.mss)
    }

    /// Segments in the network: outstanding, less sacked and lost, plus retransmissions.
    fn pipe(&self) -> u64 {
        (self.board.len() as u64 + self.retrans_out) - self.sacked_out - self.lost_out
    }

    fn segment(&self, idx: u64, now: Timestamp, retransmit: bool) -> TcpSegment {
        let seq = idx * self.mss;
        let end = match self.cfg.limit_bytes {
            Some(l) => (seq + self.mss).min(l),
            None => seq + self.mss,
        };
        TcpSegment {
            seq,
            len: (end - seq) as u32,
            retransmit,
            sent_at: now,
            header_bytes: self.header,
        }
    }

    /// The next segment to send at `now`, if the window allows one: a lost segment first, else
    /// new data.
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<TcpSegment> {
        if self.pipe() as f64 >= self.cwnd.floor().max(1.0) {
            return None;
        }
        if let Some(idx) = self.next_lost() {
            let i = (idx - self.una_idx()) as usize;
            self.board[i] |= RETRANS;
            self.retrans_out += 1;
            self.rexmit_next = idx + 1;
            self.stats.segments_sent += 1;
            self.stats.retransmits += 1;
            if self.rto_deadline.is_none() {
                self.rto_deadline = Some(now + self.rto());
            }
            return Some(self.segment(idx, now, true));
        }
        if self.cfg.limit_bytes.is_some_and(|l| self.snd_nxt >= l) {
            return None;
        }
        if let Some(rwnd) = self.cfg.rwnd_bytes
            && self.snd_nxt + self.mss > self.snd_una + rwnd.max(self.mss)
        {
            return None;
        }
        let seg = self.segment(self.nxt_idx(), now, false);
        self.snd_nxt = seg.end();
        self.board.push_back(0);
        self.stats.segments_sent += 1;
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto());
        }
        Some(seg)
    }

    /// The first segment marked lost and not yet retransmitted, if any.
    fn next_lost(&mut self) -> Option<u64> {
        if self.lost_out == self.retrans_out {
            // Every lost segment is being retransmitted (RETRANS implies LOST).
            return None;
        }
        let una = self.una_idx();
        let mut idx = self.rexmit_next.max(una);
        while idx < self.lost_frontier {
            if self.board[(idx - una) as usize] & (LOST | RETRANS) == LOST {
                return Some(idx);
            }
            idx += 1;
        }
        self.rexmit_next = idx;
        None
    }

    /// Marks unsacked segments lost up to `frontier` (exclusive), from where the last call
    /// stopped.
    fn mark_lost_until(&mut self, frontier: u64) {
        let una = self.una_idx();
        let mut idx = self.lost_frontier.max(una);
        while idx < frontier {
            let f = &mut self.board[(idx - una) as usize];
            if *f & (SACKED | LOST) == 0 {
                *f |= LOST;
                self.lost_out += 1;
            }
            idx += 1;
        }
        self.lost_frontier = self.lost_frontier.max(frontier);
    }

    /// Processes an acknowledgement.
    pub fn handle_ack(&mut self, now: Timestamp, ack: TcpAck) {
        let pipe_before = self.pipe();
        let una_before = self.snd_una;
        let mut newly_acked = 0u64;

        // Cumulative part.
        let cum = ack.ack.min(self.snd_nxt);
        if cum > self.snd_una {
            let new_una_idx = if cum == self.snd_nxt {
                self.nxt_idx()
            } else {
                cum / self.mss
            };
            for _ in self.una_idx()..new_una_idx {
                let f = self.board.pop_front().unwrap_or(0);
                if f & SACKED != 0 {
                    self.sacked_out -= 1;
                } else {
                    newly_acked += 1;
                }
                if f & LOST != 0 {
                    self.lost_out -= 1;
                }
                if f & RETRANS != 0 {
                    self.retrans_out -= 1;
                }
            }
            self.snd_una = cum;
        }
        let advanced = self.snd_una > una_before;

        // Selective part.
        if let Some((start, _end)) = ack.sack
            && start >= self.snd_una
            && start < self.snd_nxt
        {
            let idx = start / self.mss;
            let i = (idx - self.una_idx()) as usize;
            let f = &mut self.board[i];
            if *f & SACKED == 0 {
                if *f & LOST != 0 {
                    self.lost_out -= 1;
                }
                if *f & RETRANS != 0 {
                    self.retrans_out -= 1;
                }
                *f = SACKED;
                self.sacked_out += 1;
                newly_acked += 1;
                self.high_sacked = self.high_sacked.max(idx + 1);
                self.mark_lost_until((self.high_sacked - 1).saturating_sub(DUP_THRESH - 1));
            }
        }

        if newly_acked > 0 {
            self.on_rtt_sample(now - ack.echo);
        }
        if advanced {
            // RFC 6298 (5.2, 5.3): restart the timer when new data is acknowledged, stop it when
            // nothing is outstanding.
            self.rto_deadline = (self.snd_una < self.snd_nxt).then(|| now + self.rto());
        }

        match self.state {
            State::Recovery { recover } | State::Loss { recover } if self.snd_una >= recover => {
                self.state = State::Open;
            }
            _ => {}
        }
        if self.state == State::Open && self.lost_out > 0 {
            self.stats.recoveries += 1;
            self.reduce_window(now);
            self.cwnd = self.ssthresh;
            self.state = State::Recovery {
                recover: self.snd_nxt,
            };
            return;
        }
        if newly_acked == 0 || matches!(self.state, State::Recovery { .. }) {
            return;
        }
        // Grow only while the window, not the receiver or the data, limits the flow.
        let limited = if self.cwnd < self.ssthresh {
            2.0 * pipe_before as f64 >= self.cwnd
        } else {
            pipe_before as f64 + 3.0 >= self.cwnd.floor()
        };
        if limited {
            self.grow(now, newly_acked as f64);
        }
    }

    /// Updates SRTT, RTTVAR and RTO from one sample (RFC 6298) and clears the backoff.
    fn on_rtt_sample(&mut self, sample: Duration) {
        let r = sample.as_nanos() as f64;
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(srtt) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (srtt - r).abs();
                self.srtt = Some(0.875 * srtt + 0.125 * r);
            }
        }
        // Clock granularity G: 1 ms.
        let rto = self.srtt.unwrap_or(r) + (4.0 * self.rttvar).max(1e6);
        self.base_rto = rto
            .max(self.cfg.min_rto.as_nanos() as f64)
            .min(self.cfg.max_rto.as_nanos() as f64);
        self.backoff = 0;
    }

    /// Sets ssthresh (and CUBIC's W_max) for a congestion event; the caller sets cwnd.
    fn reduce_window(&mut self, _now: Timestamp) {
        let beta = match self.cfg.algorithm {
            CongestionAlgorithm::Reno => RENO_BETA,
            CongestionAlgorithm::Cubic => {
                // Fast convergence: release bandwidth when W_max keeps shrinking.
                self.cubic.w_max = if self.cwnd < self.cubic.w_max {
                    self.cwnd * (1.0 + CUBIC_BETA) / 2.0
                } else {
                    self.cwnd
                };
                self.cubic.epoch_start = None;
                CUBIC_BETA
            }
        };
        self.ssthresh = (self.cwnd * beta).max(2.0);
    }

    /// Opens the window for `acked` newly acknowledged segments.
    fn grow(&mut self, now: Timestamp, mut acked: f64) {
        if self.cwnd < self.ssthresh {
            let step = acked.min(self.ssthresh - self.cwnd);
            self.cwnd += step;
            acked -= step;
            if acked <= 0.0 {
                return;
            }
        }
        match self.cfg.algorithm {
            CongestionAlgorithm::Reno => self.cwnd += acked / self.cwnd,
            CongestionAlgorithm::Cubic => self.cubic_grow(now, acked),
        }
    }

    /// CUBIC congestion avoidance (RFC 9438 §4.2–4.4).
    fn cubic_grow(&mut self, now: Timestamp, acked: f64) {
        let c = &mut self.cubic;
        let epoch = match c.epoch_start {
            Some(t) => t,
            None => {
                c.epoch_start = Some(now);
                if self.cwnd < c.w_max {
                    c.k = ((c.w_max - self.cwnd) / CUBIC_C).cbrt();
                } else {
                    c.k = 0.0;
                    c.w_max = self.cwnd;
                }
                c.w_est = self.cwnd;
                now
            }
        };
        let t = (now - epoch).as_secs_f64();
        let rtt = self.srtt.unwrap_or(0.0) / 1e9;
        let w_cubic = |t: f64| CUBIC_C * (t - c.k).powi(3) + c.w_max;
        let target = w_cubic(t + rtt).clamp(self.cwnd, 1.5 * self.cwnd);
        let alpha = if c.w_est >= c.w_max {
            1.0
        } else {
            3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)
        };
        c.w_est += alpha * acked / self.cwnd;
        if w_cubic(t) < c.w_est {
            // Reno-friendly region.
            self.cwnd = self.cwnd.max(c.w_est);
        } else {
            self.cwnd += (target - self.cwnd) / self.cwnd * acked;
        }
    }

    /// When [`TcpSender::handle_timeout`] should be called: the retransmission timer.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.rto_deadline
    }

    /// Fires the retransmission timer if it is due at `now`: every outstanding unsacked segment
    /// is deemed lost, cwnd drops to one segment and the timer backs off.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.rto_deadline {
            Some(t) if t <= now => {}
            _ => return,
        }
        if self.snd_una >= self.snd_nxt {
            self.rto_deadline = None;
            return;
        }
        self.stats.timeouts += 1;
        // Reduce ssthresh once per episode: not again when a retransmission times out again.
        if self.backoff == 0 {
            self.reduce_window(now);
        }
        self.cwnd = 1.0;
        self.lost_out = 0;
        self.retrans_out = 0;
        for f in self.board.iter_mut() {
            if *f & SACKED == 0 {
                *f = LOST;
                self.lost_out += 1;
            }
        }
        self.lost_frontier = self.nxt_idx();
        self.rexmit_next = self.una_idx();
        self.state = State::Loss {
            recover: self.snd_nxt,
        };
        self.backoff = (self.backoff + 1).min(16);
        self.rto_deadline = Some(now + self.rto());
    }
}

/// The receiving side of a TCP flow.
#[derive(Clone, Debug)]
pub struct TcpReceiver {
    header: u16,
    rcv_nxt: u64,
    /// Out-of-order segments: start → end.
    ooo: BTreeMap<u64, u64>,
    segments: u64,
    duplicates: u64,
}

impl TcpReceiver {
    /// A receiver for a flow with configuration `cfg`.
    pub fn new(cfg: &TcpConfig) -> TcpReceiver {
        TcpReceiver {
            header: u16::try_from(cfg.header_bytes).unwrap_or(u16::MAX),
            rcv_nxt: 0,
            ooo: BTreeMap::new(),
            segments: 0,
            duplicates: 0,
        }
    }

    /// Takes a segment and returns the ack to send back at once.
    pub fn handle_segment(&mut self, _now: Timestamp, seg: TcpSegment) -> TcpAck {
        self.segments += 1;
        let end = seg.end();
        let mut sack = None;
        if end <= self.rcv_nxt {
            self.duplicates += 1;
        } else if seg.seq <= self.rcv_nxt {
            self.rcv_nxt = end;
            while let Some((&s, &e)) = self.ooo.first_key_value()
                && s <= self.rcv_nxt
            {
                self.ooo.pop_first();
                self.rcv_nxt = self.rcv_nxt.max(e);
            }
        } else {
            let e = self.ooo.entry(seg.seq).or_insert(0);
            if *e >= end {
                self.duplicates += 1;
            }
            *e = (*e).max(end);
            sack = Some((seg.seq, end));
        }
        TcpAck {
            ack: self.rcv_nxt,
            sack,
            echo: seg.sent_at,
            header_bytes: self.header,
        }
    }

    /// Bytes delivered in order to the application.
    pub fn delivered_bytes(&self) -> u64 {
        self.rcv_nxt
    }

    /// Segments received, duplicates included.
    pub fn segments_received(&self) -> u64 {
        self.segments
    }

    /// Segments received that carried nothing new.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Link, LinkConfig, LossModel};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Outcome {
        delivered: u64,
        sender: TcpSender,
        fwd: crate::link::LinkStats,
    }

    /// A minimal event loop: segments on `fwd`, acks on `rev`, for `secs` of virtual time.
    fn run(cfg: TcpConfig, fwd: LinkConfig, rev: LinkConfig, secs: u64, seed: u64) -> Outcome {
        let mut rng = Rng::new(seed);
        let mut f: Link<TcpSegment> = Link::new(fwd, rng.fork());
        let mut r: Link<TcpAck> = Link::new(rev, rng.fork());
        let mut s = TcpSender::new(cfg.clone());
        let mut rx = TcpReceiver::new(&cfg);
        let end = Timestamp::ZERO + Duration::from_secs(secs);
        let mut now = Timestamp::ZERO;
        let mut steps = 0u64;
        loop {
            while let Some(seg) = s.poll_transmit(now) {
                f.send(now, seg);
            }
            let next = [f.next_delivery(), r.next_delivery(), s.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|&t| t <= end) else {
                break;
            };
            assert!(next >= now, "time went backwards");
            now = next;
            while let Some(seg) = f.poll_deliver(now) {
                r.send(now, rx.handle_segment(now, seg));
            }
            while let Some(ack) = r.poll_deliver(now) {
                s.handle_ack(now, ack);
                while let Some(seg) = s.poll_transmit(now) {
                    f.send(now, seg);
                }
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            steps += 1;
            assert!(steps < 100_000_000, "livelock");
        }
        Outcome {
            delivered: rx.delivered_bytes(),
            fwd: f.stats().clone(),
            sender: s,
        }
    }

    fn path(rate: u64, one_way: Duration, loss: f64) -> (LinkConfig, LinkConfig) {
        let fwd = LinkConfig {
            delay: one_way,
            rate_bps: Some(rate),
            queue: ms(100),
            overhead_bytes: 0,
            loss: if loss > 0.0 {
                LossModel::Random(loss)
            } else {
                LossModel::None
            },
            ..LinkConfig::default()
        };
        let rev = LinkConfig {
            delay: one_way,
            overhead_bytes: 0,
            ..LinkConfig::default()
        };
        (fwd, rev)
    }

    const RATE: u64 = 100_000_000;

    fn utilisation(o: &Outcome, secs: u64) -> f64 {
        o.delivered as f64 * 8.0 / (RATE as f64 * secs as f64)
    }

    #[test]
    fn reno_fills_a_100_mbit_50_ms_path() {
        let cfg = TcpConfig {
            algorithm: CongestionAlgorithm::Reno,
            ..TcpConfig::default()
        };
        let (fwd, rev) = path(RATE, ms(25), 0.0);
        let o = run(cfg, fwd, rev, 20, 1);
        let u = utilisation(&o, 20);
        eprintln!(
            "reno: utilisation {u:.3}, {:?}, fwd {:?}, srtt {:?}",
            o.sender.stats(),
            o.fwd,
            o.sender.srtt()
        );
        assert!(u > 0.85, "utilisation {u}");
        // The queue overflowed (that is how Reno finds the rate) and SACK recovery coped.
        assert!(o.fwd.dropped_queue > 0);
        assert!(o.sender.stats().recoveries >= 1);
    }

    #[test]
    fn cubic_fills_a_100_mbit_50_ms_path() {
        let (fwd, rev) = path(RATE, ms(25), 0.0);
        let o = run(TcpConfig::default(), fwd, rev, 20, 2);
        let u = utilisation(&o, 20);
        eprintln!(
            "cubic: utilisation {u:.3}, {:?}, fwd {:?}",
            o.sender.stats(),
            o.fwd
        );
        assert!(u > 0.85, "utilisation {u}");
    }

    /// Mathis et al.: throughput ≈ MSS / RTT × sqrt(3 / 2) / sqrt(p).
    fn mathis(p: f64, rtt: Duration, mss: usize) -> f64 {
        mss as f64 * 8.0 / rtt.as_secs_f64() * (1.5f64).sqrt() / p.sqrt()
    }

    #[test]
    fn reno_under_random_loss_follows_mathis() {
        for (p, seed) in [(0.01, 3), (0.001, 4)] {
            let cfg = TcpConfig {
                algorithm: CongestionAlgorithm::Reno,
                ..TcpConfig::default()
            };
            let (fwd, rev) = path(RATE, ms(25), p);
            let secs = 60;
            let o = run(cfg, fwd, rev, secs, seed);
            let got = o.delivered as f64 * 8.0 / secs as f64;
            let want = mathis(p, ms(50), 1448);
            eprintln!(
                "reno p={p}: {:.2} Mbit/s, Mathis {:.2} Mbit/s, {:?}",
                got / 1e6,
                want / 1e6,
                o.sender.stats()
            );
            assert!(
                got > want / 2.0 && got < want * 2.0,
                "p={p}: {got} bit/s vs Mathis {want}"
            );
        }
    }

    #[test]
    fn cubic_beats_reno_on_a_long_lossy_path() {
        // CUBIC's point: at a large BDP and some loss, it gets more than Reno.
        let (fwd, rev) = path(RATE, ms(50), 0.0005);
        let reno = run(
            TcpConfig {
                algorithm: CongestionAlgorithm::Reno,
                ..TcpConfig::default()
            },
            fwd.clone(),
            rev.clone(),
            30,
            5,
        );
        let cubic = run(TcpConfig::default(), fwd, rev, 30, 5);
        eprintln!(
            "reno {} bytes {:?}, cubic {} bytes {:?}",
            reno.delivered,
            reno.sender.stats(),
            cubic.delivered,
            cubic.sender.stats()
        );
        assert!(cubic.delivered > reno.delivered);
    }

    #[test]
    fn limited_flow_finishes_exactly() {
        let limit = 3_000_000 + 17;
        let cfg = TcpConfig {
            limit_bytes: Some(limit),
            ..TcpConfig::default()
        };
        let (fwd, rev) = path(RATE, ms(10), 0.02);
        let o = run(cfg, fwd, rev, 30, 6);
        assert_eq!(o.delivered, limit);
        assert!(o.sender.is_finished());
        assert_eq!(o.sender.poll_timeout(), None);
        assert!(o.sender.stats().retransmits > 0);
    }

    #[test]
    fn limited_flow_finishes_over_a_hostile_path() {
        // Loss both ways, bursts, reordering, duplication, corruption and jitter: whatever
        // happens, every byte arrives exactly once, in order, and the sender knows it.
        for seed in 0..12u64 {
            let limit = 2_000_000 + seed * 7919;
            let algorithm = if seed % 2 == 0 {
                CongestionAlgorithm::Reno
            } else {
                CongestionAlgorithm::Cubic
            };
            let cfg = TcpConfig {
                algorithm,
                limit_bytes: Some(limit),
                ..TcpConfig::default()
            };
            let fwd = LinkConfig {
                delay: ms(5 + seed * 3),
                jitter: ms(seed % 4),
                rate_bps: Some(20_000_000),
                queue: ms(10 + seed * 5),
                overhead_bytes: 0,
                loss: LossModel::GilbertElliott {
                    p_good_to_bad: 0.01,
                    p_bad_to_good: 0.3,
                    loss_good: 0.005,
                    loss_bad: 0.5,
                },
                reorder: 0.01 * (seed % 3) as f64,
                reorder_delay: ms(3),
                duplicate: 0.005,
                corrupt: 0.002,
                ..LinkConfig::default()
            };
            let rev = LinkConfig {
                delay: ms(5 + seed * 3),
                overhead_bytes: 0,
                loss: LossModel::Random(0.02),
                reorder: 0.01,
                reorder_delay: ms(2),
                duplicate: 0.005,
                ..LinkConfig::default()
            };
            let o = run(cfg, fwd, rev, 600, seed);
            assert_eq!(o.delivered, limit, "seed {seed}: {:?}", o.sender.stats());
            assert!(o.sender.is_finished(), "seed {seed}");
            assert_eq!(o.sender.poll_timeout(), None, "seed {seed}");
        }
    }

    #[test]
    fn receive_window_caps_throughput() {
        // 64 KiB window over 50 ms: about 10 Mbit/s whatever the link.
        let cfg = TcpConfig {
            rwnd_bytes: Some(65_536),
            ..TcpConfig::default()
        };
        let (fwd, rev) = path(RATE, ms(25), 0.0);
        let o = run(cfg, fwd, rev, 10, 7);
        let got = o.delivered as f64 * 8.0 / 10.0;
        assert!(got > 8e6 && got < 11e6, "{got} bit/s");
        assert!(o.sender.cwnd() < 200 * 1448, "cwnd {}", o.sender.cwnd());
    }

    #[test]
    fn timeout_recovers_from_a_blackout() {
        // Every segment is lost for a while: only the RTO can get the flow going again.
        let mut rng = Rng::new(8);
        let cfg = TcpConfig::default();
        let (fwd, rev) = path(RATE, ms(25), 0.0);
        let mut f: Link<TcpSegment> = Link::new(fwd, rng.fork());
        let mut r: Link<TcpAck> = Link::new(rev, rng.fork());
        let mut s = TcpSender::new(cfg.clone());
        let mut rx = TcpReceiver::new(&cfg);
        let mut now = Timestamp::ZERO;
        let blackout = (Timestamp::ZERO + ms(1000), Timestamp::ZERO + ms(3000));
        let end = Timestamp::ZERO + ms(6000);
        let mut delivered_at_blackout_end = 0;
        while now < end {
            while let Some(seg) = s.poll_transmit(now) {
                if now < blackout.0 || now >= blackout.1 {
                    f.send(now, seg);
                }
            }
            let next = [f.next_delivery(), r.next_delivery(), s.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            if now < blackout.1 && next >= blackout.1 {
                delivered_at_blackout_end = rx.delivered_bytes();
            }
            now = next;
            while let Some(seg) = f.poll_deliver(now) {
                r.send(now, rx.handle_segment(now, seg));
            }
            while let Some(ack) = r.poll_deliver(now) {
                s.handle_ack(now, ack);
            }
            s.handle_timeout(now);
        }
        assert!(s.stats().timeouts >= 2, "{:?}", s.stats());
        assert!(rx.delivered_bytes() > delivered_at_blackout_end + 1_000_000);
    }

    /// Simulation speed and behaviour at the acceptance grid's largest BDP, for the report. Run
    /// with `cargo test -p ferry-sim --release --lib -- --ignored --nocapture tcp_speed`.
    #[test]
    #[ignore]
    fn tcp_speed() {
        for algorithm in [CongestionAlgorithm::Reno, CongestionAlgorithm::Cubic] {
            let fwd = LinkConfig {
                delay: ms(300),
                rate_bps: Some(1_000_000_000),
                queue: ms(100),
                overhead_bytes: 0,
                ..LinkConfig::default()
            };
            let rev = LinkConfig {
                delay: ms(300),
                overhead_bytes: 0,
                ..LinkConfig::default()
            };
            let cfg = TcpConfig {
                algorithm,
                ..TcpConfig::default()
            };
            let secs = 60;
            let start = std::time::Instant::now();
            let o = run(cfg, fwd, rev, secs, 9);
            let wall = start.elapsed().as_secs_f64();
            println!(
                "{algorithm:?} 1 Gbit/s 600 ms, {secs} s: {:.0} Mbit/s goodput, {} segments in {wall:.2} s wall ({:.2} M segments/s), {:?}",
                o.delivered as f64 * 8.0 / secs as f64 / 1e6,
                o.sender.stats().segments_sent,
                o.sender.stats().segments_sent as f64 / wall / 1e6,
                o.sender.stats()
            );
        }
    }

    #[test]
    fn receiver_reassembles_out_of_order_segments() {
        let cfg = TcpConfig::default();
        let mut rx = TcpReceiver::new(&cfg);
        let seg = |i: u64| TcpSegment {
            seq: i * 1448,
            len: 1448,
            retransmit: false,
            sent_at: Timestamp::from_nanos(i),
            header_bytes: 52,
        };
        let a = rx.handle_segment(Timestamp::ZERO, seg(0));
        assert_eq!((a.ack, a.sack), (1448, None));
        let a = rx.handle_segment(Timestamp::ZERO, seg(2));
        assert_eq!((a.ack, a.sack), (1448, Some((2896, 4344))));
        assert_eq!(a.echo, Timestamp::from_nanos(2));
        let a = rx.handle_segment(Timestamp::ZERO, seg(3));
        assert_eq!(a.ack, 1448);
        let a = rx.handle_segment(Timestamp::ZERO, seg(1));
        assert_eq!((a.ack, a.sack), (4 * 1448, None));
        let a = rx.handle_segment(Timestamp::ZERO, seg(1));
        assert_eq!(a.ack, 4 * 1448);
        assert_eq!(rx.duplicates(), 1);
        assert_eq!(rx.delivered_bytes(), 4 * 1448);
    }

    #[test]
    fn fack_marks_and_retransmits_the_hole_once() {
        let cfg = TcpConfig {
            algorithm: CongestionAlgorithm::Reno,
            ..TcpConfig::default()
        };
        let mut s = TcpSender::new(cfg.clone());
        let mut rx = TcpReceiver::new(&cfg);
        let t0 = Timestamp::ZERO;
        let segs: Vec<_> = std::iter::from_fn(|| s.poll_transmit(t0)).collect();
        assert_eq!(segs.len(), 10);
        let t1 = t0 + ms(50);
        // Segment 0 is lost; 1..=3 arrive: the third SACK marks 0 lost.
        for seg in &segs[1..4] {
            let ack = rx.handle_segment(t1, *seg);
            s.handle_ack(t1, ack);
        }
        assert_eq!(s.stats().recoveries, 1);
        // The two SACKs before the loss was detected grew the window (slow start) to 12; the
        // reduction halves it.
        assert_eq!(s.cwnd(), 6 * 1448);
        assert_eq!(s.srtt(), Some(ms(50)));
        // pipe = 10 - 3 sacked - 1 lost = 6, not below cwnd: nothing may be sent yet.
        assert_eq!(s.poll_transmit(t1), None);
        let ack = rx.handle_segment(t1, segs[4]);
        s.handle_ack(t1, ack);
        // pipe = 5 < 6: the hole goes first, once.
        let re = s.poll_transmit(t1).unwrap();
        assert!(re.retransmit);
        assert_eq!(re.seq, 0);
        assert_eq!(s.poll_transmit(t1), None);
        let ack = rx.handle_segment(t1, segs[5]);
        s.handle_ack(t1, ack);
        let next = s.poll_transmit(t1).unwrap();
        assert_eq!((next.seq, next.retransmit), (10 * 1448, false));
        // The retransmission fills the hole: recovery ends once everything up to the recovery
        // point is acked, with cwnd at ssthresh.
        s.handle_ack(t1 + ms(50), rx.handle_segment(t1 + ms(50), re));
        for seg in &segs[6..] {
            s.handle_ack(t1 + ms(50), rx.handle_segment(t1 + ms(50), *seg));
        }
        assert_eq!(s.bytes_acked(), 10 * 1448);
        assert_eq!(s.stats().retransmits, 1);
        assert_eq!(s.state, State::Open);
    }
}
