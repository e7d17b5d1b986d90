//! End-to-end file checksums (`--checksum sha256|crc32c|none`).
//!
//! The sending side hashes each file as its blocks are first read for sending; the
//! receiving side hashes what it writes, in file order. Neither makes a second pass over
//! the file: [`InOrder`] takes data as it passes through and hashes it straight from the
//! buffer when it is next in file order. Data that lies beyond a gap (received out of
//! order, or held from a resumed session and so never read nor received here) is hashed
//! later from the file, once everything before it is known: from the page cache for data
//! just written, from disk for held ranges. Re-sent blocks are re-reads of bytes already
//! hashed and are ignored.
//!
//! The sender's digest of each file travels over the control channel; the receiver renames
//! `NAME.partial` to `NAME` only once its own digest equals it.

use std::io;
use std::ops::Range;

use ferry_proto::RangeSet;

/// The checksum algorithm of a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// No end-to-end checksum (the default): the AEAD of each datagram still protects the
    /// wire.
    #[default]
    None,
    /// SHA-256 (aws-lc-rs).
    Sha256,
    /// CRC-32C (Castagnoli), hardware-accelerated.
    Crc32c,
}

impl Algorithm {
    /// The name `--checksum` takes and manifests show.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::None => "none",
            Algorithm::Sha256 => "sha256",
            Algorithm::Crc32c => "crc32c",
        }
    }

    /// Whether files are checked at all.
    pub const fn is_enabled(self) -> bool {
        !matches!(self, Algorithm::None)
    }

    /// A fresh hasher, or `None` for [`Algorithm::None`].
    pub fn hasher(self) -> Option<Hasher> {
        match self {
            Algorithm::None => None,
            Algorithm::Sha256 => Some(Hasher::Sha256(Box::new(aws_lc_rs::digest::Context::new(
                &aws_lc_rs::digest::SHA256,
            )))),
            Algorithm::Crc32c => Some(Hasher::Crc32c(0)),
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    /// `sha256`, `crc32c` or `none`; empty means `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "none" => Ok(Algorithm::None),
            "sha256" => Ok(Algorithm::Sha256),
            "crc32c" => Ok(Algorithm::Crc32c),
            _ => Err(format!(
                "unknown checksum algorithm {s:?} (sha256, crc32c, none)"
            )),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running hash of one file.
pub enum Hasher {
    /// SHA-256.
    Sha256(Box<aws_lc_rs::digest::Context>),
    /// CRC-32C so far.
    Crc32c(u32),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hasher::Sha256(_) => "Hasher::Sha256",
            Hasher::Crc32c(_) => "Hasher::Crc32c",
        })
    }
}

impl Hasher {
    /// Hashes the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(c) => c.update(data),
            Hasher::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
        }
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(c) => Digest::new(Algorithm::Sha256, c.finish().as_ref()),
            Hasher::Crc32c(crc) => Digest::new(Algorithm::Crc32c, &crc.to_be_bytes()),
        }
    }
}

/// One file's checksum: `ALGORITHM:HEX` as text (`sha256:9f86…`, `crc32c:e3069283`; CRC-32C
/// big-endian, as `crc32c` tools print it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    len: u8,
    bytes: [u8; 32],
}

