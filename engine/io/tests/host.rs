//! Placement, memlock and file helpers against the real kernel.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use ferry_io::{file, memlock, placement};

#[test]
fn cores_are_listed_and_pinning_sticks() {
    let cores = placement::available_cores();
    assert!(!cores.is_empty());
    assert!(cores.windows(2).all(|w| w[0] < w[1]), "{cores:?}");
    let first = cores[0];
    // In a thread of its own: pinning the test harness's thread would leak into other tests.
    let seen = std::thread::spawn(move || {
        placement::pin_current_thread(first).unwrap();
        placement::available_cores()
    })
    .join()
    .unwrap();
    assert_eq!(seen, vec![first]);
    assert_eq!(
        placement::available_cores(),
        cores,
        "only the pinned thread changed"
    );
}

#[test]
fn pin_to_core_zero() {
    if !placement::available_cores().contains(&0) {
        eprintln!("core 0 is not in this process's cpuset; skipped");
        return;
    }
    let seen = std::thread::spawn(|| {
        placement::pin_current_thread(0).unwrap();
        placement::available_cores()
    })
    .join()
    .unwrap();
    assert_eq!(seen, vec![0]);
}

#[test]
fn pin_out_of_range_is_refused() {
    let err = placement::pin_current_thread(1 << 20).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

fn memlock_now() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live `rlimit`.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) },
        0
    );
    let v = |x: libc::rlim_t| {
        if x == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            x
        }
    };
    (v(lim.rlim_cur), v(lim.rlim_max))
}

#[test]
fn raise_memlock() {
    let (cur, max) = memlock_now();
    // Asking for no more than is in force changes nothing.
    assert_eq!(memlock::raise_memlock(0).unwrap(), cur);
    // SAFETY: plain syscall without arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if cur == u64::MAX {
        return;
    }
    let want = cur.saturating_add(64 << 20);
    eprintln!("RLIMIT_MEMLOCK soft {cur} hard {max}, root {root}; asking for {want}");
    match memlock::raise_memlock(want) {
        Ok(u64::MAX) if want > max => {
            // Refused the hard limit but holds CAP_IPC_LOCK (root in a container without
            // CAP_SYS_RESOURCE, as on the machine this was written on): not limited at all.
            assert_eq!(memlock_now(), (cur, max), "nothing changed");
        }
        Ok(got) => {
            assert!(got >= want, "{got} < {want}");
            assert_eq!(memlock_now().0, got);
        }
        Err(e) => {
            assert!(!root, "root must be able to raise the limit: {e}");
            assert!(want > max);
            assert_eq!(e.kind(), ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
            assert_eq!(memlock_now(), (cur, max), "a refusal changes nothing");
        }
    }
}

/// A file under the temporary directory, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> (Temp, File) {
        let path = std::env::temp_dir().join(format!("ferry-io-{}-{name}", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (Temp(path), f)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn positional_io_round_trips() {
    let (_t, f) = Temp::new("rw");
    let a: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let b = vec![0xabu8; 4096];
    file::write_all_at(&f, &b, 1 << 20).unwrap();
    file::write_all_at(&f, &a, 100).unwrap();
    file::fdatasync(&f).unwrap();

    let mut back = vec![0; a.len()];
    file::read_exact_at(&f, &mut back, 100).unwrap();
    assert_eq!(back, a);
    let mut back = vec![0; b.len()];
    file::read_exact_at(&f, &mut back, 1 << 20).unwrap();
    assert_eq!(back, b);
    let mut hole = vec![1; 64];
    file::read_exact_at(&f, &mut hole, 50_000).unwrap();
    assert!(hole.iter().all(|&x| x == 0));

    let mut past = vec![0; 10];
    let err = file::read_exact_at(&f, &mut past, (1 << 20) + 4090).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
}

#[test]
fn preallocate_sets_length_and_never_shrinks() {
    let (_t, f) = Temp::new("prealloc");
    let len = 3 * 1024 * 1024 + 17;
    file::preallocate(&f, len).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), len);
    // fallocate reserves blocks (st_blocks counts 512-byte units) where supported.
    eprintln!("allocated {} of {len} bytes", meta.blocks() * 512);

    file::write_all_at(&f, b"tail", len - 4).unwrap();
    file::preallocate(&f, 1024).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    file::preallocate(&f, 0).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    let mut tail = [0; 4];
    file::read_exact_at(&f, &mut tail, len - 4).unwrap();
    assert_eq!(&tail, b"tail");
}

#[test]
fn disk_full_is_recognised() {
    assert!(file::is_disk_full(&io::Error::from_raw_os_error(
        libc::ENOSPC
    )));
    assert!(file::is_disk_full(&io::Error::from_raw_os_error(
        libc::EDQUOT
    )));
    assert!(!file::is_disk_full(&io::Error::from_raw_os_error(
        libc::EIO
    )));
    assert!(!file::is_disk_full(&io::Error::other("full")));
    // The real thing: /dev/full answers every write with ENOSPC.
    if let Ok(mut full) = OpenOptions::new().write(true).open("/dev/full") {
        let err = full.write_all(&[0; 512]).unwrap_err();
        assert!(file::is_disk_full(&err), "{err:?}");
    }
}
