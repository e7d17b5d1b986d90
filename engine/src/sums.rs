//! Checksums of source files for resume levels 2 and 3: the sending side sums chunks of
//! each source file, the receiving side checks what it already holds against them.
//!
//! - Level 2, **sparse**: CRC32s of up to [`SPARSE_SAMPLES`] chunks of [`SPARSE_CHUNK`]
//!   bytes spread evenly over the file (the first and the last included). Cheap whatever the
//!   file size; catches a partial or an existing file that differs in places it samples.
//! - Level 3, **full**: a CRC32 of every [`FULL_CHUNK`] bytes of the file. The sending side
//!   reads each file once before the transfer; every held byte is then checked.
//!
//! CRC32 detects damage and difference, not forgery: the peer is authenticated and the
//! data itself travels under AES-GCM.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_proto::RangeSet;

/// Chunk size of sparse sums (level 2).
pub const SPARSE_CHUNK: u32 = 64 << 10;
/// Most chunks a sparse sum samples.
pub const SPARSE_SAMPLES: u64 = 32;
/// Chunk size of full sums (level 3).
pub const FULL_CHUNK: u32 = 1 << 20;

/// CRC32s of chunks of one file: chunk `i` covers `[i·chunk, min((i+1)·chunk, size))`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSums {
    /// Chunk size in bytes.
    pub chunk: u32,
    /// `(chunk index, CRC32 of the chunk)`, ascending by index.
    pub sums: Vec<(u64, u32)>,
}

impl FileSums {
    /// The sums of the `size`-byte file at `path` for resume level `level`: sparse at 2,
    /// full at 3 and above, none below 2.
    pub fn compute(path: &Path, size: u64, level: u8) -> io::Result<FileSums> {
        let Some((chunk, indices)) = plan(size, level) else {
            return Ok(FileSums::default());
        };
        let file = File::open(path)?;
        let mut buf = vec![0u8; chunk as usize];
        let mut sums = Vec::with_capacity(indices.len());
        for i in indices {
            let r = chunk_range(chunk, i, size);
            let b = &mut buf[..(r.end - r.start) as usize];
            file.read_exact_at(b, r.start)?;
            sums.push((i, crc32fast::hash(b)));
        }
        Ok(FileSums { chunk, sums })
    }

    /// Whether these sums say anything (level 2 or 3 on a non-empty file).
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// Whether these sums can be checked against a `size`-byte file with bounded work: one
    /// of the two chunk sizes, indices ascending and within the file. Sums from the peer
    /// that are not are ignored.
    pub fn is_well_formed(&self, size: u64) -> bool {
        let n = size.div_ceil(u64::from(self.chunk.max(1)));
        matches!(self.chunk, SPARSE_CHUNK | FULL_CHUNK)
            && self.sums.windows(2).all(|w| w[0].0 < w[1].0)
            && self.sums.last().is_none_or(|&(i, _)| i < n)
    }

    /// Whether every chunk of a `size`-byte file is summed (level 3).
    pub fn is_full(&self, size: u64) -> bool {
        self.chunk > 0 && self.sums.len() as u64 == size.div_ceil(u64::from(self.chunk))
    }

    /// The bytes of `held` that are checked and right: the summed chunks lying wholly
    /// inside `held` whose CRC32 in the file at `path` matches.
    pub fn matching(&self, path: &Path, size: u64, held: &RangeSet) -> io::Result<RangeSet> {
        let mut good = RangeSet::new();
        self.each_held_chunk(path, size, held, |r, ok| {
            if ok {
                good.insert(r);
            }
            true
        })?;
        Ok(good)
    }

    /// Whether every summed chunk that lies wholly inside `held` (byte ranges of a source of
    /// `size` bytes) has the same CRC32 in the file at `path`. A file too short to hold a
    /// chunk it is said to hold does not match.
    pub fn verify(&self, path: &Path, size: u64, held: &RangeSet) -> io::Result<bool> {
        self.each_held_chunk(path, size, held, |_, ok| ok)
    }

