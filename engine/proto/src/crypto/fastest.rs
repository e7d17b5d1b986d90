//! One AES-GCM type over the hardware backends, dispatching to the one chosen for this
//! process: which is faster depends on the CPU more than on the library. On a Zen 4 VM
//! without AVX-512, ring's VAES/AVX2 assembly seals 64 KiB nearly twice as fast as
//! aws-lc's AES-NI path (7.2 against 3.9 GiB/s, `cargo bench --bench seal`); on one with
//! AVX-512, aws-lc's AVX-512 path is the faster (11.3 against 7.1 GB/s,
//! `shared/MACHINE.md`). Both compute the same AES-GCM, so
//! peers need not agree on the choice.
//!
//! The choice is the caller's (the engine measures both once at start, see
//! `ferry_engine::aead`); this crate never reads a clock. It defaults to aws-lc.

use std::sync::atomic::{AtomicU8, Ordering};

use super::{Aead, AwsLc, NONCE_LEN, Ring, TAG_LEN};
use crate::Error;

/// A hardware AES-GCM implementation [`Fastest`] can dispatch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// aws-lc-rs (its AVX-512 path where the CPU has one).
    AwsLc,
    /// ring (its VAES/AVX2 path where the CPU has one).
    Ring,
}

impl Backend {
    /// Every backend, in the order a tie is broken.
    pub const ALL: [Backend; 2] = [Backend::AwsLc, Backend::Ring];

    /// The name used in logs and in `FERRY_AEAD`; [`std::str::FromStr`] accepts it back.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc",
            Backend::Ring => "ring",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown AES-GCM backend {s:?}: aws-lc or ring"))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(Backend::AwsLc as u8);

/// Makes keys built from now on use `backend`; keys already built keep theirs.
pub fn use_backend(backend: Backend) {
    CHOSEN.store(backend as u8, Ordering::Relaxed);
}

/// The backend new [`Fastest`] keys use.
pub fn backend() -> Backend {
    if CHOSEN.load(Ordering::Relaxed) == Backend::Ring as u8 {
        Backend::Ring
    } else {
        Backend::AwsLc
    }
}

/// AES-GCM through the backend chosen with [`use_backend`] when the key was built: one
/// predictable branch per datagram.
pub enum Fastest {
    /// Through aws-lc-rs.
    AwsLc(AwsLc),
    /// Through ring.
    Ring(Ring),
}

impl Fastest {
    /// A key on `backend`, whatever the process-wide choice (for tests and benchmarks).
    pub fn on(backend: Backend, key: &[u8]) -> Option<Self> {
        Some(match backend {
            Backend::AwsLc => Fastest::AwsLc(AwsLc::new(key)?),
            Backend::Ring => Fastest::Ring(Ring::new(key)?),
        })
    }

    /// Which backend this key runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Fastest::AwsLc(_) => Backend::AwsLc,
            Fastest::Ring(_) => Backend::Ring,
        }
    }
}

impl Aead for Fastest {
    fn new(key: &[u8]) -> Option<Self> {
        Fastest::on(backend(), key)
    }

    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        inout: &mut [u8],
    ) -> [u8; TAG_LEN] {
        match self {
            Fastest::AwsLc(k) => k.seal_in_place(nonce, aad, inout),
            Fastest::Ring(k) => k.seal_in_place(nonce, aad, inout),
        }
    }

    fn seal_from(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        output_and_tag: &mut [u8],
    ) {
        match self {
            Fastest::AwsLc(k) => k.seal_from(nonce, aad, input, output_and_tag),
            Fastest::Ring(k) => k.seal_from(nonce, aad, input, output_and_tag),
        }
    }

    fn seals_from_in_one_pass(&self) -> bool {
        match self {
            Fastest::AwsLc(k) => k.seals_from_in_one_pass(),
            Fastest::Ring(k) => k.seals_from_in_one_pass(),
        }
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        inout: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        match self {
            Fastest::AwsLc(k) => k.open_in_place(nonce, aad, inout, tag),
            Fastest::Ring(k) => k.open_in_place(nonce, aad, inout, tag),
        }
    }
}

impl std::fmt::Debug for Fastest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fastest").field(&self.backend()).finish()
    }
}
