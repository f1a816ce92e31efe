//! The flow table on its own: keys taken from hand-built packets, expiry and refresh on an
//! explicit clock, bounds under a flood, and sharing between threads.

use super::*;
use crate::wire::{icmpv4, ipv4, ipv6, Ipv4Packet, Ipv6Packet};
use std::net::Ipv6Addr;
use std::sync::Arc;

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);

fn key(sport: u16) -> FlowKey {
    FlowKey {
        proto: ipv4::PROTO_UDP,
        src: B.to_ipv6_mapped().octets(),
        dst: A.to_ipv6_mapped().octets(),
        sport,
        dport: 40000,
    }
}

const UDP: Lifetime = Lifetime::Fixed(UDP_SECS);

/// An IPv4 packet of `proto` from `src` to `dst` with `l4` as its payload.
fn v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut b = vec![0xa5; 20 + l4.len()];
    ipv4::emit_header(&mut b, src, dst, proto, 64, l4.len(), 7);
    b[20..].copy_from_slice(l4);
    b
}

/// A TCP header's first 14 bytes: ports, zeros, data offset, `flags`.
fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

#[test]
fn a_recorded_flow_is_found_and_another_is_not() {
    let t = FlowTable::new(1024);
    assert!(!t.is_used());
    t.record(&key(53), UDP, 1);
    assert!(t.is_used());
    assert!(t.lookup_at(&key(53), UDP, 2));
    assert!(!t.lookup_at(&key(54), UDP, 2));
    assert!(!t.lookup_at(&key(53).reversed(), UDP, 2));
    let s = t.stats();
    assert_eq!((s.inserts, s.evictions), (1, 0));
}

#[test]
fn entries_expire_like_conntrack_and_are_refreshed_by_both_directions() {
    let t = FlowTable::new(1024);
    t.record(&key(1), UDP, 10);
    t.record(&key(2), UDP, 10);
    // Key 1 is left alone: alive until its timeout, gone after.
    assert!(t.lookup_at(&key(1), UDP, 10 + UDP_SECS - 1));
    // That lookup refreshed it (a reply refreshes as a request does).
    assert!(t.lookup_at(&key(1), UDP, 10 + 2 * UDP_SECS - 2));
    assert!(!t.lookup_at(&key(2), UDP, 10 + UDP_SECS + 1));
    // A request packet refreshes too, and does not count as a new entry.
    t.record(&key(3), Lifetime::Fixed(ICMP_SECS), 100);
    t.record(&key(3), Lifetime::Fixed(ICMP_SECS), 125);
    assert!(t.lookup_at(&key(3), Lifetime::Fixed(ICMP_SECS), 150));
    assert!(!t.lookup_at(&key(3), Lifetime::Fixed(ICMP_SECS), 181));
    assert_eq!(t.stats().inserts, 3);
}

#[test]
fn tcp_lives_days_established_and_minutes_once_closing() {
    let t = FlowTable::new(1024);
    let k = FlowKey {
        proto: ipv4::PROTO_TCP,
        ..key(80)
    };
    t.record(&k, Lifetime::TcpOpening, 1);
    assert!(
        !t.lookup_at(&k, Lifetime::TcpOpen, 1 + TCP_CLOSING_SECS + 1),
        "an unanswered SYN lives 120 s"
    );
    t.record(&k, Lifetime::TcpOpening, 1000);
    assert!(t.lookup_at(&k, Lifetime::TcpOpen, 1001), "SYN-ACK");
    assert!(
        t.lookup_at(&k, Lifetime::TcpOpen, 1001 + 86_400),
        "a day idle, still established"
    );
    assert!(t.lookup_at(&k, Lifetime::TcpClosing, 100_000), "FIN");
    // The last ACK after the FIN does not bring back the established timeout.
    assert!(t.lookup_at(&k, Lifetime::TcpOpen, 100_001));
    assert!(!t.lookup_at(&k, Lifetime::TcpOpen, 100_001 + TCP_CLOSING_SECS + 1));
    // A new connection on the same tuple starts over.
    t.record(&k, Lifetime::TcpOpening, 200_000);
    assert!(t.lookup_at(&k, Lifetime::TcpOpen, 200_001));
    assert!(t.lookup_at(&k, Lifetime::TcpOpen, 200_001 + 3_600));
}

