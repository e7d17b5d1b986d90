//! What each side of a transfer spends per byte outside the kernel's UDP path, on real
//! files: the sender's two ways of getting a block into a sealed datagram, and the
//! receiver's open-then-write.
//!
//! - `send/pread_seal`: `pread` the block into its slot, seal in place (two passes).
//! - `send/map_seal`: seal from a mapped window of the file into the slot (one pass), as
//!   the engine does for files of 1 MiB and more.
//! - `recv/open_write`: open a sealed datagram in place and `pwrite` its body into a
//!   preallocated file.
//!
//! Each once per AES-GCM backend (`datapath/aws-lc/...`, `datapath/ring/...`): which is
//! faster depends on the CPU, and the engine runs on the faster.
//!
//! The file lives in `FERRY_BENCH_DIR` (default `/dev/shm`, a tmpfs: the engine-bound
//! case, as in the loopback acceptance script). Throughput counts file bytes; CPU seconds
//! per GiB are 1 / (GiB/s) of one core, and cycles per byte that times the clock. Blocks
//! are `FERRY_BENCH_BLOCK` bytes (default 61,440, loopback's; 1416 is a 1500-byte MTU's).

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_io::map::Mapping;
use ferry_proto::crypto::{Backend, Cipher, Direction, Fastest, PacketKey, use_backend};
use ferry_proto::wire::{BlockRef, DATA_HEADER_LEN, Header, Kind};

/// The block: `FERRY_BENCH_BLOCK` bytes, by default 61,440 (64 KiB datagrams less headers
/// and tag, in whole pages: the engine's loopback block); 1416 is a 1500-byte MTU's.
fn block() -> usize {
    static BLOCK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        std::env::var("FERRY_BENCH_BLOCK")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(61_440)
    })
}
const FILE_LEN: usize = 128 << 20;
const WINDOW: usize = 2 << 20;
const SECRET: [u8; 32] = [0x5a; 32];

fn dir() -> PathBuf {
    std::env::var_os("FERRY_BENCH_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

fn header(buf: &mut [u8], pn: u64, offset: u64) {
    Header {
        kind: Kind::Data,
        flags: 0,
        session: 1,
        pn,
        send_ts_us: 1,
    }
    .encode(buf);
    BlockRef {
        file: 0,
        offset,
        len: block() as u32,
    }
    .encode_at(buf);
}

struct Source {
    path: PathBuf,
    file: File,
}

impl Source {
    fn new() -> Source {
        let path = dir().join(format!("ferry-bench-src-{}", std::process::id()));
        let mut f = File::create(&path).expect("create the bench file");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for _ in 0..FILE_LEN >> 20 {
            f.write_all(&chunk).unwrap();
        }
        let file = File::open(&path).unwrap();
        Source { path, file }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn blocks() -> impl Iterator<Item = u64> {
    (0..FILE_LEN / block()).map(|i| (i * block()) as u64)
}

fn datapath(c: &mut Criterion) {
    let src = Source::new();
    for backend in Backend::ALL {
        // Keys built from here on run on `backend` (the engine picks the faster at start).
        use_backend(backend);
        datapath_on(c, &src, backend);
    }
}

/// Every stage with AES-128-GCM through `backend`.
fn datapath_on(c: &mut Criterion, src: &Source, backend: Backend) {
    let key = PacketKey::<Fastest>::new(&SECRET, Cipher::Aes128Gcm, Direction::ClientToServer);
    let t = key.trailer_len();
    let bytes = (FILE_LEN / block() * block()) as u64;
    let mut g = c.benchmark_group(format!("datapath/{backend}"));
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));

    let mut slot = vec![0u8; DATA_HEADER_LEN + block() + t];
    g.bench_function("send/pread_seal", |b| {
        b.iter(|| {
            for (pn, off) in blocks().enumerate() {
                header(&mut slot, pn as u64, off);
                src.file
                    .read_exact_at(&mut slot[DATA_HEADER_LEN..][..block()], off)
                    .unwrap();
                black_box(key.seal(&mut slot, DATA_HEADER_LEN, block()).unwrap());
            }
        });
    });
    g.bench_function("send/map_seal", |b| {
        b.iter(|| {
            let mut window: Option<(usize, Mapping)> = None;
            for (pn, off) in blocks().enumerate() {
                let off = off as usize;
                let w = off / WINDOW * WINDOW;
                if window.as_ref().is_none_or(|(at, _)| *at != w) {
                    let span = (WINDOW + block()).min(FILE_LEN - w);
                    window = Some((w, Mapping::new(&src.file, w as u64, span).unwrap()));
                }
                let (_, m) = window.as_ref().unwrap();
                header(&mut slot, pn as u64, off as u64);
                let body = &m.bytes()[off - w..][..block()];
                black_box(key.seal_from(&mut slot, DATA_HEADER_LEN, body).unwrap());
            }
        });
    });

    // The receiver: datagrams sealed once up front (a ring of them, reopened from a copy
    // each time, the copy outside the timing), written into a preallocated file.
    let ring: Vec<Vec<u8>> = (0..64u64)
        .map(|pn| {
            let mut d = vec![0u8; DATA_HEADER_LEN + block() + t];
            header(&mut d, pn, 0);
            src.file
                .read_exact_at(&mut d[DATA_HEADER_LEN..][..block()], pn * block() as u64)
                .unwrap();
            key.seal(&mut d, DATA_HEADER_LEN, block()).unwrap();
            d
        })
        .collect();
    let out_path = dir().join(format!("ferry-bench-dst-{}", std::process::id()));
    let out = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&out_path)
        .unwrap();
    ferry_io::file::preallocate(&out, FILE_LEN as u64).unwrap();
    let mut buf = vec![0u8; DATA_HEADER_LEN + block() + t];
    g.bench_function("recv/open_write", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for (i, off) in blocks().enumerate() {
                    buf.copy_from_slice(&ring[i % ring.len()]);
                    let start = Instant::now();
                    let n = key.open(&mut buf).unwrap();
                    out.write_all_at(&buf[DATA_HEADER_LEN..n], off).unwrap();
                    spent += start.elapsed();
                }
            }
            spent
        });
    });
    g.finish();
    drop(out);
    let _ = std::fs::remove_file(&out_path);
}

criterion_group!(benches, datapath);
criterion_main!(benches);