impl Digest {
    fn new(algorithm: Algorithm, value: &[u8]) -> Digest {
        let mut bytes = [0u8; 32];
        bytes[..value.len()].copy_from_slice(value);
        Digest {
            algorithm,
            len: value.len() as u8,
            bytes,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The digest of `data` in one go.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Option<Digest> {
        let mut h = algorithm.hasher()?;
        h.update(data);
        Some(h.finish())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}",
            self.algorithm,
            crate::control::messages::to_hex(self.as_bytes())
        )
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not ALGORITHM:HEX"))?;
        let algorithm: Algorithm = algo.parse()?;
        let want = match algorithm {
            Algorithm::None => return Err("a digest needs an algorithm".into()),
            Algorithm::Sha256 => 32,
            Algorithm::Crc32c => 4,
        };
        let raw = data_encoding::HEXLOWER_PERMISSIVE
            .decode(hex.as_bytes())
            .map_err(|e| format!("{s:?}: {e}"))?;
        if raw.len() != want {
            return Err(format!("{s:?}: {} bytes, not {want}", raw.len()));
        }
        Ok(Digest::new(algorithm, &raw))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How much [`InOrder`] reads from the file at a time when it catches up.
const CATCH_UP_CHUNK: usize = 1 << 20;

/// The in-order hash of one file of `size` bytes, fed with data in whatever order it
/// passes by.
///
/// Call [`handle_data`](Self::handle_data) with each piece of data as it is read (sender)
/// or written (receiver), and with `have`, the bytes of the file known to be in place on
/// disk (this piece included, plus any held from a resumed session). Data at the hash's
/// position is hashed from the buffer; then whatever `have` holds contiguously beyond it is
/// read back through `read_at` and hashed. Data behind the position (a re-send) is ignored.
#[derive(Debug)]
pub struct InOrder {
    hasher: Option<Hasher>,
    next: u64,
    size: u64,
    scratch: Vec<u8>,
}

impl InOrder {
    /// A hash of a `size`-byte file; `None` for [`Algorithm::None`].
    pub fn new(algorithm: Algorithm, size: u64) -> Option<InOrder> {
        Some(InOrder {
            hasher: Some(algorithm.hasher()?),
            next: 0,
            size,
            scratch: Vec::new(),
        })
    }

    /// How far the file has been hashed.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Whether every byte is hashed.
    pub fn is_complete(&self) -> bool {
        self.next >= self.size
    }

    /// Takes `data`, found at `offset` of the file, then catches up through `have`.
    pub fn handle_data(
        &mut self,
        offset: u64,
        data: &[u8],
        have: &RangeSet,
        read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if offset <= self.next && self.next < end {
            let from = (self.next - offset) as usize;
            self.update(&data[from..]);
            self.next = end;
        }
        self.catch_up(have, read_at)
    }

    /// Hashes, from the file, whatever `have` holds contiguously from the hash's position.
    pub fn catch_up(
        &mut self,
        have: &RangeSet,
        mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(Range { end, .. }) = have.range_at(self.next) else {
            return Ok(());
        };
        let end = end.min(self.size);
        while self.next < end {
            let n = (end - self.next).min(CATCH_UP_CHUNK as u64) as usize;
            let mut buf = std::mem::take(&mut self.scratch);
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let r = read_at(self.next, &mut buf[..n]);
            if r.is_ok() {
                self.update(&buf[..n]);
                self.next += n as u64;
            }
            self.scratch = buf;
            r?;
        }
        Ok(())
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
    }

    /// The digest, once every byte is hashed (`None` before, or once taken).
    pub fn finish(&mut self) -> Option<Digest> {
        if !self.is_complete() {
            return None;
        }
        self.scratch = Vec::new();
        self.hasher.take().map(Hasher::finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Feeds `pieces` (offset, len) of `file` as a receiver would: each written, then hashed
    /// with the set written so far (plus `held`, which was there from the start).
    fn feed(algo: Algorithm, file: &[u8], held: &[Range<u64>], pieces: &[(u64, u64)]) -> Digest {
        let mut have = RangeSet::from_ranges(held.iter().cloned());
        let mut h = InOrder::new(algo, file.len() as u64).unwrap();
        let read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&file[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        h.catch_up(&have, read).unwrap();
        for &(off, len) in pieces {
            have.insert(off..off + len);
            let data = &file[off as usize..(off + len) as usize];
            h.handle_data(off, data, &have, read).unwrap();
        }
        h.finish().expect("every byte hashed")
    }

    #[test]
    fn known_answers() {
        let sha = Digest::of(Algorithm::Sha256, b"abc").unwrap();
        assert_eq!(
            sha.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // The CRC-32C check value (RFC 3720 appendix B.4 uses the same polynomial).
        let crc = Digest::of(Algorithm::Crc32c, b"123456789").unwrap();
        assert_eq!(crc.to_string(), "crc32c:e3069283");
        assert_eq!(crc.to_string().parse::<Digest>(), Ok(crc));
        assert_eq!(sha.to_string().parse::<Digest>(), Ok(sha));
        assert!("md5:00".parse::<Digest>().is_err());
        assert!("crc32c:0011".parse::<Digest>().is_err());
        assert!(Digest::of(Algorithm::None, b"x").is_none());
    }

    #[test]
    fn in_order_hash_of_out_of_order_and_resumed_input_equals_the_whole() {
        let file = pattern(5 * 1000 + 123);
        for algo in [Algorithm::Sha256, Algorithm::Crc32c] {
            let whole = Digest::of(algo, &file).unwrap();
            let n = file.len() as u64;
            let blocks: Vec<(u64, u64)> = (0..n.div_ceil(1000))
                .map(|i| (i * 1000, 1000.min(n - i * 1000)))
                .collect();
            // In order.
            assert_eq!(feed(algo, &file, &[], &blocks), whole);
            // Reversed: everything waits for block 0, then comes back from the file.
            let rev: Vec<_> = blocks.iter().rev().copied().collect();
            assert_eq!(feed(algo, &file, &[], &rev), whole);
            // A gap filled late, with re-sends (duplicates) of data already hashed.
            let mut shuffled = vec![blocks[0], blocks[2], blocks[3], blocks[0], blocks[1]];
            shuffled.extend_from_slice(&blocks[4..]);
            shuffled.push(blocks[2]);
            assert_eq!(feed(algo, &file, &[], &shuffled), whole);
            // Resumed: held ranges at the start, the middle and the end, never fed.
            let held = [0..1000, 2500..3000, 4000..n];
            let rest = [(1000, 1000), (2000, 500), (3000, 1000)];
            assert_eq!(feed(algo, &file, &held, &rest), whole);
            // Resumed whole: hashed from the file alone.
            assert_eq!(feed(algo, &file, std::slice::from_ref(&(0..n)), &[]), whole);
            // Pieces that straddle the position (a re-send overlapping new data).
            assert_eq!(
                feed(
                    algo,
                    &file,
                    &[],
                    &[(0, 1500), (1000, 2000), (2500, n - 2500)]
                ),
                whole
            );
        }
    }

    #[test]
    fn incomplete_input_has_no_digest_and_empty_files_have_one() {
        let file = pattern(3000);
        let mut h = InOrder::new(Algorithm::Sha256, 3000).unwrap();
        let have = RangeSet::from_ranges([0..1000, 2000..3000]);
        h.handle_data(0, &file[..1000], &have, |_, _| Ok(()))
            .unwrap();
        assert_eq!(h.position(), 1000);
        assert!(h.finish().is_none());
        let mut empty = InOrder::new(Algorithm::Crc32c, 0).unwrap();
        assert_eq!(empty.finish(), Digest::of(Algorithm::Crc32c, b""));
        assert!(empty.finish().is_none(), "taken once");
        assert!(InOrder::new(Algorithm::None, 1).is_none());
    }

    #[test]
    fn a_failed_read_back_leaves_the_position_for_a_retry() {
        let file = pattern(2000);
        let mut h = InOrder::new(Algorithm::Crc32c, 2000).unwrap();
        let have = RangeSet::from_ranges(std::iter::once(0..2000));
        let err = h.catch_up(&have, |_, _| Err(io::Error::other("eio")));
        assert!(err.is_err());
        assert_eq!(h.position(), 0);
        h.catch_up(&have, |off, buf| {
            buf.copy_from_slice(&file[off as usize..off as usize + buf.len()]);
            Ok(())
        })
        .unwrap();
        assert_eq!(h.finish(), Digest::of(Algorithm::Crc32c, &file));
    }
}
