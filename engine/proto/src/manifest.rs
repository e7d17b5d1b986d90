//! The files of a session and the block grid laid over them.

use crate::wire::BlockRef;

/// The sizes of a session's files and the block size agreed at start. Blocks are numbered
/// globally: file 0's blocks, then file 1's, and so on; block `k` of a file covers
/// `[k·B, min((k+1)·B, size))`. Empty files have no blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    sizes: Vec<u64>,
    /// Global number of each file's first block, plus the total at the end.
    first_block: Vec<u64>,
    /// Session byte offset of each file's first byte, plus the total at the end.
    first_byte: Vec<u64>,
    block_size: u32,
    total_bytes: u64,
}

/// A manifest that cannot describe a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The block size is zero.
    #[error("block size must be at least 1 byte")]
    ZeroBlockSize,
    /// More files than a `u32` file index can name.
    #[error("too many files for one session")]
    TooManyFiles,
    /// The sizes add up past `u64`.
    #[error("total size overflows")]
    Overflow,
}

impl Manifest {
    /// A manifest of files with these sizes, cut into blocks of `block_size` bytes.
    pub fn new(sizes: Vec<u64>, block_size: u32) -> Result<Self, ManifestError> {
        if block_size == 0 {
            return Err(ManifestError::ZeroBlockSize);
        }
        if u32::try_from(sizes.len()).is_err() {
            return Err(ManifestError::TooManyFiles);
        }
        let mut first_block = Vec::with_capacity(sizes.len() + 1);
        let mut first_byte = Vec::with_capacity(sizes.len() + 1);
        let (mut blocks, mut bytes) = (0u64, 0u64);
        for &size in &sizes {
            first_block.push(blocks);
            first_byte.push(bytes);
            blocks = blocks
                .checked_add(size.div_ceil(u64::from(block_size)))
                .ok_or(ManifestError::Overflow)?;
            bytes = bytes.checked_add(size).ok_or(ManifestError::Overflow)?;
        }
        first_block.push(blocks);
        first_byte.push(bytes);
        Ok(Manifest {
            sizes,
            first_block,
            first_byte,
            block_size,
            total_bytes: bytes,
        })
    }

    /// Number of files.
    pub fn files(&self) -> usize {
        self.sizes.len()
    }

