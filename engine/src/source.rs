//! The sender's packet buffers and where their blocks come from.
//!
//! Where the AES-GCM backend seals out of place in one pass (aws-lc), or blocks are small
//! (a 1500-byte MTU's), a block of a large file is not read into its slot: the slot points
//! at the block in a mapped window of the file, and the sender seals it from there into
//! the slot ([`TxBuffers::slot_and_source`]): one pass over the bytes instead of `pread`
//! and then sealing in place, or, where the seal copies first (ring, cipher `none`), no
//! system call per block. Small files, files the kernel will not map, and large blocks
//! where the seal would copy first anyway are read into the slot ([`map_sources`]).
//!
//! Windows are [`WINDOW`] bytes of the file (plus one block, so that every block starting
//! in a window lies wholly inside it), mapped with the pages populated. A few recent ones
//! are kept; a slot holds its own reference, so a window stays mapped while any slot
//! points into it and no longer. What stays resident is bounded by the windows in use,
//! never by the file's size.

use std::fs::File;
use std::io;
use std::sync::Arc;

use ferry_io::map::Mapping;
use ferry_proto::{SlotBuffers, Transmit, TxBuffer, TxBuffers, wire};

/// Bytes of a file one mapping covers (and how far apart windows start).
pub(crate) const WINDOW: u64 = 2 << 20;
/// Files smaller than this are read into the slots: a mapping costs two syscalls and a
/// page-table teardown, more than copying a few blocks.
pub(crate) const MAP_FROM: u64 = 1 << 20;
/// Blocks below this size are sealed from a mapping whatever the seal: one `pread` each
/// would cost more than the copy out of the mapping.
pub(crate) const MAP_BLOCKS_BELOW: u32 = 8192;

/// Whether a sender maps its large sources: where the seal reads a block out of place in
/// one pass (aws-lc), or where blocks are small. Otherwise (ring, cipher `none`, with
/// large blocks) the seal would copy out of the mapping first, and `pread` copies faster.
/// `FERRY_BENCH_BLOCK=N cargo bench -p ferry-benches --bench datapath`, ring, GiB/s read
/// then sealed against mapped: 1416 B 1.36 / 2.28, 8192 B 3.03 / 2.94, 16384 B 3.29 /
/// 3.03, 61440 B 3.92 / 3.13.
pub(crate) fn map_sources(seals_in_one_pass: bool, block_size: u32) -> bool {
    seals_in_one_pass || block_size < MAP_BLOCKS_BELOW
}

/// Windows kept mapped for the next blocks, beyond those slots still point into.
const KEPT: usize = 4;

/// A block's bytes in a mapped window.
struct Mapped {
    window: Arc<Mapping>,
    start: usize,
    len: usize,
}

/// The sender's packet buffers: one per read-ahead slot, each either holding its block or
/// pointing at it in a window of the file.
pub(crate) struct SendSlots {
    bufs: SlotBuffers,
    sources: Vec<Option<Mapped>>,
}

impl SendSlots {
    pub(crate) fn new(bufs: SlotBuffers) -> Self {
        let sources = bufs.slots.iter().map(|_| None).collect();
        SendSlots { bufs, sources }
    }

    /// The bytes of a transmit.
    pub(crate) fn bytes(&self, tx: &Transmit) -> &[u8] {
        self.bufs.bytes(tx)
    }

    /// Packet buffer `slot`, a sealed datagram at its front once transmitted.
    pub(crate) fn slot_bytes(&self, slot: u32) -> &[u8] {
        &self.bufs.slots[slot as usize]
    }

    /// Whether the block of a datagram just sealed came from a window whose file shrank
    /// while mapped: its bytes are not the file's, and it must not leave.
    pub(crate) fn damaged(&self, tx: &Transmit) -> bool {
        match tx.buffer {
            TxBuffer::Slot(i) => self.slot_damaged(i),
            TxBuffer::Control => false,
        }
    }

