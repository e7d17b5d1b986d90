//! End-to-end checksum candidates over 1 MiB buffers (`--checksum`): SHA-256 from aws-lc-rs
//! and from the `sha2` crate, CRC-32C from the `crc32c` crate, and CRC32 (crc32fast) for
//! comparison.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

fn checksums(c: &mut Criterion) {
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut g = c.benchmark_group("checksum_1MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha256_aws_lc_rs", |b| {
        b.iter(|| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(&data)))
    });
    g.bench_function("sha256_sha2", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(black_box(&data)))
    });
    g.bench_function("crc32c", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    g.bench_function("crc32fast", |b| {
        b.iter(|| crc32fast::hash(black_box(&data)))
    });
    g.finish();
}

criterion_group!(benches, checksums);
criterion_main!(benches);
