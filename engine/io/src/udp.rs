//! Non-blocking UDP with segmentation offload: GSO on send (`UDP_SEGMENT`), GRO on receive
//! (`UDP_GRO`), batched receive (`recvmmsg`), and a readiness wait (`ppoll`).
//!
//! The unit of work is a burst, not a datagram: [`UdpSocket::send_segments`] hands the kernel
//! up to [`MAX_GSO_SEGMENTS`] datagrams in one `sendmsg`, and [`UdpSocket::recv_batch`] fills a
//! preallocated [`RecvBatch`] of up to [`MAX_RECV_MESSAGES`] messages, each of which may hold
//! many coalesced datagrams. An io_uring backend can later take over these calls without
//! changing their shape.
//!
//! Every socket is non-blocking: a call that cannot make progress returns an error of kind
//! [`io::ErrorKind::WouldBlock`], and the caller sleeps in [`UdpSocket::wait`] until the
//! socket is ready or its own next timer is due.

use std::io::{self, IoSlice};
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::sys::{self, SOL_UDP, UDP_GRO, UDP_SEGMENT, cvt, cvt_size};

/// Most datagrams one [`UdpSocket::send_segments`] call may carry: the kernel's
/// `UDP_MAX_SEGMENTS`, 64 on most kernels (recent ones raised it; 64 works on all).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Most payload bytes one [`UdpSocket::send_segments`] call may carry: the largest UDP
/// payload over IPv4 (65 535 − 20 IP − 8 UDP). The kernel refuses more with `EMSGSIZE`, GSO or
/// not, because the whole burst travels through the stack as one datagram.
pub const MAX_GSO_BYTES: usize = 65_507;

/// Most messages one [`RecvBatch`] holds (and so one `recvmmsg` call fills).
pub const MAX_RECV_MESSAGES: usize = 64;

/// Default size of each [`RecvBatch`] buffer: large enough for any UDP datagram and for the
/// largest GRO-coalesced message the kernel builds, so nothing is ever truncated.
pub const RECV_BUFFER_SIZE: usize = 64 * 1024;

/// How a socket is set up by [`UdpSocket::bind`].
///
/// `Default` is: no `SO_REUSEPORT`, kernel-default buffer sizes, GSO when the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// Set `SO_REUSEPORT`, so several sockets (one per core) can bind the same address and
    /// the kernel spreads flows between them.
    pub reuse_port: bool,
    /// Receive buffer to ask for, in bytes; 0 keeps the kernel default. `SO_RCVBUFFORCE` is
    /// tried first (with `CAP_NET_ADMIN` it may exceed `net.core.rmem_max`), then
    /// `SO_RCVBUF`, which the kernel silently caps at `rmem_max`. Read back what was granted
    /// with [`UdpSocket::recv_buffer_size`].
    pub recv_buffer: usize,
    /// Send buffer to ask for, in bytes; 0 keeps the kernel default. `SO_SNDBUFFORCE` first,
    /// then `SO_SNDBUF` (capped at `net.core.wmem_max`). See [`UdpSocket::send_buffer_size`].
    pub send_buffer: usize,
    /// Never use `UDP_SEGMENT`: every [`UdpSocket::send_segments`] call takes the fallback
    /// path (one `sendmmsg` message per segment). For tests, and for paths where GSO
    /// misbehaves (some tunnels and drivers).
    pub force_no_gso: bool,
}

/// What [`UdpSocket::wait`] found. All `false` means the timeout passed (or a signal woke
/// the thread): re-check timers and wait again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A datagram (or an error) is waiting: [`UdpSocket::recv_batch`] will not block.
    pub readable: bool,
    /// The send buffer has room: a send will not block.
    pub writable: bool,
    /// An error is pending on the socket (`POLLERR`, e.g. an ICMP unreachable on a connected
    /// socket); the next receive or send returns it.
    pub error: bool,
}

