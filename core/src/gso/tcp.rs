//! The TCP header of one segment: sequence number and flags (`tcp_gso_segment`'s rules).

/// FIN.
pub(super) const FLAG_FIN: u8 = 0x01;
/// PSH.
pub(super) const FLAG_PSH: u8 = 0x08;
/// CWR.
pub(super) const FLAG_CWR: u8 = 0x80;

/// Advances the sequence number of the TCP header at `l4` by `offset` payload bytes (modulo
/// 2^32), keeps FIN and PSH only on the `last` segment and CWR only on the `first`. The
/// checksum is filled in afterwards.
pub(super) fn fix_header(seg: &mut [u8], l4: usize, offset: usize, first: bool, last: bool) {
    let seq = u32::from_be_bytes([seg[l4 + 4], seg[l4 + 5], seg[l4 + 6], seg[l4 + 7]]);
    // offset < 2^32 (a super-frame's payload, BIG TCP ones included), so the cast is exact.
    let seq = seq.wrapping_add(offset as u32);
    seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    let mut clear = 0;
    if !last {
        clear |= FLAG_FIN | FLAG_PSH;
    }
    if !first {
        clear |= FLAG_CWR;
    }
    seg[l4 + 13] &= !clear;
}
