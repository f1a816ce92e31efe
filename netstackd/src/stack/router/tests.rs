//! Router decisions on hand-built frames: one test per behaviour, table rows for the
//! malformed cases.

use super::*;
use crate::wire::{checksum, vnet};

const MAC_A: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 5]);
const MAC_B: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 6]);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn router() -> Router<()> {
    let mut r = Router::new(GW, 1500);
    for (id, mac, ip) in [(1, MAC_A, IP_A), (2, MAC_B, IP_B)] {
        r.insert(PodPort {
            id,
            mac,
            ipv4: vec![ip],
            mtu: 1500,
            counters: Arc::new(LinkCounters::new(1)),
            io: (),
        });
    }
    r
}

/// A buffer as big as a worker's, filled with 0xa5 to catch unwritten bytes.
fn buffer() -> Vec<u8> {
    vec![0xa5; 1 << 17]
}

/// Writes an Ethernet + IPv4 + UDP frame with `payload_len` bytes of payload; returns its length.
fn udp_frame(
    buf: &mut [u8],
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    payload_len: usize,
) -> usize {
    ethernet::write_header(buf, GATEWAY_MAC, src_mac, ethernet::ETHERTYPE_IPV4);
    let ip_len = 20 + 8 + payload_len;
    ipv4::emit_header(
        &mut buf[14..],
        src,
        dst,
        ipv4::PROTO_UDP,
        ttl,
        8 + payload_len,
        0x1234,
    );
    let udp = &mut buf[34..34 + 8 + payload_len];
    udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    for (i, b) in udp[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    14 + ip_len
}

fn arp_request(
    buf: &mut [u8],
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> usize {
    ethernet::write_header(buf, MacAddr::BROADCAST, sender_mac, ethernet::ETHERTYPE_ARP);
    let a = &mut buf[14..42];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&arp::OP_REQUEST.to_be_bytes());
    a[8..14].copy_from_slice(&sender_mac.0);
    a[14..18].copy_from_slice(&sender_ip.octets());
    a[18..24].copy_from_slice(&[0; 6]);
    a[24..28].copy_from_slice(&target_ip.octets());
    42
}

#[test]
fn arp_request_for_any_address_is_answered_with_the_gateway_mac() {
    let r = router();
    for target in [GW, IP_B, OUTSIDE] {
        let mut buf = buffer();
        let len = arp_request(&mut buf, MAC_A, IP_A, target);
        let mut v = VnetHdr::default();
        assert_eq!(
            r.from_pod(1, &mut v, &mut buf, len),
            Verdict::Reply {
                len: 42,
                dropped: None
            }
        );
        let eth = EthernetFrame::new_checked(&buf[..42]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (MAC_A, GATEWAY_MAC));
        let reply = ArpPacket::new_checked(&buf[14..42]).unwrap();
        assert_eq!(reply.operation(), arp::OP_REPLY);
        assert_eq!(
            (reply.sender_mac(), reply.sender_ip()),
            (GATEWAY_MAC, target)
        );
        assert_eq!((reply.target_mac(), reply.target_ip()), (MAC_A, IP_A));
    }
}

#[test]
fn arp_about_the_pods_own_address_is_not_answered() {
    let r = router();
    let mut buf = buffer();
    // Duplicate address detection: sender 0.0.0.0, target the pod's own address.
    let len = arp_request(&mut buf, MAC_A, Ipv4Addr::UNSPECIFIED, IP_A);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Consumed
    );
    let len = arp_request(&mut buf, MAC_A, IP_A, IP_A);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Consumed
    );
}

#[test]
fn arp_from_another_pods_identity_is_spoofed() {
    let r = router();
    let mut buf = buffer();
    let len = arp_request(&mut buf, MAC_A, IP_B, GW);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Drop(DropReason::Spoofed)
    );
}

#[test]
fn frame_from_a_foreign_mac_is_spoofed() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_B, IP_A, IP_B, 64, 10);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Drop(DropReason::Spoofed)
    );
}

#[test]
fn packet_from_a_foreign_ip_is_spoofed() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_B, OUTSIDE, 64, 10);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Drop(DropReason::Spoofed)
    );
}

#[test]
fn pod_to_pod_is_switched_with_macs_rewritten_and_ttl_decremented() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 100);
    let mut v = VnetHdr {
        flags: vnet::FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    assert_eq!(
        r.from_pod(1, &mut v, &mut buf, len),
        Verdict::ToPod { id: 2, len }
    );
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.dst(), eth.src()), (MAC_B, GATEWAY_MAC));
    let ip = Ipv4Packet::new_checked(&buf[14..len]).expect("checksum still valid");
    assert_eq!(ip.ttl(), 63);
    assert_eq!(
        v.csum_start, 34,
        "TAP to TAP keeps the Ethernet-relative offset"
    );
}

