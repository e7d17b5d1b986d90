//! TUN devices with a `virtio_net_hdr` on every packet and GSO offloads on, so the kernel
//! hands the emulator TCP and UDP super-packets instead of one packet per read.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::Error;
use crate::netns;

/// `struct ifreq` as TUNSETIFF reads it: a name and flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One TUN device; the device lives as long as this (it is not persistent), so a crashed
/// emulator leaves no device behind.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    /// The interface name.
    pub name: String,
    /// Whether USO (UDP segmentation offload) was accepted (kernel ≥ 6.2).
    pub uso: bool,
}

impl Tun {
    /// Creates the device `name` inside namespace `ns`: `/dev/net/tun` is opened while this
    /// thread is in the namespace, which is where the device is born.
    pub fn create_in(ns: &str, name: &str) -> Result<Tun, Error> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(Error::Config(format!(
                "interface name {name:?} is too long"
            )));
        }
        let entered = netns::enter(ns)?;
        // SAFETY: a constant C string path and plain flags.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(Error::last_os(
                "opening /dev/net/tun (is the tun module loaded?)",
            ));
        }
        // SAFETY: open just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(Error::last_os(format!("TUNSETIFF {name} in {ns}")));
        }
        let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        let with_uso = base | libc::TUN_F_USO4 | libc::TUN_F_USO6;
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        let uso = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                with_uso as libc::c_ulong,
            )
        } == 0;
        // SAFETY: as above.
        if !uso
            && unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, base as libc::c_ulong) }
                < 0
        {
            return Err(Error::last_os(format!("TUNSETOFFLOAD on {name}")));
        }
        // Router solicitations and the like would cross the link as noise; IPv4 is enough.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        drop(entered);
        Ok(Tun {
            fd,
            name: name.to_string(),
            uso,
        })
    }

    /// Reads one packet (with its `virtio_net_hdr`) into `buf`; `WouldBlock` when none waits.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet (with its `virtio_net_hdr`) into the device: the kernel receives
    /// it as if it had arrived on the wire.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet gathered from `bufs` (the first starting with its
    /// `virtio_net_hdr`): a merged super-packet goes out without being copied together.
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec; each one is valid for reads.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                bufs.as_ptr().cast(),
                bufs.len() as libc::c_int,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Waits up to `timeout` for a packet to read; false on timeout (or a signal).
    pub fn wait_readable(&self, timeout: std::time::Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) > 0 }
    }
}
