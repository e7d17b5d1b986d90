//! Positioned writes through io_uring: a lane's disk queue.
//!
//! A [`WriteQueue`] owns one ring. The caller pushes gathered writes (`IORING_OP_WRITEV` at
//! an offset), each with a token of its own, submits them with one system call, and later
//! takes the completions, token and result, without blocking. The ring signals an
//! `eventfd` ([`WriteQueue::event_fd`]) on every completion, so a thread that sleeps in
//! `poll(2)` on its socket wakes for finished writes too.
//!
//! [`Issue`] says where the kernel runs a write: in the submitting call where it would not
//! block (the page cache, nearly always), on its io_uring workers where it would, or
//! always on the workers. Either way one call submits a whole batch, which is why the
//! caller gathers the blocks of one file that lie end to end into one write.
//!
//! Nothing here owns the buffers or the files: [`WriteQueue::push_write`] is `unsafe`, and
//! its caller keeps both alive until the write's completion has been taken.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};

/// Where the kernel runs a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// On an io_uring worker thread (`IOSQE_ASYNC`): the submitting thread never waits.
    Worker,
    /// In the submitting call where the write does not block (the page cache), on a
    /// worker otherwise.
    Inline,
}

/// A write's outcome: the token given to [`WriteQueue::push_write`] and the bytes written
/// (which may be fewer than asked) or the error.
#[derive(Debug)]
pub struct Completion {
    /// The caller's token.
    pub token: u64,
    /// Bytes written, or the OS error.
    pub result: io::Result<usize>,
}

struct Op {
    token: u64,
    /// The gathered buffers; kept here so the kernel can read the array until completion.
    iovecs: Vec<libc::iovec>,
    busy: bool,
}

/// An io_uring of positioned writes with an `eventfd` for completions.
pub struct WriteQueue {
    ring: IoUring,
    event: OwnedFd,
    ops: Vec<Op>,
    free: Vec<u32>,
    in_flight: usize,
    issue: Issue,
}

