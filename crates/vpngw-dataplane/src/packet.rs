//! Just enough IPv4 for the packet path: a checked view of the header fields the SPD and the MTU
//! logic read, the ICMP "fragmentation needed" message path MTU discovery relies on, and the
//! outer IPv4 header of raw ESP sent through the link path (see [`crate::link`]).

use std::net::Ipv4Addr;

/// The fields of an inner IPv4 packet the dataplane uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub header_len: usize,
    pub total_len: usize,
    pub dont_fragment: bool,
    pub protocol: u8,
}

/// Reads an IPv4 header; `None` unless it is a well-formed IPv4 packet that fits in `p`.
pub fn ipv4(p: &[u8]) -> Option<Ipv4Info> {
    let first = *p.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 || p.len() < header_len {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total_len < header_len || total_len > p.len() {
        return None;
    }
    Some(Ipv4Info {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        header_len,
        total_len,
        dont_fragment: p[6] & 0x40 != 0,
        protocol: p[9],
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Length of the outer IPv4 header vpngw writes (no options).
pub const OUTER_IPV4_LEN: usize = 20;

/// Writes the outer IPv4 header of a packet of `total_len` bytes (header included) from `src`
/// to `dst` carrying `protocol`, as the kernel's IP output would for a raw socket: DF set (path
/// MTU discovery is the TUN MTU's and ICMP's job, never fragmentation), TTL 64, TOS 0, and the
/// header checksum.
pub fn write_outer_ipv4(
    out: &mut [u8; OUTER_IPV4_LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    total_len: u16,
    id: u16,
    protocol: u8,
) {
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&total_len.to_be_bytes());
    out[4..6].copy_from_slice(&id.to_be_bytes());
    out[6..8].copy_from_slice(&[0x40, 0]);
    out[8] = 64;
    out[9] = protocol;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&out[..]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// ICMP type 3 code 4 (RFC 1191) from `from` to the sender of `original`, quoting its header
/// and first 8 payload bytes, announcing `mtu`. Written into `out`; returns the length.
pub fn icmp_fragmentation_needed(
    original: &[u8],
    info: &Ipv4Info,
    from: Ipv4Addr,
    mtu: u16,
    out: &mut [u8],
) -> Option<usize> {
    let quoted = (info.header_len + 8).min(original.len());
    let len = 20 + 8 + quoted;
    let out = out.get_mut(..len)?;
    out[0] = 0x45;
    out[1] = 0xc0; // internetwork control
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[4..8].copy_from_slice(&[0, 0, 0, 0]);
    out[8] = 64;
    out[9] = 1; // ICMP
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&info.src.octets());
    let c = checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20] = 3;
    out[21] = 4;
    out[22..24].copy_from_slice(&[0, 0]);
    out[24..26].copy_from_slice(&[0, 0]);
    out[26..28].copy_from_slice(&mtu.to_be_bytes());
    out[28..].copy_from_slice(&original[..quoted]);
    let c = checksum(&out[20..]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the IPv4 header checksum (Wikipedia, "Internet checksum"): a UDP
    /// datagram from 192.168.0.1 to 192.168.0.199, DF set, TTL 64, checksum 0xb861.
    #[test]
    fn outer_header_matches_the_known_answer() {
        let mut h = [0u8; OUTER_IPV4_LEN];
        write_outer_ipv4(&mut h, Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 199), 0x73, 0, 17);
        let want = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(h, want);
    }

    proptest::proptest! {
        /// Any outer header sums to zero (what a receiver checks) and reads back as written.
        #[test]
        fn outer_header_is_valid_and_reads_back(src: u32, dst: u32, len in 20u16.., id: u16) {
            let mut p = vec![0u8; usize::from(len)];
            let mut h = [0u8; OUTER_IPV4_LEN];
            write_outer_ipv4(&mut h, Ipv4Addr::from(src), Ipv4Addr::from(dst), len, id, 50);
            proptest::prop_assert_eq!(checksum(&h), 0);
            p[..OUTER_IPV4_LEN].copy_from_slice(&h);
            let info = ipv4(&p).expect("parses");
            proptest::prop_assert_eq!(
                (info.src, info.dst, info.total_len, info.protocol, info.dont_fragment),
                (Ipv4Addr::from(src), Ipv4Addr::from(dst), usize::from(len), 50, true)
            );
        }
    }

    fn packet(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 0, 10]);
        p[16..20].copy_from_slice(&[10, 2, 0, 10]);
        p
    }

    #[test]
    fn parses_and_refuses() {
        let p = packet(100, true);
        let i = ipv4(&p).unwrap();
        assert_eq!(
            (i.src, i.dst, i.total_len, i.dont_fragment, i.protocol),
            (Ipv4Addr::new(10, 1, 0, 10), Ipv4Addr::new(10, 2, 0, 10), 100, true, 6)
        );
        assert!(ipv4(&p[..99]).is_none(), "total length beyond the buffer");
        assert!(ipv4(&[0x60; 40]).is_none(), "IPv6");
        assert!(ipv4(&[0x44; 40]).is_none(), "IHL below 5");
        assert!(ipv4(&[]).is_none());
    }

    #[test]
    fn icmp_frag_needed_is_well_formed() {
        let p = packet(1500, true);
        let info = ipv4(&p).unwrap();
        let mut out = [0u8; 128];
        let n = icmp_fragmentation_needed(&p, &info, Ipv4Addr::new(10, 2, 0, 1), 1400, &mut out).unwrap();
        let icmp = &out[..n];
        let h = ipv4(icmp).unwrap();
        assert_eq!(
            (h.src, h.dst, h.protocol, h.total_len),
            (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 1, 0, 10), 1, 56)
        );
        assert_eq!(checksum(&icmp[..20]), 0, "IP checksum");
        assert_eq!(checksum(&icmp[20..]), 0, "ICMP checksum");
        assert_eq!((icmp[20], icmp[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1400);
        assert_eq!(&icmp[28..48], &p[..20]);
    }
}
