//! Read-only file mappings that survive the file shrinking under them.
//!
//! The sender seals a block straight from the page cache into its datagram (one pass over
//! the bytes, where `pread` then sealing in place makes two). It reads the file through a
//! [`Mapping`] of a window of it.
//!
//! A mapped file that another process truncates turns every read past the new end into a
//! `SIGBUS`, which would kill the whole daemon. So each mapping is registered in a
//! process-wide table, and a `SIGBUS` handler, on a fault inside a registered mapping,
//! maps zero pages over the rest of it and marks it [damaged](Mapping::damaged): the read
//! goes on with zeros, and the caller, which checks the mark after using the bytes, throws
//! them away and reports that the file changed. A fault anywhere else gets the action that
//! was there before (by default the process dies, as it would have).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How many mappings the process can have registered at once; past it, [`Mapping::new`]
/// fails and the caller reads with `pread` instead.
const SLOTS: usize = 4096;

/// One registered mapping: `[start, end)` of the address space, 0 when the slot is free.
struct Guarded {
    start: AtomicUsize,
    end: AtomicUsize,
    damaged: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Guarded = Guarded {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
};

static TABLE: [Guarded; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The `SIGBUS` action found when the handler was installed, restored for faults that are
/// not ours. Written once, before the handler can run.
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

/// A read-only, shared mapping of `len` bytes of a file from `offset`.
pub struct Mapping {
    base: *mut libc::c_void,
    /// Bytes mapped from `base` (whole pages).
    mapped: usize,
    /// Where the caller's bytes start within the mapping (`offset` rounded down to a page).
    skew: usize,
    len: usize,
    slot: usize,
}

// SAFETY: the mapping is read-only memory owned by this value; the raw pointer is only an
// address, and the guard table is atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out shared reads.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `[offset, offset + len)` of `file` read-only, populating the pages the page
    /// cache holds (and reading the rest in, as `pread` would). `len` must be non-zero.
    pub fn new(file: &File, offset: u64, len: usize) -> io::Result<Mapping> {
        install_guard()?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let page = page_size();
        let skew = (offset % page as u64) as usize;
        let mapped = (skew + len).div_ceil(page) * page;
        let start = libc::off_t::try_from(offset - skew as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let slot = claim()?;
        // SAFETY: a fresh mapping chosen by the kernel; `file` stays open for the call, and
        // the mapping keeps its own reference to the file afterwards.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                mapped,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                start,
            )
        };
        if base == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            release(slot);
            return Err(e);
        }
        let g = &TABLE[slot];
        g.damaged.store(false, Ordering::Relaxed);
        g.end.store(base as usize + mapped, Ordering::Relaxed);
        // Published last: a fault handler that sees the start sees the rest.
        g.start.store(base as usize, Ordering::Release);
        Ok(Mapping {
            base,
            mapped,
            skew,
            len,
            slot,
        })
    }

    /// The mapped bytes. After reading them, check [`Mapping::damaged`]: bytes read from a
    /// file that shrank meanwhile are zeros.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `[base + skew, base + skew + len)` lies in the live read-only mapping;
        // pages the file no longer covers read as zeros (see the module docs) rather than
        // fault. Another process writing the file changes these bytes under us, as it
        // would change what `pread` returns: the caller checks the file's size and mtime
        // before its last block leaves.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skew), self.len) }
    }

    /// Whether a read found the file shorter than the mapping (it was truncated while
    /// mapped): what was read since may be zeros, not the file's bytes.
    pub fn damaged(&self) -> bool {
        TABLE[self.slot].damaged.load(Ordering::Acquire)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregistered before unmapping, so the handler never patches an address range
        // someone else may get next.
        release(self.slot);
        // SAFETY: the range was mapped by `new` and nothing borrows it past `self`.
        unsafe {
            libc::munmap(self.base, self.mapped);
        }
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.len)
            .field("damaged", &self.damaged())
            .finish_non_exhaustive()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

fn claim() -> io::Result<usize> {
    for (i, g) in TABLE.iter().enumerate() {
        // A slot is taken by moving its end from 0 to 1, then filled in.
        if g.start.load(Ordering::Relaxed) == 0
            && g.end
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(i);
        }
    }
    Err(io::Error::other(format!(
        "more than {SLOTS} file mappings at once"
    )))
}

fn release(slot: usize) {
    let g = &TABLE[slot];
    g.start.store(0, Ordering::Release);
    g.end.store(0, Ordering::Release);
}

fn install_guard() -> io::Result<()> {
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a handler of the SA_SIGINFO signature; `PREVIOUS` is
        // written here, once, before the handler can run.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let previous = &raw mut PREVIOUS;
            if libc::sigaction(libc::SIGBUS, &action, (*previous).as_mut_ptr()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    if INSTALLED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(io::Error::other("cannot install the SIGBUS handler"))
    }
}

/// Runs on the faulting thread. Only async-signal-safe work: atomics, `mmap`, `sigaction`.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for g in TABLE.iter() {
        let start = g.start.load(Ordering::Acquire);
        let end = g.end.load(Ordering::Relaxed);
        if start != 0 && start <= addr && addr < end {
            let page = addr & !(page_size() - 1);
            // SAFETY: replaces part of a live mapping this process owns (registered until
            // it is unmapped) with anonymous zero pages; the faulting read then retries
            // and reads zeros.
            unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    end - page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
            }
            g.damaged.store(true, Ordering::Release);
            return;
        }
    }
    // Not ours: put back what was there, and the fault, repeated on return, takes it.
    // SAFETY: `PREVIOUS` was filled before this handler was installed.
    unsafe {
        let previous = &raw const PREVIOUS;
        libc::sigaction(libc::SIGBUS, (*previous).as_ptr(), ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> (tempfile_path::Temp, File) {
        let t = tempfile_path::Temp::new();
        let mut f = File::create(&t.0).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let f = File::open(&t.0).unwrap();
        (t, f)
    }

    /// A throwaway file path, removed on drop (no dev-dependency for so little).
    mod tempfile_path {
        pub struct Temp(pub std::path::PathBuf);
        impl Temp {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                Temp(std::env::temp_dir().join(format!("ferry-io-map-{}-{n}", std::process::id())))
            }
        }
        impl Drop for Temp {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn maps_an_unaligned_range() {
        let (_t, f) = file_of(100_000);
        let m = Mapping::new(&f, 5000, 70_000).unwrap();
        let want: Vec<u8> = (5000..75_000).map(|i| (i % 251) as u8).collect();
        assert_eq!(m.bytes(), &want[..]);
        assert!(!m.damaged());
    }

    #[test]
    fn a_file_truncated_under_its_mapping_reads_zeros_and_says_so() {
        let (t, f) = file_of(1 << 20);
        let m = Mapping::new(&f, 0, 1 << 20).unwrap();
        // Populated pages stay readable; truncation takes them away.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&t.0)
            .unwrap()
            .set_len(8192)
            .unwrap();
        let tail = &m.bytes()[512 * 1024..];
        assert!(tail.iter().all(|&b| b == 0), "past the new end: zeros");
        assert!(m.damaged());
        assert_eq!(m.bytes()[100], 100, "before it: still the file");
        // Another mapping of the same slot later starts clean.
        drop(m);
        let (_u, g) = file_of(4096);
        let m2 = Mapping::new(&g, 0, 4096).unwrap();
        assert!(!m2.damaged());
    }

    #[test]
    fn an_empty_range_is_refused() {
        let (_t, f) = file_of(10);
        assert!(Mapping::new(&f, 0, 0).is_err());
    }
}