#[test]
fn off_pod_traffic_goes_to_the_uplink_with_tun_offsets() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, OUTSIDE, 64, 100);
    let mut v = VnetHdr {
        flags: vnet::FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    assert_eq!(
        r.from_pod(1, &mut v, &mut buf, len),
        Verdict::ToUplink { len }
    );
    assert_eq!(v.csum_start, 20, "a TUN counts from the IP header");
    assert_eq!(Ipv4Packet::new_checked(&buf[14..len]).unwrap().ttl(), 63);
}

#[test]
fn ethernet_padding_is_trimmed() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 2);
    // A minimum-size Ethernet frame: 60 bytes, the tail is padding.
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, 60),
        Verdict::ToPod { id: 2, len }
    );
}

#[test]
fn ttl_one_gets_time_exceeded_from_the_gateway() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 1, 100);
    let original: Vec<u8> = buf[14..len].to_vec();
    let mut v = VnetHdr::default();
    let Verdict::Reply { len: rlen, dropped } = r.from_pod(1, &mut v, &mut buf, len) else {
        panic!("expected an ICMP reply");
    };
    assert_eq!(dropped, Some(DropReason::TtlExceeded));
    let eth = EthernetFrame::new_checked(&buf[..rlen]).unwrap();
    assert_eq!(
        (eth.dst(), eth.src(), eth.ethertype()),
        (MAC_A, GATEWAY_MAC, ethernet::ETHERTYPE_IPV4)
    );
    let ip = Ipv4Packet::new_checked(&buf[14..rlen]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.protocol()),
        (GW, IP_A, ipv4::PROTO_ICMP)
    );
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (icmpv4::TYPE_TIME_EXCEEDED, 0));
    assert_eq!(checksum::checksum(icmp), 0, "ICMP checksum verifies");
    assert_eq!(
        &icmp[8..],
        &original[..],
        "the whole short original is quoted"
    );
    assert_eq!(v, VnetHdr::default());
}

#[test]
fn no_icmp_error_about_an_icmp_error() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 1, 20);
    // Make it an ICMP time exceeded itself.
    buf[14 + 9] = ipv4::PROTO_ICMP;
    Ipv4Packet::new_unchecked(&mut buf[14..len]).fill_checksum();
    buf[34] = icmpv4::TYPE_TIME_EXCEEDED;
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Drop(DropReason::TtlExceeded)
    );
}

#[test]
fn oversized_df_packet_gets_frag_needed_but_gso_frames_pass() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 3000);
    buf[14 + 6] |= 0x40; // DF
    Ipv4Packet::new_unchecked(&mut buf[14..len]).fill_checksum();
    let Verdict::Reply { len: rlen, dropped } =
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len)
    else {
        panic!("expected frag needed");
    };
    assert_eq!(dropped, Some(DropReason::FragNeeded));
    let ip = Ipv4Packet::new_checked(&buf[14..rlen]).unwrap();
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (icmpv4::TYPE_DEST_UNREACHABLE, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1500, "next-hop MTU");
    assert!(rlen - 14 <= 576);

    // The same size as a 64 KB-style GSO frame goes through whole.
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 60000);
    buf[14 + 6] |= 0x40;
    Ipv4Packet::new_unchecked(&mut buf[14..len]).fill_checksum();
    let mut v = VnetHdr {
        gso_type: vnet::GSO_UDP_L4,
        gso_size: 1472,
        ..VnetHdr::default()
    };
    assert_eq!(
        r.from_pod(1, &mut v, &mut buf, len),
        Verdict::ToPod { id: 2, len }
    );
}

#[test]
fn uplink_packet_for_a_pod_gets_its_ethernet_header() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, GATEWAY_MAC, OUTSIDE, IP_B, 63, 100);
    buf[..14].fill(0xa5);
    let mut v = VnetHdr {
        flags: vnet::FLAG_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    assert_eq!(
        r.from_uplink(&mut v, &mut buf, len - 14),
        Verdict::ToPod { id: 2, len }
    );
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!(
        (eth.dst(), eth.src(), eth.ethertype()),
        (MAC_B, GATEWAY_MAC, ethernet::ETHERTYPE_IPV4)
    );
    assert_eq!(v.csum_start, 34);
}

