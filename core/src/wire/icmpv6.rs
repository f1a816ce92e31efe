//! ICMPv6 (RFC 4443) and the neighbor discovery messages netstackd takes part in (RFC 4861):
//! `emit_error` for the errors it sends while forwarding (time exceeded, packet too big), a
//! checked view of a neighbor solicitation, and `emit_neighbor_advert` for its answer.

use std::net::Ipv6Addr;

use super::ethernet::MacAddr;
use super::ipv6::{self, HEADER_LEN as IPV6_HEADER_LEN, MIN_MTU, NEXT_ICMPV6};
use super::{checksum, Result, WireError};

/// Destination unreachable.
pub const TYPE_DEST_UNREACHABLE: u8 = 1;
/// Packet too big (the MTU in the second word).
pub const TYPE_PACKET_TOO_BIG: u8 = 2;
/// Time exceeded.
pub const TYPE_TIME_EXCEEDED: u8 = 3;
/// Parameter problem.
pub const TYPE_PARAM_PROBLEM: u8 = 4;
/// Echo request.
pub const TYPE_ECHO_REQUEST: u8 = 128;
/// Echo reply.
pub const TYPE_ECHO_REPLY: u8 = 129;
/// Multicast listener query (MLD).
pub const TYPE_MLD_QUERY: u8 = 130;
/// Multicast listener report (MLDv1).
pub const TYPE_MLD_REPORT: u8 = 131;
/// Multicast listener done (MLDv1).
pub const TYPE_MLD_DONE: u8 = 132;
/// Router solicitation.
pub const TYPE_ROUTER_SOLICIT: u8 = 133;
/// Router advertisement.
pub const TYPE_ROUTER_ADVERT: u8 = 134;
/// Neighbor solicitation.
pub const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
/// Neighbor advertisement.
pub const TYPE_NEIGHBOR_ADVERT: u8 = 136;
/// Redirect.
pub const TYPE_REDIRECT: u8 = 137;
/// Multicast listener report (MLDv2).
pub const TYPE_MLDV2_REPORT: u8 = 143;

/// Time exceeded: hop limit exceeded in transit.
pub const CODE_HOP_LIMIT_EXCEEDED: u8 = 0;

/// ICMPv6 header length (type, code, checksum, one 32-bit word).
pub const HEADER_LEN: usize = 8;
/// Neighbor advertisement flag: the sender is a router.
pub const NA_FLAG_ROUTER: u32 = 0x8000_0000;
/// Neighbor advertisement flag: sent in answer to a solicitation.
pub const NA_FLAG_SOLICITED: u32 = 0x4000_0000;
/// Neighbor advertisement flag: override an existing cache entry.
pub const NA_FLAG_OVERRIDE: u32 = 0x2000_0000;
/// NDP option: source link-layer address.
pub const OPT_SOURCE_LL_ADDR: u8 = 1;
/// NDP option: target link-layer address.
pub const OPT_TARGET_LL_ADDR: u8 = 2;
/// Hop limit of every neighbor discovery message (RFC 4861 §7.1: receivers check it).
pub const NDP_HOP_LIMIT: u8 = 255;
/// Length of the neighbor advertisement `emit_neighbor_advert` writes (IPv6 header, NA, option).
pub const NEIGHBOR_ADVERT_LEN: usize = IPV6_HEADER_LEN + 24 + 8;

/// Is `icmp_type` an error message (RFC 4443 §2.1: types 0-127), never to be answered with
/// another error?
pub fn is_error(icmp_type: u8) -> bool {
    icmp_type < 128
}

/// The ICMPv6 checksum of `message` (its checksum field included) between `src` and `dst`;
/// 0 when the message's checksum is right.
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    checksum::fold(checksum::sum(
        message,
        ipv6::pseudo_header_sum(src, dst, NEXT_ICMPV6, message.len()),
    ))
}

