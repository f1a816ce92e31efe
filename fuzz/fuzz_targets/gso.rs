//! Software GSO on any frame and any virtio-net header, as a worker's egress applies it: the
//! first input byte picks where the IP header is (odd: behind Ethernet, as on a TAP; even: at
//! 0, as on the TUN uplink), then the 10-byte header and the frame.
//!
//! A GSO frame goes through `GsoFrame::parse` and, when accepted, `segment_each`; every other
//! frame through `complete_checksum`. A panic is a bug, and so is a segment that is not a
//! complete packet: wrong IP length, bad IPv4 header checksum, bad TCP/UDP checksum, segments
//! that do not add up to the super-frame's payload, or a `complete_checksum` that touches
//! bytes other than the checksum field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack_fuzz::{split_vnet, SLOT_LEN};
use netstackd::gso::{complete_checksum, GsoError, GsoFrame, MAX_TCP_SEGMENTS};
use netstackd::wire::{checksum, ethernet, Ipv4Packet, Ipv6Packet};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((vnet, frame)) = split_vnet(rest) else {
        return;
    };
    let l3 = if pick & 1 == 1 {
        ethernet::HEADER_LEN
    } else {
        0
    };
    if !vnet.is_gso() {
        let mut out = frame.to_vec();
        match complete_checksum(&vnet, &mut out, l3) {
            Ok(()) if vnet.needs_csum() => {
                let field = usize::from(vnet.csum_start) + usize::from(vnet.csum_offset);
                assert_eq!(out[..field], frame[..field], "bytes before the checksum");
                assert_eq!(out[field + 2..], frame[field + 2..], "bytes after it");
            }
            _ => assert_eq!(out, frame, "complete_checksum changed a frame it refused"),
        }
        return;
    }
    let Ok(gso) = GsoFrame::parse(&vnet, frame, l3) else {
        return;
    };
    let count = gso.segment_count();
    assert!((1..=MAX_TCP_SEGMENTS).contains(&count), "{count} segments");
    let header_len = gso.header_len();
    let max = gso.max_segment_len();
    // The worker's scratch buffer.
    let mut scratch = vec![0u8; 2 * SLOT_LEN];
    let mut payload = 0;
    let emitted = gso
        .segment_each(&mut scratch, |seg| {
            // A frame without payload gives one segment of headers only (Linux sends a
            // super-frame no larger than gso_size as it is).
            assert!(
                seg.len() >= header_len && seg.len() <= max,
                "segment of {}",
                seg.len()
            );
            payload += seg.len() - header_len;
            check_segment(seg, l3);
            Ok::<(), GsoError>(())
        })
        .expect("a parsed frame segments into a big enough scratch buffer");
    assert_eq!(emitted, count);
    assert_eq!(payload, gso.payload_len(), "segments add up to the payload");
});

/// A segment is a complete IP packet with its lengths and checksums right.
fn check_segment(seg: &[u8], l3: usize) {
    let ip = &seg[l3..];
    let (l4, protocol, addrs) = match ip[0] >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(ip).expect("segment is IPv4");
            assert_eq!(usize::from(p.total_len()), ip.len(), "IPv4 total length");
            assert!(p.verify_checksum(), "IPv4 header checksum");
            (l3 + p.header_len(), p.protocol(), &ip[12..20])
        }
        6 => {
            let p = Ipv6Packet::new_checked(ip).expect("segment is IPv6");
            assert_eq!(p.total_len(), ip.len(), "IPv6 payload length");
            (l3 + 40, p.next_header(), &ip[8..40])
        }
        v => panic!("segment of IP version {v}"),
    };
    let l4_len = seg.len() - l4;
    let pseudo = checksum::sum(addrs, u32::from(protocol) + l4_len as u32);
    assert_eq!(
        checksum::fold(checksum::sum(&seg[l4..], pseudo)),
        0,
        "L4 checksum of a {}-byte segment",
        seg.len()
    );
}
