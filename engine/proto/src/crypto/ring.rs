//! AES-GCM through ring: BoringSSL's assembly, including its VAES/VPCLMULQDQ path for
//! AVX2 that aws-lc (as vendored by aws-lc-sys 0.47) lacks. On a Zen 4 VM without AVX-512
//! it seals 64 KiB datagrams nearly twice as fast as aws-lc's AES-NI path (7.2 against 3.9
//! GiB/s through `PacketKey`, `cargo bench -p ferry-benches --bench seal`);
//! where aws-lc has AVX-512 it is the faster one. [`super::Fastest`] picks per host.

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use super::{Aead, TAG_LEN};
use crate::Error;

/// AES-128/256-GCM backed by ring.
pub struct Ring {
    // LessSafeKey for the same reason as aws-lc's: the nonce is the packet number. Boxed:
    // ring keeps the expanded key schedule and GHASH table inline (over 500 bytes), and
    // keys live inside state machines that get moved around.
    key: Box<LessSafeKey>,
}

impl Aead for Ring {
    fn new(key: &[u8]) -> Option<Self> {
        let alg = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return None,
        };
        let key = UnboundKey::new(alg, key).ok()?;
        Some(Self {
            key: Box::new(LessSafeKey::new(key)),
        })
    }

    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], inout: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), inout)
            .expect("AES-GCM seal fails only past 64 GiB per message");
        tag.as_ref().try_into().expect("AES-GCM tag is 16 bytes")
    }

    // ring has no out-of-place seal: `seal_from` is the trait's copy, then seal in place
    // (the copy is from a mapped file into a slot that stays in cache for the seal).

    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        inout: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                inout,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Error::Authentication)
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}
