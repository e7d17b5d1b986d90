//! File helpers for the data path: positional I/O (no shared cursor, so several threads can
//! read or write one file at once), preallocation, `fdatasync`, and recognising a full disk.
//!
//! Plain blocking syscalls; the receiver's writes go through [`crate::uring`] and come
//! here only when one comes back short.
//! Errors are the OS's own, without added context: the caller knows which file and block.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::sys::cvt;

/// Fills `buf` from `file` at `offset` (`pread`, retried on short reads and `EINTR`).
/// A file that ends first gives `UnexpectedEof`.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Writes all of `buf` to `file` at `offset` (`pwrite`, retried on short writes and
/// `EINTR`). Check a failure with [`is_disk_full`].
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)
}

/// As [`write_all_at`], to a descriptor the caller keeps open (one whose write through a
/// [`WriteQueue`](crate::uring::WriteQueue) came back short).
pub fn write_all_at_fd(fd: std::os::fd::RawFd, buf: &[u8], offset: u64) -> io::Result<()> {
    // SAFETY: the caller owns `fd` and keeps it open for this call; ManuallyDrop keeps the
    // borrowed `File` from closing it.
    let file =
        std::mem::ManuallyDrop::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    file.write_all_at(buf, offset)
}

/// Reserves disk blocks for the first `len` bytes of `file` and sets its size to at least
/// `len` (`fallocate` mode 0), so a full disk shows up now rather than mid-transfer and the
/// file is laid out in few extents. Never shrinks the file.
///
/// Where the filesystem cannot allocate (`EOPNOTSUPP`, e.g. some network or FUSE
/// filesystems) the size is set with `ftruncate` instead, which reserves nothing.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    preallocate_range(file, 0, len)
}

/// As [`preallocate`], for bytes `[offset, offset + len)` only (one writer's piece of a
/// file that several write); the size becomes at least `offset + len`.
pub fn preallocate_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let too_far = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bytes {offset}+{len} lie beyond the largest file offset"),
        )
    };
    let end = offset.checked_add(len).ok_or_else(too_far)?;
    let off = libc::off_t::try_from(offset).map_err(|_| too_far())?;
    let off_len = libc::off_t::try_from(len).map_err(|_| too_far())?;
    loop {
        // SAFETY: plain syscall on a descriptor `file` keeps open for the call.
        let ret = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, off_len) };
        match cvt(ret) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                if file.metadata()?.len() < end {
                    file.set_len(end)?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Flushes `file`'s data, and the metadata needed to read it back (its size), to stable
/// storage: `fdatasync`.
pub fn fdatasync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// Whether `err` means the disk (`ENOSPC`) or the user's quota (`EDQUOT`) is full: the
/// transfer cannot go on until space is freed, and retrying now is pointless.
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            err.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}
