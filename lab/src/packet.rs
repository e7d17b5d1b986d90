//! Packets as a TUN device with `IFF_VNET_HDR` hands them over: the `virtio_net_hdr`, the
//! Internet checksum, and splitting GSO super-packets into the segments a real link carries.
//!
//! With offloads on (`TUNSETOFFLOAD`), the kernel gives the emulator TCP (TSO) and UDP (USO)
//! super-packets of up to 64 KiB and leaves checksums partial. The emulator splits each into
//! MTU-sized segments with their IP and TCP/UDP fields fixed up and checksums complete, so
//! loss, the rate and the queue act on every segment as on a real wire. Sans-IO: slices in,
//! segments out through a callback.

use thiserror::Error;

/// Bytes of `struct virtio_net_hdr` (without `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` on is left to us.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, a flag on the GSO type.
pub const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// Room for the largest IPv4 header (60) plus the largest TCP header (60).
const MAX_HEADERS: usize = 128;

/// Why a packet could not be handled (it is dropped and counted).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its headers say.
    #[error("packet truncated")]
    Truncated,
    /// Not IPv4/IPv6 carrying TCP or UDP directly, where segmentation needs that.
    #[error("unsupported packet for segmentation (protocol or IPv6 extension headers)")]
    Unsupported,
    /// A GSO type this emulator does not enable.
    #[error("unsupported GSO type {0}")]
    GsoType(u8),
    /// The checksum offsets point outside the packet.
    #[error("checksum offsets outside the packet")]
    BadChecksumOffsets,
    /// GSO size zero.
    #[error("GSO size is zero")]
    ZeroGsoSize,
}

/// `struct virtio_net_hdr` (native endian: TUN's default on a little-endian host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` and friends.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint; not trusted).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the partial checksum's coverage starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Result<VnetHdr, PacketError> {
        if b.len() < VNET_HDR_LEN {
            return Err(PacketError::Truncated);
        }
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes.
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Adds `data` to a one's-complement running sum (RFC 1071), as big-endian 16-bit words;
/// an odd final byte is padded with zero.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (complemented fold).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The IP version, addresses, protocol and header length of a packet.
struct Ip<'a> {
    v6: bool,
    src: &'a [u8],
    dst: &'a [u8],
    proto: u8,
    header_len: usize,
}

fn parse_ip(p: &[u8]) -> Result<Ip<'_>, PacketError> {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let hl = usize::from(p[0] & 0xf) * 4;
            if hl < 20 || p.len() < hl {
                return Err(PacketError::Truncated);
            }
            Ok(Ip {
                v6: false,
                src: &p[12..16],
                dst: &p[16..20],
                proto: p[9],
                header_len: hl,
            })
        }
        Some(6) => {
            if p.len() < 40 {
                return Err(PacketError::Truncated);
            }
            Ok(Ip {
                v6: true,
                src: &p[8..24],
                dst: &p[24..40],
                proto: p[6],
                header_len: 40,
            })
        }
        _ => Err(PacketError::Unsupported),
    }
}

/// The pseudo-header sum of a TCP or UDP segment of `l4_len` bytes.
fn pseudo(ip: &Ip<'_>, l4_len: usize) -> u64 {
    let acc = sum(ip.dst, sum(ip.src, 0));
    acc + u64::from(ip.proto) + l4_len as u64
}

