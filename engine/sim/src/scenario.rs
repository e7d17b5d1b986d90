//! A whole transfer on the simulated network: ferry flows (and optionally TCP flows) across
//! one bottleneck, driven on virtual time, with the metrics `cargo xtask sim` reports.
//!
//! Time jumps to the earliest thing that can happen next (a delivery, a pacing departure, a
//! timer), as quinn's test `Pair` does, so a 1 GiB transfer over a 600 ms path takes seconds
//! of real time. Every datagram is really sealed, carried, opened and checked; file
//! contents are a deterministic pattern, so every byte written is verified without holding
//! the file.

use core::time::Duration;

use ferry_proto::crypto::{Cipher, Direction};
use ferry_proto::{
    Manifest, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig, SenderEvent,
    SlotBuffers, wire,
};
use ferry_tuning::{Controller, Policy, RateLimits, Timestamp};
use serde::Serialize;

use crate::link::{Link, LinkConfig, LinkStats, LossModel, SimPacket};
use crate::rng::Rng;
use crate::tcp::{CongestionAlgorithm, TcpAck, TcpConfig, TcpReceiver, TcpSegment, TcpSender};

/// Everything that defines a scenario; the same config and seed give the same run.
#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    /// Round-trip propagation delay (each direction gets half).
    pub rtt: Duration,
    /// Extra per-packet delay drawn from `[0, jitter]`, each direction.
    pub jitter: Duration,
    /// Random loss probability, each direction.
    pub loss: f64,
    /// Gilbert–Elliott burst loss `(p_good_to_bad, p_bad_to_good, loss_bad)`, replacing
    /// `loss` when set.
    pub burst_loss: Option<(f64, f64, f64)>,
    /// Probability a packet is delayed past later ones.
    pub reorder: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Probability a packet has a byte flipped.
    pub corrupt: f64,
    /// Bottleneck rate, Mbit/s.
    pub link_mbps: f64,
    /// Bottleneck drop-tail queue, as time at the link rate.
    pub queue: Duration,
    /// Link MTU (IP packet size).
    pub mtu: usize,
    /// Payload bytes per ferry flow.
    pub bytes: u64,
    /// Rate policy of the ferry flows.
    pub policy: Policy,
    /// Target rate of each ferry flow, bit/s.
    pub target_bps: u64,
    /// Minimum rate of each ferry flow, bit/s.
    pub min_bps: u64,
    /// Cipher.
    pub cipher: Cipher,
    /// Number of ferry flows.
    pub flows: usize,
    /// Number of competing bulk TCP flows.
    pub tcp_flows: usize,
    /// Their congestion control.
    pub tcp_algorithm: TcpAlgorithm,
    /// When the ferry flows start; the TCP flows start at zero.
    pub ferry_start: Duration,
    /// RNG seed.
    pub seed: u64,
    /// Record a trace sample this often, if set.
    pub trace_interval: Option<Duration>,
}

/// Which TCP the competing flows run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpAlgorithm {
    /// NewReno.
    Reno,
    /// CUBIC.
    Cubic,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            rtt: Duration::from_millis(50),
            jitter: Duration::ZERO,
            loss: 0.0,
            burst_loss: None,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            link_mbps: 1000.0,
            queue: Duration::from_millis(100),
            mtu: 65_535,
            bytes: 64 << 20,
            policy: Policy::Fair,
            target_bps: 10_000_000_000,
            min_bps: 0,
            cipher: Cipher::Aes128Gcm,
            flows: 1,
            tcp_flows: 0,
            tcp_algorithm: TcpAlgorithm::Cubic,
            ferry_start: Duration::ZERO,
            seed: 1,
            trace_interval: None,
        }
    }
}

impl ScenarioConfig {
    /// Payload bytes per datagram that fit the MTU after IP/UDP and ferry overhead.
    pub fn block_size(&self) -> u32 {
        let overhead = 28 + wire::DATA_HEADER_LEN + self.cipher.trailer_len();
        (self.mtu.saturating_sub(overhead).max(64)) as u32
    }

    fn capacity(&self) -> f64 {
        self.link_mbps * 1e6 / 8.0
    }
}

