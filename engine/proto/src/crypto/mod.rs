//! Per-direction keys and in-place sealing of datagrams.
//!
//! Each direction has its own key and IV, derived from the session secret (see
//! [`derive_keys`]), so the two peers never seal under the same nonce even though both count
//! packet numbers from zero. A [`PacketKey`] seals or opens one direction: the header is the
//! associated data, the body is encrypted in place and the 16-byte tag follows it. With
//! [`Cipher::None`] the body stays clear and a CRC32 trailer only catches corruption.
//!
//! The AES-GCM implementation is a type parameter ([`Aead`]): [`AwsLc`] (feature `aws-lc`),
//! [`Ring`] (feature `ring`), [`Fastest`] (both features, the default: whichever of the
//! two the engine measured faster on this host) or [`RustCrypto`] (feature `rustcrypto`,
//! pure Rust). Generics rather than `dyn` keep the per-packet call direct.

#[cfg(not(any(feature = "aws-lc", feature = "ring", feature = "rustcrypto")))]
compile_error!(
    "ferry-proto needs an AES-GCM backend: enable feature `aws-lc`, `ring` or `rustcrypto`"
);

#[cfg(feature = "aws-lc")]
mod awslc;
#[cfg(all(feature = "aws-lc", feature = "ring"))]
mod fastest;
#[cfg(feature = "ring")]
mod ring;
// Also built for unit tests, which check the backends against each other.
#[cfg(any(feature = "rustcrypto", test))]
mod rustcrypto;

#[cfg(feature = "aws-lc")]
pub use awslc::AwsLc;
#[cfg(all(feature = "aws-lc", feature = "ring"))]
pub use fastest::{Backend, Fastest, backend, use_backend};
#[cfg(feature = "ring")]
pub use ring::Ring;
#[cfg(any(feature = "rustcrypto", test))]
pub use rustcrypto::RustCrypto;

/// The backend [`PacketKey`] uses unless told otherwise: the faster hardware one where
/// both are built in.
#[cfg(all(feature = "aws-lc", feature = "ring"))]
pub type DefaultAead = Fastest;
/// The backend [`PacketKey`] uses unless told otherwise: the hardware one built in.
#[cfg(all(feature = "aws-lc", not(feature = "ring")))]
pub type DefaultAead = AwsLc;
/// The backend [`PacketKey`] uses unless told otherwise: the hardware one built in.
#[cfg(all(feature = "ring", not(feature = "aws-lc")))]
pub type DefaultAead = Ring;
/// The backend [`PacketKey`] uses unless told otherwise: the pure-Rust one.
#[cfg(all(not(feature = "aws-lc"), not(feature = "ring"), feature = "rustcrypto"))]
pub type DefaultAead = RustCrypto;

use std::fmt;
use std::str::FromStr;

use hkdf::Hkdf;
use sha2::Sha256;

use crate::Error;
use crate::wire::{COMMON_HEADER_LEN, Header};

/// AES-GCM tag bytes.
pub const TAG_LEN: usize = 16;
/// CRC32 trailer bytes for [`Cipher::None`].
pub const CRC_LEN: usize = 4;
/// AES-GCM nonce bytes.
pub const NONCE_LEN: usize = 12;

const KDF_SALT: &[u8] = b"ferry v1";

/// How datagrams are protected; chosen per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// No encryption, CRC32 trailer: for trusted links where the CPU matters more.
    None,
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
}

impl Cipher {
    /// Every cipher, for tests and help text.
    pub const ALL: [Cipher; 3] = [Cipher::None, Cipher::Aes128Gcm, Cipher::Aes256Gcm];

    /// Bytes after the body: a 16-byte tag, or the 4-byte CRC32 for `None`.
    pub const fn trailer_len(self) -> usize {
        match self {
            Cipher::None => CRC_LEN,
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => TAG_LEN,
        }
    }

    /// AES key bytes; 0 for `None`.
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::None => 0,
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm => 32,
        }
    }

    /// The name used on the command line and in configs; [`FromStr`] accepts it back.
    pub const fn name(self) -> &'static str {
        match self {
            Cipher::None => "none",
            Cipher::Aes128Gcm => "aes128",
            Cipher::Aes256Gcm => "aes256",
        }
    }
}

impl FromStr for Cipher {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cipher, Error> {
        Cipher::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or(Error::BadCipher)
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which way a key protects traffic; each way has its own key and IV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the side that started the session (usually the `ferry` CLI).
    ClientToServer,
    /// From `ferryd` back to the client.
    ServerToClient,
}

impl Direction {
    /// The other way: a peer seals with one direction and opens with its reverse.
    pub const fn reverse(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s",
            Direction::ServerToClient => "s2c",
        }
    }
}