/// Completes a partial checksum in place (`F_NEEDS_CSUM` on a packet that is not split):
/// the field already holds the pseudo-header sum, as the kernel left it.
pub fn finish_checksum(hdr: &VnetHdr, p: &mut [u8]) -> Result<(), PacketError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > p.len() {
        return Err(PacketError::BadChecksumOffsets);
    }
    let mut c = !fold(sum(&p[start..], 0));
    // A zero UDP checksum means "none"; RFC 768 sends all ones instead.
    if c == 0 && parse_ip(p).is_ok_and(|ip| ip.proto == PROTO_UDP) {
        c = 0xffff;
    }
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Splits a GSO super-packet into its segments, each a complete IP packet with lengths,
/// IPv4 identification and header checksum, TCP sequence number and flags (FIN and PSH on
/// the last segment only, CWR on the first only) and the TCP/UDP checksum set. For each
/// segment `emit(headers, payload)` is called; the segment is their concatenation.
///
/// Returns the number of segments. A packet without GSO is emitted whole (its checksum
/// completed if partial).
pub fn segment(
    hdr: &VnetHdr,
    p: &[u8],
    mut emit: impl FnMut(&[u8], &[u8]),
) -> Result<usize, PacketError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let mut h = [0u8; MAX_HEADERS];
        // Only the bytes up to the checksum field change; copy those, pass the rest through.
        let field_end = if hdr.flags & F_NEEDS_CSUM != 0 {
            usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2
        } else {
            0
        };
        if field_end > MAX_HEADERS || field_end > p.len() {
            return Err(PacketError::BadChecksumOffsets);
        }
        if field_end == 0 {
            emit(&[], p);
            return Ok(1);
        }
        let start = usize::from(hdr.csum_start);
        let mut c = !fold(sum(&p[start..], 0));
        if c == 0 && parse_ip(p).is_ok_and(|ip| ip.proto == PROTO_UDP) {
            c = 0xffff;
        }
        h[..field_end].copy_from_slice(&p[..field_end]);
        h[field_end - 2..field_end].copy_from_slice(&c.to_be_bytes());
        emit(&h[..field_end], &p[field_end..]);
        return Ok(1);
    }
    let ip = parse_ip(p)?;
    let l4 = ip.header_len;
    let (l4_header_len, want) = match gso {
        GSO_TCPV4 | GSO_TCPV6 => {
            if p.len() < l4 + 20 {
                return Err(PacketError::Truncated);
            }
            (usize::from(p[l4 + 12] >> 4) * 4, PROTO_TCP)
        }
        GSO_UDP_L4 => (8, PROTO_UDP),
        other => return Err(PacketError::GsoType(other)),
    };
    if ip.proto != want || (gso == GSO_TCPV4 && ip.v6) || (gso == GSO_TCPV6 && !ip.v6) {
        return Err(PacketError::Unsupported);
    }
    let headers = l4 + l4_header_len;
    if l4_header_len < 8 || headers > MAX_HEADERS || p.len() < headers {
        return Err(PacketError::Truncated);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(PacketError::ZeroGsoSize);
    }
    let payload = &p[headers..];
    let count = payload.len().div_ceil(mss).max(1);
    let ip_id = u16::from_be_bytes([p[4], p[5]]);
    let seq = u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]);
    let mut h = [0u8; MAX_HEADERS];
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let h = &mut h[..headers];
        h.copy_from_slice(&p[..headers]);
        let l4_len = l4_header_len + chunk.len();
        if ip.v6 {
            h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            h[2..4].copy_from_slice(&((headers + chunk.len()) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
            h[10..12].fill(0);
            let c = checksum(&h[..l4]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let field = if want == PROTO_TCP {
            let s = seq.wrapping_add((i * mss) as u32);
            h[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            const FIN: u8 = 0x01;
            const PSH: u8 = 0x08;
            const CWR: u8 = 0x80;
            if i + 1 < count {
                h[l4 + 13] &= !(FIN | PSH);
            }
            if i > 0 {
                h[l4 + 13] &= !CWR;
            }
            l4 + 16
        } else {
            h[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4 + 6
        };
        h[field..field + 2].fill(0);
        let ip_view = Ip {
            v6: ip.v6,
            src: ip.src,
            dst: ip.dst,
            proto: ip.proto,
            header_len: l4,
        };
        let acc = sum(chunk, sum(&h[l4..], pseudo(&ip_view, l4_len)));
        let mut c = !fold(acc);
        if c == 0 && want == PROTO_UDP {
            c = 0xffff;
        }
        h[field..field + 2].copy_from_slice(&c.to_be_bytes());
        emit(h, chunk);
    }
    Ok(count)
}

/// Most segments merged into one super-packet: the kernel's `UDP_MAX_SEGMENTS` on older
/// kernels, and plenty for TCP (64 KiB of IP packet is the other bound).
pub const MAX_RUN_SEGMENTS: usize = 64;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// What merging needs to know of one complete TCP or UDP packet that carries payload
/// (IPv4 unfragmented and unpadded, or IPv6 without extension headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// `GSO_TCPV4`, `GSO_TCPV6` or `GSO_UDP_L4`: what a run of these becomes.
    gso_type: u8,
    v6: bool,
    /// IP header length (where TCP/UDP starts).
    l4: usize,
    /// IP plus TCP/UDP header length.
    headers: usize,
    /// Payload bytes.
    payload: usize,
    /// IPv4 identification (0 for IPv6).
    id: u16,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    /// TCP flags (0 for UDP).
    flags: u8,
}

impl SegmentInfo {
    /// Reads a packet; `None` for anything a GSO run cannot hold: other protocols,
    /// fragments, padding, TCP SYN/RST/URG, no payload.
    pub fn parse(p: &[u8]) -> Option<SegmentInfo> {
        let ip = parse_ip(p).ok()?;
        let l4 = ip.header_len;
        if ip.v6 {
            if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
                return None;
            }
        } else if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len()
            || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0
        {
            return None;
        }
        let (gso_type, headers, seq, flags) = match ip.proto {
            PROTO_TCP => {
                if p.len() < l4 + 20 {
                    return None;
                }
                let th = usize::from(p[l4 + 12] >> 4) * 4;
                let flags = p[l4 + 13];
                if th < 20 || flags & (TCP_SYN | TCP_RST | TCP_URG) != 0 {
                    return None;
                }
                let seq = u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]);
                let t = if ip.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
                (t, l4 + th, seq, flags)
            }
            PROTO_UDP => {
                if p.len() < l4 + 8
                    || usize::from(u16::from_be_bytes([p[l4 + 4], p[l4 + 5]])) != p.len() - l4
                {
                    return None;
                }
                (GSO_UDP_L4, l4 + 8, 0, 0)
            }
            _ => return None,
        };
        if headers > MAX_HEADERS || p.len() <= headers {
            return None;
        }
        let id = if ip.v6 {
            0
        } else {
            u16::from_be_bytes([p[4], p[5]])
        };
        Some(SegmentInfo {
            gso_type,
            v6: ip.v6,
            l4,
            headers,
            payload: p.len() - headers,
            id,
            seq,
            flags,
        })
    }

    /// Whether this is UDP (a run of it needs USO on the device it is written to).
    pub fn is_udp(&self) -> bool {
        self.gso_type == GSO_UDP_L4
    }

    /// The header bytes that differ between segments of one super-packet, as sorted
    /// half-open ranges: lengths, IPv4 id and header checksum, TCP sequence number, flags
    /// and checksum, UDP length and checksum. Every other header byte must match.
    fn varying(&self) -> [(usize, usize); 5] {
        let l4 = self.l4;
        let ip = if self.v6 {
            [(4, 6), (6, 6)]
        } else {
            [(2, 6), (10, 12)]
        };
        if self.gso_type == GSO_UDP_L4 {
            let end = (l4 + 8, l4 + 8);
            [ip[0], ip[1], (l4 + 4, l4 + 8), end, end]
        } else {
            [
                ip[0],
                ip[1],
                (l4 + 4, l4 + 8),
                (l4 + 13, l4 + 14),
                (l4 + 16, l4 + 18),
            ]
        }
    }
}