    /// Size of file `index`.
    pub fn size(&self, index: u32) -> Option<u64> {
        self.sizes.get(index as usize).copied()
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Blocks in the whole session.
    pub fn total_blocks(&self) -> u64 {
        *self.first_block.last().unwrap_or(&0)
    }

    /// Bytes in the whole session.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Global number of file `index`'s first block (for an index past the end, the total).
    pub fn first_block(&self, index: u32) -> u64 {
        let i = (index as usize).min(self.sizes.len());
        self.first_block[i]
    }

    /// Blocks of file `index` (0 for an empty or unknown file).
    pub fn file_blocks(&self, index: u32) -> u64 {
        match self.sizes.get(index as usize) {
            Some(_) => self.first_block[index as usize + 1] - self.first_block[index as usize],
            None => 0,
        }
    }

    /// The global blocks of file-local block ranges, per file in manifest order; ranges
    /// beyond a file's last block are cut off there.
    pub fn global_blocks<'a>(
        &self,
        per_file: impl IntoIterator<Item = (u32, &'a [core::ops::Range<u64>])>,
    ) -> crate::RangeSet {
        let mut set = crate::RangeSet::new();
        for (file, ranges) in per_file {
            let (first, n) = (self.first_block(file), self.file_blocks(file));
            for r in ranges {
                set.insert(first + r.start.min(n)..first + r.end.min(n));
            }
        }
        set
    }

    /// Payload bytes of the global blocks in `blocks`.
    pub fn bytes_in(&self, blocks: core::ops::Range<u64>) -> u64 {
        self.byte_offset(blocks.end)
            .saturating_sub(self.byte_offset(blocks.start))
    }

    /// Bytes of every global block below `block`.
    fn byte_offset(&self, block: u64) -> u64 {
        if block >= self.total_blocks() {
            return self.total_bytes;
        }
        let file = self.first_block.partition_point(|&f| f <= block) - 1;
        let within = (block - self.first_block[file]) * u64::from(self.block_size);
        self.first_byte[file] + within.min(self.sizes[file])
    }

    /// The bytes global block `block` names. Panics if `block >= total_blocks()`.
    pub fn block(&self, block: u64) -> BlockRef {
        assert!(
            block < self.total_blocks(),
            "block {block} beyond the manifest"
        );
        // The last file whose first block is <= block, skipping empty files.
        let file = self.first_block.partition_point(|&f| f <= block) - 1;
        let k = block - self.first_block[file];
        let offset = k * u64::from(self.block_size);
        let len = (self.sizes[file] - offset).min(u64::from(self.block_size)) as u32;
        BlockRef {
            file: file as u32,
            offset,
            len,
        }
    }

    /// The global number of the block `r` names, if `r` lies exactly on the grid.
    pub fn global(&self, r: &BlockRef) -> Option<u64> {
        let size = self.size(r.file)?;
        let b = u64::from(self.block_size);
        if !r.offset.is_multiple_of(b) || r.offset >= size {
            return None;
        }
        let expect = (size - r.offset).min(b);
        (u64::from(r.len) == expect).then(|| self.first_block[r.file as usize] + r.offset / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grid_over_files_with_empties() {
        let m = Manifest::new(vec![10, 0, 25, 0], 8).unwrap();
        assert_eq!(m.total_blocks(), 2 + 4);
        assert_eq!(m.total_bytes(), 35);
        let b = m.block(1);
        assert_eq!((b.file, b.offset, b.len), (0, 8, 2));
        let b = m.block(2);
        assert_eq!((b.file, b.offset, b.len), (2, 0, 8));
        let b = m.block(5);
        assert_eq!((b.file, b.offset, b.len), (2, 24, 1));
        assert_eq!(m.global(&b), Some(5));
        assert_eq!(
            (m.first_block(2), m.file_blocks(2), m.file_blocks(1)),
            (2, 4, 0)
        );
        let one = std::slice::from_ref(&(0..1));
        let held = m.global_blocks([(0, one), (2, &[1..3, 3..99][..]), (7, one)]);
        assert_eq!(held.ranges(), &[0..1, 3..6]);
        assert_eq!(m.bytes_in(0..6), 35);
        assert_eq!(m.bytes_in(1..3), 2 + 8);
        assert_eq!(m.bytes_in(5..6), 1);
        assert_eq!(
            m.global(&BlockRef {
                file: 2,
                offset: 4,
                len: 8
            }),
            None
        );
        assert_eq!(
            m.global(&BlockRef {
                file: 2,
                offset: 24,
                len: 2
            }),
            None
        );
        assert_eq!(
            m.global(&BlockRef {
                file: 1,
                offset: 0,
                len: 1
            }),
            None
        );
        assert_eq!(
            m.global(&BlockRef {
                file: 9,
                offset: 0,
                len: 1
            }),
            None
        );
    }

    proptest! {
        #[test]
        fn every_byte_in_exactly_one_block(sizes in proptest::collection::vec(0u64..100, 0..20), bs in 1u32..17) {
            let m = Manifest::new(sizes.clone(), bs).unwrap();
            let mut covered: Vec<u64> = vec![0; sizes.len()];
            for g in 0..m.total_blocks() {
                let b = m.block(g);
                prop_assert_eq!(b.offset, covered[b.file as usize]);
                covered[b.file as usize] += u64::from(b.len);
                prop_assert_eq!(m.global(&b), Some(g));
            }
            prop_assert_eq!(&covered, &sizes);
            for g in 0..m.total_blocks() {
                prop_assert_eq!(m.bytes_in(g..g + 1), u64::from(m.block(g).len));
            }
        }
    }
}
