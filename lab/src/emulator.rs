//! The running emulator: two TUN devices, one in each namespace, and one thread per
//! direction that reads from one device, passes every segment through a [`Link`] and writes
//! what survives into the other device when its time comes.
//!
//! Why it is shaped this way (measured on a 2-core VM with a prototype):
//! - **Real-time threads.** Both endpoints' network stacks share the cores with the
//!   emulator; at normal priority the emulator is starved and the link's delay and loss
//!   become the scheduler's (tens of ms of RTT error, 10 % drops). `SCHED_FIFO` fixes it;
//!   the threads always block between batches, so they never monopolise a core.
//! - **Coalesced wake-ups.** Once traffic flows, a thread wakes once a tick (100 µs by
//!   default), drains what the device holds and releases what is due within half a tick,
//!   instead of waking per packet. Release times are therefore within ±tick/2.
//! - **Super-packets both ways.** What one wake-up releases is written back as GSO
//!   super-packets where consecutive segments allow (as GRO would hand them to the stack),
//!   so the receiving stack, which runs inside the emulator's `write`, runs once per run
//!   instead of once per 1500-byte packet. With one write per packet a 100 µs tick cost
//!   less CPU but its bursts overflowed a busy receiver's socket buffer (iperf3 UDP lost
//!   2.7–3.0 % on a 1 % link where 25 µs gave 1.1–1.5 %); merged, a 100 µs tick measured
//!   1.08 % and halves the emulator's CPU against 25 µs (`benches/scripts/lab-cpu.sh`).
//! - **Offloads.** TCP and UDP arrive as GSO super-packets (one read for up to 64 KiB) and
//!   are split here into MTU-sized segments, each with its own loss draw and rate charge.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::link::{Link, LinkConfig, LinkStats, Nanos};
use crate::netns;
use crate::packet::{MAX_RUN_SEGMENTS, VNET_HDR_LEN, VnetHdr, coalesce, segment};
use crate::tun::Tun;

/// Where and how to build the link.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Namespace of end A (must exist).
    pub ns_a: String,
    /// Namespace of end B (must exist).
    pub ns_b: String,
    /// Address of end A's device.
    pub addr_a: Ipv4Addr,
    /// Address of end B's device.
    pub addr_b: Ipv4Addr,
    /// Prefix length of both addresses (they must share the subnet).
    pub prefix_len: u8,
    /// Name of the TUN device at each end.
    pub ifname: String,
    /// Device MTU (largest IP packet on the emulated wire).
    pub mtu: u32,
    /// Packets the kernel queues on each device while the emulator sleeps.
    pub txqueuelen: u32,
    /// The link from A to B.
    pub a_to_b: LinkConfig,
    /// The link from B to A.
    pub b_to_a: LinkConfig,
    /// `SCHED_FIFO` priority of the two threads; `None` leaves them at normal priority.
    pub realtime_priority: Option<i32>,
    /// How often a busy thread wakes.
    pub tick: Duration,
}

impl EmulatorConfig {
    /// Defaults for everything but the namespaces and addresses.
    pub fn new(ns_a: &str, ns_b: &str, addr_a: Ipv4Addr, addr_b: Ipv4Addr) -> EmulatorConfig {
        EmulatorConfig {
            ns_a: ns_a.into(),
            ns_b: ns_b.into(),
            addr_a,
            addr_b,
            prefix_len: 24,
            ifname: "ferrylab0".into(),
            mtu: 1500,
            txqueuelen: 10_000,
            a_to_b: LinkConfig::default(),
            b_to_a: LinkConfig::default(),
            realtime_priority: Some(50),
            tick: Duration::from_micros(100),
        }
    }
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// The link's own counters (segments, drops, releases).
    pub link: LinkStats,
    /// Reads from the device (super-packets count once).
    pub reads: u64,
    /// Reads that were GSO super-packets.
    pub super_packets: u64,
    /// Packets that could not be parsed or split (dropped).
    pub malformed: u64,
    /// Writes the kernel refused (dropped).
    pub write_errors: u64,
    /// Writes into the far device (a merged super-packet counts once).
    pub writes: u64,
    /// Writes that were super-packets merged from two or more segments.
    pub merged: u64,
    /// Whether the thread runs at real-time priority.
    pub realtime: bool,
}

