//! AES-GCM through aws-lc-rs: AES-NI/VAES and CLMUL assembly, the fast default.

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::{Aead, TAG_LEN};
use crate::Error;

/// AES-128/256-GCM backed by aws-lc-rs.
pub struct AwsLc {
    // LessSafeKey because the nonce comes from the packet number, not a counter the
    // library could own: the sealed datagrams may be produced out of order across pacers.
    key: LessSafeKey,
}

impl Aead for AwsLc {
    fn new(key: &[u8]) -> Option<Self> {
        let alg = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return None,
        };
        let key = UnboundKey::new(alg, key).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
        })
    }

    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], inout: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), inout)
            .expect("AES-GCM seal fails only past 64 GiB per message");
        tag.as_ref().try_into().expect("AES-GCM tag is 16 bytes")
    }

    fn seal_from(&self, nonce: &[u8; 12], aad: &[u8], input: &[u8], output_and_tag: &mut [u8]) {
        // The scatter form encrypts `extra_in` into the front of `extra_out_and_tag` and
        // puts the tag after it: out of place, through the same assembly as in place.
        self.key
            .seal_in_place_scatter(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut [],
                input,
                output_and_tag,
            )
            .expect("AES-GCM seal fails only with mismatched lengths or past 64 GiB");
    }

    fn seals_from_in_one_pass(&self) -> bool {
        true
    }

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
                tag,
                inout,
            )
            .map(|_| ())
            .map_err(|_| Error::Authentication)
    }
}

impl std::fmt::Debug for AwsLc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLc").finish_non_exhaustive()
    }
}