/// Key and IV for one direction.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionSecrets {
    key: [u8; 32],
    key_len: usize,
    /// XORed with the packet number to form each nonce.
    pub iv: [u8; NONCE_LEN],
}

impl DirectionSecrets {
    /// The AES key: 16 or 32 bytes, empty for [`Cipher::None`].
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }
}

impl fmt::Debug for DirectionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys must not reach logs.
        f.debug_struct("DirectionSecrets")
            .field("key_len", &self.key_len)
            .finish_non_exhaustive()
    }
}

/// HKDF-SHA256 key schedule from `docs/protocol.md`: salt `ferry v1`, info
/// `ferry {c2s,s2c} {key,iv}`.
pub fn derive_keys(secret: &[u8; 32], cipher: Cipher, dir: Direction) -> DirectionSecrets {
    let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), secret);
    let mut out = DirectionSecrets {
        key: [0; 32],
        key_len: cipher.key_len(),
        iv: [0; NONCE_LEN],
    };
    let label = dir.label();
    // Both lengths are far below HKDF's 255·32-byte limit, so expand cannot fail.
    if out.key_len > 0 {
        hk.expand_multi_info(
            &[b"ferry ", label.as_bytes(), b" key"],
            &mut out.key[..out.key_len],
        )
        .expect("HKDF output length is valid");
    }
    hk.expand_multi_info(&[b"ferry ", label.as_bytes(), b" iv"], &mut out.iv)
        .expect("HKDF output length is valid");
    out
}

/// An AES-GCM implementation with a detached tag, so the tag can be written straight after
/// the body in the datagram buffer without copying.
pub trait Aead: Send + Sync + Sized {
    /// Builds the cipher from a 16-byte (AES-128) or 32-byte (AES-256) key; `None` for any
    /// other length.
    fn new(key: &[u8]) -> Option<Self>;

    /// Encrypts `inout` in place and returns the tag.
    ///
    /// # Panics
    /// Only past AES-GCM's 64 GiB per-message limit, which no datagram approaches.
    fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], inout: &mut [u8])
    -> [u8; TAG_LEN];

    /// Encrypts `input` into the front of `output_and_tag` and writes the tag after it
    /// (`output_and_tag` is `TAG_LEN` bytes longer than `input`): one pass over the bytes,
    /// where a copy then [`Aead::seal_in_place`] makes two. The default does exactly that
    /// copy.
    ///
    /// # Panics
    /// If the lengths do not fit, or as [`Aead::seal_in_place`].
    fn seal_from(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        output_and_tag: &mut [u8],
    ) {
        let (out, tag) = output_and_tag.split_at_mut(input.len());
        out.copy_from_slice(input);
        tag.copy_from_slice(&self.seal_in_place(nonce, aad, out));
    }

    /// Whether [`Aead::seal_from`] makes one pass over the bytes rather than the default
    /// copy and seal: only then is sealing from a mapped file cheaper than reading the block
    /// into its buffer first (a `pread` copies faster than a copy out of a mapping).
    fn seals_from_in_one_pass(&self) -> bool {
        false
    }

    /// Verifies `tag` and decrypts `inout` in place; [`Error::Authentication`] if it does
    /// not verify, in which case `inout` holds garbage.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        inout: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error>;
}

/// Seals or opens the datagrams of one direction.
///
/// Holds no counter: the packet number in each header is the nonce, and the sender's
/// numbering (never reused) is what keeps nonces unique.
pub struct PacketKey<A: Aead = DefaultAead> {
    cipher: Cipher,
    /// `None` exactly when `cipher` is [`Cipher::None`].
    aead: Option<A>,
    iv: [u8; NONCE_LEN],
}

impl<A: Aead> PacketKey<A> {
    /// Derives the key for `dir` from the session secret.
    pub fn new(secret: &[u8; 32], cipher: Cipher, dir: Direction) -> Self {
        let s = derive_keys(secret, cipher, dir);
        let aead = match cipher {
            Cipher::None => None,
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => {
                Some(A::new(s.key()).expect("derived key has the cipher's length"))
            }
        };
        Self {
            cipher,
            aead,
            iv: s.iv,
        }
    }

    /// The cipher this key was made for.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Whether [`PacketKey::seal_from`] seals in one pass over the body (see
    /// [`Aead::seals_from_in_one_pass`]); never for [`Cipher::None`], which copies the body
    /// and then sums it.
    pub fn seals_from_in_one_pass(&self) -> bool {
        self.aead.as_ref().is_some_and(A::seals_from_in_one_pass)
    }