/// A running emulator; dropping it stops the threads and removes the devices.
pub struct Emulator {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<[DirectionStats; 2]>>,
    /// Whether the devices accepted UDP segmentation offload.
    pub uso: bool,
}

fn ns_of(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

impl Emulator {
    /// Creates and configures the devices in both namespaces and starts the threads.
    /// Traffic passes once this returns.
    pub fn start(cfg: EmulatorConfig) -> Result<Emulator, Error> {
        if cfg.mtu < 576 || cfg.mtu > 65_535 {
            return Err(Error::Config(format!(
                "MTU {} is outside 576..=65535",
                cfg.mtu
            )));
        }
        let a = Arc::new(Tun::create_in(&cfg.ns_a, &cfg.ifname)?);
        let b = Arc::new(Tun::create_in(&cfg.ns_b, &cfg.ifname)?);
        for (ns, addr) in [(&cfg.ns_a, cfg.addr_a), (&cfg.ns_b, cfg.addr_b)] {
            let (mtu, qlen) = (cfg.mtu.to_string(), cfg.txqueuelen.to_string());
            netns::ip(&[
                "-n",
                ns,
                "link",
                "set",
                "dev",
                &cfg.ifname,
                "mtu",
                &mtu,
                "txqueuelen",
                &qlen,
                "up",
            ])?;
            let cidr = format!("{addr}/{}", cfg.prefix_len);
            netns::ip(&["-n", ns, "addr", "add", &cidr, "dev", &cfg.ifname])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new([DirectionStats::default(); 2]));
        let epoch = Instant::now();
        let mut threads = Vec::new();
        for (dir, (rx, tx, link)) in [
            (a.clone(), b.clone(), cfg.a_to_b.clone()),
            (b.clone(), a.clone(), cfg.b_to_a.clone()),
        ]
        .into_iter()
        .enumerate()
        {
            let worker = Direction {
                rx,
                tx,
                link: Link::new(link),
                pool: Vec::new(),
                due: Vec::new(),
                stats: DirectionStats::default(),
                shared: stats.clone(),
                index: dir,
                stop: stop.clone(),
                epoch,
                tick: ns_of(cfg.tick),
            };
            let prio = cfg.realtime_priority;
            let name = if dir == 0 { "lab a->b" } else { "lab b->a" };
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || worker.run(prio))
                    .map_err(|e| Error::io("spawning an emulator thread", e))?,
            );
        }
        Ok(Emulator {
            stop,
            threads,
            stats,
            uso: a.uso && b.uso,
        })
    }

    /// Counters of both directions (A→B, B→A), at most a tick or so old.
    pub fn stats(&self) -> [DirectionStats; 2] {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the threads; the devices go with the last reference.
    pub fn stop(mut self) -> [DirectionStats; 2] {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl std::ops::Drop for Emulator {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Buffers kept for reuse; more are freed (a burst's worth is plenty).
const POOL_MAX: usize = 16_384;
/// Most reads per wake-up, so releases are not starved by a flood.
const READ_BUDGET: usize = 512;

struct Direction {
    rx: Arc<Tun>,
    tx: Arc<Tun>,
    link: Link<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    /// Packets released in this wake-up, written together.
    due: Vec<Vec<u8>>,
    stats: DirectionStats,
    shared: Arc<Mutex<[DirectionStats; 2]>>,
    index: usize,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    tick: Nanos,
}

fn set_realtime(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

impl Direction {
    fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }

    fn run(mut self, priority: Option<i32>) {
        self.stats.realtime = priority.is_some_and(set_realtime);
        let mut buf = vec![0u8; VNET_HDR_LEN + 65_536];
        let mut published = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.now();
            let mut reads = 0;
            while reads < READ_BUDGET {
                match self.rx.read(&mut buf) {
                    Ok(n) => {
                        reads += 1;
                        self.handle_read(now, &buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.stats.malformed += 1;
                        break;
                    }
                }
            }
            while let Some(p) = self.link.poll_release(now + self.tick / 2) {
                self.due.push(p);
            }
            let released = self.due.len();
            self.write_due();
            if now >= published + 100_000_000 || reads + released == 0 {
                self.publish();
                published = now;
            }
            let next = self.link.poll_timeout();
            if reads + released > 0 {
                // Busy: sleep one tick, then drain everything that arrived meanwhile and
                // release everything due by then in one go (a release falls due at most
                // half a tick early or late). Waking for each release instead would cost a
                // wake-up per packet at high rates and leave nothing to merge.
                sleep_for((now + self.tick).saturating_sub(self.now()));
            } else {
                // Idle: wake for the next packet or the next release; check `stop` often.
                let wait = next.map_or(100_000_000, |t| t.saturating_sub(now).min(100_000_000));
                if wait > 0 {
                    self.rx.wait_readable(Duration::from_nanos(wait));
                }
            }
        }
        self.publish();
    }

    fn handle_read(&mut self, now: Nanos, buf: &[u8]) {
        self.stats.reads += 1;
        let Ok(hdr) = VnetHdr::parse(buf) else {
            self.stats.malformed += 1;
            return;
        };
        if hdr.gso_type != 0 {
            self.stats.super_packets += 1;
        }
        let (link, pool) = (&mut self.link, &mut self.pool);
        let r = segment(&hdr, &buf[VNET_HDR_LEN..], |headers, payload| {
            let mut p = pool.pop().unwrap_or_default();
            p.clear();
            // A zero virtio_net_hdr: one finished packet, checksums complete.
            p.resize(VNET_HDR_LEN, 0);
            p.extend_from_slice(headers);
            p.extend_from_slice(payload);
            let len = p.len() - VNET_HDR_LEN;
            if let Err((p, _)) = link.handle_packet(now, len, p) {
                pool.push(p);
            }
        });
        if r.is_err() {
            self.stats.malformed += 1;
        }
    }

    /// Writes the packets released in this wake-up: each run of consecutive segments of a
    /// flow that the kernel could have cut from one super-packet goes back as one GSO
    /// super-packet (one `writev`, one trip through the receiving stack), the rest one by
    /// one. Loss and the rate were already applied per segment.
    fn write_due(&mut self) {
        let (tx, stats, due) = (&self.tx, &mut self.stats, &self.due);
        coalesce(due, VNET_HDR_LEN, tx.uso, |range, merged| {
            let r = match merged {
                None => tx.write(&due[range.start]),
                Some((hdr, headers)) => {
                    let mut vnet = [0u8; VNET_HDR_LEN];
                    hdr.write(&mut vnet);
                    let mut iov = [std::io::IoSlice::new(&[]); MAX_RUN_SEGMENTS + 2];
                    iov[0] = std::io::IoSlice::new(&vnet);
                    iov[1] = std::io::IoSlice::new(headers);
                    let skip = VNET_HDR_LEN + headers.len();
                    for (slot, p) in iov[2..].iter_mut().zip(&due[range.clone()]) {
                        *slot = std::io::IoSlice::new(&p[skip..]);
                    }
                    stats.merged += 1;
                    tx.write_vectored(&iov[..2 + range.len()])
                }
            };
            stats.writes += 1;
            if r.is_err() {
                stats.write_errors += 1;
            }
        });
        for p in self.due.drain(..) {
            if self.pool.len() < POOL_MAX {
                self.pool.push(p);
            }
        }
    }

    fn publish(&mut self) {
        self.stats.link = self.link.stats();
        if let Ok(mut s) = self.shared.lock() {
            s[self.index] = self.stats;
        }
    }
}

fn sleep_for(ns: Nanos) {
    if ns > 0 {
        std::thread::sleep(Duration::from_nanos(ns));
    }
}
