//! Checksums and lengths for segments: the IP header fix-up each segment needs, the full L4
//! checksum, and `complete_checksum` for a single frame whose checksum the sender left partial.

use super::frame::{IpHeader, Transport};
use super::GsoError;
use crate::wire::{checksum, ipv4, ipv6, VnetHdr};

/// Writes `v` big-endian at `at`. Every length written here is at most the super-frame's own
/// IP length, so it fits 16 bits.
fn put16(b: &mut [u8], at: usize, v: usize) {
    debug_assert!(v <= usize::from(u16::MAX));
    b[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
}

/// Sets segment `index`'s IP length (IPv4 total length, IPv6 payload length) from the
/// segment's length; for IPv4 also adds `index` to the ID (wrapping, as Linux's `id++`) and
/// recomputes the header checksum. `seg` is a whole segment with its IP header at `l3`.
pub(super) fn fix_ip_header(seg: &mut [u8], l3: usize, v6: bool, index: usize) {
    let ip_len = seg.len() - l3;
    if v6 {
        put16(seg, l3 + 4, ip_len - ipv6::HEADER_LEN);
        return;
    }
    put16(seg, l3 + 2, ip_len);
    let id = u16::from_be_bytes([seg[l3 + 4], seg[l3 + 5]]).wrapping_add(index as u16);
    seg[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
    ipv4::Ipv4Packet::new_unchecked(&mut seg[l3..]).fill_checksum();
}

/// The pseudo-header sum (RFC 793 / RFC 8200 §8.1) for an L4 part of `l4_len` bytes, from the
/// addresses in the IP header at `l3`.
fn pseudo_header_sum(seg: &[u8], l3: usize, v6: bool, protocol: u8, l4_len: usize) -> u32 {
    let addrs = if v6 {
        &seg[l3 + 8..l3 + 40]
    } else {
        &seg[l3 + 12..l3 + 20]
    };
    // l4_len < 2^16, so this cannot overflow; addresses have an even length, so the sums chain.
    checksum::sum(addrs, u32::from(protocol) + l4_len as u32)
}

/// Stores in the TCP checksum field of `seg` (TCP header at `l4`) the pseudo-header sum over
/// its L4 length, folded and not complemented, as Linux leaves a `CHECKSUM_PARTIAL` field
/// (`~tcp_v4_check(len, saddr, daddr, 0)`): what a device completing the checksum, or
/// segmenting the frame, starts from.
pub(super) fn fill_pseudo_header_sum(seg: &mut [u8], l3: usize, v6: bool, l4: usize) {
    let field = l4 + usize::from(super::frame::TCP_CSUM_OFFSET);
    let pseudo = pseudo_header_sum(seg, l3, v6, ipv4::PROTO_TCP, seg.len() - l4);
    let c = !checksum::fold(pseudo);
    seg[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Computes the TCP or UDP checksum of the segment in full (pseudo-header, header, payload)
/// and stores it; a UDP checksum of 0 is stored as 0xffff (0 means "none" in UDP).
pub(super) fn fill_l4_checksum(seg: &mut [u8], l3: usize, v6: bool, l4: usize, t: Transport) {
    let (protocol, field) = match t {
        Transport::Tcp => (
            ipv4::PROTO_TCP,
            l4 + usize::from(super::frame::TCP_CSUM_OFFSET),
        ),
        Transport::Udp => (
            ipv4::PROTO_UDP,
            l4 + usize::from(super::frame::UDP_CSUM_OFFSET),
        ),
    };
    seg[field..field + 2].fill(0);
    let pseudo = pseudo_header_sum(seg, l3, v6, protocol, seg.len() - l4);
    let mut c = checksum::fold(checksum::sum(&seg[l4..], pseudo));
    if c == 0 && t == Transport::Udp {
        c = 0xffff;
    }
    seg[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Completes the partial checksum of a non-GSO frame with `NEEDS_CSUM`, as Linux
/// `skb_checksum_help` does for an egress without checksum offload: the field at
/// `csum_start + csum_offset` already holds the pseudo-header sum, so the checksum is the
/// folded sum from `csum_start` to the end of the IP packet (Ethernet padding excluded), and a
/// result of 0 is stored as 0xffff. Offsets count from the start of `frame`; the IP header is
/// at `l3_offset`.
///
/// A frame without `NEEDS_CSUM` is left alone. The checksum must lie after the fixed IP header
/// and inside the packet (what the kernel checks before it trusts the offsets); otherwise, or
/// for a GSO frame ([`super::segment`] it instead) or an IPv4 fragment (no sender leaves a
/// fragment's checksum partial), an error and the frame is untouched.
/// Send the frame afterwards with an all-zero virtio-net header.
pub fn complete_checksum(
    vnet: &VnetHdr,
    frame: &mut [u8],
    l3_offset: usize,
) -> Result<(), GsoError> {
    if vnet.is_gso() {
        return Err(GsoError::IsGso {
            gso_type: vnet.gso_type,
        });
    }
    if !vnet.needs_csum() {
        return Ok(());
    }
    let ip = IpHeader::parse(frame, l3_offset, false)?;
    let start = usize::from(vnet.csum_start);
    let field = start + usize::from(vnet.csum_offset);
    let l4_min = l3_offset + ip.header_len;
    if start < l4_min || field + 2 > ip.end {
        return Err(GsoError::CsumOutOfBounds {
            csum_start: vnet.csum_start,
            csum_offset: vnet.csum_offset,
            l4_min,
            packet_end: ip.end,
        });
    }
    let mut c = checksum::fold(checksum::sum(&frame[start..ip.end], 0));
    if c == 0 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}
