//! The pcap file format (libpcap 2.4, little-endian, microsecond timestamps) that `netstackd
//! ctl capture` writes and tcpdump, tshark and Wireshark read: a 24-byte file header, then per
//! frame a 16-byte record header and the frame's first `snaplen` bytes.

use std::time::Duration;

/// Length of the file header.
pub const FILE_HEADER_LEN: usize = 24;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// The magic number of a microsecond-resolution pcap file (written little-endian).
const MAGIC: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_ETHERNET`: every record is an Ethernet frame.
const LINKTYPE_ETHERNET: u32 = 1;

/// The file header for Ethernet frames of at most `snaplen` bytes.
pub fn file_header(snaplen: u32) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes()); // version 2.4
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay 0.
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// The record header of a frame of `orig_len` bytes, of which `incl_len` are kept, seen at
/// `since_epoch` (the timestamp wraps in 2106, as the format does).
pub fn record_header(
    since_epoch: Duration,
    incl_len: u32,
    orig_len: u32,
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&(since_epoch.as_secs() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&since_epoch.subsec_micros().to_le_bytes());
    h[8..12].copy_from_slice(&incl_len.to_le_bytes());
    h[12..16].copy_from_slice(&orig_len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_is_little_endian_pcap_2_4_for_ethernet() {
        let h = file_header(4080);
        assert_eq!(&h[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 2);
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), 4);
        assert_eq!(u32::from_le_bytes(h[16..20].try_into().unwrap()), 4080);
        assert_eq!(u32::from_le_bytes(h[20..24].try_into().unwrap()), 1);
    }

    #[test]
    fn record_header_holds_seconds_micros_and_both_lengths() {
        let h = record_header(Duration::new(1_700_000_000, 123_456_789), 96, 1514);
        assert_eq!(
            u32::from_le_bytes(h[0..4].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 96);
        assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), 1514);
    }
}