impl WriteQueue {
    /// A ring that takes `depth` writes per submission and holds `completions` finished
    /// ones (each rounded up to a power of two by the kernel). More writes than that may be
    /// in flight: completions beyond it wait in the kernel, and
    /// [`completions`](Self::completions) fetches them, but that costs a system call, so
    /// size it for what is usually in flight. Fails where io_uring is unavailable
    /// (`kernel.io_uring_disabled`, seccomp, an old kernel): the caller falls back to plain
    /// positioned writes.
    pub fn new(depth: u32, completions: u32, issue: Issue) -> io::Result<WriteQueue> {
        let depth = depth.max(1);
        let ring = IoUring::builder()
            .setup_cqsize(completions.max(2 * depth))
            .build(depth)?;
        // SAFETY: eventfd takes an initial value and flags and returns a new descriptor
        // or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(WriteQueue {
            ring,
            event,
            ops: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            issue,
        })
    }

    /// Readable when a completion may be waiting; [`WriteQueue::completions`] resets it.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Writes pushed or submitted whose completion has not been taken.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another write fits before [`WriteQueue::submit`] (the submission queue is
    /// not full).
    pub fn has_room(&mut self) -> bool {
        !self.ring.submission().is_full()
    }

    /// Queues the write of `bufs`, one after another, at `offset` of `fd`; it goes to the
    /// kernel at the next [`submit`](Self::submit). Fails with `WouldBlock` when the
    /// submission queue is full (submit, then push again).
    ///
    /// # Safety
    /// `fd` must stay open, and every buffer in `bufs` alive and unchanged, until the
    /// [`Completion`] carrying `token` has been returned by
    /// [`completions`](Self::completions) or [`wait`](Self::wait).
    pub unsafe fn push_write(
        &mut self,
        fd: RawFd,
        offset: u64,
        bufs: &[&[u8]],
        token: u64,
    ) -> io::Result<()> {
        if self.ring.submission().is_full() {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(Op {
                    token: 0,
                    iovecs: Vec::new(),
                    busy: false,
                });
                (self.ops.len() - 1) as u32
            }
        };
        let op = &mut self.ops[index as usize];
        debug_assert!(!op.busy);
        op.busy = true;
        op.token = token;
        op.iovecs.clear();
        op.iovecs.extend(bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
        let mut entry =
            opcode::Writev::new(types::Fd(fd), op.iovecs.as_ptr(), op.iovecs.len() as u32)
                .offset(offset)
                .build()
                .user_data(u64::from(index));
        if self.issue == Issue::Worker {
            entry = entry.flags(squeue::Flags::ASYNC);
        }
        // SAFETY: the iovec array lives in `self.ops` until the completion is taken, and
        // the caller promises the same of the buffers and the descriptor.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::from(io::ErrorKind::WouldBlock))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Whether pushed writes wait to be handed to the kernel (a [`submit`](Self::submit)
    /// that failed leaves them there).
    pub fn unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Hands every pushed write to the kernel in one system call (and fetches completions
    /// that did not fit the completion queue). What a failure leaves unsubmitted stays
    /// queued for the next call.
    pub fn submit(&mut self) -> io::Result<()> {
        let overflow = self.ring.submission().cq_overflow();
        if self.unsubmitted() || overflow {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Appends every completion that has arrived to `out`, without blocking.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        let mut counter = [0u8; 8];
        // SAFETY: reading 8 bytes from a non-blocking eventfd into an 8-byte buffer; a
        // failure (nothing to read) is fine.
        unsafe {
            libc::read(
                self.event.as_raw_fd(),
                counter.as_mut_ptr() as *mut libc::c_void,
                counter.len(),
            );
        }
        loop {
            for cqe in self.ring.completion() {
                let index = cqe.user_data() as usize;
                let op = &mut self.ops[index];
                debug_assert!(op.busy);
                op.busy = false;
                self.free.push(index as u32);
                self.in_flight -= 1;
                let r = cqe.result();
                out.push(Completion {
                    token: op.token,
                    result: if r < 0 {
                        Err(io::Error::from_raw_os_error(-r))
                    } else {
                        Ok(r as usize)
                    },
                });
            }
            // Completions that did not fit the queue wait in the kernel until an enter
            // asks for them (the crate's submit does when the overflow flag is up).
            if !self.ring.submission().cq_overflow() || self.ring.submit().is_err() {
                break;
            }
        }
    }

    /// Submits what is pushed, blocks until at least one write completes (if any is in
    /// flight), and appends the completions to `out`.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.in_flight == 0 {
            return Ok(());
        }
        self.ring.submit_and_wait(1)?;
        self.completions(out);
        Ok(())
    }
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        // The kernel may still read buffers the caller is about to free: wait them out.
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            match self.wait(&mut sink) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => break,
                _ => sink.clear(),
            }
        }
    }
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("in_flight", &self.in_flight)
            .field("issue", &self.issue)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Read;

    /// A queue, or `None` (said on stderr) where io_uring is not available.
    fn queue(depth: u32, completions: u32, issue: Issue) -> Option<WriteQueue> {
        let q = WriteQueue::new(depth, completions, issue).ok();
        if q.is_none() {
            eprintln!("skipped: io_uring is not available here");
        }
        q
    }

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("ferry-uring-{}-{name}", std::process::id()));
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    #[test]
    fn gathered_writes_land_at_their_offsets_with_their_tokens() {
        for issue in [Issue::Worker, Issue::Inline] {
            let Some(mut q) = queue(8, 16, issue) else {
                return;
            };
            let (path, f) = temp(&format!("{issue:?}"));
            let a = vec![b'a'; 5000];
            let b = vec![b'b'; 3000];
            let c = vec![b'c'; 100];
            // SAFETY: the file and buffers outlive the completions taken below.
            unsafe {
                q.push_write(f.as_raw_fd(), 0, &[&a, &b], 7).unwrap();
                q.push_write(f.as_raw_fd(), 10_000, &[&c], 9).unwrap();
            }
            assert_eq!(q.in_flight(), 2);
            q.submit().unwrap();
            let mut done = Vec::new();
            while done.len() < 2 {
                q.wait(&mut done).unwrap();
            }
            assert_eq!(q.in_flight(), 0);
            done.sort_by_key(|c| c.token);
            assert_eq!(done[0].token, 7);
            assert_eq!(*done[0].result.as_ref().unwrap(), 8000);
            assert_eq!(done[1].token, 9);
            assert_eq!(*done[1].result.as_ref().unwrap(), 100);
            let mut back = Vec::new();
            File::open(&path).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), 10_100);
            assert!(back[..5000].iter().all(|&x| x == b'a'));
            assert!(back[5000..8000].iter().all(|&x| x == b'b'));
            assert!(back[8000..10_000].iter().all(|&x| x == 0));
            assert!(back[10_000..].iter().all(|&x| x == b'c'));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_failed_write_reports_the_os_error() {
        let Some(mut q) = queue(4, 8, Issue::Worker) else {
            return;
        };
        let (path, f) = temp("ro");
        drop(f);
        let ro = File::open(&path).unwrap();
        let data = [1u8; 10];
        // SAFETY: as above.
        unsafe { q.push_write(ro.as_raw_fd(), 0, &[&data], 1).unwrap() };
        let mut done = Vec::new();
        q.wait(&mut done).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].result.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_submission_queue_says_would_block() {
        let Some(mut q) = queue(2, 4, Issue::Inline) else {
            return;
        };
        let (path, f) = temp("full");
        let data = [1u8; 10];
        let mut pushed = 0;
        // SAFETY: as above.
        while unsafe { q.push_write(f.as_raw_fd(), pushed * 10, &[&data], pushed) }.is_ok() {
            pushed += 1;
            assert!(pushed < 1000, "the queue never filled");
        }
        assert!(!q.has_room());
        let mut done = Vec::new();
        while done.len() < pushed as usize {
            q.wait(&mut done).unwrap();
        }
        assert!(q.has_room());
        std::fs::remove_file(&path).unwrap();
    }

    /// More writes in flight than the completion queue holds: every completion still comes
    /// back, without a blocking wait, as data stops arriving at the end of a transfer.
    #[test]
    fn completions_beyond_the_completion_queue_are_all_fetched() {
        let Some(mut q) = queue(8, 16, Issue::Inline) else {
            return;
        };
        let (path, f) = temp("overflow");
        let data = [7u8; 512];
        let total = 64u64;
        for i in 0..total {
            // SAFETY: the file and buffer outlive the completions taken below.
            while unsafe { q.push_write(f.as_raw_fd(), i * 512, &[&data], i) }.is_err() {
                q.submit().unwrap();
            }
        }
        q.submit().unwrap();
        // Let every write finish in the kernel before looking.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut done = Vec::new();
        q.completions(&mut done);
        assert_eq!(
            done.len(),
            total as usize,
            "completions stuck in the kernel"
        );
        assert_eq!(q.in_flight(), 0);
        std::fs::remove_file(&path).unwrap();
    }
}
