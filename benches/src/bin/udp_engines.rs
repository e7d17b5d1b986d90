//! UDP over loopback three ways, one pinned core sending and another receiving, to measure
//! what glommio's sockets would give the data path against what the lanes use now.
//!
//! - `std`: one `sendto` and one `recvfrom` per datagram (what iperf3 does).
//! - `glommio`: glommio 0.9's `UdpSocket` on a pinned `LocalExecutor`, 16 sends and 16
//!   receives in flight at once, so its io_uring batches them (one `SENDMSG` / `RECVMSG`
//!   operation per datagram: its sockets have no control messages, so no GSO or GRO).
//! - `ferry-io`: the lanes' sockets, GSO bursts of up to 64 KB out (`send_segments`) and
//!   GRO batches of 16 messages in (`recv_batch`).
//!
//! Each run blasts unpaced for `FERRY_BENCH_SECS` (default 2) and reports what arrived, and
//! each side's thread CPU time per GB moved (sender per GB sent, receiver per GB received).
//!
//! `cargo run --release -p ferry-benches --features glommio --bin udp_engines`
//! (`FERRY_BENCH_SIZES=1472,8192` picks the datagram sizes).

use std::io;
use std::net::{SocketAddr, UdpSocket as StdSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_io::placement::{available_cores, pin_current_thread};
use ferry_io::udp::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS, RecvBatch, SocketOptions, UdpSocket};
use glommio::{LocalExecutorBuilder, Placement};

/// Socket buffers asked for on every socket, so none of the three is starved by defaults.
const BUFFER: usize = 8 << 20;
/// Operations glommio keeps in flight on each side.
const IN_FLIGHT: usize = 16;
const LOCAL: &str = "127.0.0.1:0";
/// Sent when the sender is done; no datagram of the run is this short.
const MARKER: [u8; 1] = [0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Std,
    Glommio,
    FerryIo,
}

/// What one side did: bytes moved and its thread's CPU time.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    bytes: u64,
    cpu: Duration,
    /// From the first datagram to the last (receiver), or the sending time (sender).
    wall: Duration,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Asks for [`BUFFER`] both ways, as `ferry_io`'s sockets do: the forcing option first
/// (beyond `rmem_max` with CAP_NET_ADMIN), then the plain one.
fn set_buffers(fd: &impl AsRawFd) {
    let v = BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt with a valid int option value on an open socket.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// Counts arriving bytes from the first datagram until `stop` is set and the socket has
/// been quiet for a moment.
struct Counter {
    side: Side,
    first: Option<Instant>,
    last: Instant,
    cpu0: Duration,
}

impl Counter {
    fn new() -> Self {
        Counter {
            side: Side::default(),
            first: None,
            last: Instant::now(),
            cpu0: thread_cpu(),
        }
    }

    fn add(&mut self, n: usize) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.side.bytes += n as u64;
    }

    fn finish(&mut self) -> Side {
        self.side.cpu = thread_cpu() - self.cpu0;
        self.side.wall = self.first.map_or(Duration::ZERO, |f| self.last - f);
        self.side
    }
}