#[test]
fn uplink_packet_for_nobody_has_no_route() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(
        &mut buf,
        GATEWAY_MAC,
        OUTSIDE,
        Ipv4Addr::new(10, 244, 1, 99),
        63,
        10,
    );
    assert_eq!(
        r.from_uplink(&mut VnetHdr::default(), &mut buf, len - 14),
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn malformed_frames_are_dropped_not_panicked_on() {
    let r = router();
    // (mutation of a valid pod A -> pod B frame, what it covers)
    type Mutation = fn(&mut [u8], &mut usize);
    let table: [(Mutation, &str); 8] = [
        (|_, len| *len = 10, "shorter than an Ethernet header"),
        (|_, len| *len = 14 + 19, "shorter than an IPv4 header"),
        (|b, _| b[14] = 0x65, "IP version 6 in an IPv4 ethertype"),
        (|b, _| b[14] = 0x44, "ihl 4"),
        (|b, _| b[14 + 10] ^= 0xff, "bad header checksum"),
        (|_, len| *len -= 1, "total length beyond the frame"),
        (
            |b, _| {
                b[14 + 2] = 0;
                b[14 + 3] = 10;
                Ipv4Packet::new_unchecked(&mut b[14..34]).fill_checksum();
            },
            "total length below the header",
        ),
        (
            |b, len| {
                b[12] = 0x08;
                b[13] = 0x06;
                *len = 14 + 20
            },
            "truncated ARP",
        ),
    ];
    for (mutate, what) in table {
        let mut buf = buffer();
        let mut len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 10);
        mutate(&mut buf, &mut len);
        assert_eq!(
            r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
            Verdict::Drop(DropReason::Malformed),
            "{what}"
        );
    }
}

#[test]
fn ipv6_is_counted_unsupported() {
    let r = router();
    let mut buf = buffer();
    ethernet::write_header(&mut buf, GATEWAY_MAC, MAC_A, ethernet::ETHERTYPE_IPV6);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, 80),
        Verdict::Drop(DropReason::Unsupported)
    );
}

#[test]
fn random_bytes_never_panic() {
    let r = router();
    let mut buf = buffer();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20_000 {
        let len = (round % 200) + 1;
        for b in buf[..len].iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Keep the source MAC right half the time so the parsers behind it are reached.
        if round % 2 == 0 {
            buf[6..12].copy_from_slice(&MAC_A.0);
            buf[12..14].copy_from_slice(if round % 4 == 0 { &[8, 0] } else { &[8, 6] });
        }
        let _ = r.from_pod(1, &mut VnetHdr::default(), &mut buf, len);
        let _ = r.from_uplink(&mut VnetHdr::default(), &mut buf, len.min(1000));
    }
}

#[test]
fn offload_headers_that_lie_are_malformed() {
    let r = router();
    // (vnet header for a 100-byte UDP pod A -> pod B frame, what it covers)
    let table = [
        (
            VnetHdr {
                flags: vnet::FLAG_NEEDS_CSUM,
                csum_start: 20,
                csum_offset: 6,
                ..Default::default()
            },
            "checksum start inside the IP header",
        ),
        (
            VnetHdr {
                flags: vnet::FLAG_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 200,
                ..Default::default()
            },
            "checksum field past the packet",
        ),
        (
            VnetHdr {
                gso_type: vnet::GSO_TCPV4,
                gso_size: 1448,
                ..Default::default()
            },
            "TCP segmentation of a UDP packet",
        ),
        (
            VnetHdr {
                gso_type: vnet::GSO_TCPV6,
                gso_size: 1448,
                ..Default::default()
            },
            "IPv6 segmentation of an IPv4 packet",
        ),
        (
            VnetHdr {
                gso_type: vnet::GSO_UDP_L4,
                gso_size: 0,
                ..Default::default()
            },
            "GSO with a zero segment size",
        ),
        (
            VnetHdr {
                gso_type: 9,
                gso_size: 100,
                ..Default::default()
            },
            "unknown GSO type",
        ),
    ];
    for (mut v, what) in table {
        let mut buf = buffer();
        let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 100);
        assert_eq!(
            r.from_pod(1, &mut v, &mut buf, len),
            Verdict::Drop(DropReason::Malformed),
            "{what}"
        );
    }
}

#[test]
fn oversized_packet_without_df_is_dropped_too_big() {
    let r = router();
    let mut buf = buffer();
    let len = udp_frame(&mut buf, MAC_A, IP_A, IP_B, 64, 3000);
    assert_eq!(
        r.from_pod(1, &mut VnetHdr::default(), &mut buf, len),
        Verdict::Drop(DropReason::TooBig)
    );
}
