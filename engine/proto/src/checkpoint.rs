//! The checkpoint of a partly received file: which bytes of `NAME.partial` are durable, and
//! which source they came from. Encoding and decoding only; the engine reads and writes
//! the file (`NAME.partial.ckpt`).
//!
//! Layout, big-endian like the wire:
//!
//! | size | field |
//! |---|---|
//! | 8 | magic `FERRYCKP` |
//! | 2 | version, `1` |
//! | 2 | reserved, zero |
//! | 4 | block size of the session that wrote it |
//! | 8 | source size |
//! | 8 | source mtime, seconds (signed) |
//! | 4 | source mtime, nanoseconds |
//! | 4 | range count `n` |
//! | 16·n | byte ranges `(u64 start, u64 end)`, sorted, disjoint, within the size |
//! | 4 | CRC32 (IEEE) of everything before it |
//!
//! Ranges are in bytes, not blocks, so a checkpoint stays meaningful when the next session
//! agrees on another block size.

use crate::ranges::RangeSet;

const MAGIC: &[u8; 8] = b"FERRYCKP";
const VERSION: u16 = 1;
const FIXED_LEN: usize = 8 + 2 + 2 + 4 + 8 + 8 + 4 + 4;
const RANGE_LEN: usize = 16;
const CRC_LEN: usize = 4;

/// What a checkpoint file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Block size of the session that wrote it (informational).
    pub block_size: u32,
    /// The source file's size.
    pub size: u64,
    /// The source file's modification time: seconds and nanoseconds since the Unix epoch.
    pub mtime: (i64, u32),
    /// Bytes of the partial file that are written and durable.
    pub bytes: RangeSet,
}

/// Why a checkpoint cannot be used: the file then restarts from nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Shorter than its header or its ranges claim.
    #[error("the checkpoint is truncated")]
    Truncated,
    /// Not a ferry checkpoint.
    #[error("not a ferry checkpoint")]
    BadMagic,
    /// Written by another format version.
    #[error("checkpoint version {0} is not supported")]
    Version(u16),
    /// Reserved bits are set.
    #[error("the checkpoint's reserved field is not zero")]
    Reserved,
    /// The CRC does not match: the file was damaged.
    #[error("the checkpoint is corrupt (CRC mismatch)")]
    Crc,
    /// Bytes after the CRC.
    #[error("the checkpoint has trailing bytes")]
    Trailing,
    /// Ranges unsorted, overlapping, empty or beyond the size.
    #[error("the checkpoint's ranges are not valid")]
    BadRanges,
}

impl Checkpoint {
    /// The checkpoint as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let ranges = self.bytes.ranges();
        let mut out = Vec::with_capacity(FIXED_LEN + ranges.len() * RANGE_LEN + CRC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&self.block_size.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.mtime.0.to_be_bytes());
        out.extend_from_slice(&self.mtime.1.to_be_bytes());
        out.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
        for r in ranges {
            out.extend_from_slice(&r.start.to_be_bytes());
            out.extend_from_slice(&r.end.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses and verifies a checkpoint; anything damaged, truncated or foreign is an error,
    /// never a panic.
    pub fn decode(b: &[u8]) -> Result<Checkpoint, CheckpointError> {
        if b.len() < FIXED_LEN + CRC_LEN {
            return Err(if b.starts_with(MAGIC) || MAGIC.starts_with(b) {
                CheckpointError::Truncated
            } else {
                CheckpointError::BadMagic
            });
        }
        if &b[..8] != MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(CheckpointError::Version(version));
        }
        if b[10..12] != [0, 0] {
            return Err(CheckpointError::Reserved);
        }
        let count = be_u32(&b[36..40]) as usize;
        let body_len = count
            .checked_mul(RANGE_LEN)
            .and_then(|n| n.checked_add(FIXED_LEN))
            .ok_or(CheckpointError::Truncated)?;
        let total = body_len + CRC_LEN;
        if b.len() < total {
            return Err(CheckpointError::Truncated);
        }
        if b.len() > total {
            return Err(CheckpointError::Trailing);
        }
        if crc32fast::hash(&b[..body_len]) != be_u32(&b[body_len..]) {
            return Err(CheckpointError::Crc);
        }
        let size = be_u64(&b[16..24]);
        let mut bytes = RangeSet::new();
        let mut prev_end = 0;
        for (i, r) in b[FIXED_LEN..body_len].chunks_exact(RANGE_LEN).enumerate() {
            let (start, end) = (be_u64(&r[..8]), be_u64(&r[8..]));
            if start >= end || end > size || (i > 0 && start <= prev_end) {
                return Err(CheckpointError::BadRanges);
            }
            prev_end = end;
            bytes.insert(start..end);
        }
        Ok(Checkpoint {
            block_size: be_u32(&b[12..16]),
            size,
            mtime: (be_u64(&b[24..32]) as i64, be_u32(&b[32..36])),
            bytes,
        })
    }

    /// Whether this checkpoint was written for a source of this size and mtime.
    pub fn matches(&self, size: u64, mtime: (i64, u32)) -> bool {
        self.size == size && self.mtime == mtime
    }

    /// The file-local blocks of `block_size` bytes that the durable bytes cover entirely
    /// (the last block of the file is shorter).
    pub fn held_blocks(&self, block_size: u32) -> RangeSet {
        let b = u64::from(block_size.max(1));
        RangeSet::from_ranges(self.bytes.ranges().iter().map(|r| {
            let first = r.start.div_ceil(b);
            let end = if r.end == self.size {
                r.end.div_ceil(b)
            } else {
                r.end / b
            };
            first..end.max(first)
        }))
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            block_size: 8192,
            size: 100_000,
            mtime: (1_700_000_000, 123),
            bytes: RangeSet::from_ranges([0..40_960, 50_000..100_000]),
        }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        assert_eq!(Checkpoint::decode(&c.encode()), Ok(c.clone()));
        let empty = Checkpoint {
            bytes: RangeSet::new(),
            ..c
        };
        assert_eq!(Checkpoint::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn damage_is_detected() {
        let good = sample().encode();
        for cut in [0, 3, 8, 20, good.len() - 1] {
            assert!(Checkpoint::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        assert_eq!(Checkpoint::decode(&flipped), Err(CheckpointError::Crc));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Checkpoint::decode(&long), Err(CheckpointError::Trailing));
        assert_eq!(
            Checkpoint::decode(b"not a checkpoint at all, really not"),
            Err(CheckpointError::BadMagic)
        );
    }

    #[test]
    fn ranges_must_be_valid_even_with_a_good_crc() {
        let mut c = sample();
        c.size = 60_000; // the second range now ends beyond the size
        assert_eq!(
            Checkpoint::decode(&c.encode()),
            Err(CheckpointError::BadRanges)
        );
    }

    #[test]
    fn held_blocks_are_only_whole_blocks() {
        let c = sample();
        // 0..40960 is 5 whole blocks; 50000..100000 covers blocks 7..12 (the last, short).
        assert_eq!(c.held_blocks(8192).ranges(), &[0..5, 7..13]);
        assert!(c.matches(100_000, (1_700_000_000, 123)));
        assert!(!c.matches(100_000, (1_700_000_000, 124)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Checkpoint::decode(&b);
        }
    }
}