fn receive(
    engine: Engine,
    core: usize,
    ready: mpsc::Sender<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> Side {
    pin_current_thread(core).expect("pin the receiver");
    let quiet = Duration::from_millis(100);
    match engine {
        Engine::Std => {
            let s = StdSocket::bind(LOCAL).unwrap();
            set_buffers(&s);
            s.set_read_timeout(Some(quiet)).unwrap();
            ready.send(s.local_addr().unwrap()).unwrap();
            let mut buf = vec![0u8; 65_536];
            let mut c = Counter::new();
            loop {
                match s.recv(&mut buf) {
                    Ok(n) if n == MARKER.len() => return c.finish(),
                    Ok(n) => c.add(n),
                    Err(_) if stop.load(Ordering::Relaxed) => return c.finish(),
                    Err(_) => {}
                }
            }
        }
        Engine::FerryIo => {
            let s = ferry_socket();
            s.enable_gro();
            ready.send(s.local_addr().unwrap()).unwrap();
            let mut batch = RecvBatch::new(16);
            let mut c = Counter::new();
            loop {
                let r = s.wait(true, false, Some(quiet)).unwrap();
                if !r.readable {
                    if stop.load(Ordering::Relaxed) {
                        return c.finish();
                    }
                    continue;
                }
                while s.recv_batch(&mut batch).is_ok_and(|n| n > 0) {
                    for (_, d) in batch.datagrams() {
                        if d.len() == MARKER.len() {
                            return c.finish();
                        }
                        c.add(d.len());
                    }
                }
            }
        }
        Engine::Glommio => LocalExecutorBuilder::new(Placement::Fixed(core))
            .spawn(move || async move {
                // No read timeout (glommio would link a timer to every receive): the run
                // ends with the sender's one-byte markers.
                let s = Rc::new(glommio::net::UdpSocket::bind(LOCAL).unwrap());
                set_buffers(&*s);
                ready.send(s.local_addr().unwrap()).unwrap();
                let c = Rc::new(std::cell::RefCell::new(Counter::new()));
                let done = Rc::new(std::cell::Cell::new(false));
                for _ in 0..IN_FLIGHT {
                    let (s, c, done) = (s.clone(), c.clone(), done.clone());
                    glommio::spawn_local(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok((n, _)) = s.recv_from(&mut buf).await {
                            if n == MARKER.len() {
                                done.set(true);
                                return;
                            }
                            c.borrow_mut().add(n);
                        }
                    })
                    .detach();
                }
                while !done.get() {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                let side = c.borrow_mut().finish();
                let _ = stop;
                side
            })
            .unwrap()
            .join()
            .unwrap(),
    }
}

fn send(engine: Engine, core: usize, to: SocketAddr, size: usize, secs: Duration) -> Side {
    pin_current_thread(core).expect("pin the sender");
    let payload = vec![0x5au8; size];
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut bytes = 0u64;
    match engine {
        Engine::Std => {
            let s = StdSocket::bind(LOCAL).unwrap();
            set_buffers(&s);
            while start.elapsed() < secs {
                for _ in 0..64 {
                    if let Ok(n) = s.send_to(&payload, to) {
                        bytes += n as u64;
                    }
                }
            }
        }
        Engine::FerryIo => {
            let s = ferry_socket();
            let n = (MAX_GSO_BYTES / size).clamp(1, MAX_GSO_SEGMENTS);
            let iov: Vec<io::IoSlice<'_>> = (0..n).map(|_| io::IoSlice::new(&payload)).collect();
            while start.elapsed() < secs {
                match s.send_segments(to, &iov, size) {
                    Ok(_) => bytes += (n * size) as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let _ = s.wait(false, true, Some(Duration::from_millis(1)));
                    }
                    Err(_) => {}
                }
            }
        }
        Engine::Glommio => {
            return LocalExecutorBuilder::new(Placement::Fixed(core))
                .spawn(move || async move {
                    let s = Rc::new(glommio::net::UdpSocket::bind(LOCAL).unwrap());
                    set_buffers(&*s);
                    let payload = Rc::new(payload);
                    let cpu0 = thread_cpu();
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..IN_FLIGHT)
                        .map(|_| {
                            let (s, payload) = (s.clone(), payload.clone());
                            glommio::spawn_local(async move {
                                let mut bytes = 0u64;
                                while start.elapsed() < secs {
                                    if let Ok(n) = s.send_to(&payload, to).await {
                                        bytes += n as u64;
                                    }
                                }
                                bytes
                            })
                        })
                        .collect();
                    let mut bytes = 0;
                    for t in tasks {
                        bytes += t.await;
                    }
                    Side {
                        bytes,
                        cpu: thread_cpu() - cpu0,
                        wall: start.elapsed(),
                    }
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }
    Side {
        bytes,
        cpu: thread_cpu() - cpu0,
        wall: start.elapsed(),
    }
}

fn run(engine: Engine, size: usize, secs: Duration, cores: (usize, usize)) -> (Side, Side) {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let receiver = {
        let stop = stop.clone();
        std::thread::spawn(move || receive(engine, cores.0, tx, stop))
    };
    let to = rx.recv().expect("the receiver's address");
    let sender = std::thread::spawn(move || send(engine, cores.1, to, size, secs))
        .join()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    // The end, told in band: a few one-byte datagrams once the queue has drained.
    let marker = StdSocket::bind(LOCAL).unwrap();
    while !receiver.is_finished() {
        for _ in 0..IN_FLIGHT {
            let _ = marker.send_to(&MARKER, to);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (sender, receiver.join().unwrap())
}

fn per_gb(cpu: Duration, bytes: u64) -> f64 {
    cpu.as_secs_f64() / (bytes.max(1) as f64 / 1e9)
}

fn main() {
    let secs = Duration::from_secs_f64(
        std::env::var("FERRY_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    );
    let sizes: Vec<usize> = std::env::var("FERRY_BENCH_SIZES")
        .unwrap_or_else(|_| "1472,8192,61440".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a datagram size"))
        .collect();
    assert!(
        sizes
            .iter()
            .all(|&s| s > MARKER.len() && s <= MAX_GSO_BYTES),
        "datagram sizes run from 2 to {MAX_GSO_BYTES} bytes"
    );
    let cores = available_cores();
    let pair = match cores.as_slice() {
        [.., a, b] => (*a, *b),
        _ => panic!("needs two cores"),
    };
    println!(
        "UDP over loopback, unpaced, receiver on core {} and sender on core {}, {:.1} s per run",
        pair.0,
        pair.1,
        secs.as_secs_f64()
    );
    println!(
        "| datagram | engine | received Gbit/s | delivered | sender CPU s/GB sent | receiver CPU s/GB received |"
    );
    println!("|---|---|---|---|---|---|");
    for &size in &sizes {
        for engine in [Engine::Std, Engine::Glommio, Engine::FerryIo] {
            let (tx, rx) = run(engine, size, secs, pair);
            let gbps = rx.bytes as f64 * 8.0 / rx.wall.as_secs_f64().max(1e-9) / 1e9;
            println!(
                "| {size} B | {engine:?} | {gbps:.2} | {:.0} % | {:.2} | {:.2} |",
                100.0 * rx.bytes as f64 / tx.bytes.max(1) as f64,
                per_gb(tx.cpu, tx.bytes),
                per_gb(rx.cpu, rx.bytes),
            );
        }
    }
}

/// A lane's socket (ferry-io) on loopback with the benchmark's buffer sizes.
fn ferry_socket() -> UdpSocket {
    let opts = SocketOptions {
        recv_buffer: BUFFER,
        send_buffer: BUFFER,
        ..Default::default()
    };
    UdpSocket::bind(LOCAL.parse().unwrap(), &opts).unwrap()
}