/// True when `a` and `b` (same length) match outside the sorted ranges `skip`.
fn same_except(a: &[u8], b: &[u8], skip: &[(usize, usize)]) -> bool {
    let mut at = 0;
    for &(from, to) in skip {
        if a[at..from] != b[at..from] {
            return false;
        }
        at = at.max(to);
    }
    a[at..] == b[at..]
}

/// A run of consecutive packets of one flow that the kernel could have produced by
/// segmenting a single GSO super-packet (as GRO would merge them): same headers but for
/// the per-segment fields, IPv4 ids consecutive, TCP sequence numbers contiguous, every
/// segment but the last exactly `gso_size` long, FIN/PSH only on the last and CWR only
/// on the first. Sans-IO: the caller keeps the packets; the run keeps what it learnt.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    first: SegmentInfo,
    last: SegmentInfo,
    count: usize,
    payload: usize,
}

impl Run {
    /// A run of one packet.
    pub fn new(first: SegmentInfo) -> Run {
        Run {
            first,
            last: first,
            count: 1,
            payload: first.payload,
        }
    }

    /// Segments in the run.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: a run holds at least its first packet.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Adds `next` (whose [`SegmentInfo`] is `info`) if it continues the run; `first` is
    /// the run's first packet. False leaves the run as it was: write it and start anew.
    pub fn push(&mut self, first: &[u8], next: &[u8], info: &SegmentInfo) -> bool {
        let (f, l) = (&self.first, &self.last);
        let mss = f.payload;
        let ip_len = if f.v6 {
            f.headers - 40 + self.payload + info.payload
        } else {
            f.headers + self.payload + info.payload
        };
        if info.gso_type != f.gso_type
            || info.headers != f.headers
            || info.l4 != f.l4
            || self.count >= MAX_RUN_SEGMENTS
            || ip_len > 65_535
            || l.payload != mss
            || info.payload > mss
            || (!f.v6 && info.id != l.id.wrapping_add(1))
        {
            return false;
        }
        if f.gso_type != GSO_UDP_L4 {
            let base = |flags: u8| flags & !(TCP_CWR | TCP_FIN | TCP_PSH);
            if info.seq != l.seq.wrapping_add(l.payload as u32)
                || l.flags & (TCP_FIN | TCP_PSH) != 0
                || info.flags & TCP_CWR != 0
                || base(info.flags) != base(f.flags)
            {
                return false;
            }
        }
        if !same_except(&first[..f.headers], &next[..f.headers], &f.varying()) {
            return false;
        }
        self.last = *info;
        self.count += 1;
        self.payload += info.payload;
        true
    }

