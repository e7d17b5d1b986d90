//! Which cores this process may run on, and pinning a thread to one of them.
//!
//! Written directly on `libc`'s `sched_getaffinity`/`sched_setaffinity` rather than through
//! the `affinity` crate the workspace had picked: the two calls are a dozen lines, `libc` is
//! already this crate's one dependency, and going direct lets `available_cores` report the
//! process's real affinity mask (what `taskset` or a cgroup cpuset allows) instead of a core
//! count, and lets errors keep their `errno`.
//!
//! Both use the fixed 1024-CPU `cpu_set_t`; cores numbered 1024 and above are not reachable
//! through this module.

use std::io;
use std::mem;

use crate::sys::cvt;

/// Most CPUs a `cpu_set_t` describes.
const SET_SIZE: usize = libc::CPU_SETSIZE as usize;

/// The cores the calling thread may run on (its affinity mask, which new threads inherit),
/// in increasing order. Empty only if the kernel refuses to say.
pub fn available_cores() -> Vec<usize> {
    // SAFETY: all-zero is a valid, empty `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a live `cpu_set_t` and its exact size is passed; pid 0 is this thread.
    let ret = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if ret != 0 {
        return Vec::new();
    }
    // SAFETY: `CPU_ISSET` only reads `set`, and every index is below `CPU_SETSIZE`.
    (0..SET_SIZE)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Restricts the calling thread to `core`. Fails with `InvalidInput` for a core number the
/// set cannot hold, and with the kernel's `EINVAL` for a core this process may not use (not
/// in its cpuset or offline).
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    if core >= SET_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is beyond the {SET_SIZE} CPUs a cpu_set_t can name"),
        ));
    }
    // SAFETY: all-zero is a valid, empty `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `core` was checked to be below `CPU_SETSIZE`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is live and its exact size is passed; pid 0 is the calling thread.
    cvt(unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}