    /// Calls `f(range, matches)` for each summed chunk wholly inside `held`, in order,
    /// while it returns true; returns whether it always did.
    fn each_held_chunk(
        &self,
        path: &Path,
        size: u64,
        held: &RangeSet,
        mut f: impl FnMut(Range<u64>, bool) -> bool,
    ) -> io::Result<bool> {
        if self.chunk == 0 {
            return Ok(true);
        }
        let file = File::open(path)?;
        let mut buf = vec![0u8; self.chunk as usize];
        for &(i, crc) in &self.sums {
            let r = chunk_range(self.chunk, i, size);
            if r.start >= r.end || held.count_in(r.start, r.end) != r.end - r.start {
                continue;
            }
            let b = &mut buf[..(r.end - r.start) as usize];
            let ok = match file.read_exact_at(b, r.start) {
                Ok(()) => crc32fast::hash(b) == crc,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
                Err(e) => return Err(e),
            };
            if !f(r, ok) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The chunk size and the chunks to sum of a `size`-byte file at resume level `level`.
fn plan(size: u64, level: u8) -> Option<(u32, Vec<u64>)> {
    let chunk = match level {
        0 | 1 => return None,
        2 => SPARSE_CHUNK,
        _ => FULL_CHUNK,
    };
    let n = size.div_ceil(u64::from(chunk));
    if n == 0 {
        return None;
    }
    let indices = if level >= 3 || n <= SPARSE_SAMPLES {
        (0..n).collect()
    } else {
        let mut v: Vec<u64> = (0..SPARSE_SAMPLES)
            .map(|k| k * (n - 1) / (SPARSE_SAMPLES - 1))
            .collect();
        v.dedup();
        v
    };
    Some((chunk, indices))
}

fn chunk_range(chunk: u32, i: u64, size: u64) -> Range<u64> {
    let start = i.saturating_mul(u64::from(chunk)).min(size);
    start..start.saturating_add(u64::from(chunk)).min(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn sparse_sums_sample_evenly_and_catch_a_difference_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let size = 100 * SPARSE_CHUNK as usize + 5;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let src = file_of(dir.path(), "src", &data);
        let sums = FileSums::compute(&src, size as u64, 2).unwrap();
        assert_eq!(sums.sums.len() as u64, SPARSE_SAMPLES);
        assert_eq!(sums.sums.first().unwrap().0, 0);
        assert_eq!(
            sums.sums.last().unwrap().0,
            100,
            "the short last chunk is sampled"
        );
        let all = RangeSet::from_ranges(std::iter::once(0..size as u64));
        assert!(sums.verify(&src, size as u64, &all).unwrap());

        let mut other = data.clone();
        other[size - 1] ^= 1;
        let copy = file_of(dir.path(), "copy", &other);
        assert!(!sums.verify(&copy, size as u64, &all).unwrap());
        // Not held, not checked.
        let head = RangeSet::from_ranges(std::iter::once(0..size as u64 - 10));
        assert!(sums.verify(&copy, size as u64, &head).unwrap());
        // Too short for what it claims to hold.
        let short = file_of(dir.path(), "short", &data[..1000]);
        assert!(!sums.verify(&short, size as u64, &all).unwrap());
    }

    #[test]
    fn full_sums_cover_every_chunk_and_low_levels_none() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; 2 * FULL_CHUNK as usize + 1];
        let src = file_of(dir.path(), "src", &data);
        let full = FileSums::compute(&src, data.len() as u64, 3).unwrap();
        assert_eq!(full.sums.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(
            FileSums::compute(&src, data.len() as u64, 1)
                .unwrap()
                .is_empty()
        );
        assert!(FileSums::compute(&src, 0, 3).unwrap().is_empty());
        assert!(full.is_full(data.len() as u64));
        assert!(full.is_well_formed(data.len() as u64));
        let huge = FileSums {
            chunk: u32::MAX,
            sums: vec![(0, 0)],
        };
        let repeated = FileSums {
            chunk: FULL_CHUNK,
            sums: vec![(0, 0), (0, 0)],
        };
        for bad in [huge, repeated] {
            assert!(!bad.is_well_formed(data.len() as u64), "{bad:?}");
        }
        assert!(
            !full.is_well_formed(FULL_CHUNK as u64),
            "indices beyond the file"
        );
        // One wrong chunk: the others still count.
        let mut other = data.clone();
        other[FULL_CHUNK as usize + 3] ^= 1;
        let copy = file_of(dir.path(), "copy", &other);
        let all = RangeSet::from_ranges(std::iter::once(0..data.len() as u64));
        let good = full.matching(&copy, data.len() as u64, &all).unwrap();
        let want = [
            0..u64::from(FULL_CHUNK),
            2 * u64::from(FULL_CHUNK)..data.len() as u64,
        ];
        assert_eq!(good.ranges(), &want);
    }
}
