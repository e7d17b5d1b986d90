//! How a lane's received blocks reach the disk: the receive buffers and the disk queue.
//!
//! A lane receives into one of a few [`RecvBatch`]es ([`BATCHES`]), opens each datagram in
//! place, and stages each new block's write straight from the batch's buffer: nothing is
//! copied. Once the batch is done, the blocks of one file that lie end to end are gathered
//! into one write (`IORING_OP_WRITEV`), and every write of the batch goes to the kernel in
//! one system call through an io_uring ([`ferry_io::uring::WriteQueue`]). A batch is not
//! received into again until every write from it has completed; the lane takes completions
//! ([`Inbound::completed`]) each time round its loop (their `eventfd` wakes it) and only
//! then counts a block as received, hashes it and checkpoints it. When every batch still
//! has writes in flight the lane waits for one: the queue that builds is then in the
//! socket buffer, where the sender's delay-based controller sees it.
//!
//! Why: at a 1500-byte MTU a GiB is 760,000 blocks, and a `pwrite` each was a fifth of the
//! receiver's CPU. Gathered, a batch of 16 GRO messages (up to 700 datagrams) in order is
//! a write or two. `benches/scripts/veth.sh`, 512 MiB over veth at MTU 1500, same sitting:
//! the receiving side's CPU went from 1.70-1.80 s/GiB (`FERRY_DISK_QUEUE=off`) to
//! 1.34-1.44 (inline or worker), and the rate from 6.0-6.3 to 6.7-7.6 Gbit/s.
//!
//! The writes run inline (in the submitting call) where they would not block, which for
//! the page cache is nearly always, and on the kernel's io_uring workers where they would
//! (`IOCB_NOWAIT` refused: dirty-page throttling, a locked extent). Always handing them to
//! the workers (`worker`) measured the same on veth, and did not help where writes were
//! slow for a reason the kernel cannot see: on this VM a tmpfs page the hypervisor has
//! taken back costs ~20x to write again, and eight workers writing at once went no faster
//! than one thread (2.5 Gbit/s, the first 2 GiB into a fresh tmpfs).
//!
//! Where io_uring is unavailable (or with `FERRY_DISK_QUEUE=off`) the lane writes each
//! block with `pwrite` as it opens it, with one batch.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use ferry_io::RecvBatch;
use ferry_io::uring::{Completion, Issue, WriteQueue};

/// The environment variable that picks how blocks are written, for measurements:
/// `inline` (the default: through the ring, run in the submitting call where the write
/// would not block, on the kernel's workers where it would), `worker` (always on the
/// workers) or `off` (a `pwrite` per block on the lane's thread, as before the queue).
pub(crate) const ENV: &str = "FERRY_DISK_QUEUE";
/// Receive batches per lane: each is [`MESSAGES`] buffers of 64 KiB, so 8 MiB in all.
pub(crate) const BATCHES: usize = 8;
/// Messages one receive call can take (each up to 64 KiB: a datagram, or many coalesced by
/// GRO).
pub(crate) const MESSAGES: usize = 16;
/// Writes handed to the ring per submission; a batch stages at most 1024 (16 messages of
/// at most 64 GRO segments), so a full one goes in one call or two.
const DEPTH: u32 = 1024;
/// Completions the ring holds: every write all batches can have in flight (8 × 1024), twice
/// over, so none waits in the kernel's overflow list.
const COMPLETIONS: u32 = 16 * 1024;
/// Blocks gathered into one write at most (the kernel's `IOV_MAX` is 1024).
const MAX_GATHER: usize = 256;

/// A block to write, staged from the current batch.
struct Staged {
    session: u32,
    file: u32,
    /// Offset in the session's view of the file.
    offset: u64,
    fd: RawFd,
    /// Where the block goes in the file on disk (a piece's offset added).
    at: u64,
    bytes: *const u8,
    len: usize,
}