impl Readiness {
    /// Nothing is ready: the wait timed out or was interrupted.
    pub fn is_empty(&self) -> bool {
        !(self.readable || self.writable || self.error)
    }
}

/// What is known about `UDP_SEGMENT` on this socket.
const GSO_UNKNOWN: u8 = 0;
const GSO_WORKS: u8 = 1;
const GSO_OFF: u8 = 2;

/// A non-blocking UDP socket (IPv4 or IPv6). Owns its file descriptor and closes it on drop.
///
/// Methods take `&self`, so one socket may be shared between threads (a sender thread and a
/// receiver thread), though ferry's engine gives each session thread its own.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
    /// `GSO_UNKNOWN` until the first multi-segment send succeeds (`GSO_WORKS`) or the kernel
    /// refuses `UDP_SEGMENT` (`GSO_OFF`, for good).
    gso: AtomicU8,
}

impl UdpSocket {
    /// Opens a non-blocking, close-on-exec UDP socket bound to `addr` (port 0 picks one; see
    /// [`local_addr`](Self::local_addr)). An IPv6 wildcard address accepts IPv4 too unless
    /// the host sets `net.ipv6.bindv6only`.
    pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpSocket> {
        let family = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let raw = cvt(unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_UDP,
            )
        })?;
        // SAFETY: `socket` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        if opts.reuse_port {
            sys::set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        if opts.recv_buffer > 0 {
            set_buffer(raw, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, opts.recv_buffer)?;
        }
        if opts.send_buffer > 0 {
            set_buffer(raw, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, opts.send_buffer)?;
        }

        let (storage, len) = sys::to_sockaddr(&addr);
        // SAFETY: `storage` holds a valid address of length `len` and outlives the call.
        cvt(unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) })?;

        // Kernels before 4.18 do not know the option at all: no need to wait for a failed
        // send to find out.
        let gso = if opts.force_no_gso || sys::get_int(raw, SOL_UDP, UDP_SEGMENT).is_err() {
            GSO_OFF
        } else {
            GSO_UNKNOWN
        };
        Ok(UdpSocket {
            fd,
            gso: AtomicU8::new(gso),
        })
    }

    /// The address the socket is bound to (with the port the kernel chose, if it chose).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        // SAFETY: all-zero is a valid `sockaddr_storage`.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the pointers refer to live locals and `len` is the storage's real size.
        cvt(unsafe {
            libc::getsockname(
                self.raw(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        })?;
        sys::from_sockaddr(&storage, len)
            .ok_or_else(|| io::Error::other("getsockname returned neither IPv4 nor IPv6"))
    }

    /// Connects the socket to `peer`: the kernel then drops datagrams from anyone else, and
    /// ICMP errors for this peer come back as errors on later calls. Optional; sends still
    /// name the peer explicitly.
    pub fn connect(&self, peer: SocketAddr) -> io::Result<()> {
        let (storage, len) = sys::to_sockaddr(&peer);
        // SAFETY: `storage` holds a valid address of length `len` and outlives the call.
        cvt(unsafe {
            libc::connect(
                self.raw(),
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        })
        .map(drop)
    }

    /// The receive buffer the kernel granted, as `SO_RCVBUF` reports it (Linux reports
    /// twice what was asked, the extra being its bookkeeping allowance).
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        sys::get_int(self.raw(), libc::SOL_SOCKET, libc::SO_RCVBUF).map(|v| v as usize)
    }

    /// The send buffer the kernel granted, as `SO_SNDBUF` reports it (doubled, as above).
    pub fn send_buffer_size(&self) -> io::Result<usize> {
        sys::get_int(self.raw(), libc::SOL_SOCKET, libc::SO_SNDBUF).map(|v| v as usize)
    }

    /// Whether [`send_segments`](Self::send_segments) still hands bursts to the kernel as one
    /// GSO `sendmsg`. `true` before the first burst if the kernel knows `UDP_SEGMENT`; turns
    /// `false` for good once the kernel refuses it (or with
    /// [`SocketOptions::force_no_gso`]).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed) != GSO_OFF
    }

    /// Asks the kernel to coalesce received datagrams of one flow into one message
    /// (`UDP_GRO`, Linux 5.0+). Returns whether it agreed. Harmless either way:
    /// [`recv_batch`](Self::recv_batch) splits coalesced messages back into datagrams.
    pub fn enable_gro(&self) -> bool {
        sys::set_int(self.raw(), SOL_UDP, UDP_GRO, 1).is_ok()
    }

    /// Sends one datagram of `buf` to `peer`. Returns the bytes sent (all of `buf`), or
    /// `WouldBlock` when the send buffer is full: [`wait`](Self::wait) for `writable`.
    pub fn send_to(&self, buf: &[u8], peer: SocketAddr) -> io::Result<usize> {
        let (storage, len) = sys::to_sockaddr(&peer);
        loop {
            // SAFETY: `buf` and `storage` are live for the call and their lengths are given.
            let ret = unsafe {
                libc::sendto(
                    self.raw(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&storage as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            match cvt_size(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Sends the bytes of `iov`, concatenated, to `peer` as datagrams of `segment_size`
    /// bytes each (the last may be shorter).
    ///
    /// The iovecs need not line up with segment boundaries: a caller can pass header and
    /// payload slices of many datagrams as they lie. With GSO this is **one** `sendmsg`
    /// carrying a `UDP_SEGMENT` control message (omitted when everything fits in one
    /// segment), and the kernel cuts the datagrams. Without GSO (kernel before 4.18, a route
    /// whose device refuses it, or [`SocketOptions::force_no_gso`]) the same datagrams leave
    /// through `sendmmsg`, one message per segment; that path allocates per call.
    ///
    /// GSO support is learned once: if the first multi-segment send fails with `EIO`,
    /// `EINVAL` or `ENOPROTOOPT`, or any later one with `EIO` (the device cannot checksum
    /// for us), GSO is switched off for this socket and the burst is sent again without it.
    /// A segment larger than the path MTU also draws `EINVAL` from GSO, so keep segments
    /// within the MTU.
    ///
    /// Returns the bytes sent. With GSO that is always the whole burst. On the fallback path
    /// it may be fewer — always a whole number of segments — when the send buffer filled
    /// part-way: send the rest after [`wait`](Self::wait)ing for `writable`. When nothing
    /// could be sent the error is `WouldBlock`.
    ///
    /// `InvalidInput` if `segment_size` is 0 or above 65 535, the total exceeds
    /// [`MAX_GSO_BYTES`], or it makes more than [`MAX_GSO_SEGMENTS`] segments.
    pub fn send_segments(
        &self,
        peer: SocketAddr,
        iov: &[IoSlice<'_>],
        segment_size: usize,
    ) -> io::Result<usize> {
        if segment_size == 0 || segment_size > usize::from(u16::MAX) {
            return Err(invalid(format!(
                "segment size {segment_size} is outside 1..=65535"
            )));
        }
        let total: usize = iov.iter().map(|s| s.len()).sum();
        if total > MAX_GSO_BYTES {
            return Err(invalid(format!(
                "burst of {total} bytes exceeds MAX_GSO_BYTES ({MAX_GSO_BYTES}); split it"
            )));
        }
        let segments = total.div_ceil(segment_size).max(1);
        if segments > MAX_GSO_SEGMENTS {
            return Err(invalid(format!(
                "burst of {segments} segments exceeds MAX_GSO_SEGMENTS ({MAX_GSO_SEGMENTS}); split it"
            )));
        }
        let (storage, len) = sys::to_sockaddr(&peer);
        if segments == 1 {
            return self.sendmsg(&storage, len, iov, None);
        }
        let state = self.gso.load(Ordering::Relaxed);
        if state == GSO_OFF {
            return self.send_each(&storage, len, iov, segment_size, total);
        }
        match self.sendmsg(&storage, len, iov, Some(segment_size as u16)) {
            Ok(n) => {
                if state == GSO_UNKNOWN {
                    self.gso.store(GSO_WORKS, Ordering::Relaxed);
                }
                Ok(n)
            }
            Err(e) if gso_refused(&e, state) => {
                self.gso.store(GSO_OFF, Ordering::Relaxed);
                self.send_each(&storage, len, iov, segment_size, total)
            }
            Err(e) => Err(e),
        }
    }

    /// Receives whatever is waiting, up to [`RecvBatch::capacity`] messages, in one
    /// `recvmmsg(MSG_DONTWAIT)`, replacing the batch's previous contents. Read the datagrams
    /// with [`RecvBatch::datagrams`].
    ///
    /// Returns the number of **datagrams** received (a GRO message counts as the datagrams it
    /// coalesced). An empty socket gives `Err` of kind `WouldBlock`, not `Ok(0)`, after
    /// which the batch is empty: [`wait`](Self::wait) for `readable` and call again. `Ok(0)`
    /// happens only when every message taken was dropped for not fitting its buffer (see
    /// [`RecvBatch::truncated`]); call again, there may be more.
    ///
    /// Errors other than `WouldBlock` (e.g. `ECONNREFUSED` from an ICMP error on a connected
    /// socket) consume the error, not a datagram: the next call receives normally.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        let n = batch.capacity();
        // SAFETY: all-zero is a valid `iovec` and `mmsghdr` (null pointers, zero lengths);
        // every entry used is filled in below before the call.
        let mut iovs: [libc::iovec; MAX_RECV_MESSAGES] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_RECV_MESSAGES] = unsafe { mem::zeroed() };
        let size = batch.buffer_size;
        let buf = batch.buf.as_mut_ptr();
        for (i, iov) in iovs[..n].iter_mut().enumerate() {
            iov.iov_base = buf.wrapping_add(i * size).cast();
            iov.iov_len = size;
        }
        let iov = iovs.as_mut_ptr();
        let names = batch.names.as_mut_ptr();
        let control = batch.control.as_mut_ptr();
        for (i, hdr) in hdrs[..n].iter_mut().enumerate() {
            let h = &mut hdr.msg_hdr;
            h.msg_name = names.wrapping_add(i).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iov.wrapping_add(i);
            h.msg_iovlen = 1;
            h.msg_control = control.wrapping_add(i).cast();
            h.msg_controllen = mem::size_of::<Control>() as _;
        }
        let got = loop {
            // SAFETY: the first `n` headers point at `iovs` and at buffers owned by `batch`
            // (exclusively borrowed): `n` ≤ capacity, so buffer `i` (`size` bytes at
            // `i * size`), `names[i]` and `control[i]` all exist, and all outlive the call.
            let ret = unsafe {
                libc::recvmmsg(
                    self.raw(),
                    hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            match cvt(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r? as usize,
            }
        };
        for (slot, hdr) in hdrs[..got].iter().enumerate() {
            let len = hdr.msg_len as usize;
            if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                batch.truncated += 1;
                continue;
            }
            let Some(addr) = sys::from_sockaddr(&batch.names[slot], hdr.msg_hdr.msg_namelen) else {
                continue;
            };
            let segment = gro_segment(&hdr.msg_hdr).filter(|&s| s > 0).unwrap_or(len);
            batch.datagrams += if len == 0 { 1 } else { len.div_ceil(segment) };
            batch.meta.push(Meta {
                slot,
                addr,
                len,
                segment,
            });
        }
        Ok(batch.datagrams)
    }

    /// Sleeps until the socket is readable (if `readable`), writable (if `writable`), has an
    /// error pending, or `timeout` passes (`None`: no limit). Uses `ppoll`, so the timeout
    /// keeps nanosecond precision for pacing timers. A signal ends the wait early with an
    /// empty [`Readiness`], as a timeout does.
    pub fn wait(
        &self,
        readable: bool,
        writable: bool,
        timeout: Option<Duration>,
    ) -> io::Result<Readiness> {
        let mut events = 0;
        if readable {
            events |= libc::POLLIN;
        }
        if writable {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: self.raw(),
            events,
            revents: 0,
        };
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as _,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `pfd` and `ts` are live locals; a null timeout and a null sigmask are
        // allowed by `ppoll`.
        let ret = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, ptr::null()) };
        match cvt(ret) {
            Ok(_) => Ok(Readiness {
                readable: pfd.revents & libc::POLLIN != 0,
                writable: pfd.revents & libc::POLLOUT != 0,
                error: pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Readiness::default()),
            Err(e) => Err(e),
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// One `sendmsg` of all of `iov`, with a `UDP_SEGMENT` control message if `gso` is set.
    fn sendmsg(
        &self,
        name: &libc::sockaddr_storage,
        name_len: libc::socklen_t,
        iov: &[IoSlice<'_>],
        gso: Option<u16>,
    ) -> io::Result<usize> {
        // SAFETY: all-zero is a valid `msghdr` (no name, no iovecs, no control data).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (name as *const libc::sockaddr_storage).cast_mut().cast();
        msg.msg_namelen = name_len;
        // `IoSlice` is documented to be ABI-compatible with `iovec`; the kernel only reads
        // through these pointers.
        msg.msg_iov = iov.as_ptr().cast_mut().cast();
        msg.msg_iovlen = iov.len() as _;
        let mut control = Control::ZERO;
        if let Some(segment) = gso {
            msg.msg_control = (&mut control as *mut Control).cast();
            // SAFETY: pure arithmetic on a constant.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as _;
            // SAFETY: `msg_control` points at `control` (aligned for `cmsghdr`, 64 bytes) and
            // `msg_controllen` covers one header plus a `u16`, so the first header and its
            // data lie inside `control`.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            }
        }
        loop {
            // SAFETY: `msg` points only at `name`, `iov` and `control`, all live for the call.
            let ret = unsafe { libc::sendmsg(self.raw(), &msg, 0) };
            match cvt_size(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// The fallback for [`send_segments`](Self::send_segments): one `sendmmsg` message per
    /// segment, each gathering its bytes from wherever they lie in `iov`.
    fn send_each(
        &self,
        name: &libc::sockaddr_storage,
        name_len: libc::socklen_t,
        iov: &[IoSlice<'_>],
        segment_size: usize,
        total: usize,
    ) -> io::Result<usize> {
        // Cut the concatenation of `iov` at segment boundaries: a segment may span several
        // iovecs and an iovec may feed several segments.
        let segments = total.div_ceil(segment_size);
        let mut pieces: Vec<libc::iovec> = Vec::with_capacity(iov.len() + segments);
        let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(segments); // (first piece, pieces, bytes)
        let mut src = iov.iter().map(|s| &s[..]).filter(|s| !s.is_empty());
        let mut cur: &[u8] = &[];
        for _ in 0..segments {
            let first = pieces.len();
            let mut bytes = 0;
            while bytes < segment_size {
                if cur.is_empty() {
                    match src.next() {
                        Some(s) => cur = s,
                        None => break,
                    }
                }
                let take = cur.len().min(segment_size - bytes);
                pieces.push(libc::iovec {
                    iov_base: cur.as_ptr().cast_mut().cast(),
                    iov_len: take,
                });
                cur = &cur[take..];
                bytes += take;
            }
            spans.push((first, pieces.len() - first, bytes));
        }

        let mut hdrs: Vec<libc::mmsghdr> = spans
            .iter()
            .map(|&(first, count, _)| {
                // SAFETY: all-zero is a valid `mmsghdr`.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_name = (name as *const libc::sockaddr_storage).cast_mut().cast();
                h.msg_hdr.msg_namelen = name_len;
                // `pieces` is not touched again, so these pointers stay valid.
                h.msg_hdr.msg_iov = pieces[first..].as_ptr().cast_mut();
                h.msg_hdr.msg_iovlen = count as _;
                h
            })
            .collect();

        let mut sent = 0;
        while sent < hdrs.len() {
            // SAFETY: `hdrs[sent..]` is live and each header points only at `name` and at
            // `pieces`, which point into `iov`; all outlive the call.
            let ret = unsafe {
                libc::sendmmsg(
                    self.raw(),
                    hdrs[sent..].as_mut_ptr(),
                    (hdrs.len() - sent) as libc::c_uint,
                    0,
                )
            };
            match cvt(ret) {
                Ok(k) => sent += k as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(spans[..sent].iter().map(|&(_, _, bytes)| bytes).sum())
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Asks for `size` bytes with the privileged option first, then the capped one.
fn set_buffer(fd: RawFd, force: libc::c_int, plain: libc::c_int, size: usize) -> io::Result<()> {
    // The kernel doubles the value it is given; past i32::MAX / 2 that would overflow.
    let size = size.min(i32::MAX as usize / 2) as libc::c_int;
    sys::set_int(fd, libc::SOL_SOCKET, force, size)
        .or_else(|_| sys::set_int(fd, libc::SOL_SOCKET, plain, size))
}

/// Whether a failed GSO send means "this socket cannot do GSO" rather than a bad burst.
fn gso_refused(e: &io::Error, state: u8) -> bool {
    match e.raw_os_error() {
        // The device cannot checksum for us: GSO can never work on this route.
        Some(libc::EIO) => true,
        // Old kernels or odd sockets; only trusted before GSO has been seen to work, since
        // later an EINVAL more likely means a segment above the path MTU.
        Some(libc::EINVAL | libc::ENOPROTOOPT) => state == GSO_UNKNOWN,
        _ => false,
    }
}

/// The segment size in a `UDP_GRO` control message, if the message carries one.
fn gro_segment(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: `msg` is a header the kernel just filled: `msg_control`/`msg_controllen`
    // describe control data inside the batch's `Control` buffer, and the CMSG macros never
    // step outside `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let v = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(v).ok();
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Control-message space for one message, aligned for `cmsghdr`: room for `UDP_GRO` and a
/// few more (timestamps, packet info) should they be wanted.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 64]);

impl Control {
    const ZERO: Control = Control([0; 64]);
}

/// One received message: which buffer, from whom, how long, cut into what.
#[derive(Clone, Copy, Debug)]
struct Meta {
    slot: usize,
    addr: SocketAddr,
    len: usize,
    segment: usize,
}

/// Preallocated space for one [`UdpSocket::recv_batch`] call: `capacity` buffers (64 KiB by
/// default) with their address and control-message space. Reused call after call, so the
/// receive path never allocates.
pub struct RecvBatch {
    buf: Box<[u8]>,
    buffer_size: usize,
    names: Box<[libc::sockaddr_storage]>,
    control: Box<[Control]>,
    meta: Vec<Meta>,
    datagrams: usize,
    truncated: u64,
}

impl RecvBatch {
    /// Room for `messages` messages (clamped to `1..=`[`MAX_RECV_MESSAGES`]) of
    /// [`RECV_BUFFER_SIZE`] bytes each, enough for any datagram or GRO message.
    pub fn new(messages: usize) -> RecvBatch {
        RecvBatch::with_buffer_size(messages, RECV_BUFFER_SIZE)
    }

    /// As [`new`](Self::new) with buffers of `buffer_size` bytes (at least 1). Smaller
    /// buffers save memory when GRO is off and datagrams are known to be small; a message
    /// that does not fit is dropped and counted in [`truncated`](Self::truncated).
    pub fn with_buffer_size(messages: usize, buffer_size: usize) -> RecvBatch {
        let messages = messages.clamp(1, MAX_RECV_MESSAGES);
        let buffer_size = buffer_size.max(1);
        RecvBatch {
            buf: vec![0; messages * buffer_size].into_boxed_slice(),
            buffer_size,
            // SAFETY: all-zero is a valid `sockaddr_storage`.
            names: vec![unsafe { mem::zeroed::<libc::sockaddr_storage>() }; messages]
                .into_boxed_slice(),
            control: vec![Control::ZERO; messages].into_boxed_slice(),
            meta: Vec::with_capacity(messages),
            datagrams: 0,
            truncated: 0,
        }
    }

    /// How many messages one receive can fill.
    pub fn capacity(&self) -> usize {
        self.names.len()
    }

    /// Size of each buffer in bytes.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Messages held from the last receive (a GRO message counts once).
    pub fn message_count(&self) -> usize {
        self.meta.len()
    }

    /// Datagrams held from the last receive, after splitting GRO messages.
    pub fn datagram_count(&self) -> usize {
        self.datagrams
    }

    /// Messages dropped since this batch was made because they did not fit their buffer
    /// (only possible with [`with_buffer_size`](Self::with_buffer_size)).
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Every datagram from the last receive as `(sender, bytes)`, in arrival order, with
    /// GRO messages split at their segment size (the last piece may be shorter). The bytes
    /// are mutable so the caller can decrypt in place.
    pub fn datagrams(&mut self) -> Datagrams<'_> {
        Datagrams {
            slots: self.buf.chunks_mut(self.buffer_size).enumerate(),
            meta: self.meta.iter(),
            current: None,
        }
    }

    fn clear(&mut self) {
        self.meta.clear();
        self.datagrams = 0;
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity())
            .field("buffer_size", &self.buffer_size)
            .field("messages", &self.meta)
            .field("datagrams", &self.datagrams)
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// Iterator over the datagrams of a [`RecvBatch`]; see [`RecvBatch::datagrams`].
pub struct Datagrams<'a> {
    slots: std::iter::Enumerate<std::slice::ChunksMut<'a, u8>>,
    meta: std::slice::Iter<'a, Meta>,
    /// The message being split: sender, bytes not yet handed out, segment size.
    current: Option<(SocketAddr, &'a mut [u8], usize)>,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = (SocketAddr, &'a mut [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((addr, rest, segment)) = &mut self.current {
                if !rest.is_empty() {
                    let take = (*segment).min(rest.len());
                    let (head, tail) = mem::take(rest).split_at_mut(take);
                    *rest = tail;
                    return Some((*addr, head));
                }
                self.current = None;
            }
            let m = self.meta.next()?;
            let chunk = loop {
                let (i, chunk) = self.slots.next()?;
                if i == m.slot {
                    break chunk;
                }
            };
            let data = &mut chunk[..m.len];
            if data.is_empty() {
                return Some((m.addr, data));
            }
            self.current = Some((m.addr, data, m.segment));
        }
    }
}

impl std::fmt::Debug for Datagrams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_refusal_is_learned_only_from_the_right_errors() {
        let os = io::Error::from_raw_os_error;
        assert!(gso_refused(&os(libc::EIO), GSO_UNKNOWN));
        assert!(gso_refused(&os(libc::EIO), GSO_WORKS));
        assert!(gso_refused(&os(libc::EINVAL), GSO_UNKNOWN));
        assert!(gso_refused(&os(libc::ENOPROTOOPT), GSO_UNKNOWN));
        assert!(!gso_refused(&os(libc::EINVAL), GSO_WORKS));
        assert!(!gso_refused(&os(libc::EAGAIN), GSO_UNKNOWN));
        assert!(!gso_refused(&os(libc::EMSGSIZE), GSO_UNKNOWN));
    }
}