#[test]
fn expiry_survives_the_24_bit_clock_wrapping() {
    let t = FlowTable::new(64);
    let near_wrap = (1 << 24) - 10;
    t.record(&key(9), UDP, near_wrap);
    assert!(t.lookup_at(&key(9), UDP, near_wrap + 100));
    assert!(!t.lookup_at(&key(9), UDP, near_wrap + 100 + UDP_SECS + 1));
}

#[test]
fn a_flood_stays_within_the_table_and_counts_its_evictions() {
    let t = FlowTable::new(256);
    let capacity = t.stats().capacity;
    assert_eq!(capacity, 256);
    let flood = 100_000u32;
    for i in 0..flood {
        let k = FlowKey {
            sport: i as u16,
            dport: (i >> 16) as u16,
            ..key(0)
        };
        t.record(&k, UDP, 5);
    }
    let s = t.stats();
    assert_eq!(s.entries, capacity, "every slot full, none more");
    assert_eq!(s.inserts, u64::from(flood));
    assert_eq!(s.evictions, u64::from(flood) - capacity);
    // Once the flood's entries expire, a new flow finds a free slot: no eviction.
    t.record(&key(1), UDP, 5 + UDP_SECS + 1);
    assert_eq!(t.stats().evictions, u64::from(flood) - capacity);
}

#[test]
fn a_full_bucket_gives_up_the_entry_that_expires_first() {
    // One bucket: every key lands in it.
    let t = FlowTable::new(WAYS);
    for i in 0..WAYS as u16 {
        t.record(&key(i), UDP, 10 + u32::from(i));
    }
    // Key 0 expires first; key 99 takes its slot.
    t.record(&key(99), UDP, 20);
    assert!(t.lookup_at(&key(99), UDP, 21));
    assert!(!t.lookup_at(&key(0), UDP, 21));
    for i in 1..WAYS as u16 {
        assert!(t.lookup_at(&key(i), UDP, 21), "key {i}");
    }
    assert_eq!(t.stats().evictions, 1);
}