/// One write in flight: blocks of one file, end to end, from one batch.
struct Op {
    session: u32,
    file: u32,
    batch: usize,
    fd: RawFd,
    at: u64,
    /// (offset in the session's view, bytes, length) of each block, in file order.
    blocks: Vec<(u64, *const u8, usize)>,
    since: Instant,
}

/// A write that finished: every block of it, with the outcome and how long it took.
pub(crate) struct Written {
    pub session: u32,
    pub file: u32,
    blocks: Vec<(u64, *const u8, usize)>,
    pub result: io::Result<()>,
    pub elapsed: Duration,
}

impl Written {
    /// Each block: its offset in the session's view of the file, and its bytes.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        // SAFETY: the bytes lie in a batch of the lane's `Inbound`, which lives as long as
        // the lane, and which is received into again only through `free_batch`, which
        // refuses while any `Written` is unhandled.
        self.blocks
            .iter()
            .map(|&(o, p, l)| (o, unsafe { std::slice::from_raw_parts(p, l) }))
    }
}

/// A lane's receive batches and disk queue.
pub(crate) struct Inbound {
    // First, so that it is dropped first: its drop waits out the writes in flight, which
    // read from `batches`.
    queue: Option<WriteQueue>,
    batches: Vec<RecvBatch>,
    /// Writes in flight from each batch.
    busy: Vec<usize>,
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    stage: Stage,
    /// The batch staged from.
    current: usize,
    completions: Vec<Completion>,
    /// Writes in flight per session.
    per_session: std::collections::HashMap<u32, usize>,
}

impl Inbound {
    /// With an io_uring disk queue if the kernel allows one.
    pub fn new() -> Inbound {
        let queue = match std::env::var(ENV).as_deref() {
            Ok("off") => None,
            Ok("worker") => WriteQueue::new(DEPTH, COMPLETIONS, Issue::Worker).ok(),
            _ => WriteQueue::new(DEPTH, COMPLETIONS, Issue::Inline).ok(),
        };
        let batches = if queue.is_some() { BATCHES } else { 1 };
        Inbound {
            batches: (0..batches).map(|_| RecvBatch::new(MESSAGES)).collect(),
            busy: vec![0; batches],
            queue,
            ops: Vec::new(),
            free: Vec::new(),
            stage: Stage(Vec::new()),
            current: 0,
            completions: Vec::new(),
            per_session: Default::default(),
        }
    }

    /// Hands the kernel what an earlier submission left behind; `false` when something
    /// still waits (the lane then must not sleep long: no completion will wake it).
    pub fn flush(&mut self) -> bool {
        match self.queue.as_mut() {
            Some(q) => q.submit().is_ok() && !q.unsubmitted(),
            None => true,
        }
    }

    /// The descriptor that becomes readable when a write completes.
    pub fn event_fd(&self) -> Option<RawFd> {
        self.queue.as_ref().map(WriteQueue::event_fd)
    }

    /// Writes of `session` not yet completed: it must not end before they do.
    pub fn in_flight(&self, session: u32) -> usize {
        self.per_session.get(&session).copied().unwrap_or(0)
    }

    /// A batch no write still reads from, to receive into, if there is one. `unhandled`
    /// must be empty: the blocks of a [`Written`] lie in a batch that is free again, and
    /// stay valid only until the next receive.
    pub fn free_batch(&mut self, unhandled: &[Written]) -> Option<&mut RecvBatch> {
        assert!(
            unhandled.is_empty(),
            "completed writes must be handled before receiving"
        );
        let i = self.busy.iter().position(|&n| n == 0)?;
        self.current = i;
        Some(&mut self.batches[i])
    }

    /// Blocks until a write completes (if any is in flight) and appends what completed to
    /// `done`.
    pub fn wait(&mut self, done: &mut Vec<Written>) -> io::Result<()> {
        if let Some(q) = self.queue.as_mut() {
            q.wait(&mut self.completions)?;
            self.collect(done);
        }
        Ok(())
    }

