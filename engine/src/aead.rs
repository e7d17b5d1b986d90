//! Which AES-GCM implementation this process seals and opens with.
//!
//! aws-lc and ring each have the faster assembly on some CPUs (aws-lc where there is
//! AVX-512, ring where there is VAES without it: 2x aws-lc on this project's Zen 4 VMs), and
//! their dispatch inside can change with a version bump. So rather than a table of CPU
//! flags, the engine seals the same bytes with both once, at the data plane's start, and
//! keeps the faster ([`ferry_proto::crypto::use_backend`]). Both compute the same AES-GCM,
//! so the peers need not agree. `FERRY_AEAD=aws-lc|ring` forces one.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_proto::crypto::{Aead, Backend, Fastest, use_backend};

/// The environment variable that forces a backend.
pub const ENV: &str = "FERRY_AEAD";

/// Measures the backends (once per process), makes the faster the one new session keys
/// use, and returns it.
pub fn choose() -> Backend {
    static CHOSEN: OnceLock<Backend> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let (backend, why) = match std::env::var(ENV) {
            Ok(name) => match name.parse::<Backend>() {
                Ok(b) => (b, format!("forced by {ENV}")),
                Err(e) => {
                    let b = fastest();
                    (b, format!("{ENV} ignored ({e}); measured fastest"))
                }
            },
            Err(_) => (fastest(), "measured fastest".to_string()),
        };
        use_backend(backend);
        tracing::info!(aead = %backend, "AES-GCM backend: {why}");
        backend
    })
}

/// The backend that seals a mix of small and large datagrams (1416 B, a 1500-byte MTU's
/// block, and 60 KiB, loopback's) fastest here: the best of three alternating rounds each,
/// about a millisecond in all.
pub fn fastest() -> Backend {
    let mut best = [Duration::MAX; Backend::ALL.len()];
    for _ in 0..3 {
        for (i, b) in Backend::ALL.into_iter().enumerate() {
            best[i] = best[i].min(time_seals(b));
        }
    }
    // Ties (within 3 %) go to the first, aws-lc.
    let (first, second) = (best[0], best[1]);
    if second.as_nanos() * 103 < first.as_nanos() * 100 {
        Backend::ALL[1]
    } else {
        Backend::ALL[0]
    }
}

/// How long `backend` takes to seal 256 KiB as 1416-byte datagrams and 256 KiB more as
/// 60 KiB ones (after one untimed seal of each, to warm the key and the code).
fn time_seals(backend: Backend) -> Duration {
    const BYTES: usize = 256 * 1024;
    let key = Fastest::on(backend, &[0x5a; 16]).expect("a 16-byte key");
    let mut buf = vec![0x17u8; 61_440];
    let aad = [0u8; 40];
    let mut total = Duration::ZERO;
    for size in [1416, 61_440] {
        let mut nonce = [0u8; 12];
        let _ = key.seal_in_place(&nonce, &aad, &mut buf[..size]);
        let t = Instant::now();
        for n in 0..BYTES.div_ceil(size) {
            nonce[4..].copy_from_slice(&(n as u64 + 1).to_be_bytes());
            std::hint::black_box(key.seal_in_place(&nonce, &aad, &mut buf[..size]));
        }
        total += t.elapsed();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_is_made_once_and_is_in_force() {
        let b = choose();
        assert_eq!(choose(), b);
        assert_eq!(ferry_proto::crypto::backend(), b);
    }

    #[test]
    fn both_backends_can_be_timed() {
        for b in Backend::ALL {
            assert!(time_seals(b) > Duration::ZERO);
        }
    }
}