/// One ferry flow's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    /// Payload delivered.
    pub bytes: u64,
    /// From its first data datagram to holding every byte, seconds.
    pub elapsed_s: f64,
    /// Payload rate over that time, Mbit/s.
    pub rate_mbps: f64,
    /// Re-sent payload (redundant copies included) over file payload.
    pub retransmit_ratio: f64,
    /// Tail probes fired.
    pub probes: u64,
    /// Datagrams the receiver dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Duplicate payload bytes the receiver discarded.
    pub duplicate_bytes: u64,
    /// How it ended.
    pub failure: Option<String>,
}

/// A trace sample of one flow.
#[derive(Clone, Debug, Serialize)]
pub struct TraceSample {
    /// Virtual time, seconds.
    pub t: f64,
    /// Flow index.
    pub flow: usize,
    /// Controller pacing rate, Mbit/s.
    pub rate_mbps: f64,
    /// Payload delivered since the previous sample, as Mbit/s.
    pub delivered_mbps: f64,
    /// Controller's queueing-delay estimate, ms.
    pub queue_ms: f64,
    /// Controller phase.
    pub phase: &'static str,
}

/// The outcome of a scenario; the metrics are defined in `shared/CONTRACT.md`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every ferry flow delivered every byte.
    pub completed: bool,
    /// Every byte delivered exactly once and intact.
    pub bytes_ok: bool,
    /// Payload over `C·(1−p)·(elapsed − one-way delay)`.
    pub goodput_ratio: f64,
    /// How full the link was kept between the 10 % and 90 % marks.
    pub steady_ratio: f64,
    /// What finishing cost beyond the ideal, in round trips (`None` at zero RTT).
    pub tail_rtts: Option<f64>,
    /// Re-sent payload over file payload.
    pub retransmit_ratio: f64,
    /// Jain's index over the ferry flows' throughputs.
    pub jain: f64,
    /// The TCP flows' share of bytes delivered while both ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_share: Option<f64>,
    /// Elapsed virtual time of the slowest flow, seconds.
    pub elapsed_s: f64,
    /// The seed, to replay.
    pub seed: u64,
    /// Per-flow detail.
    pub flows: Vec<FlowReport>,
    /// Bottleneck queue drops.
    pub queue_drops: u64,
    /// Random losses on the forward link.
    pub random_losses: u64,
    /// Deepest queue seen, ms.
    pub max_queue_ms: f64,
    /// Trace samples, if asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<TraceSample>,
    /// What went wrong, when something did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

enum Packet {
    Ferry { flow: usize, bytes: Vec<u8> },
    Segment { flow: usize, seg: TcpSegment },
    Ack { flow: usize, ack: TcpAck },
}

impl SimPacket for Packet {
    fn wire_len(&self) -> usize {
        match self {
            Packet::Ferry { bytes, .. } => bytes.len(),
            Packet::Segment { seg, .. } => seg.wire_len(),
            Packet::Ack { ack, .. } => ack.wire_len(),
        }
    }
    fn corrupt(&mut self, rng: &mut Rng) -> bool {
        match self {
            Packet::Ferry { bytes, .. } => bytes.corrupt(rng),
            // A real stack's TCP checksum discards it.
            Packet::Segment { .. } | Packet::Ack { .. } => false,
        }
    }
    fn duplicate(&self) -> Self {
        match self {
            Packet::Ferry { flow, bytes } => Packet::Ferry {
                flow: *flow,
                bytes: bytes.clone(),
            },
            Packet::Segment { flow, seg } => Packet::Segment {
                flow: *flow,
                seg: *seg,
            },
            Packet::Ack { flow, ack } => Packet::Ack {
                flow: *flow,
                ack: *ack,
            },
        }
    }
}

