//! UDP on loopback: GSO bursts arrive as exact datagrams with and without GRO, over IPv4 and
//! IPv6, on the GSO path and on the forced fallback.

use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_io::udp::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
use ferry_io::{RecvBatch, SocketOptions, UdpSocket};

const V4: &str = "127.0.0.1:0";
const V6: &str = "[::1]:0";

/// Deterministic bytes that differ between positions and between tests (`seed`).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// `data` cut at irregular points that do not line up with any segment size, with an empty
/// slice thrown in.
fn scatter(data: &[u8]) -> Vec<IoSlice<'_>> {
    const CUTS: [usize; 7] = [1, 4096, 17, 8248, 0, 3000, 12_345];
    let mut out = Vec::new();
    let mut rest = data;
    for &n in CUTS.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(IoSlice::new(head));
        rest = tail;
    }
    out
}

/// A bound socket, or `None` when the host has no such loopback (IPv6 disabled).
fn bind(addr: &str, opts: &SocketOptions) -> Option<UdpSocket> {
    match UdpSocket::bind(addr.parse().unwrap(), opts) {
        Ok(s) => Some(s),
        Err(e) if addr == V6 && e.kind() == ErrorKind::AddrNotAvailable => None,
        Err(e) => panic!("bind {addr}: {e}"),
    }
}

