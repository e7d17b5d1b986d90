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

    proptest! {
        #[test]
        fn fast_checksum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum(&data), naive_checksum(&data));
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
