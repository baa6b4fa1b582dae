//! TCP MSS clamping: the MSS option of a TCP SYN crossing the tunnel is lowered to what fits
//! in it, so that neither end ever sends a segment the tunnel cannot carry, even when the ICMP
//! "fragmentation needed" path MTU discovery relies on is filtered somewhere on the way
//! (RFC 2923 s.2.1, "black hole detection"; every VPN gateway does this).
//!
//! Both directions are clamped: a SYN from our LAN into the tunnel (its MSS is what the far
//! host may send us) and a SYN or SYN-ACK decapsulated towards our LAN (its MSS is what our
//! host may send through the tunnel). Clamping one side only leaves the other direction to
//! PMTUD, which is what this exists to avoid; strongSwan's `mss` option, VPP's `mss-clamp` and
//! Cisco's `ip tcp adjust-mss` also clamp both ways.
//!
//! A SYN without an MSS option is left alone: RFC 9293 s.3.7.1 then means 536 (IPv4), which
//! fits any tunnel we allow; adding an option would need room we may not have (the header
//! grows, every offset moves) for no gain.
//!
//! Only the MSS value and the checksum of a SYN are written, and a few bounds-checked reads
//! decide that a packet is not one (the IPv4 lengths, protocol and fragment offset, the TCP
//! flags): that is the whole cost on every other packet; with clamping off, not even that.

use crate::packet::ipv4;

/// What `[gateway] tcp_mss_clamp` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MssClamp {
    /// No clamping: SYNs cross untouched.
    Off,
    /// Derived per SA from the TUN MTU, the path MTU and the SA's ESP overhead
    /// ([`auto_mss`]).
    #[default]
    Auto,
    /// This value (at most; a SYN announcing less keeps its own).
    Fixed(u16),
}

/// IPv4 (20, no options) plus TCP (20, no options): what an MSS leaves out of a packet.
pub const TCP_IPV4_HEADERS: usize = 40;
/// The outer IPv4 header of every ESP packet.
const OUTER_IPV4: usize = 20;
/// The UDP header of ESP in UDP (RFC 3948).
const UDP: usize = 8;

/// Bytes ESP adds to an inner packet at most: outer IPv4 20, UDP 8 when encapsulated, then
/// what the SA adds: `esp_header` (SPI 4 + sequence 4 + IV) and `max_trailer` (padding to the
/// cipher's block at worst block - 1, pad length and next header 2, ICV). The worst-case
/// padding makes the answer independent of the packet's length; it is the figure the too-big
/// check uses too, so a segment of the clamped size never meets that check.
pub fn esp_overhead(udp: bool, esp_header: usize, max_trailer: usize) -> usize {
    OUTER_IPV4 + if udp { UDP } else { 0 } + esp_header + max_trailer
}

/// The MSS that fits the tunnel: the largest inner packet (the TUN MTU, or what the path MTU
/// leaves after `overhead`, whichever is smaller) less 40 bytes of IPv4 and TCP headers.
pub fn auto_mss(tun_mtu: u16, path_mtu: u16, overhead: usize) -> u16 {
    let inner = usize::from(tun_mtu).min(usize::from(path_mtu).saturating_sub(overhead));
    u16::try_from(inner.saturating_sub(TCP_IPV4_HEADERS)).unwrap_or(u16::MAX)
}

impl MssClamp {
    /// The largest MSS a SYN may announce through an SA carried in UDP (`udp`) or not, whose
    /// ESP header and worst-case trailer are these; `None`: clamping is off.
    pub fn limit(self, tun_mtu: u16, path_mtu: u16, udp: bool, esp_header: usize, max_trailer: usize) -> Option<u16> {
        match self {
            Self::Off => None,
            Self::Fixed(mss) => Some(mss),
            Self::Auto => Some(auto_mss(tun_mtu, path_mtu, esp_overhead(udp, esp_header, max_trailer))),
        }
    }
}

/// TCP option kinds (RFC 9293 s.3.2).
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const MSS_OPTION_LEN: usize = 4;
pub(crate) const TCP_SYN: u8 = 0x02;
const IPPROTO_TCP: u8 = 6;

/// Where the TCP header of `packet` starts and how long it is, if `packet` is an unfragmented
/// (or first-fragment, header complete) IPv4 TCP SYN; `None` for anything else, malformed
/// included.
pub fn tcp_syn_header(packet: &[u8]) -> Option<(usize, usize)> {
    let info = ipv4(packet)?;
    if info.protocol != IPPROTO_TCP {
        return None;
    }
    // A later fragment has no TCP header; a first fragment (MF) must hold all of it, which
    // the length checks below ensure. (`ipv4` saw at least 20 header bytes.)
    let fragment_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
    if fragment_offset != 0 {
        return None;
    }
    let tcp = packet.get(info.header_len..info.total_len)?;
    let flags = *tcp.get(13)?;
    if flags & TCP_SYN == 0 {
        return None;
    }
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    if data_offset < 20 || data_offset > tcp.len() {
        return None;
    }
    Some((info.header_len, data_offset))
}