/// Receives until `want` datagrams have come (or a second passes). Returns them with their
/// senders, and how many messages carried them.
fn recv_n(sock: &UdpSocket, want: usize) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
    let mut batch = RecvBatch::new(16);
    let mut got = Vec::new();
    let mut messages = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.len() < want && Instant::now() < deadline {
        match sock.recv_batch(&mut batch) {
            Ok(n) => {
                assert_eq!(n, batch.datagram_count());
                messages += batch.message_count();
                got.extend(batch.datagrams().map(|(a, d)| (a, d.to_vec())));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                sock.wait(true, false, Some(Duration::from_millis(50)))
                    .unwrap();
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    (got, messages)
}

/// Sends `total` bytes in segments of `segment` and checks they arrive cut exactly there.
fn burst(family: &str, gro: bool, force_no_gso: bool, segment: usize, total: usize) {
    let ctx = format!("{family} gro={gro} no_gso={force_no_gso} {total}/{segment}");
    let opts = SocketOptions {
        force_no_gso,
        ..SocketOptions::default()
    };
    // Room for a whole burst of small datagrams, each charged a full skb.
    let big_rx = SocketOptions {
        recv_buffer: 4 << 20,
        ..SocketOptions::default()
    };
    let (Some(tx), Some(rx)) = (bind(family, &opts), bind(family, &big_rx)) else {
        eprintln!("{ctx}: no loopback for this family; skipped");
        return;
    };
    if gro {
        assert!(rx.enable_gro(), "{ctx}: UDP_GRO refused");
    }
    assert_eq!(tx.gso_enabled(), !force_no_gso, "{ctx}");
    let data = pattern(total, segment as u8);
    let iov = scatter(&data);
    let sent = tx
        .send_segments(rx.local_addr().unwrap(), &iov, segment)
        .unwrap();
    assert_eq!(sent, total, "{ctx}");

    let want = total.div_ceil(segment);
    let (got, messages) = recv_n(&rx, want);
    assert_eq!(got.len(), want, "{ctx}: datagram count");
    let from = tx.local_addr().unwrap();
    for (i, ((addr, bytes), expect)) in got.iter().zip(data.chunks(segment)).enumerate() {
        assert_eq!(*addr, from, "{ctx}: sender of datagram {i}");
        assert_eq!(bytes.len(), expect.len(), "{ctx}: length of datagram {i}");
        assert!(bytes == expect, "{ctx}: contents of datagram {i}");
    }
    // On loopback a GSO burst reaches a GRO socket whole: one message, split by us. Not a
    // burst within a few bytes of 64 KiB: with lo's link header added it exceeds the
    // device's gso_max_size (65 536), so the kernel segments it in software on the way.
    if gro && !force_no_gso {
        assert!(tx.gso_enabled(), "{ctx}: GSO was switched off");
        if total <= 60_000 {
            assert_eq!(messages, 1, "{ctx}: expected one coalesced message");
        }
    } else {
        assert_eq!(messages, want, "{ctx}: expected one message per datagram");
    }
}

fn all_ways(segment: usize, total: usize) {
    for family in [V4, V6] {
        for gro in [false, true] {
            for force_no_gso in [false, true] {
                burst(family, gro, force_no_gso, segment, total);
            }
        }
    }
}

#[test]
fn seven_full_segments_arrive_exactly() {
    all_ways(8248, 7 * 8248);
}

#[test]
fn short_last_segment() {
    all_ways(1400, 3 * 1400 + 321);
}

#[test]
fn most_segments_and_bytes_allowed() {
    all_ways(1000, MAX_GSO_SEGMENTS * 1000);
    all_ways(MAX_GSO_BYTES / 7 + 1, MAX_GSO_BYTES);
}

#[test]
fn one_segment_goes_without_control_message() {
    all_ways(8248, 8248);
    all_ways(8248, 5);
}

#[test]
fn empty_burst_is_one_empty_datagram() {
    let tx = bind(V4, &SocketOptions::default()).unwrap();
    let rx = bind(V4, &SocketOptions::default()).unwrap();
    let n = tx
        .send_segments(rx.local_addr().unwrap(), &[], 1200)
        .unwrap();
    assert_eq!(n, 0);
    let (got, _) = recv_n(&rx, 1);
    assert_eq!(got, vec![(tx.local_addr().unwrap(), Vec::new())]);
}

#[test]
fn oversized_bursts_are_refused() {
    let tx = bind(V4, &SocketOptions::default()).unwrap();
    let peer = "127.0.0.1:9".parse().unwrap();
    let big = vec![0u8; MAX_GSO_BYTES + 1];
    for (bytes, segment) in [
        (&big[..], 60_000),
        (&big[..MAX_GSO_SEGMENTS * 100 + 1], 100),
        (&big[..10], 0),
        (&big[..10], 65_536),
    ] {
        let err = tx
            .send_segments(peer, &[IoSlice::new(bytes)], segment)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{segment}: {err}");
    }
    assert!(tx.gso_enabled(), "a refused burst must not switch GSO off");
}

#[test]
fn empty_socket_would_block() {
    let rx = bind(V4, &SocketOptions::default()).unwrap();
    let mut batch = RecvBatch::new(8);
    let err = rx.recv_batch(&mut batch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    assert_eq!(batch.datagram_count(), 0);
    assert_eq!(batch.datagrams().count(), 0);
}

#[test]
fn batch_holds_many_messages_and_replaces_them() {
    let tx = bind(V4, &SocketOptions::default()).unwrap();
    let rx = bind(V4, &SocketOptions::default()).unwrap();
    let to = rx.local_addr().unwrap();
    for i in 0..5u8 {
        assert_eq!(tx.send_to(&[i; 100], to).unwrap(), 100);
    }
    rx.wait(true, false, Some(Duration::from_secs(1))).unwrap();
    let mut batch = RecvBatch::new(3);
    assert_eq!(rx.recv_batch(&mut batch).unwrap(), 3);
    let firsts: Vec<u8> = batch.datagrams().map(|(_, d)| d[0]).collect();
    assert_eq!(firsts, [0, 1, 2]);
    // Mutable in place, as the caller decrypts.
    for (_, d) in batch.datagrams() {
        d[0] = 0xff;
    }
    assert!(batch.datagrams().all(|(_, d)| d[0] == 0xff));
    assert_eq!(rx.recv_batch(&mut batch).unwrap(), 2);
    let firsts: Vec<u8> = batch.datagrams().map(|(_, d)| d[0]).collect();
    assert_eq!(firsts, [3, 4]);
}

#[test]
fn too_small_buffers_drop_and_count() {
    let tx = bind(V4, &SocketOptions::default()).unwrap();
    let rx = bind(V4, &SocketOptions::default()).unwrap();
    let to = rx.local_addr().unwrap();
    tx.send_to(&[1; 200], to).unwrap();
    tx.send_to(&[2; 50], to).unwrap();
    let mut batch = RecvBatch::with_buffer_size(4, 100);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while batch.truncated() + (seen.len() as u64) < 2 && Instant::now() < deadline {
        match rx.recv_batch(&mut batch) {
            Ok(_) => seen.extend(batch.datagrams().map(|(_, d)| d.to_vec())),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                rx.wait(true, false, Some(Duration::from_millis(50)))
                    .unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(batch.truncated(), 1);
    assert_eq!(seen, vec![vec![2; 50]]);
}

#[test]
fn wait_times_out_then_sees_data() {
    let tx = bind(V4, &SocketOptions::default()).unwrap();
    let rx = bind(V4, &SocketOptions::default()).unwrap();
    let start = Instant::now();
    let r = rx
        .wait(true, false, Some(Duration::from_millis(30)))
        .unwrap();
    assert!(r.is_empty(), "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(30));

    let w = tx.wait(false, true, None).unwrap();
    assert!(w.writable && !w.readable, "{w:?}");

    tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
    let r = rx.wait(true, false, Some(Duration::from_secs(5))).unwrap();
    assert!(r.readable, "{r:?}");
}

#[test]
fn buffer_sizes_are_granted() {
    const WANT: usize = 8 << 20; // twice this box's rmem_max/wmem_max
    let sock = bind(
        V4,
        &SocketOptions {
            recv_buffer: WANT,
            send_buffer: WANT,
            ..SocketOptions::default()
        },
    )
    .unwrap();
    let (rcv, snd) = (
        sock.recv_buffer_size().unwrap(),
        sock.send_buffer_size().unwrap(),
    );
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } == 0 {
        // SO_*BUFFORCE: past the sysctl maximum, and doubled by the kernel.
        assert!(rcv >= WANT && snd >= WANT, "rcv {rcv} snd {snd}");
    } else {
        assert!(rcv > 0 && snd > 0);
    }
    let default = bind(V4, &SocketOptions::default()).unwrap();
    assert!(default.recv_buffer_size().unwrap() > 0);
}

#[test]
fn reuse_port_shares_an_address() {
    let opts = SocketOptions {
        reuse_port: true,
        ..SocketOptions::default()
    };
    let a = bind(V4, &opts).unwrap();
    let b = UdpSocket::bind(a.local_addr().unwrap(), &opts).unwrap();
    assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    let err = UdpSocket::bind(a.local_addr().unwrap(), &SocketOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
}

#[test]
fn connected_socket_sends_and_receives() {
    let a = bind(V4, &SocketOptions::default()).unwrap();
    let b = bind(V4, &SocketOptions::default()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    let data = pattern(3 * 1200, 7);
    let n = a
        .send_segments(b.local_addr().unwrap(), &[IoSlice::new(&data)], 1200)
        .unwrap();
    assert_eq!(n, data.len());
    let (got, _) = recv_n(&b, 3);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(from, _)| *from == a.local_addr().unwrap()));
}

#[test]
fn fallback_reports_gso_off() {
    let tx = bind(
        V4,
        &SocketOptions {
            force_no_gso: true,
            ..SocketOptions::default()
        },
    )
    .unwrap();
    assert!(!tx.gso_enabled());
    let rx = bind(V4, &SocketOptions::default()).unwrap();
    let data = pattern(10 * 1000, 1);
    let n = tx
        .send_segments(rx.local_addr().unwrap(), &scatter(&data), 1000)
        .unwrap();
    assert_eq!(n, data.len());
    assert!(!tx.gso_enabled());
}