/// Writes a complete IPv6 packet carrying an ICMPv6 error about `original` (the offending
/// packet from its IPv6 header on) into `out`, quoting as much as fits in 1280 bytes (RFC 4443
/// §2.4 (c)) and in `out`. `rest_of_header` is the MTU for packet-too-big, 0 otherwise.
///
/// Hop limit 64, checksum complete. Deciding whether an error may be sent at all (not about
/// an ICMPv6 error, not to a multicast source) is the caller's job. Returns the bytes
/// written, or 0 when `out` cannot hold the 48 bytes of headers.
pub fn emit_error(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: u8,
    code: u8,
    rest_of_header: u32,
    original: &[u8],
) -> usize {
    let headers = IPV6_HEADER_LEN + HEADER_LEN;
    if out.len() < headers {
        return 0;
    }
    let quote = original
        .len()
        .min(MIN_MTU - headers)
        .min(out.len() - headers);
    let total = headers + quote;
    ipv6::emit_header(out, src, dst, NEXT_ICMPV6, 64, HEADER_LEN + quote);
    let icmp = &mut out[IPV6_HEADER_LEN..total];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&rest_of_header.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(&original[..quote]);
    let c = checksum(src, dst, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    total
}

/// A neighbor solicitation (RFC 4861 §4.3), validated as §7.1.1 requires of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit {
    /// The address whose link-layer address is asked for.
    pub target: Ipv6Addr,
    /// The source link-layer address option, if present.
    pub source_mac: Option<MacAddr>,
}

impl NeighborSolicit {
    /// Parses the ICMPv6 message `icmp` of an IPv6 packet from `src` to `dst` with hop limit
    /// `hop_limit`. Checks: hop limit 255, type 135 and code 0, checksum, at least 24 bytes,
    /// a unicast target, no zero-length option, and no source link-layer option when the
    /// source is unspecified (duplicate address detection).
    pub fn parse(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, icmp: &[u8]) -> Result<Self> {
        if icmp.len() < 24 {
            return Err(WireError::Truncated);
        }
        if hop_limit != NDP_HOP_LIMIT || icmp[0] != TYPE_NEIGHBOR_SOLICIT || icmp[1] != 0 {
            return Err(WireError::Unsupported);
        }
        if checksum(src, dst, icmp) != 0 {
            return Err(WireError::BadChecksum);
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&icmp[8..24]);
        let target = Ipv6Addr::from(t);
        if target.is_multicast() || target.is_unspecified() {
            return Err(WireError::Unsupported);
        }
        let mut source_mac = None;
        let mut opts = &icmp[24..];
        while !opts.is_empty() {
            if opts.len() < 2 {
                return Err(WireError::Truncated);
            }
            let len = usize::from(opts[1]) * 8;
            if len == 0 {
                return Err(WireError::BadHeaderLen);
            }
            if len > opts.len() {
                return Err(WireError::Truncated);
            }
            if opts[0] == OPT_SOURCE_LL_ADDR && len == 8 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&opts[2..8]);
                source_mac = Some(MacAddr(m));
            }
            opts = &opts[len..];
        }
        if src.is_unspecified() && source_mac.is_some() {
            return Err(WireError::Unsupported);
        }
        Ok(NeighborSolicit { target, source_mac })
    }
}

