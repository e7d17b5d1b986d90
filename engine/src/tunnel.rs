//! The TCP fallback: a session's datagrams carried through an SSH channel when UDP does
//! not pass.
//!
//! The protocol is untouched: the very same sealed datagrams travel, each framed by a
//! 2-byte big-endian length, over a second channel of the SSH connection that already
//! carries the control messages (so only the SSH port must pass, and the data is
//! encrypted twice). Between the channel and the data thread lies a `SOCK_SEQPACKET`
//! socket pair: the data thread keeps one end, non-blocking, beside its UDP socket and
//! sends and receives whole datagrams on it as it does on UDP; [`pump`], a task on the
//! control thread's runtime, holds the other end and moves frames between it and the
//! channel. Closing either side ends the other: the channel closes when the data thread
//! drops its end (the session ended), and the data thread reads end-of-file when the
//! channel goes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The largest datagram a frame carries (its length field is 16 bits).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// How many bytes of frames are gathered into one SSH data message at most.
const BATCH: usize = 256 << 10;

/// Socket buffers of the pair: enough datagrams in flight for a fast TCP path.
const PAIR_BUFFER: libc::c_int = 4 << 20;

/// A connected, non-blocking, close-on-exec `SOCK_SEQPACKET` pair: one end for the data
/// thread, one for [`pump`]. Each `send` on one end is one `recv` on the other, so
/// datagrams keep their boundaries without framing.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&a, &b] {
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: a live socket; the value is a c_int of the stated size. A refusal
            // leaves the default, which only means fewer datagrams in flight.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &PAIR_BUFFER as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    Ok((a, b))
}

/// One datagram from a non-blocking socket-pair end: `Ok(0)` is end-of-file (the other
/// end closed), `WouldBlock` means nothing is waiting.
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends one datagram on a non-blocking socket-pair end (`WouldBlock` when it is full).
pub fn send(fd: &impl AsRawFd, datagram: &[u8]) -> io::Result<()> {
    // SAFETY: datagram is valid for its length.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Splits 2-byte-length frames off a byte stream.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    at: usize,
}

impl Deframer {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete datagram, if one is buffered.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let rest = &self.buf[self.at..];
        if rest.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 2 + len {
            return None;
        }
        let start = self.at + 2;
        self.at = start + len;
        Some(&self.buf[start..start + len])
    }

    /// Drops what has been handed out, keeping an incomplete frame.
    pub fn compact(&mut self) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
    }
}

/// Appends `datagram` to `out` as one frame.
pub fn frame(out: &mut Vec<u8>, datagram: &[u8]) {
    debug_assert!(datagram.len() <= MAX_DATAGRAM);
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
}

/// Moves datagrams between `fd` (the [`pair`] end that is not the data thread's) and
/// `channel` until either closes, then closes both. `early` holds stream bytes already
/// read from the channel (behind the last control line).
pub async fn pump<S>(channel: Channel<S>, fd: OwnedFd, early: Vec<u8>) -> io::Result<()>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    // SAFETY: an OwnedFd is a valid open descriptor and returns the same one for as long
    // as it lives, which is as long as the AsyncFd that owns it.
    let fd =
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| e.into_parts().1)?;
    let (mut rx, tx) = channel.split();
    let outbound = async {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut batch = Vec::with_capacity(BATCH + MAX_DATAGRAM + 2);
        loop {
            let mut guard = fd.readable().await?;
            // Everything waiting, up to a batch, goes out as one SSH message.
            let eof = loop {
                match recv(guard.get_inner(), &mut buf) {
                    Ok(0) => break true,
                    Ok(n) if n > MAX_DATAGRAM => {}
                    Ok(n) => {
                        frame(&mut batch, &buf[..n]);
                        if batch.len() >= BATCH {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if !batch.is_empty() {
                let bytes = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                tx.data_bytes(bytes)
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
            }
            if eof {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let inbound = async {
        let mut frames = Deframer::default();
        frames.push(&early);
        loop {
            while let Some(d) = frames.next_frame() {
                loop {
                    let mut guard = fd.writable().await?;
                    match send(guard.get_inner(), d) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            frames.compact();
            match rx.wait().await {
                Some(ChannelMsg::Data { data }) => frames.push(&data),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return Ok(()),
                Some(_) => {}
            }
        }
    };
    let result = tokio::select! {
        r = outbound => r,
        r = inbound => r,
    };
    let _ = tx.eof().await;
    let _ = tx.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_wherever_the_stream_breaks() {
        let datagrams: Vec<Vec<u8>> = vec![vec![1; 3], vec![], vec![7; 1500], vec![9; 65_535]];
        let mut stream = Vec::new();
        for d in &datagrams {
            frame(&mut stream, d);
        }
        for step in [1, 2, 5, 1499, 70_000] {
            let mut f = Deframer::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                f.push(chunk);
                while let Some(d) = f.next_frame() {
                    got.push(d.to_vec());
                }
                f.compact();
            }
            assert_eq!(got, datagrams, "chunks of {step}");
        }
    }

    #[test]
    fn the_pair_keeps_datagram_boundaries_and_reports_eof() {
        let (a, b) = pair().unwrap();
        send(&a, b"one").unwrap();
        send(&a, &[5; 9000]).unwrap();
        let mut buf = vec![0; MAX_DATAGRAM];
        assert_eq!(recv(&b, &mut buf).unwrap(), 3);
        assert_eq!(recv(&b, &mut buf).unwrap(), 9000);
        assert_eq!(
            recv(&b, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        assert_eq!(recv(&b, &mut buf).unwrap(), 0);
    }
}