    /// Trailer bytes [`PacketKey::seal`] appends; reserve them when sizing bodies.
    pub fn trailer_len(&self) -> usize {
        self.cipher.trailer_len()
    }

    fn nonce(&self, pn: u64) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        n
    }

    /// Seals a datagram in place and returns its length.
    ///
    /// `buf[..header_len]` must hold the encoded header (its packet number, bytes 8..16, is
    /// the nonce) and `buf[header_len..header_len + body_len]` the body. The body is
    /// encrypted and the trailer written after it. Fails with [`Error::BufferTooSmall`] if
    /// `buf` has no room for the trailer and [`Error::Truncated`] if `header_len` is shorter
    /// than a header.
    pub fn seal(&self, buf: &mut [u8], header_len: usize, body_len: usize) -> Result<usize, Error> {
        if header_len < COMMON_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let body_end = header_len
            .checked_add(body_len)
            .ok_or(Error::BufferTooSmall)?;
        let end = body_end
            .checked_add(self.trailer_len())
            .ok_or(Error::BufferTooSmall)?;
        let Some(buf) = buf.get_mut(..end) else {
            return Err(Error::BufferTooSmall);
        };
        let (head, rest) = buf.split_at_mut(header_len);
        let (body, trailer) = rest.split_at_mut(body_len);
        match &self.aead {
            None => {
                let crc = crc(head, body);
                trailer.copy_from_slice(&crc.to_be_bytes());
            }
            Some(aead) => {
                let pn = u64::from_be_bytes(head[8..16].try_into().unwrap());
                let tag = aead.seal_in_place(&self.nonce(pn), head, body);
                trailer.copy_from_slice(&tag);
            }
        }
        Ok(end)
    }

    /// As [`PacketKey::seal`], with the body read from `body` (a block of a mapped file,
    /// say) and written sealed into `buf[header_len..]`, in one pass.
    pub fn seal_from(
        &self,
        buf: &mut [u8],
        header_len: usize,
        body: &[u8],
    ) -> Result<usize, Error> {
        if header_len < COMMON_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let end = header_len
            .checked_add(body.len())
            .and_then(|e| e.checked_add(self.trailer_len()))
            .ok_or(Error::BufferTooSmall)?;
        let Some(buf) = buf.get_mut(..end) else {
            return Err(Error::BufferTooSmall);
        };
        let (head, rest) = buf.split_at_mut(header_len);
        match &self.aead {
            None => {
                let (out, trailer) = rest.split_at_mut(body.len());
                out.copy_from_slice(body);
                let crc = crc(head, out);
                trailer.copy_from_slice(&crc.to_be_bytes());
            }
            Some(aead) => {
                let pn = u64::from_be_bytes(head[8..16].try_into().unwrap());
                aead.seal_from(&self.nonce(pn), head, body, rest);
            }
        }
        Ok(end)
    }

    /// Verifies and decrypts a received datagram in place; returns the plaintext length
    /// (header and body, trailer excluded) to hand to [`crate::wire::parse`].
    ///
    /// The header is checked first (version, kind, flags) because its kind says where the
    /// body starts. Fails with [`Error::Authentication`] for a bad tag, [`Error::Checksum`]
    /// for a bad CRC, or a decode error; then the buffer's contents are unspecified.
    /// The caller still has to pass the packet number through the replay window.
    pub fn open(&self, datagram: &mut [u8]) -> Result<usize, Error> {
        let header = Header::decode(datagram)?;
        let header_len = header.kind.header_len();
        let body_end = datagram
            .len()
            .checked_sub(self.trailer_len())
            .filter(|&e| e >= header_len)
            .ok_or(Error::Truncated)?;
        let (head, rest) = datagram.split_at_mut(header_len);
        let (body, trailer) = rest.split_at_mut(body_end - header_len);
        match &self.aead {
            None => {
                let want = u32::from_be_bytes(trailer.try_into().unwrap());
                if crc(head, body) != want {
                    return Err(Error::Checksum);
                }
            }
            Some(aead) => {
                let tag: &[u8; TAG_LEN] = (&*trailer).try_into().unwrap();
                aead.open_in_place(&self.nonce(header.pn), head, body, tag)?;
            }
        }
        Ok(body_end)
    }
}

impl<A: Aead> fmt::Debug for PacketKey<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketKey")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

fn crc(head: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(body);
    h.finalize()
}

#[cfg(test)]
mod tests;