/// Writes a neighbor advertisement for `target` (flags `NA_FLAG_*`) with a target link-layer
/// address option `mac`, from `target` to `dst`, hop limit 255: [`NEIGHBOR_ADVERT_LEN`] bytes.
///
/// # Panics
/// If `out` is shorter than [`NEIGHBOR_ADVERT_LEN`].
pub fn emit_neighbor_advert(
    out: &mut [u8],
    target: Ipv6Addr,
    dst: Ipv6Addr,
    flags: u32,
    mac: MacAddr,
) -> usize {
    let icmp_len = NEIGHBOR_ADVERT_LEN - IPV6_HEADER_LEN;
    ipv6::emit_header(out, target, dst, NEXT_ICMPV6, NDP_HOP_LIMIT, icmp_len);
    let icmp = &mut out[IPV6_HEADER_LEN..NEIGHBOR_ADVERT_LEN];
    icmp[0] = TYPE_NEIGHBOR_ADVERT;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&flags.to_be_bytes());
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = OPT_TARGET_LL_ADDR;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac.0);
    let c = checksum(target, dst, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    NEIGHBOR_ADVERT_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Ipv6Packet;

    const POD: &str = "fd00::5";
    const GW: &str = "fd00::1";

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A neighbor solicitation as Linux sends it: to the solicited-node address, hop limit
    /// 255, with a source link-layer address option.
    fn solicit(src: Ipv6Addr, target: Ipv6Addr, sll: Option<MacAddr>) -> (Ipv6Addr, Vec<u8>) {
        let dst = ipv6::solicited_node(&target);
        let mut m = vec![TYPE_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        if let Some(mac) = sll {
            m.extend_from_slice(&[OPT_SOURCE_LL_ADDR, 1]);
            m.extend_from_slice(&mac.0);
        }
        let c = checksum(src, dst, &m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        (dst, m)
    }

    #[test]
    fn solicitation_parses() {
        let mac = MacAddr([0x0a, 0x58, 10, 244, 1, 5]);
        let (dst, m) = solicit(a(POD), a(GW), Some(mac));
        let ns = NeighborSolicit::parse(a(POD), dst, 255, &m).unwrap();
        assert_eq!(ns.target, a(GW));
        assert_eq!(ns.source_mac, Some(mac));
    }

    #[test]
    fn invalid_solicitations_are_rejected() {
        let mac = MacAddr([0x0a, 0x58, 10, 244, 1, 5]);
        let (dst, good) = solicit(a(POD), a(GW), Some(mac));
        // (mutation of a valid solicitation, hop limit, what it covers)
        type Mutation = fn(&mut Vec<u8>);
        let table: [(Mutation, u8, &str); 5] = [
            (|_| {}, 64, "hop limit not 255: it crossed a router"),
            (|m| m[12] ^= 1, 255, "bad checksum"),
            (|m| m.truncate(20), 255, "shorter than a solicitation"),
            (|m| m[1] = 1, 255, "non-zero code"),
            (|m| m[25] = 0, 255, "zero-length option"),
        ];
        for (mutate, hops, what) in table {
            let mut m = good.clone();
            mutate(&mut m);
            assert!(
                NeighborSolicit::parse(a(POD), dst, hops, &m).is_err(),
                "{what}"
            );
        }
        // Duplicate address detection must not carry a source link-layer address.
        let (dst, m) = solicit(Ipv6Addr::UNSPECIFIED, a(POD), Some(mac));
        assert!(NeighborSolicit::parse(Ipv6Addr::UNSPECIFIED, dst, 255, &m).is_err());
        let (dst, m) = solicit(Ipv6Addr::UNSPECIFIED, a(POD), None);
        assert!(NeighborSolicit::parse(Ipv6Addr::UNSPECIFIED, dst, 255, &m).is_ok());
    }

    #[test]
    fn advertisement_is_well_formed() {
        let mut buf = [0xa5u8; 128];
        let mac = MacAddr([0x02, 0x4e, 0x53, 0, 0, 1]);
        let flags = NA_FLAG_ROUTER | NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE;
        let n = emit_neighbor_advert(&mut buf, a(GW), a(POD), flags, mac);
        assert_eq!(n, 72);
        let ip = Ipv6Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
            (a(GW), a(POD), 255)
        );
        let icmp = ip.payload();
        assert_eq!(checksum(a(GW), a(POD), icmp), 0);
        assert_eq!(icmp[0], TYPE_NEIGHBOR_ADVERT);
        assert_eq!(&icmp[4..8], &[0xe0, 0, 0, 0]);
        assert_eq!(&icmp[8..24], &a(GW).octets());
        assert_eq!(&icmp[24..32], &[2, 1, 0x02, 0x4e, 0x53, 0, 0, 1]);
    }

    #[test]
    fn errors_quote_at_most_1280_bytes_in_total() {
        let original = vec![0x60u8; 3000];
        let mut out = vec![0xa5u8; 4000];
        let n = emit_error(
            &mut out,
            a(GW),
            a(POD),
            TYPE_PACKET_TOO_BIG,
            0,
            1500,
            &original,
        );
        assert_eq!(n, 1280);
        let ip = Ipv6Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.next_header(), NEXT_ICMPV6);
        assert_eq!(checksum(a(GW), a(POD), ip.payload()), 0);
        assert_eq!(&ip.payload()[4..8], &1500u32.to_be_bytes());
        assert!(is_error(TYPE_PACKET_TOO_BIG) && !is_error(TYPE_ECHO_REQUEST));
    }
}