/// The deterministic content of every simulated file: 8-byte words from a hash of
/// `(flow, file, offset)`.
fn pattern_word(flow: usize, file: u32, word: u64) -> u64 {
    let mut z = (flow as u64) << 56 ^ u64::from(file) << 40 ^ word;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_pattern(flow: usize, file: u32, offset: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = pattern_word(flow, file, offset / 8 + i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

fn check_pattern(flow: usize, file: u32, offset: u64, data: &[u8]) -> bool {
    data.chunks(8).enumerate().all(|(i, chunk)| {
        let w = pattern_word(flow, file, offset / 8 + i as u64).to_le_bytes();
        chunk == &w[..chunk.len()]
    })
}

struct FerryFlow {
    sender: Sender,
    receiver: Receiver,
    buffers: SlotBuffers,
    feedback_buf: Vec<u8>,
    /// Which blocks were written, to catch a second delivery.
    written: Vec<u64>,
    complete_at: Option<Timestamp>,
    failure: Option<String>,
    delivered: u64,
    marks: [Option<Timestamp>; 2],
    started: bool,
    trace_delivered: u64,
}

struct TcpFlow {
    sender: TcpSender,
    receiver: TcpReceiver,
}

/// Runs a scenario to its end.
pub fn run(cfg: &ScenarioConfig) -> Report {
    Sim::new(cfg).run()
}

struct Sim<'a> {
    cfg: &'a ScenarioConfig,
    now: Timestamp,
    forward: Link<Packet>,
    reverse: Link<Packet>,
    ferry: Vec<FerryFlow>,
    tcp: Vec<TcpFlow>,
    errors: Vec<String>,
    bytes_ok: bool,
    pool: Vec<Vec<u8>>,
    trace: Vec<TraceSample>,
    next_trace: Timestamp,
    /// Aggregate ferry payload delivered, and the times the 10 % and 90 % marks were passed.
    total_delivered: u64,
    marks: [Option<Timestamp>; 2],
    tcp_at_ferry_start: u64,
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a ScenarioConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let loss = match cfg.burst_loss {
            Some((g2b, b2g, bad)) => LossModel::GilbertElliott {
                p_good_to_bad: g2b,
                p_bad_to_good: b2g,
                loss_good: 0.0,
                loss_bad: bad,
            },
            None if cfg.loss > 0.0 => LossModel::Random(cfg.loss),
            None => LossModel::None,
        };
        let link = LinkConfig {
            delay: cfg.rtt / 2,
            jitter: cfg.jitter,
            loss,
            rate_bps: Some((cfg.link_mbps * 1e6) as u64),
            queue: cfg.queue,
            overhead_bytes: 28,
            reorder: cfg.reorder,
            reorder_delay: (cfg.rtt / 10).max(Duration::from_millis(1)),
            duplicate: cfg.duplicate,
            corrupt: cfg.corrupt,
            mtu: cfg.mtu,
        };
        let reverse_cfg = LinkConfig {
            rate_bps: None,
            ..link.clone()
        };
        let forward = Link::new(link, rng.fork());
        let reverse = Link::new(reverse_cfg, rng.fork());
        let block = cfg.block_size();
        let start = Timestamp::ZERO + cfg.ferry_start;
        let ferry = (0..cfg.flows)
            .map(|i| {
                let mut secret = [0u8; 32];
                for b in secret.iter_mut() {
                    *b = rng.next_u64() as u8;
                }
                let sizes = vec![cfg.bytes];
                let manifest = Manifest::new(sizes, block).expect("valid manifest");
                let mut scfg =
                    SenderConfig::new(i as u32 + 1, cfg.cipher, secret, Direction::ClientToServer);
                scfg.policy = cfg.policy;
                scfg.limits = RateLimits::new(cfg.target_bps, cfg.min_bps);
                // The control channel's handshake measures the path's RTT before data flows.
                scfg.initial_rtt = cfg.rtt.max(Duration::from_millis(1));
                let mut rcfg = ReceiverConfig::new(
                    i as u32 + 1,
                    cfg.cipher,
                    secret,
                    Direction::ClientToServer,
                );
                rcfg.initial_rtt = scfg.initial_rtt;
                rcfg.max_datagram = cfg.mtu - 28;
                rcfg.window_blocks = scfg.window_blocks;
                let blocks = manifest.total_blocks();
                FerryFlow {
                    sender: Sender::new(scfg.clone(), manifest.clone(), start),
                    receiver: Receiver::new(rcfg, manifest, start),
                    buffers: SlotBuffers::new(scfg.read_ahead, block, cfg.cipher.trailer_len()),
                    feedback_buf: vec![0; cfg.mtu],
                    written: vec![0; blocks.div_ceil(64) as usize],
                    complete_at: None,
                    failure: None,
                    delivered: 0,
                    marks: [None; 2],
                    started: false,
                    trace_delivered: 0,
                }
            })
            .collect();
        let tcp = (0..cfg.tcp_flows)
            .map(|_| {
                let tcfg = TcpConfig {
                    algorithm: match cfg.tcp_algorithm {
                        TcpAlgorithm::Reno => CongestionAlgorithm::Reno,
                        TcpAlgorithm::Cubic => CongestionAlgorithm::Cubic,
                    },
                    // The link charges IP and UDP-sized overhead itself; 24 more makes a 1500-byte TCP/IP packet.
                    header_bytes: 24,
                    ..TcpConfig::default()
                };
                TcpFlow {
                    receiver: TcpReceiver::new(&tcfg),
                    sender: TcpSender::new(tcfg),
                }
            })
            .collect();
        Sim {
            cfg,
            now: Timestamp::ZERO,
            forward,
            reverse,
            ferry,
            tcp,
            errors: Vec::new(),
            bytes_ok: true,
            pool: Vec::new(),
            trace: Vec::new(),
            next_trace: Timestamp::ZERO,
            total_delivered: 0,
            marks: [None; 2],
            tcp_at_ferry_start: 0,
        }
    }

    fn ferry_done(&self) -> bool {
        self.ferry
            .iter()
            .all(|f| f.failure.is_some() || (f.complete_at.is_some() && f.sender.is_done()))
    }

    fn run(mut self) -> Report {
        let ideal = self.cfg.bytes as f64 * self.cfg.flows as f64
            / (self.cfg.capacity() * (1.0 - self.cfg.loss).max(0.01));
        // Generous: a scavenger beside TCP may take many times the ideal; this bound only
        // catches a transfer that stopped making progress.
        let limit = Timestamp::ZERO
            + self.cfg.ferry_start
            + Duration::from_secs_f64(
                (ideal * 4.0 + 60.0 + 20.0 * self.cfg.rtt.as_secs_f64()).max(600.0),
            );
        let mut stalls = 0u32;
        while !self.ferry_done() {
            self.step();
            let Some(next) = self.next_event() else {
                self.errors
                    .push(format!("deadlock at {} (seed {})", self.now, self.cfg.seed));
                break;
            };
            if next <= self.now {
                stalls += 1;
                assert!(
                    stalls < 1_000_000,
                    "livelock at {} (seed {})",
                    self.now,
                    self.cfg.seed
                );
            } else {
                stalls = 0;
            }
            self.now = next.max(self.now);
            if self.now > limit {
                self.errors.push(format!(
                    "not complete after {} (seed {})",
                    self.now, self.cfg.seed
                ));
                break;
            }
            self.deliver();
            self.timeouts();
        }
        self.report()
    }

    /// Lets every endpoint do what it can at `now`.
    fn step(&mut self) {
        let now = self.now;
        for i in 0..self.ferry.len() {
            if now < Timestamp::ZERO + self.cfg.ferry_start {
                continue;
            }
            if !self.ferry[i].started {
                self.ferry[i].started = true;
                self.tcp_at_ferry_start =
                    self.tcp.iter().map(|t| t.receiver.delivered_bytes()).sum();
            }
            loop {
                let f = &mut self.ferry[i];
                while let Some(ev) = f.sender.poll_event() {
                    match ev {
                        SenderEvent::Read { slot, block } => {
                            let buf = &mut f.buffers.slots[slot as usize];
                            let payload = &mut buf[wire::DATA_HEADER_LEN..][..block.len as usize];
                            fill_pattern(i, block.file, block.offset, payload);
                            f.sender.handle_read_done(now, slot, Ok(()));
                        }
                        SenderEvent::Complete => {}
                        SenderEvent::Failed(fail) => {
                            f.failure.get_or_insert(format!("sender: {}", fail.reason));
                        }
                    }
                }
                let Some(tx) = f.sender.poll_transmit(now, &mut f.buffers) else {
                    break;
                };
                let bytes = f.buffers.bytes(&tx);
                let mut v = self.pool.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(bytes);
                self.forward.send(now, Packet::Ferry { flow: i, bytes: v });
            }
            loop {
                let f = &mut self.ferry[i];
                let Some(len) = f.receiver.poll_transmit(now, &mut f.feedback_buf) else {
                    break;
                };
                let mut v = self.pool.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(&self.ferry[i].feedback_buf[..len]);
                self.reverse.send(now, Packet::Ferry { flow: i, bytes: v });
            }
            self.receiver_events(i);
        }
        for i in 0..self.tcp.len() {
            while let Some(seg) = self.tcp[i].sender.poll_transmit(now) {
                self.forward.send(now, Packet::Segment { flow: i, seg });
            }
        }
        if let Some(interval) = self.cfg.trace_interval
            && now >= self.next_trace
        {
            self.sample_trace(interval);
        }
    }

    fn sample_trace(&mut self, interval: Duration) {
        let secs = interval.as_secs_f64();
        for (i, f) in self.ferry.iter_mut().enumerate() {
            let c = f.sender.controller();
            self.trace.push(TraceSample {
                t: self.now.as_secs_f64(),
                flow: i,
                rate_mbps: c.rate() * 8.0 / 1e6,
                delivered_mbps: (f.delivered - f.trace_delivered) as f64 * 8.0 / 1e6 / secs,
                queue_ms: c.queue_delay().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                phase: c.phase(),
            });
            f.trace_delivered = f.delivered;
        }
        self.next_trace = self.now + interval;
    }

    fn receiver_events(&mut self, i: usize) {
        let f = &mut self.ferry[i];
        while let Some(ev) = f.receiver.poll_event() {
            match ev {
                ReceiverEvent::Complete => {
                    f.complete_at
                        .get_or_insert(f.receiver.stats().last_new_at.unwrap_or(self.now));
                }
                ReceiverEvent::Closed => {}
                ReceiverEvent::Failed(fail) => {
                    f.failure
                        .get_or_insert(format!("receiver: {}", fail.reason));
                }
            }
        }
    }

    fn next_event(&self) -> Option<Timestamp> {
        let mut t: Option<Timestamp> = None;
        let mut consider = |x: Option<Timestamp>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.forward.next_delivery());
        consider(self.reverse.next_delivery());
        let start = Timestamp::ZERO + self.cfg.ferry_start;
        for f in &self.ferry {
            if self.now < start {
                consider(Some(start));
                continue;
            }
            consider(f.sender.poll_timeout());
            consider(f.receiver.poll_timeout());
        }
        for t in &self.tcp {
            consider(t.sender.poll_timeout());
        }
        if self.cfg.trace_interval.is_some() {
            consider(Some(self.next_trace));
        }
        t
    }

    fn deliver(&mut self) {
        let now = self.now;
        while let Some(p) = self.forward.poll_deliver(now) {
            match p {
                Packet::Ferry { flow, mut bytes } => {
                    self.deliver_data(flow, &mut bytes);
                    self.pool.push(bytes);
                }
                Packet::Segment { flow, seg } => {
                    let ack = self.tcp[flow].receiver.handle_segment(now, seg);
                    self.reverse.send(now, Packet::Ack { flow, ack });
                }
                Packet::Ack { .. } => {}
            }
        }
        while let Some(p) = self.reverse.poll_deliver(now) {
            match p {
                Packet::Ferry { flow, mut bytes } => {
                    self.ferry[flow].sender.handle_datagram(now, &mut bytes);
                    self.pool.push(bytes);
                }
                Packet::Ack { flow, ack } => self.tcp[flow].sender.handle_ack(now, ack),
                Packet::Segment { .. } => {}
            }
        }
    }

    fn deliver_data(&mut self, flow: usize, bytes: &mut [u8]) {
        let now = self.now;
        let f = &mut self.ferry[flow];
        let Some(d) = f.receiver.handle_datagram(now, bytes) else {
            self.receiver_events(flow);
            return;
        };
        let data = &bytes[d.payload.clone()];
        let bs = u64::from(f.receiver.manifest().block_size());
        let block = d.offset / bs;
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        if f.written[w] & bit != 0 {
            self.bytes_ok = false;
            self.errors
                .push(format!("flow {flow}: block {block} delivered twice"));
        }
        f.written[w] |= bit;
        if !check_pattern(flow, d.file, d.offset, data) {
            self.bytes_ok = false;
            self.errors
                .push(format!("flow {flow}: block {block} corrupted"));
        }
        f.delivered += data.len() as u64;
        f.receiver.handle_write_done(now, Ok(()));
        self.total_delivered += data.len() as u64;
        let total = self.cfg.bytes * self.cfg.flows as u64;
        for (k, frac) in [0.1, 0.9].into_iter().enumerate() {
            if self.marks[k].is_none() && self.total_delivered as f64 >= frac * total as f64 {
                self.marks[k] = Some(now);
            }
        }
        let _ = &f.marks;
        self.receiver_events(flow);
    }

    fn timeouts(&mut self) {
        let now = self.now;
        for f in &mut self.ferry {
            if f.sender.poll_timeout().is_some_and(|t| t <= now) {
                f.sender.handle_timeout(now);
            }
            if f.receiver.poll_timeout().is_some_and(|t| t <= now) {
                f.receiver.handle_timeout(now);
            }
        }
        for i in 0..self.ferry.len() {
            self.receiver_events(i);
        }
        for t in &mut self.tcp {
            if t.sender.poll_timeout().is_some_and(|x| x <= now) {
                t.sender.handle_timeout(now);
            }
        }
    }

    fn report(mut self) -> Report {
        let cfg = self.cfg;
        let c = cfg.capacity();
        let p = cfg.loss;
        let owd = cfg.rtt.as_secs_f64() / 2.0;
        let completed = self
            .ferry
            .iter()
            .all(|f| f.complete_at.is_some() && f.failure.is_none());
        let mut flows = Vec::new();
        let mut elapsed_max: f64 = 0.0;
        let mut throughputs = Vec::new();
        let mut resent_total = 0u64;
        let mut end = Timestamp::ZERO;
        for f in &self.ferry {
            let first = f.sender.stats().first_data_at.unwrap_or(Timestamp::ZERO);
            let done = f.complete_at.unwrap_or(self.now);
            end = end.max(done);
            let elapsed = done.saturating_since(first).as_secs_f64();
            elapsed_max = elapsed_max.max(elapsed);
            let s = f.sender.stats();
            let resent = s.resent_bytes + s.copy_bytes;
            resent_total += resent;
            throughputs.push(f.delivered as f64 / elapsed.max(1e-9));
            if f.delivered != cfg.bytes {
                self.bytes_ok &= f.complete_at.is_none();
            }
            flows.push(FlowReport {
                bytes: f.delivered,
                elapsed_s: elapsed,
                rate_mbps: f.delivered as f64 * 8.0 / 1e6 / elapsed.max(1e-9),
                retransmit_ratio: resent as f64 / cfg.bytes.max(1) as f64,
                probes: s.probes,
                drops: f.receiver.drops().nonzero(),
                duplicate_bytes: f.receiver.stats().duplicate_bytes,
                failure: f.failure.clone(),
            });
        }
        let payload = (cfg.bytes * cfg.flows as u64) as f64;
        let useful = c * (1.0 - p);
        let goodput_ratio = payload / (useful * (elapsed_max - owd).max(1e-9));
        let steady_ratio = match self.marks {
            [Some(a), Some(b)] if b > a => {
                0.8 * payload / (useful * b.saturating_since(a).as_secs_f64())
            }
            _ => 0.0,
        };
        let tail_rtts = (cfg.rtt > Duration::ZERO)
            .then(|| (elapsed_max - owd - payload / useful) / cfg.rtt.as_secs_f64());
        let sum: f64 = throughputs.iter().sum();
        let sq: f64 = throughputs.iter().map(|x| x * x).sum();
        let jain = if sq > 0.0 {
            sum * sum / (throughputs.len() as f64 * sq)
        } else {
            0.0
        };
        let tcp_share = (!self.tcp.is_empty()).then(|| {
            let tcp_now: u64 = self.tcp.iter().map(|t| t.receiver.delivered_bytes()).sum();
            let tcp_bytes = tcp_now.saturating_sub(self.tcp_at_ferry_start) as f64;
            let ferry: f64 = self.ferry.iter().map(|f| f.delivered as f64).sum();
            tcp_bytes / (tcp_bytes + ferry).max(1.0)
        });
        let fwd: &LinkStats = self.forward.stats();
        for f in &self.ferry {
            if let Some(e) = &f.failure {
                self.errors.push(e.clone());
            }
        }
        Report {
            completed,
            bytes_ok: self.bytes_ok && completed,
            goodput_ratio,
            steady_ratio,
            tail_rtts,
            retransmit_ratio: resent_total as f64 / payload.max(1.0),
            jain,
            tcp_share,
            elapsed_s: elapsed_max,
            seed: cfg.seed,
            flows,
            queue_drops: fwd.dropped_queue,
            random_losses: fwd.lost,
            max_queue_ms: fwd.max_queue_delay.as_secs_f64() * 1e3,
            trace: self.trace,
            errors: self.errors,
        }
    }
}