#[test]
fn workers_on_other_threads_see_each_others_flows() {
    let t = Arc::new(FlowTable::new(1 << 16));
    let now = t.now();
    let writers: Vec<_> = (0..4u16)
        .map(|w| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                for i in 0..500u16 {
                    t.record(&FlowKey { dport: w, ..key(i) }, UDP, now);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let reader = Arc::clone(&t);
    let found = std::thread::spawn(move || {
        (0..4u16)
            .flat_map(|w| (0..500u16).map(move |i| (w, i)))
            .filter(|&(w, i)| reader.lookup_at(&FlowKey { dport: w, ..key(i) }, UDP, now))
            .count()
    })
    .join()
    .unwrap();
    assert_eq!(found, 2000);
    assert_eq!(t.stats().entries, 2000);
}

#[test]
fn keys_come_from_ports_echo_ids_and_quoted_packets() {
    // UDP: ports in order.
    let udp = v4(A, B, ipv4::PROTO_UDP, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    let p = FlowPacket::ipv4(&Ipv4Packet::new_checked(&udp[..]).unwrap());
    assert_eq!((p.key.sport, p.key.dport, p.fragment), (40000, 53, false));
    assert_eq!(p.key.src, A.to_ipv6_mapped().octets());
    assert_eq!(p.lifetime, Lifetime::Fixed(UDP_SECS));
    // TCP flags pick the lifetime.
    for (flags, want) in [
        (0x02, Lifetime::TcpOpening),
        (0x12, Lifetime::TcpOpen),
        (0x10, Lifetime::TcpOpen),
        (0x11, Lifetime::TcpClosing),
        (0x04, Lifetime::TcpClosing),
    ] {
        let b = v4(A, B, ipv4::PROTO_TCP, &tcp(1234, 80, flags));
        let p = FlowPacket::ipv4(&Ipv4Packet::new_checked(&b[..]).unwrap());
        assert_eq!(
            (p.key.sport, p.key.dport, p.lifetime),
            (1234, 80, want),
            "flags {flags:#x}"
        );
    }
    // ICMP echo: the identifier on both sides, so a request's reverse is its reply's key.
    let req = v4(A, B, ipv4::PROTO_ICMP, &[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let rep = v4(B, A, ipv4::PROTO_ICMP, &[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let req = FlowPacket::ipv4(&Ipv4Packet::new_checked(&req[..]).unwrap());
    let rep = FlowPacket::ipv4(&Ipv4Packet::new_checked(&rep[..]).unwrap());
    assert_eq!(req.key.reversed(), rep.key);
    // An ICMP error from B about A's UDP request belongs to the request's reply flow.
    let mut err = vec![0u8; 200];
    let n = icmpv4::emit_error(&mut err, B, A, icmpv4::TYPE_DEST_UNREACHABLE, 3, 0, &udp);
    let e = FlowPacket::ipv4(&Ipv4Packet::new_checked(&err[..n]).unwrap());
    let request = FlowPacket::ipv4(&Ipv4Packet::new_checked(&udp[..]).unwrap());
    assert_eq!(e.key, request.key.reversed());
    // A quote cut short after the ports still gives the flow.
    let n = icmpv4::emit_error(
        &mut err,
        B,
        A,
        icmpv4::TYPE_DEST_UNREACHABLE,
        3,
        0,
        &udp[..24],
    );
    let e = FlowPacket::ipv4(&Ipv4Packet::new_checked(&err[..n]).unwrap());
    assert_eq!(e.key, request.key.reversed());
}

#[test]
fn fragments_are_marked_and_later_ones_have_no_ports() {
    let mut b = v4(A, B, ipv4::PROTO_UDP, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    // More fragments, offset 0: ports known, but marked a fragment.
    b[6] = 0x20;
    Ipv4Packet::new_unchecked(&mut b[..20]).fill_checksum();
    let p = FlowPacket::ipv4(&Ipv4Packet::new_checked(&b[..]).unwrap());
    assert!(p.fragment);
    // Offset 8 bytes: no transport header.
    b[6] = 0x00;
    b[7] = 0x01;
    Ipv4Packet::new_unchecked(&mut b[..20]).fill_checksum();
    let p = FlowPacket::ipv4(&Ipv4Packet::new_checked(&b[..]).unwrap());
    assert!(p.fragment);
    assert_eq!((p.key.sport, p.key.dport), (0, 0));
}

#[test]
fn ipv6_keys_read_ports_and_fragment_headers() {
    let a6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
    let b6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 6);
    let mut b = vec![0u8; 48];
    ipv6::emit_header(&mut b, a6, b6, ipv6::NEXT_UDP, 64, 8);
    b[40..44].copy_from_slice(&[0x9c, 0x40, 0, 53]);
    let p = FlowPacket::ipv6(&Ipv6Packet::new_checked(&b[..]).unwrap());
    assert_eq!(
        (p.key.proto, p.key.sport, p.key.dport, p.fragment),
        (17, 40000, 53, false)
    );
    assert_eq!(p.key.src, a6.octets());
    ipv6::emit_header(&mut b, a6, b6, ipv6::NEXT_FRAGMENT, 64, 8);
    b[40] = ipv6::NEXT_UDP;
    let p = FlowPacket::ipv6(&Ipv6Packet::new_checked(&b[..]).unwrap());
    assert_eq!((p.key.proto, p.fragment), (17, true));
}
