//! Network namespaces: created and removed with `ip netns` (so they are the named ones
//! under `/run/netns` that `ip netns exec` finds), entered per thread with `setns`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use crate::error::Error;

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::io("running `ip` (package iproute2)", e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates a named namespace with its loopback up (ferryd listens there too).
pub fn create(name: &str) -> Result<(), Error> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Removes a named namespace if it exists. Processes still inside keep it alive, unnamed,
/// until they exit; the name is free at once.
pub fn delete(name: &str) -> Result<(), Error> {
    if exists(name) {
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

/// The calling thread is inside a namespace until this is dropped.
pub struct Entered {
    original: File,
}

/// Moves the calling thread (only it) into the named namespace.
pub fn enter(name: &str) -> Result<Entered, Error> {
    let original = File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::io("opening this thread's network namespace", e))?;
    let target = File::open(Path::new("/run/netns").join(name))
        .map_err(|e| Error::io(format!("opening namespace {name}"), e))?;
    // SAFETY: both are valid namespace file descriptors for the duration of the call.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::last_os(format!("entering namespace {name}")));
    }
    Ok(Entered { original })
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: a valid namespace file descriptor. Failing to return is not recoverable
        // for this thread, but it only ever creates devices, so the worst is a later error.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