    /// The batch last returned by [`free_batch`](Self::free_batch), and where to stage its
    /// blocks' writes: `None` without a disk queue (the caller writes each block itself).
    pub fn batch_and_stage(&mut self) -> (&mut RecvBatch, Option<&mut Stage>) {
        let stage = self.queue.is_some().then_some(&mut self.stage);
        (&mut self.batches[self.current], stage)
    }

    /// Gathers the staged blocks into writes (a file's blocks that lie end to end, in the
    /// order they came, become one) and hands them to the kernel in one call. A write the
    /// ring refuses comes back at once in `done`, failed.
    pub fn submit(&mut self, done: &mut Vec<Written>) {
        let Some(q) = self.queue.as_mut() else {
            debug_assert!(self.stage.0.is_empty());
            return;
        };
        let staged = &self.stage.0;
        let mut i = 0;
        while i < staged.len() {
            let first = &staged[i];
            let mut end = i + 1;
            let mut next_at = first.at + first.len as u64;
            while end < staged.len()
                && end - i < MAX_GATHER
                && staged[end].session == first.session
                && staged[end].fd == first.fd
                && staged[end].at == next_at
            {
                next_at += staged[end].len as u64;
                end += 1;
            }
            let run = &staged[i..end];
            let op = Op {
                session: first.session,
                file: first.file,
                batch: self.current,
                fd: first.fd,
                at: first.at,
                blocks: run.iter().map(|s| (s.offset, s.bytes, s.len)).collect(),
                since: Instant::now(),
            };
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.ops.push(None);
                    self.ops.len() - 1
                }
            };
            // SAFETY: the blocks lie in batch `self.current`, which `busy` keeps from being
            // received into until this write's completion is taken; the session keeps the
            // file open until it has no write in flight (`in_flight`).
            let bufs: Vec<&[u8]> = op
                .blocks
                .iter()
                .map(|&(_, p, l)| unsafe { std::slice::from_raw_parts(p, l) })
                .collect();
            let pushed = loop {
                // SAFETY: as above.
                match unsafe { q.push_write(op.fd, op.at, &bufs, slot as u64) } {
                    Ok(()) => break Ok(()),
                    // The submission queue is full: hand it over, and there is room again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = q.submit() {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            i = end;
            if let Err(e) = pushed {
                // Not written: the blocks' sessions fail with the reason.
                self.free.push(slot);
                done.push(Written {
                    session: op.session,
                    file: op.file,
                    blocks: op.blocks,
                    result: Err(e),
                    elapsed: Duration::ZERO,
                });
                continue;
            }
            self.busy[self.current] += 1;
            *self.per_session.entry(op.session).or_insert(0) += 1;
            self.ops[slot] = Some(op);
        }
        self.stage.0.clear();
        // A refusal here (the kernel short of memory, say) leaves the writes queued in the
        // ring: the next submit or wait hands them over.
        let _ = q.submit();
    }

    /// Every write that has completed since the last look, appended to `done`.
    pub fn completed(&mut self, done: &mut Vec<Written>) {
        if let Some(q) = self.queue.as_mut() {
            q.completions(&mut self.completions);
            self.collect(done);
        }
    }

    /// Turns the raw completions into [`Written`]s; a short write is finished here with
    /// plain positioned writes from the same buffers.
    fn collect(&mut self, done: &mut Vec<Written>) {
        for c in self.completions.drain(..) {
            let op = self.ops[c.token as usize]
                .take()
                .expect("a completion for a write in flight");
            self.free.push(c.token as usize);
            let total: usize = op.blocks.iter().map(|b| b.2).sum();
            let result = c.result.and_then(|n| {
                if n >= total {
                    return Ok(());
                }
                // Short (a disk filling up, say): the rest, now, which says why if it
                // fails. The bytes are still held by the batch.
                let mut skip = n;
                let mut at = op.at;
                for &(_, p, l) in &op.blocks {
                    // SAFETY: as in `submit`: the batch is still held.
                    let b = unsafe { std::slice::from_raw_parts(p, l) };
                    if skip >= l {
                        skip -= l;
                        at += l as u64;
                        continue;
                    }
                    ferry_io::file::write_all_at_fd(op.fd, &b[skip..], at + skip as u64)?;
                    at += l as u64;
                    skip = 0;
                }
                Ok(())
            });
            if let Some(n) = self.per_session.get_mut(&op.session) {
                *n -= 1;
                if *n == 0 {
                    self.per_session.remove(&op.session);
                }
            }
            done.push(Written {
                session: op.session,
                file: op.file,
                blocks: op.blocks,
                result,
                elapsed: op.since.elapsed(),
            });
            self.busy[op.batch] -= 1;
        }
    }
}

