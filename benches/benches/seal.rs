//! Seal and open throughput through `PacketKey`, so header handling, nonce construction and
//! the trailer are included, not just the raw AEAD.
//!
//! Sizes: 1400 B (a typical datagram body), 8 KiB and 64 KiB (GSO-sized sends, to show the
//! cipher's asymptotic rate). Throughput counts body bytes.
//!
//! Seal and open both work on fresh copies made in untimed set-up (opening decrypts in place,
//! so it needs one anyway). A batch of copies does not fit in L1/L2, so the data comes from
//! L3, much as a block just read from disk or a datagram just received would; that matters
//! for the CRC32 path, which is fast enough to be bound by memory.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_proto::crypto::{Aead, AwsLc, Cipher, Direction, PacketKey, Ring, RustCrypto};
use ferry_proto::wire::{BlockRef, DATA_HEADER_LEN, Header, Kind};

const SIZES: [usize; 3] = [1400, 8 * 1024, 64 * 1024];
const SECRET: [u8; 32] = [0x5a; 32];

/// A data datagram with a `body`-byte payload, not yet sealed.
fn plaintext(body: usize, trailer: usize) -> Vec<u8> {
    let mut buf = vec![0xa5u8; DATA_HEADER_LEN + body + trailer];
    Header {
        kind: Kind::Data,
        flags: 0,
        session: 1,
        pn: 42,
        send_ts_us: 1_000_000,
    }
    .encode(&mut buf);
    BlockRef {
        file: 0,
        offset: 0,
        len: body as u32,
    }
    .encode_at(&mut buf);
    buf
}

fn bench_backend<A: Aead>(c: &mut Criterion, backend: &str, ciphers: &[Cipher]) {
    for &cipher in ciphers {
        let key = PacketKey::<A>::new(&SECRET, cipher, Direction::ClientToServer);
        let t = cipher.trailer_len();

        let mut g = c.benchmark_group(format!("seal/{backend}/{cipher}"));
        for body in SIZES {
            g.throughput(Throughput::Bytes(body as u64));
            let plain = plaintext(body, t);
            g.bench_function(BenchmarkId::from_parameter(body), |b| {
                b.iter_batched_ref(
                    || plain.clone(),
                    |d| key.seal(black_box(d), DATA_HEADER_LEN, body).unwrap(),
                    BatchSize::SmallInput,
                );
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("open/{backend}/{cipher}"));
        for body in SIZES {
            g.throughput(Throughput::Bytes(body as u64));
            let mut sealed = plaintext(body, t);
            key.seal(&mut sealed, DATA_HEADER_LEN, body).unwrap();
            g.bench_function(BenchmarkId::from_parameter(body), |b| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |d| key.open(black_box(d)).unwrap(),
                    BatchSize::SmallInput,
                );
            });
        }
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    let aes = [Cipher::Aes128Gcm, Cipher::Aes256Gcm];
    bench_backend::<AwsLc>(c, "aws-lc", &aes);
    bench_backend::<Ring>(c, "ring", &aes);
    bench_backend::<RustCrypto>(c, "rustcrypto", &aes);
    // The `none` path touches no AEAD, so one backend covers it.
    bench_backend::<AwsLc>(c, "crc32", &[Cipher::None]);
}

criterion_group!(seal, benches);
criterion_main!(seal);
