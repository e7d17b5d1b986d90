//! Loopback throughput of 8 KiB datagrams, sender pinned to core 0 and receiver to core 1,
//! two seconds per mode. Ignored by default; run it optimised:
//!
//! ```text
//! cargo test -p ferry-io --release -- --ignored --nocapture
//! ```
//!
//! Loopback never splits a GSO burst for a GRO receiver, so GSO+GRO here is an upper bound,
//! not what a real NIC gives (see `shared/MACHINE.md`).

use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ferry_io::udp::MAX_GSO_BYTES;
use ferry_io::{RecvBatch, SocketOptions, UdpSocket, placement};

const DATAGRAM: usize = 8192;
const RUN: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
struct Mode {
    name: &'static str,
    /// Datagrams per send call: 1 is one `sendto` each; more is one GSO `sendmsg`.
    per_send: usize,
    gro: bool,
    /// Messages per `recvmmsg`.
    per_recv: usize,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "GSO send + GRO recv (recvmmsg 64)",
        per_send: MAX_GSO_BYTES / DATAGRAM,
        gro: true,
        per_recv: 64,
    },
    Mode {
        name: "GSO send, no GRO (recvmmsg 64)",
        per_send: MAX_GSO_BYTES / DATAGRAM,
        gro: false,
        per_recv: 64,
    },
    Mode {
        name: "sendto each, no GRO (recvmmsg 64)",
        per_send: 1,
        gro: false,
        per_recv: 64,
    },
    Mode {
        name: "one datagram per syscall both ways",
        per_send: 1,
        gro: false,
        per_recv: 1,
    },
];

struct Outcome {
    sent: u64,
    received: u64,
    datagrams: u64,
    syscalls: u64,
    /// First to last datagram received.
    busy: Duration,
    /// CPU time of the sender thread (which, on loopback, also runs the receive path's
    /// softirq) and of the receiver thread.
    sender_cpu: Duration,
    receiver_cpu: Duration,
}

/// CPU time the calling thread has used: shows how much of its core each side got on a
/// box shared with other work.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live `timespec` the kernel writes into.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run(mode: Mode, cores: (usize, usize)) -> Outcome {
    let rx = UdpSocket::bind(
        "127.0.0.1:0".parse().unwrap(),
        &SocketOptions {
            recv_buffer: 32 << 20,
            ..SocketOptions::default()
        },
    )
    .unwrap();
    if mode.gro {
        assert!(rx.enable_gro());
    }
    let to: SocketAddr = rx.local_addr().unwrap();
    let ready = Arc::new(Barrier::new(2));
    let done = Arc::new(AtomicBool::new(false));

    let receiver = {
        let (ready, done) = (ready.clone(), done.clone());
        std::thread::spawn(move || {
            placement::pin_current_thread(cores.1).unwrap();
            let mut batch = RecvBatch::new(mode.per_recv);
            let (mut bytes, mut datagrams, mut syscalls) = (0u64, 0u64, 0u64);
            let (mut first, mut last) = (None, Instant::now());
            ready.wait();
            let cpu0 = thread_cpu();
            let mut cpu_at_last = cpu0;
            loop {
                syscalls += 1;
                match rx.recv_batch(&mut batch) {
                    Ok(_) => {
                        last = Instant::now();
                        cpu_at_last = thread_cpu();
                        first.get_or_insert(last);
                        for (_, d) in batch.datagrams() {
                            bytes += d.len() as u64;
                            datagrams += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if done.load(Ordering::Relaxed)
                            && last.elapsed() > Duration::from_millis(200)
                        {
                            break;
                        }
                        rx.wait(true, false, Some(Duration::from_millis(20)))
                            .unwrap();
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
            let busy = first.map_or(Duration::ZERO, |f| last - f);
            (bytes, datagrams, syscalls, busy, cpu_at_last - cpu0)
        })
    };

    let sender = std::thread::spawn(move || {
        placement::pin_current_thread(cores.0).unwrap();
        let tx = UdpSocket::bind(
            "127.0.0.1:0".parse().unwrap(),
            &SocketOptions {
                send_buffer: 8 << 20,
                ..SocketOptions::default()
            },
        )
        .unwrap();
        let payload: Vec<u8> = (0..DATAGRAM * mode.per_send).map(|i| i as u8).collect();
        // One slice per datagram, as the engine will hand over its packet slots.
        let iov: Vec<IoSlice<'_>> = payload.chunks(DATAGRAM).map(IoSlice::new).collect();
        let mut sent = 0u64;
        ready.wait();
        let cpu0 = thread_cpu();
        let start = Instant::now();
        while start.elapsed() < RUN {
            let r = if mode.per_send == 1 {
                tx.send_to(&payload, to)
            } else {
                tx.send_segments(to, &iov, DATAGRAM)
            };
            match r {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    tx.wait(false, true, Some(Duration::from_millis(10)))
                        .unwrap();
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        assert!(mode.per_send == 1 || tx.gso_enabled());
        (sent, thread_cpu() - cpu0)
    });

    let (sent, sender_cpu) = sender.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let (received, datagrams, syscalls, busy, receiver_cpu) = receiver.join().unwrap();
    Outcome {
        sent,
        received,
        datagrams,
        syscalls,
        busy,
        sender_cpu,
        receiver_cpu,
    }
}

#[test]
#[ignore = "a 8-second benchmark; run with --release -- --ignored --nocapture"]
fn loopback_throughput() {
    let cores = placement::available_cores();
    let pair = match cores[..] {
        [a, b, ..] => (a, b),
        [a] => (a, a),
        [] => panic!("no cores available"),
    };
    println!(
        "{DATAGRAM} B datagrams over 127.0.0.1, {}s per mode, sender core {}, receiver core {}",
        RUN.as_secs(),
        pair.0,
        pair.1
    );
    for mode in MODES {
        let o = run(mode, pair);
        let gbps = |bytes: u64, t: Duration| bytes as f64 * 8.0 / t.as_secs_f64() / 1e9;
        let pct = |cpu: Duration, wall: Duration| 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
        println!(
            "{:<36} received {:6.2} Gbit/s | sender pushed {:6.2} Gbit/s, {:4.1}% dropped | \
             {:5.1} datagrams per recv call | CPU: sender {:3.0}%, receiver {:3.0}%",
            mode.name,
            gbps(o.received, o.busy),
            gbps(o.sent, RUN),
            100.0 * (1.0 - o.received as f64 / o.sent.max(1) as f64),
            o.datagrams as f64 / o.syscalls.max(1) as f64,
            pct(o.sender_cpu, RUN),
            pct(o.receiver_cpu, o.busy),
        );
        assert!(o.received > 0, "{}: nothing arrived", mode.name);
    }
}
