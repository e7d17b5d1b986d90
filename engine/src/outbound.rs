//! How a lane's datagrams leave: one at a time, or gathered into GSO bursts.
//!
//! A sender's pacer releases datagrams in short back-to-back bursts. A [`Burst`] gathers
//! the datagrams the sender produces in one go (each still in its own slot buffer, so
//! nothing is copied) and hands them to the kernel in one `sendmsg` with `UDP_SEGMENT`
//! ([`ferry_io::UdpSocket::send_segments`]): at 1500-byte datagrams that is one syscall and
//! one trip through the stack for up to 44 datagrams instead of one each. The kernel cuts
//! them apart again (or the NIC does), so the wire sees what it saw before.
//!
//! Through the TCP fallback every datagram goes on its own ([`send`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use ferry_io::UdpSocket;
use ferry_io::udp::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

use crate::tunnel;

/// Where a session's datagrams go.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Out {
    Udp(SocketAddr),
    Tunnel(RawFd),
}

/// Data datagrams waiting to leave together, by their slot and length. Fixed-size: the
/// send path does not allocate.
pub(crate) struct Burst {
    /// (slot, datagram length), in sending order: the first `count`.
    queued: [(u32, usize); MAX_GSO_SEGMENTS],
    count: usize,
    /// Every datagram's length but possibly the last's.
    segment: usize,
    bytes: usize,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            queued: [(0, 0); MAX_GSO_SEGMENTS],
            count: 0,
            segment: 0,
            bytes: 0,
        }
    }
}

impl Burst {
    /// Whether a datagram of `len` bytes can join: the kernel cuts a burst into equal
    /// segments, of which only the last may be shorter, within 64 KB and 64 segments.
    pub(crate) fn fits(&self, len: usize) -> bool {
        let Some(&(_, last)) = self.queued[..self.count].last() else {
            return true;
        };
        last == self.segment
            && len <= self.segment
            && self.bytes + len <= MAX_GSO_BYTES
            && self.count < MAX_GSO_SEGMENTS
    }

    /// Queues the datagram in `slot`; check [`Burst::fits`] first.
    pub(crate) fn push(&mut self, slot: u32, len: usize) {
        debug_assert!(self.fits(len));
        if self.count == 0 {
            self.segment = len;
        }
        self.queued[self.count] = (slot, len);
        self.count += 1;
        self.bytes += len;
    }

    /// Sends what is queued to `peer` in one call, its bytes taken from `slots` (slot `i`'s
    /// datagram at the front of `slots(i)`), and empties the burst.
    pub(crate) fn flush<'a>(
        &mut self,
        socket: &UdpSocket,
        peer: SocketAddr,
        slots: impl Fn(u32) -> &'a [u8],
    ) {
        if self.count == 0 {
            return;
        }
        let mut iov = [IoSlice::new(&[]); MAX_GSO_SEGMENTS];
        for (io, &(slot, len)) in iov.iter_mut().zip(&self.queued[..self.count]) {
            *io = IoSlice::new(&slots(slot)[..len]);
        }
        let iov = &iov[..self.count];
        retry_full(socket, || socket.send_segments(peer, iov, self.segment));
        self.count = 0;
        self.bytes = 0;
    }
}

/// Sends one datagram.
pub(crate) fn send(socket: &UdpSocket, bytes: &[u8], out: Out) {
    match out {
        Out::Udp(peer) => retry_full(socket, || socket.send_to(bytes, peer)),
        Out::Tunnel(fd) => send_tunnel(fd, bytes),
    }
}

/// Runs `send` until it goes through: a full socket buffer is waited out rather than our
/// own datagrams dropped. Other errors (ICMP port unreachable and the like) lose the
/// datagrams, as the wire could; the protocol recovers or times out.
fn retry_full(socket: &UdpSocket, mut send: impl FnMut() -> io::Result<usize>) {
    loop {
        match send() {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe {
                    libc::poll(&mut pfd, 1, 10);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends through the TCP fallback. A full tunnel (TCP slower than the pacing) gets a
/// moment to drain, then the datagram is dropped like one lost on the wire, so that the
/// lane's other sessions are not held up; the queue before it is what the delay-based
/// controllers feel.
fn send_tunnel(fd: RawFd, bytes: &[u8]) {
    for _ in 0..2 {
        match tunnel::send(&fd, bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe {
                    libc::poll(&mut pfd, 1, 5);
                }
            }
            // Sent, or the tunnel is gone (the session ends by its control channel or
            // its data timeout).
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_takes_equal_datagrams_and_one_shorter_last() {
        let mut b = Burst::default();
        for slot in 0..3 {
            assert!(b.fits(1400));
            b.push(slot, 1400);
        }
        assert!(!b.fits(1500), "longer than the segment");
        assert!(b.fits(700));
        b.push(3, 700);
        assert!(!b.fits(700), "nothing after a shorter one");
        assert!(!b.fits(1400));
    }

    #[test]
    fn a_burst_stays_within_the_kernels_limits() {
        let mut b = Burst::default();
        let mut n = 0;
        while b.fits(1000) {
            b.push(n, 1000);
            n += 1;
        }
        assert_eq!(
            n as usize, MAX_GSO_SEGMENTS,
            "64 segments of 1000 B fit in 64 KB"
        );
        let mut b = Burst::default();
        let mut n = 0;
        while b.fits(1472) {
            b.push(n, 1472);
            n += 1;
        }
        assert_eq!(n, 44, "44 × 1472 B is the most under 65 507 B");
        let mut b = Burst::default();
        b.push(0, 65_000);
        assert!(!b.fits(65_000));
    }

    #[test]
    fn a_burst_leaves_as_the_datagrams_it_holds() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let slots: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; if i == 4 { 300 } else { 1200 }])
            .collect();
        let mut b = Burst::default();
        for (i, s) in slots.iter().enumerate() {
            b.push(i as u32, s.len());
        }
        b.flush(&tx, rx.local_addr().unwrap(), |i| &slots[i as usize][..]);
        assert_eq!(b.count, 0);
        let mut buf = [0u8; 2000];
        for (i, s) in slots.iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &s[..], "datagram {i}");
        }
    }
}
