//! The UDP header of one USO datagram: its own length (`__udp_gso_segment`).

/// Sets the length of the UDP header at `l4` to the datagram's (header and payload: the rest
/// of `seg`). The checksum is filled in afterwards.
pub(super) fn fix_header(seg: &mut [u8], l4: usize) {
    let len = seg.len() - l4;
    debug_assert!(len <= usize::from(u16::MAX));
    seg[l4 + 4..l4 + 6].copy_from_slice(&(len as u16).to_be_bytes());
}
