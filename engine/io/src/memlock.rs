//! Raising `RLIMIT_MEMLOCK`, the limit on locked memory. io_uring's registered buffers and
//! rings count against it; the usual default of 8 MiB is smaller than a few sessions' worth
//! of registered packet buffers.
//!
//! A process with `CAP_IPC_LOCK` is not held to the limit at all (neither `mlock` nor
//! io_uring accounts its memory), which is how root in a container that lacks
//! `CAP_SYS_RESOURCE` still gets what it needs.

use std::io;

use crate::sys::cvt;

/// Raises the soft `RLIMIT_MEMLOCK` of this process to at least `want` bytes, raising the
/// hard limit too when that is needed and allowed (root or `CAP_SYS_RESOURCE`). Returns the
/// soft limit now in force (`u64::MAX` for unlimited), which may exceed `want`: a limit is
/// never lowered.
///
/// When the hard limit may not be raised but the process holds `CAP_IPC_LOCK`, locked memory
/// is not limited for it: nothing is changed and the answer is `u64::MAX`.
///
/// Otherwise, when the hard limit is below `want` and may not be raised, nothing is changed
/// and the error (kind `PermissionDenied`) says what the limits are and how to raise them.
pub fn raise_memlock(want: u64) -> Result<u64, io::Error> {
    let (cur, max) = get()?;
    if cur >= want {
        return Ok(cur);
    }
    let new_max = max.max(want);
    match set(want, new_max) {
        Ok(()) => Ok(get()?.0),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && has_ipc_lock() => Ok(u64::MAX),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "cannot raise the locked-memory limit (RLIMIT_MEMLOCK) to {want} bytes: it is \
                 {} with a hard limit of {}, and raising the hard limit needs \
                 CAP_SYS_RESOURCE (root in a container may lack it); raise it with `ulimit -l`, \
                 LimitMEMLOCK= in the systemd unit or /etc/security/limits.conf, grant \
                 CAP_IPC_LOCK, or use less locked memory",
                show(cur),
                show(max),
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Whether the effective capability set holds `CAP_IPC_LOCK` (bit 14), read from
/// `/proc/self/status` rather than `capget` so that no capability ABI versions are involved.
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn get() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live `rlimit` the kernel writes into.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    Ok((from_rlim(lim.rlim_cur), from_rlim(lim.rlim_max)))
}

fn set(cur: u64, max: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: to_rlim(cur),
        rlim_max: to_rlim(max),
    };
    // SAFETY: `lim` is a live `rlimit` the kernel only reads.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) }).map(drop)
}

// `rlim_t` is `u64` here but 32 bits on some targets.
#[allow(clippy::useless_conversion)]
fn from_rlim(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        u64::from(v)
    }
}

fn to_rlim(v: u64) -> libc::rlim_t {
    // Where `rlim_t` is 32 bits, anything larger is as good as unlimited.
    libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
}

fn show(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        format!("{v} bytes")
    }
}
