//! AES-GCM through the pure-Rust RustCrypto `aes-gcm` crate: no C toolchain needed, and an
//! independent implementation to check aws-lc-rs against.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};

use super::{Aead, TAG_LEN};
use crate::Error;

/// AES-128/256-GCM backed by RustCrypto's `aes-gcm`.
pub struct RustCrypto(Inner);

// Boxed: the expanded key schedules and GHASH tables are several hundred bytes, and keys
// live inside state machines that get moved around.
enum Inner {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Aead for RustCrypto {
    fn new(key: &[u8]) -> Option<Self> {
        let inner = match key.len() {
            16 => Inner::Aes128(Box::new(Aes128Gcm::new_from_slice(key).ok()?)),
            32 => Inner::Aes256(Box::new(Aes256Gcm::new_from_slice(key).ok()?)),
            _ => return None,
        };
        Some(Self(inner))
    }

    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], inout: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = nonce.into();
        let tag = match &self.0 {
            Inner::Aes128(c) => c.encrypt_inout_detached(nonce, aad, inout.into()),
            Inner::Aes256(c) => c.encrypt_inout_detached(nonce, aad, inout.into()),
        }
        .expect("AES-GCM seal fails only past 64 GiB per message");
        tag.into()
    }

    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        inout: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        let nonce = nonce.into();
        let tag = tag.into();
        match &self.0 {
            Inner::Aes128(c) => c.decrypt_inout_detached(nonce, aad, inout.into(), tag),
            Inner::Aes256(c) => c.decrypt_inout_detached(nonce, aad, inout.into(), tag),
        }
        .map_err(|_| Error::Authentication)
    }
}

impl std::fmt::Debug for RustCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = match self.0 {
            Inner::Aes128(_) => 128,
            Inner::Aes256(_) => 256,
        };
        f.debug_struct("RustCrypto")
            .field("bits", &bits)
            .finish_non_exhaustive()
    }
}