    /// Writes the headers of the merged super-packet into `out` (from the run's `first`
    /// packet) and returns the `virtio_net_hdr` to send with them and their length; the
    /// packet is those headers followed by every segment's payload in order. Lengths cover
    /// the whole super-packet, IPv4 id and TCP sequence number are the first segment's,
    /// TCP flags the first's plus the last's FIN/PSH, and the TCP/UDP checksum field holds
    /// the pseudo-header sum (`F_NEEDS_CSUM`), as the kernel's own TSO/USO packets do.
    pub fn header(&self, first: &[u8], out: &mut [u8; MAX_HEADERS]) -> (VnetHdr, usize) {
        let f = &self.first;
        let (l4, n) = (f.l4, f.headers);
        let h = &mut out[..n];
        h.copy_from_slice(&first[..n]);
        let l4_len = n - l4 + self.payload;
        if f.v6 {
            h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            h[2..4].copy_from_slice(&((n + self.payload) as u16).to_be_bytes());
            h[10..12].fill(0);
            let c = checksum(&h[..l4]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let (proto, csum_offset) = if f.gso_type == GSO_UDP_L4 {
            h[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            (PROTO_UDP, 6u16)
        } else {
            h[l4 + 13] = f.flags | (self.last.flags & (TCP_FIN | TCP_PSH));
            (PROTO_TCP, 16)
        };
        let (src, dst) = if f.v6 {
            (&first[8..24], &first[24..40])
        } else {
            (&first[12..16], &first[16..20])
        };
        let ip = Ip {
            v6: f.v6,
            src,
            dst,
            proto,
            header_len: l4,
        };
        let seed = fold(pseudo(&ip, l4_len));
        let field = l4 + usize::from(csum_offset);
        h[field..field + 2].copy_from_slice(&seed.to_be_bytes());
        let ecn = if f.gso_type != GSO_UDP_L4 && f.flags & TCP_CWR != 0 {
            GSO_ECN
        } else {
            0
        };
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: f.gso_type | ecn,
            hdr_len: n as u16,
            gso_size: f.payload as u16,
            csum_start: l4 as u16,
            csum_offset,
        };
        (hdr, n)
    }
}

/// Groups `packets` (in release order) into [`Run`]s of consecutive packets and calls
/// `emit(range, merged)` once per run, in order: `merged` is `None` for a run of one
/// (write the packet as it is) and `Some((hdr, headers))` for a longer one (write `hdr`,
/// `headers`, then each packet's bytes past `headers.len()`, for every packet in `range`).
/// Each packet's IP header starts `skip` bytes into its buffer. UDP packets are merged
/// only when `udp` (the device takes USO).
pub fn coalesce<P: AsRef<[u8]>>(
    packets: &[P],
    skip: usize,
    udp: bool,
    mut emit: impl FnMut(std::ops::Range<usize>, Option<(&VnetHdr, &[u8])>),
) {
    let mut out = [0u8; MAX_HEADERS];
    let mut i = 0;
    while i < packets.len() {
        let first = &packets[i].as_ref()[skip..];
        let Some(info) = SegmentInfo::parse(first).filter(|s| udp || !s.is_udp()) else {
            emit(i..i + 1, None);
            i += 1;
            continue;
        };
        let mut run = Run::new(info);
        let mut j = i + 1;
        while let Some(next) = packets.get(j).map(|p| &p.as_ref()[skip..]) {
            match SegmentInfo::parse(next) {
                Some(n) if run.push(first, next, &n) => j += 1,
                _ => break,
            }
        }
        if run.len() == 1 {
            emit(i..j, None);
        } else {
            let (hdr, n) = run.header(first, &mut out);
            emit(i..j, Some((&hdr, &out[..n])));
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A straightforward checksum for cross-checking: 16-bit words, fold at the end.
    fn naive_checksum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for w in data.chunks(2) {
            let v = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                u16::from(w[0]) << 8
            };
            acc += u32::from(v);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    fn ipv6(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(l4);
        p
    }

    fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&4000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t.extend_from_slice(payload);
        t
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&4000u16.to_be_bytes());
        u[2..4].copy_from_slice(&33001u16.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(payload);
        u
    }

    /// True when the packet's IP header (v4) and TCP/UDP checksum verify.
    fn verifies(p: &[u8]) -> bool {
        let ip = parse_ip(p).unwrap();
        if !ip.v6 && checksum(&p[..20]) != 0 {
            return false;
        }
        let l4 = &p[ip.header_len..];
        fold(sum(l4, pseudo(&ip, l4.len()))) == 0xffff
    }

    fn collect(hdr: &VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        segment(hdr, p, |h, b| out.push([h, b].concat())).unwrap();
        out
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Ok(h));
    }

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // RFC 1071-style example: a real IPv4 header whose checksum is 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn tcp_super_packet_splits_into_valid_segments() {
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        const FIN_PSH_CWR: u8 = 0x01 | 0x08 | 0x80;
        let p = ipv4(PROTO_TCP, &tcp(1000, 0x10 | FIN_PSH_CWR, &payload));
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
            hdr_len: 40,
        };
        let segs = collect(&hdr, &p);
        assert_eq!(segs.len(), 4);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(verifies(s), "segment {i}");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfff0u16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1000 + 1448 * i as u32);
            let flags = s[33];
            assert_eq!(flags & 0x01 != 0, i == 3, "FIN only on the last");
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR only on the first");
            assert!(flags & 0x10 != 0, "ACK on all");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn ipv6_udp_super_packet_splits() {
        let payload = vec![7u8; 3000];
        let p = ipv6(PROTO_UDP, &udp(&payload));
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            gso_size: 1400,
            csum_start: 40,
            csum_offset: 6,
            hdr_len: 48,
        };
        let segs = collect(&hdr, &p);
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert!(verifies(s));
            assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, s.len() - 40);
            assert_eq!(u16::from_be_bytes([s[44], s[45]]) as usize, s.len() - 40);
        }
        assert_eq!(segs[2].len(), 40 + 8 + 200);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut p = ipv4(PROTO_UDP, &udp(b"hello, lab"));
        // What the kernel leaves: the pseudo-header sum, not complemented.
        let ip = parse_ip(&p).unwrap();
        let ps = fold(pseudo(&ip, p.len() - 20));
        p[26..28].copy_from_slice(&ps.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        let segs = collect(&hdr, &p);
        assert_eq!(segs.len(), 1);
        assert!(verifies(&segs[0]));
        finish_checksum(&hdr, &mut p).unwrap();
        assert_eq!(p, segs[0]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1000,
            ..Default::default()
        };
        assert!(segment(&hdr, &[0x45, 0, 0], |_, _| {}).is_err());
        assert!(segment(&hdr, &[], |_, _| {}).is_err());
        let hdr = VnetHdr {
            gso_type: 3,
            ..Default::default()
        };
        assert!(segment(&hdr, &ipv4(17, &udp(b"x")), |_, _| {}).is_err());
    }

    /// Segments `p` as `hdr` says, drops the segments `lost` picks, merges the survivors
    /// and segments each merged run again: returns (survivors, re-split runs, run count).
    fn split_lose_merge(
        hdr: &VnetHdr,
        p: &[u8],
        lost: impl Fn(usize) -> bool,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
        let survivors: Vec<Vec<u8>> = collect(hdr, p)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !lost(*i))
            .map(|(_, s)| s)
            .collect();
        let mut again = Vec::new();
        let mut runs = 0;
        coalesce(&survivors, 0, true, |range, merged| {
            runs += 1;
            match merged {
                None => again.extend(survivors[range].iter().cloned()),
                Some((h, headers)) => {
                    let mut big = headers.to_vec();
                    for s in &survivors[range.clone()] {
                        big.extend_from_slice(&s[headers.len()..]);
                    }
                    assert_eq!(usize::from(h.hdr_len), headers.len());
                    // The seed left in the checksum field completes to a valid checksum
                    // of the whole super-packet, as for the kernel's own TSO packets.
                    let mut done = big.clone();
                    finish_checksum(h, &mut done).unwrap();
                    assert!(verifies(&done), "merged packet's checksum seed");
                    let n = segment(h, &big, |a, b| again.push([a, b].concat())).unwrap();
                    assert_eq!(n, range.len());
                }
            }
        });
        (survivors, again, runs)
    }

    fn tcp_super(v6: bool, len: usize, flags: u8) -> (VnetHdr, Vec<u8>) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        let t = tcp(0xffff_f000, flags, &payload);
        let p = if v6 {
            ipv6(PROTO_TCP, &t)
        } else {
            ipv4(PROTO_TCP, &t)
        };
        let gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        let hdr = VnetHdr {
            gso_type,
            gso_size: 1448,
            ..Default::default()
        };
        (hdr, p)
    }

    #[test]
    fn a_split_super_packet_merges_back_whole() {
        const PSH_ACK: u8 = 0x18;
        let (hdr, p) = tcp_super(false, 40_000, PSH_ACK | TCP_CWR);
        let (survivors, again, runs) = split_lose_merge(&hdr, &p, |_| false);
        assert_eq!(runs, 1);
        assert_eq!(again, survivors);
        // A loss splits it in two runs, around the hole.
        let (survivors, again, runs) = split_lose_merge(&hdr, &p, |i| i == 10);
        assert_eq!(runs, 2);
        assert_eq!(again, survivors);
    }

    #[test]
    fn merged_header_fields() {
        let (hdr, p) = tcp_super(false, 4000, 0x18 | TCP_CWR);
        let segs = collect(&hdr, &p);
        let mut seen = Vec::new();
        coalesce(&segs, 0, true, |range, merged| {
            let (h, headers) = merged.unwrap();
            seen.push(range);
            assert_eq!(h.gso_type, GSO_TCPV4 | GSO_ECN);
            assert_eq!((h.gso_size, h.csum_start, h.csum_offset), (1448, 20, 16));
            assert_eq!(h.flags, F_NEEDS_CSUM);
            assert_eq!(u16::from_be_bytes([headers[2], headers[3]]), 4040);
            assert_eq!(checksum(&headers[..20]), 0, "IPv4 header checksum");
            assert_eq!(&headers[4..6], &p[4..6], "first segment's id");
            assert_eq!(&headers[24..28], &p[24..28], "first segment's seq");
            assert_eq!(
                headers[33],
                0x18 | TCP_CWR,
                "CWR of the first, PSH of the last"
            );
        });
        assert_eq!(seen, vec![0..3]);
    }

    #[test]
    fn runs_break_where_the_kernel_would_not_merge() {
        let seg = |seq: u32, flags: u8, len: usize, id: u16| {
            let mut p = ipv4(PROTO_TCP, &tcp(seq, flags, &vec![1u8; len]));
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[10..12].fill(0);
            let c = checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p
        };
        let runs = |pkts: &[Vec<u8>]| {
            let mut r = Vec::new();
            coalesce(pkts, 0, true, |range, _| r.push(range.len()));
            r
        };
        const ACK: u8 = 0x10;
        // Contiguous, consecutive ids: one run.
        let ok = [
            seg(0, ACK, 100, 1),
            seg(100, ACK, 100, 2),
            seg(200, ACK, 50, 3),
        ];
        assert_eq!(runs(&ok), vec![3]);
        // PSH in the middle ends the run after it.
        let psh = [seg(0, ACK | TCP_PSH, 100, 1), seg(100, ACK, 100, 2)];
        assert_eq!(runs(&psh), vec![1, 1]);
        // A gap in sequence numbers, or in ids.
        assert_eq!(
            runs(&[seg(0, ACK, 100, 1), seg(200, ACK, 100, 2)]),
            vec![1, 1]
        );
        assert_eq!(
            runs(&[seg(0, ACK, 100, 1), seg(100, ACK, 100, 3)]),
            vec![1, 1]
        );
        // A short segment can only be the last.
        let short = [
            seg(0, ACK, 50, 1),
            seg(50, ACK, 100, 2),
            seg(150, ACK, 100, 3),
        ];
        assert_eq!(runs(&short), vec![1, 2]);
        // A different window (any other header byte) ends it.
        let mut w = seg(100, ACK, 100, 2);
        w[34] ^= 1;
        assert_eq!(runs(&[seg(0, ACK, 100, 1), w]), vec![1, 1]);
        // SYN never merges; nor a pure ACK.
        assert_eq!(
            runs(&[seg(0, 0x02, 100, 1), seg(100, ACK, 100, 2)]),
            vec![1, 1]
        );
        assert_eq!(runs(&[seg(0, ACK, 0, 1), seg(0, ACK, 0, 2)]), vec![1, 1]);
        // UDP only where the device takes USO.
        let u = |id: u16| {
            let mut p = ipv4(PROTO_UDP, &udp(&[2u8; 300]));
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p
        };
        let mut n = 0;
        coalesce(&[u(1), u(2)], 0, false, |_, m| {
            n += usize::from(m.is_none())
        });
        assert_eq!(n, 2);
        assert_eq!(runs(&[u(1), u(2)]), vec![2]);
    }

    proptest! {
        #[test]
        fn fast_checksum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum(&data), naive_checksum(&data));
        }

        /// Split a super-packet, lose any segments, merge the survivors into runs: each
        /// run, segmented again, gives back its segments byte for byte, and runs break
        /// only at holes (or at the 64-segment and 64 KiB limits).
        #[test]
        fn split_then_merge_gives_back_the_segments(
            len in 1usize..30_000,
            mss in 500u16..9000,
            v6 in any::<bool>(),
            tcp_not_udp in any::<bool>(),
            flags in prop_oneof![Just(0x10u8), Just(0x18), Just(0x19), Just(0x98), Just(0x50)],
            lost in proptest::collection::vec(any::<bool>(), 64),
            loss_on in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (proto, l4) = if tcp_not_udp {
                (PROTO_TCP, tcp(0xffff_ff00, flags, &payload))
            } else {
                (PROTO_UDP, udp(&payload))
            };
            let p = if v6 { ipv6(proto, &l4) } else { ipv4(proto, &l4) };
            let gso_type = match (tcp_not_udp, v6) {
                (true, false) => GSO_TCPV4,
                (true, true) => GSO_TCPV6,
                _ => GSO_UDP_L4,
            };
            let hdr = VnetHdr { gso_type, gso_size: mss, ..Default::default() };
            let lose = |i: usize| loss_on && lost[i % 64];
            let (survivors, again, runs) = split_lose_merge(&hdr, &p, lose);
            prop_assert_eq!(&again, &survivors);
            if !loss_on {
                prop_assert_eq!(runs, 1);
            }
        }

        /// Any payload, any MSS: segments verify, fit the MSS, and carry the payload in order.
        #[test]
        fn segments_carry_the_payload(
            len in 0usize..20_000,
            mss in 1u16..3000,
            v6 in any::<bool>(),
            tcp_not_udp in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (proto, l4, l4h) = if tcp_not_udp {
                (PROTO_TCP, tcp(7, 0x18, &payload), 20)
            } else {
                (PROTO_UDP, udp(&payload), 8)
            };
            let p = if v6 { ipv6(proto, &l4) } else { ipv4(proto, &l4) };
            let iph = if v6 { 40 } else { 20 };
            let gso_type = match (tcp_not_udp, v6) {
                (true, false) => GSO_TCPV4,
                (true, true) => GSO_TCPV6,
                _ => GSO_UDP_L4,
            };
            let hdr = VnetHdr { gso_type, gso_size: mss, ..Default::default() };
            let segs = collect(&hdr, &p);
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)).max(1));
            let mut joined = Vec::new();
            for s in &segs {
                prop_assert!(verifies(s));
                prop_assert!(s.len() - iph - l4h <= usize::from(mss));
                joined.extend_from_slice(&s[iph + l4h..]);
            }
            prop_assert_eq!(joined, payload);
        }
    }
}