    /// Whether slot `slot` points into a window whose file shrank while mapped.
    pub(crate) fn slot_damaged(&self, slot: u32) -> bool {
        self.sources[slot as usize]
            .as_ref()
            .is_some_and(|m| m.window.damaged())
    }

    /// Where slot `slot`'s block goes when it is read rather than mapped: `len` bytes after
    /// the data header. The slot no longer points anywhere.
    pub(crate) fn read_target(&mut self, slot: u32, len: usize) -> &mut [u8] {
        self.sources[slot as usize] = None;
        &mut self.bufs.slots[slot as usize][wire::DATA_HEADER_LEN..][..len]
    }

    /// Points slot `slot` at `len` bytes of `window` from `start`, and returns them.
    pub(crate) fn point(
        &mut self,
        slot: u32,
        window: Arc<Mapping>,
        start: usize,
        len: usize,
    ) -> &[u8] {
        let m = self.sources[slot as usize].insert(Mapped { window, start, len });
        &m.window.bytes()[m.start..m.start + m.len]
    }
}

impl TxBuffers for SendSlots {
    fn slot(&mut self, slot: u32) -> &mut [u8] {
        self.bufs.slot(slot)
    }

    fn control(&mut self) -> &mut [u8] {
        self.bufs.control()
    }

    fn slot_and_source(&mut self, slot: u32) -> (&mut [u8], Option<&[u8]>) {
        let source = self.sources[slot as usize]
            .as_ref()
            .map(|m| &m.window.bytes()[m.start..m.start + m.len]);
        (&mut self.bufs.slots[slot as usize], source)
    }
}

/// Recently mapped windows of the files a sender reads.
#[derive(Default)]
pub(crate) struct Windows {
    /// Whether large files are mapped at all ([`map_sources`]).
    pub(crate) enabled: bool,
    /// (file index, window number, mapping), oldest first.
    kept: Vec<(u32, u64, Arc<Mapping>)>,
    /// Files that could not be mapped (their filesystem refuses, say): read instead.
    refused: std::collections::HashSet<u32>,
}

impl Windows {
    /// The window holding bytes `[at, at + len)` of file `index` (`file`, `size` bytes
    /// long as the manifest says), and where they start in it; `None` when the file is
    /// read rather than mapped.
    pub(crate) fn find(
        &mut self,
        index: u32,
        file: &File,
        size: u64,
        at: u64,
        len: usize,
        block: u64,
    ) -> Option<(Arc<Mapping>, usize)> {
        if !self.enabled || size < MAP_FROM || self.refused.contains(&index) {
            return None;
        }
        let number = at / WINDOW;
        let first = number * WINDOW;
        let start = (at - first) as usize;
        if let Some((_, _, m)) = self
            .kept
            .iter()
            .find(|(f, n, _)| *f == index && *n == number)
        {
            return Some((m.clone(), start));
        }
        let span = (WINDOW + block)
            .min(size - first)
            .max(at + len as u64 - first);
        match map(file, first, span) {
            Ok(m) => {
                let m = Arc::new(m);
                if self.kept.len() >= KEPT {
                    self.kept.remove(0);
                }
                self.kept.push((index, number, m.clone()));
                Some((m, start))
            }
            Err(_) => {
                self.refused.insert(index);
                None
            }
        }
    }
}

fn map(file: &File, offset: u64, len: u64) -> io::Result<Mapping> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("window too large"))?;
    Mapping::new(file, offset, len)
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn sources_are_mapped_where_that_saves_a_pass_or_a_call() {
        // One-pass seal (aws-lc): always.
        assert!(map_sources(true, 61_440));
        assert!(map_sources(true, 1416));
        // A seal that copies first (ring, none): only for small blocks.
        assert!(map_sources(false, 1416));
        assert!(!map_sources(false, MAP_BLOCKS_BELOW));
        assert!(!map_sources(false, 61_440));
    }
}
