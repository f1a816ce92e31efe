//! The software GSO segmenter byte for byte against Linux's own. `tests/data/capture_tso.py`
//! wrote each captured super-frame (`*.bin`) into a TAP in a netns whose kernel routed it out
//! of a second TAP without offloads, so the kernel segmented it in software
//! (`validate_xmit_skb` → `skb_gso_segment`) and checksummed every segment; those segments are
//! `*.linux` (each a 4-byte little-endian length and the Ethernet frame).
//!
//! Forwarding changed what a router changes: the MAC addresses, the TTL or hop limit, and the
//! IPv4 record-route option it filled in. The test applies the same to the super-frame, takes
//! it through `gso::segment`, and requires every segment to equal the kernel's, byte for byte:
//! lengths, IPv4 IDs and header checksums, sequence numbers, flags, options, L4 checksums and
//! payload.

use std::path::Path;

use netstack_core::gso::{self, GsoError};
use netstack_core::wire::VnetHdr;

const ETH_LEN: usize = 14;
/// The fixtures' virtio-net header: `struct virtio_net_hdr`, 10 bytes.
const FIXTURE_VNET_LEN: usize = 10;

fn read(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kernel_segments(name: &str) -> Vec<Vec<u8>> {
    let raw = read(name);
    let mut segs = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        segs.push(raw[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    segs
}

fn same_as_linux(fixture: &str) {
    let raw = read(&format!("{fixture}.bin"));
    let vnet = VnetHdr::parse(
        raw[..netstack_core::wire::vnet::VNET_HDR_LEN]
            .try_into()
            .expect("vnet header"),
    );
    let mut frame = raw[FIXTURE_VNET_LEN..].to_vec();
    let linux = kernel_segments(&format!("{fixture}.linux"));
    let first = &linux[0];

    // What forwarding changed: MACs, TTL / hop limit, IPv4 options (record route).
    frame[..12].copy_from_slice(&first[..12]);
    if frame[ETH_LEN] >> 4 == 4 {
        frame[ETH_LEN + 8] = first[ETH_LEN + 8];
        let ihl = usize::from(frame[ETH_LEN] & 15) * 4;
        frame[ETH_LEN + 20..ETH_LEN + ihl].copy_from_slice(&first[ETH_LEN + 20..ETH_LEN + ihl]);
    } else {
        frame[ETH_LEN + 7] = first[ETH_LEN + 7];
    }

    let mut ours = Vec::new();
    let mut scratch = vec![0u8; 65536];
    gso::segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |s| {
        ours.push(s.to_vec());
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{fixture}: {e}"));
    assert_eq!(ours.len(), linux.len(), "{fixture}: segment count");
    for (i, (a, b)) in ours.iter().zip(&linux).enumerate() {
        if a != b {
            let at = a.iter().zip(b).position(|(x, y)| x != y);
            panic!(
                "{fixture}: segment {i} differs from Linux's (lengths {} and {}, first difference at byte {at:?})",
                a.len(),
                b.len()
            );
        }
    }
}

#[test]
fn ipv4_tso_with_timestamps_matches_linux() {
    same_as_linux("tso_v4_timestamps");
}

#[test]
fn ipv4_tso_short_last_with_fin_matches_linux() {
    same_as_linux("tso_v4_short_last");
}

#[test]
fn ipv4_tso_with_ip_options_matches_linux() {
    same_as_linux("tso_v4_ip_options");
}

#[test]
fn ipv6_tso_matches_linux() {
    same_as_linux("tso_v6");
}

#[test]
fn uso_matches_linux() {
    same_as_linux("uso_v4");
    same_as_linux("uso_v6");
}