/// Where a batch's block writes are staged until [`Inbound::submit`].
pub(crate) struct Stage(Vec<Staged>);

impl Stage {
    /// Stages the write of `bytes` (in the batch being handled) at `at` of `fd`, which
    /// stays open until the write's [`Written`] has been reported: block `offset` of file
    /// `file` of `session`.
    pub fn push(&mut self, session: u32, file: u32, offset: u64, fd: RawFd, at: u64, bytes: &[u8]) {
        self.0.push(Staged {
            session,
            file,
            offset,
            fd,
            at,
            bytes: bytes.as_ptr(),
            len: bytes.len(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    /// Blocks of one file that lie end to end become one write; a gap, another file or
    /// another session starts a new one. Every block comes back with its own offset.
    #[test]
    fn blocks_end_to_end_are_gathered_into_one_write() {
        let mut inbound = Inbound::new();
        if inbound.event_fd().is_none() {
            eprintln!("skipped: io_uring is not available here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let (a, b) = (open("a"), open("b"));
        // Owned here rather than by a batch: the test keeps them alive past the waits.
        let blocks: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i + 1; 1000]).collect();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let mut done = Vec::new();
        assert!(inbound.free_batch(&done).is_some());
        let (_, stage) = inbound.batch_and_stage();
        let stage = stage.expect("a queue");
        // Session 1, file 0 at a piece offset of 100: blocks 0, 1, 2 end to end.
        stage.push(1, 0, 0, fa, 100, &blocks[0]);
        stage.push(1, 0, 1000, fa, 1100, &blocks[1]);
        stage.push(1, 0, 2000, fa, 2100, &blocks[2]);
        // A gap: a write of its own.
        stage.push(1, 0, 5000, fa, 5100, &blocks[3]);
        // Another file, then another session on the first file's next block.
        stage.push(1, 1, 0, fb, 0, &blocks[4]);
        stage.push(2, 0, 6000, fa, 6100, &blocks[5]);
        inbound.submit(&mut done);
        assert!(done.is_empty(), "nothing refused");
        assert_eq!(inbound.in_flight(1), 3);
        assert_eq!(inbound.in_flight(2), 1);
        while inbound.in_flight(1) + inbound.in_flight(2) > 0 {
            inbound.wait(&mut done).unwrap();
        }
        let mut got: Vec<(u32, u32, Vec<u64>)> = done
            .iter()
            .map(|w| {
                assert!(w.result.is_ok());
                (w.session, w.file, w.blocks().map(|(o, _)| o).collect())
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, 0, vec![0, 1000, 2000]),
                (1, 0, vec![5000]),
                (1, 1, vec![0]),
                (2, 0, vec![6000]),
            ]
        );
        let mut back = vec![0u8; 3000];
        a.read_exact_at(&mut back, 100).unwrap();
        assert_eq!(back, [&blocks[0][..], &blocks[1], &blocks[2]].concat());
        a.read_exact_at(&mut back[..1000], 5100).unwrap();
        assert_eq!(back[..1000], blocks[3][..]);
        b.read_exact_at(&mut back[..1000], 0).unwrap();
        assert_eq!(back[..1000], blocks[4][..]);
        done.clear();
        assert!(
            inbound.free_batch(&done).is_some(),
            "the batch is free again"
        );
    }
}