/// Where the MSS value (two bytes) is in `options`, walking them as RFC 9293 s.3.2 says:
/// End stops, NOP is one byte, every other option carries its length. A length that is short
/// or runs past the header, or an MSS option whose length is not 4, ends the walk: a malformed
/// header is left as it is.
fn mss_value_offset(options: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            OPTION_END => return None,
            OPTION_NOP => at += 1,
            _ => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 || at + len > options.len() {
                    return None;
                }
                if kind == OPTION_MSS {
                    return (len == MSS_OPTION_LEN).then_some(at + 2);
                }
                at += len;
            }
        }
    }
    None
}

/// One's complement sum update of a checksum for one 16-bit word changing from `old` to `new`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), which never produces the -0 of eqn. 2).
fn update_checksum(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Lowers the MSS option of the IPv4 TCP SYN in `packet` to `max_mss` if it announces more,
/// and fixes the TCP checksum incrementally. Returns true if it changed the packet. Anything
/// that is not a SYN with a well-formed MSS option is left untouched.
pub fn clamp_syn(packet: &mut [u8], max_mss: u16) -> bool {
    let Some((tcp_start, tcp_header_len)) = tcp_syn_header(packet) else { return false };
    clamp_tcp_header(packet, tcp_start, tcp_header_len, max_mss)
}

/// [`clamp_syn`] on a TCP header already found by [`tcp_syn_header`].
pub fn clamp_tcp_header(packet: &mut [u8], tcp_start: usize, tcp_header_len: usize, max_mss: u16) -> bool {
    let Some(tcp) = packet.get_mut(tcp_start..tcp_start + tcp_header_len) else { return false };
    let Some(value_at) = tcp.get(20..).and_then(mss_value_offset).map(|at| 20 + at) else { return false };
    let Some(&[hi, lo]) = tcp.get(value_at..value_at + 2) else { return false };
    let mss = u16::from_be_bytes([hi, lo]);
    if mss <= max_mss {
        return false;
    }
    // The checksum sums 16-bit words aligned to the TCP header (which starts on a 4-byte
    // boundary); after a lone NOP the value sits across two such words: update each word
    // the two bytes touch, as it was and as it becomes.
    let word_start = value_at & !1;
    let word_end = (value_at + 2).next_multiple_of(2);
    // At most two words (four bytes), copied before the change: no allocation.
    let mut old_words = [0u8; 4];
    let Some(before) = tcp.get(word_start..word_end) else { return false };
    let old_words = &mut old_words[..before.len()];
    old_words.copy_from_slice(before);
    tcp[value_at..value_at + 2].copy_from_slice(&max_mss.to_be_bytes());
    let mut checksum = u16::from_be_bytes([tcp[16], tcp[17]]);
    for (k, old) in old_words.chunks_exact(2).enumerate() {
        let at = word_start + 2 * k;
        let old = u16::from_be_bytes([old[0], old[1]]);
        let new = u16::from_be_bytes([tcp[at], tcp[at + 1]]);
        checksum = update_checksum(checksum, old, new);
    }
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vpngw_crypto::{EncryptionAlgorithm, IntegrityAlgorithm, SecretBytes};
    use vpngw_esp::{OutboundSa, SaKeys, Spi};

    /// The TCP checksum of `packet` computed from scratch (pseudo-header: source, destination,
    /// zero, protocol, TCP length; then the whole segment): 0 when the segment's checksum is
    /// right. Independent of the incremental update under test.
    pub(crate) fn tcp_checksum_residue(packet: &[u8]) -> u16 {
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let segment = &packet[header_len..total_len];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&packet[12..20]);
        bytes.extend_from_slice(&[0, IPPROTO_TCP]);
        bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        bytes.extend_from_slice(segment);
        let mut sum: u64 =
            bytes.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Writes the correct TCP checksum into `packet`.
    fn fill_tcp_checksum(packet: &mut [u8]) {
        let at = usize::from(packet[0] & 0x0f) * 4 + 16;
        packet[at..at + 2].copy_from_slice(&[0, 0]);
        let sum = tcp_checksum_residue(packet);
        packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }

    /// An IPv4 TCP segment from 10.1.0.10:40000 to 10.2.0.10:80 with these flags, options
    /// (padded with End to a multiple of 4) and payload, its checksum right.
    pub(crate) fn segment(flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let options_len = options.len().next_multiple_of(4);
        let tcp_len = 20 + options_len + payload.len();
        let total = 20 + tcp_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 1, 0, 10]);
        p[16..20].copy_from_slice(&[10, 2, 0, 10]);
        let tcp = &mut p[20..];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        tcp[12] = (((20 + options_len) / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        tcp[20..20 + options.len()].copy_from_slice(options);
        tcp[20 + options_len..].copy_from_slice(payload);
        fill_tcp_checksum(&mut p);
        p
    }

    /// What Linux sends in a SYN: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
    pub(crate) const LINUX_SYN_OPTIONS: [u8; 20] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];

    pub(crate) fn mss_of(packet: &[u8]) -> Option<u16> {
        let (start, len) = tcp_syn_header(packet)?;
        let at = 20 + mss_value_offset(&packet[start + 20..start + len])?;
        Some(u16::from_be_bytes([packet[start + at], packet[start + at + 1]]))
    }

    #[test]
    fn a_syn_with_mss_1460_gets_the_clamp_and_a_checksum_that_verifies() {
        let mut p = segment(TCP_SYN, &LINUX_SYN_OPTIONS, &[]);
        assert_eq!(tcp_checksum_residue(&p), 0);
        let before = p.clone();
        assert!(clamp_syn(&mut p, 1360));
        assert_eq!(mss_of(&p), Some(1360));
        assert_eq!(tcp_checksum_residue(&p), 0, "checksum after the clamp");
        // Nothing but the MSS value and the checksum changed.
        let changed: Vec<usize> = (0..p.len()).filter(|&i| p[i] != before[i]).collect();
        assert!(changed.iter().all(|&i| [42, 43, 20 + 16, 20 + 17].contains(&i)), "{changed:?}");
        // Already at or below the clamp: untouched.
        let again = p.clone();
        assert!(!clamp_syn(&mut p, 1360));
        assert!(!clamp_syn(&mut p, 1400));
        assert_eq!(p, again);
    }

    #[test]
    fn a_syn_ack_is_clamped_and_an_mss_after_a_lone_nop_spans_two_checksum_words() {
        // NOP, then MSS at TCP offset 21: its value at 23..25, across the words 22 and 24.
        let mut p = segment(TCP_SYN | 0x10, &[1, 2, 4, 0x23, 0x28, 1, 1, 0], b"");
        assert_eq!(mss_of(&p), Some(9000));
        assert!(clamp_syn(&mut p, 1358));
        assert_eq!(mss_of(&p), Some(1358));
        assert_eq!(tcp_checksum_residue(&p), 0);
    }

    #[test]
    fn what_is_not_a_syn_with_an_mss_option_is_left_alone() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no options", segment(TCP_SYN, &[], &[])),
            ("options without MSS", segment(TCP_SYN, &[1, 1, 4, 2, 1, 3, 3, 7], &[])),
            ("MSS after End", segment(TCP_SYN, &[0, 0, 0, 0, 2, 4, 0x05, 0xb4], &[])),
            ("ACK, not SYN", segment(0x10, &LINUX_SYN_OPTIONS, b"data")),
            ("MSS option of length 3", segment(TCP_SYN, &[2, 3, 0x05, 0xb4], &[])),
            ("option length 0", segment(TCP_SYN, &[8, 0, 2, 4, 0x05, 0xb4, 0, 0], &[])),
            ("option length past the header", segment(TCP_SYN, &[8, 9, 2, 4, 0x05, 0xb4, 0, 0], &[])),
            ("MSS cut by the header's end", segment(TCP_SYN, &[1, 1, 2, 4], &[])[..].to_vec()),
        ];
        for (what, mut p) in cases {
            let before = p.clone();
            assert!(!clamp_syn(&mut p, 536), "{what}");
            assert_eq!(p, before, "{what}");
        }
        // The last case again with the header one word shorter: MSS's value beyond it.
        let mut p = segment(TCP_SYN, &[1, 1, 1, 1, 1, 1, 2, 4], &[0x05, 0xb4, 0, 0]);
        let before = p.clone();
        assert!(!clamp_syn(&mut p, 536), "MSS value in the payload");
        assert_eq!(p, before);

        // UDP with the same bytes.
        let mut udp = segment(TCP_SYN, &LINUX_SYN_OPTIONS, &[]);
        udp[9] = 17;
        assert!(!clamp_syn(&mut udp, 536));
        // A later fragment (offset 8 bytes) and a first fragment whose TCP header is cut.
        let mut later = segment(TCP_SYN, &LINUX_SYN_OPTIONS, &[]);
        later[6..8].copy_from_slice(&[0x00, 0x01]);
        assert!(!clamp_syn(&mut later, 536));
        let mut cut = segment(TCP_SYN, &LINUX_SYN_OPTIONS, &[]);
        cut[6] = 0x20; // MF
        cut[2..4].copy_from_slice(&32u16.to_be_bytes()); // IPv4 20 + 12 bytes of TCP
        assert!(!clamp_syn(&mut cut[..32], 536));
        // A first fragment holding the whole header is clamped (the checksum covers the
        // reassembled segment; an incremental update stays right).
        let mut first = segment(TCP_SYN, &LINUX_SYN_OPTIONS, b"0123456789abcdef");
        first[6] = 0x20;
        assert!(clamp_syn(&mut first, 536));
        assert_eq!(mss_of(&first), Some(536));
        // Not IPv4, empty, truncated.
        assert!(!clamp_syn(&mut [0x60; 60], 536));
        assert!(!clamp_syn(&mut [], 536));
        let mut short = segment(TCP_SYN, &LINUX_SYN_OPTIONS, &[]);
        assert!(!clamp_syn(&mut short[..30], 536));
    }

    fn keys(encryption: EncryptionAlgorithm, integrity: IntegrityAlgorithm) -> SaKeys {
        SaKeys {
            encryption,
            encryption_key: SecretBytes::from_slice(
                &(0..encryption.spec().key_len)
                    .map(|i| (i as u8).wrapping_mul(13).wrapping_add(1))
                    .collect::<Vec<u8>>(),
            ),
            integrity,
            integrity_key: SecretBytes::from_slice(&vec![9; integrity.spec().key_len]),
        }
    }

    fn overhead_of(encryption: EncryptionAlgorithm, integrity: IntegrityAlgorithm, udp: bool) -> usize {
        let sa = OutboundSa::new(Spi::new(0x100), &keys(encryption, integrity)).unwrap();
        esp_overhead(udp, sa.header_len(), sa.max_trailer_len())
    }

    #[test]
    fn overhead_and_clamp_match_the_hand_derived_numbers() {
        use EncryptionAlgorithm::{Aes128, TripleDes};
        use IntegrityAlgorithm::{HmacMd5_96, HmacSha1_96};
        // 3DES/MD5, raw ESP: outer IPv4 20 + ESP header 8 + IV 8 + padding to the 8-byte
        // block at worst 7 + pad length/next header 2 + ICV 12 = 57.
        assert_eq!(overhead_of(TripleDes, HmacMd5_96, false), 20 + 8 + 8 + 7 + 2 + 12);
        assert_eq!(overhead_of(TripleDes, HmacMd5_96, false), 57);
        // The same in UDP (NAT-T): + 8 = 65.
        assert_eq!(overhead_of(TripleDes, HmacMd5_96, true), 65);
        // AES-CBC/SHA1, raw ESP: 20 + 8 + IV 16 + padding to the 16-byte block at worst 15
        // + 2 + ICV 12 = 73; in UDP 81 (the worst case gateway.rs reserves below path_mtu).
        assert_eq!(overhead_of(Aes128, HmacSha1_96, false), 20 + 8 + 16 + 15 + 2 + 12);
        assert_eq!(overhead_of(Aes128, HmacSha1_96, false), 73);
        assert_eq!(overhead_of(Aes128, HmacSha1_96, true), 81);

        // The clamp: min(tun_mtu, path_mtu - overhead) - 40.
        // Defaults (path 1500, TUN 1400): the TUN MTU is the smaller: 1400 - 40 = 1360.
        assert_eq!(auto_mss(1400, 1500, 81), 1360);
        // A 1300-byte path, AES/SHA1 in UDP: 1300 - 81 = 1219 < 1400, so 1219 - 40 = 1179.
        assert_eq!(auto_mss(1400, 1300, 81), 1179);
        // 3DES/MD5 raw on the same path: 1300 - 57 - 40 = 1203.
        assert_eq!(auto_mss(1400, 1300, 57), 1203);
        // Never below zero, whatever the numbers.
        assert_eq!(auto_mss(30, 1500, 81), 0);
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic, and are only changed if they parse as a SYN.
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120), max: u16) {
            let before = bytes.clone();
            if !clamp_syn(&mut bytes, max) {
                proptest::prop_assert_eq!(bytes, before);
            }
        }

        /// SYNs with arbitrary option bytes (often malformed) and a right checksum: whatever
        /// the clamp changes, the checksum still verifies, and the MSS it leaves is at most
        /// the clamp.
        #[test]
        fn whatever_is_changed_keeps_a_valid_checksum(
            options in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            lead in 0usize..4,
            mss: u16,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..9),
            max in 0u16..2000,
        ) {
            // Some NOPs, then an MSS option, then noise: the MSS lands on every alignment.
            let mut opts = vec![1u8; lead];
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
            opts.extend_from_slice(&options);
            opts.truncate(40);
            for candidate in [opts, options] {
                let mut p = segment(TCP_SYN, &candidate, &payload);
                let changed = clamp_syn(&mut p, max);
                proptest::prop_assert_eq!(tcp_checksum_residue(&p), 0);
                if changed {
                    proptest::prop_assert_eq!(mss_of(&p), Some(max));
                }
            }
        }
    }
}
