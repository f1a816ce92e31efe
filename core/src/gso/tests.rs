//! Unit tests for the segmenter: super-frames built here the way the Linux stack builds them
//! (partial checksum holding the pseudo-header sum), cut, and checked field by field.

use super::*;
use crate::wire::checksum;
use crate::wire::vnet::{
    FLAG_DATA_VALID, FLAG_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
};

const ETH_LEN: usize = 14;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;
/// Timestamps, as Linux sends them on every data segment (NOP NOP TS).
const TS_OPTS: [u8; 12] = [1, 1, 8, 10, 0, 1, 0xe2, 0x40, 0xcd, 0x44, 0x06, 0xb8];
/// Record route with room for one address, padded to 8 bytes.
const RR_OPTS: [u8; 8] = [7, 7, 4, 0, 0, 0, 0, 0];

/// What a test super-frame looks like.
#[derive(Clone)]
struct Spec {
    v6: bool,
    /// Ethernet header in front (a TAP frame) or not (the TUN uplink).
    l2: bool,
    udp: bool,
    ip_opts: &'static [u8],
    tcp_opts: &'static [u8],
    flags: u8,
    payload_len: usize,
    mss: u16,
    seq: u32,
    id: u16,
    /// A BIG TCP IPv6 frame gets the hop-by-hop jumbo header Linux inserts (else its TCP
    /// header follows the IPv6 header directly).
    jumbo_hbh: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            v6: false,
            l2: true,
            udp: false,
            ip_opts: &[],
            tcp_opts: &[],
            flags: ACK | PSH,
            payload_len: 4000,
            mss: 1448,
            seq: 0x1000_0000,
            id: 0x1234,
            jumbo_hbh: false,
        }
    }
}

fn payload_byte(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

/// Builds the super-frame and its virtio-net header as a pod's kernel hands it to a TAP:
/// `NEEDS_CSUM` with the pseudo-header sum in the checksum field, `hdr_len` set. An IP
/// packet longer than 65535 bytes is a BIG TCP frame: IP length 0 (and, for IPv6 with
/// `jumbo_hbh`, the jumbo header in front of TCP).
fn build(s: &Spec) -> (VnetHdr, Vec<u8>) {
    let mut f = Vec::new();
    if s.l2 {
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(if s.v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    }
    let l3 = f.len();
    let l4_hlen = if s.udp { 8 } else { 20 + s.tcp_opts.len() };
    let l4_len = l4_hlen + s.payload_len;
    let proto = if s.udp { 17 } else { 6 };
    if s.v6 {
        let hbh = s.jumbo_hbh && l4_len > 65535;
        let stated = if l4_len > 65535 { 0 } else { l4_len as u16 };
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&stated.to_be_bytes());
        f.extend_from_slice(&[if hbh { 0 } else { proto }, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        if hbh {
            f.extend_from_slice(&[proto, 0, 0xc2, 4]);
            f.extend_from_slice(&((l4_len + 8) as u32).to_be_bytes());
        }
    } else {
        let ihl = 20 + s.ip_opts.len();
        let stated = if ihl + l4_len > 65535 {
            0
        } else {
            (ihl + l4_len) as u16
        };
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&stated.to_be_bytes());
        f.extend_from_slice(&s.id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0, 10, 244, 1, 5, 10, 244, 1, 6]);
        f.extend_from_slice(s.ip_opts);
        let c = checksum::checksum(&f[l3..]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = f.len();
    f.extend_from_slice(&[0x9c, 0x40, 0x13, 0x89]);
    if s.udp {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    } else {
        f.extend_from_slice(&s.seq.to_be_bytes());
        f.extend_from_slice(&0xa0b0_c0d0u32.to_be_bytes());
        f.push(((l4_hlen / 4) as u8) << 4);
        f.push(s.flags);
        f.extend_from_slice(&[0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(s.tcp_opts);
    }
    f.extend((0..s.payload_len).map(payload_byte));
    // The partial checksum: the folded, uncomplemented pseudo-header sum.
    let addrs = if s.v6 {
        &f[l3 + 8..l3 + 40]
    } else {
        &f[l3 + 12..l3 + 20]
    };
    let pseudo = !checksum::fold(checksum::sum(addrs, u32::from(proto) + l4_len as u32));
    let field = l4 + if s.udp { 6 } else { 16 };
    f[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    let vnet = VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: match (s.udp, s.v6) {
            (true, _) => GSO_UDP_L4,
            (false, false) => GSO_TCPV4,
            (false, true) => GSO_TCPV6,
        },
        hdr_len: (l4 + l4_hlen) as u16,
        gso_size: s.mss,
        csum_start: l4 as u16,
        csum_offset: if s.udp { 6 } else { 16 },
        num_buffers: 0,
    };
    (vnet, f)
}

/// One segment as read back by [`check`].
#[derive(Debug)]
struct Seg {
    bytes: Vec<u8>,
    ip_id: Option<u16>,
    seq: u32,
    flags: u8,
    payload: Vec<u8>,
}

/// Verifies one output frame on its own (IP lengths, IPv4 header checksum, L4 checksum, UDP
/// length) and returns its fields.
fn check(seg: &[u8], s: &Spec) -> Seg {
    let l3 = if s.l2 { ETH_LEN } else { 0 };
    let ip = &seg[l3..];
    let (ihl, ip_id, addrs) = if s.v6 {
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])) + 40,
            ip.len()
        );
        (40, None, &ip[8..40])
    } else {
        let ihl = usize::from(ip[0] & 15) * 4;
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(checksum::checksum(&ip[..ihl]), 0, "IPv4 header checksum");
        (ihl, Some(u16::from_be_bytes([ip[4], ip[5]])), &ip[12..20])
    };
    let l4 = &ip[ihl..];
    let proto = if s.udp { 17 } else { 6 };
    let sum = checksum::sum(l4, checksum::sum(addrs, proto + l4.len() as u32));
    assert_eq!(checksum::fold(sum), 0, "L4 checksum");
    if s.udp {
        assert_eq!(usize::from(u16::from_be_bytes([l4[4], l4[5]])), l4.len());
        assert_ne!(&l4[6..8], &[0, 0], "UDP checksum 0 means none");
        return Seg {
            bytes: seg.to_vec(),
            ip_id,
            seq: 0,
            flags: 0,
            payload: l4[8..].to_vec(),
        };
    }
    let thlen = usize::from(l4[12] >> 4) * 4;
    Seg {
        bytes: seg.to_vec(),
        ip_id,
        seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
        flags: l4[13],
        payload: l4[thlen..].to_vec(),
    }
}

fn run(s: &Spec) -> Vec<Seg> {
    let (vnet, frame) = build(s);
    let l3 = if s.l2 { ETH_LEN } else { 0 };
    let mut scratch = vec![0xa5; 1 << 17];
    let mut out = Vec::new();
    let n = segment::<GsoError>(&vnet, &frame, l3, &mut scratch, |seg| {
        out.push(check(seg, s));
        Ok(())
    })
    .expect("segments");
    assert_eq!(n, out.len());
    let all: Vec<u8> = out.iter().flat_map(|g| g.payload.clone()).collect();
    let want: Vec<u8> = (0..s.payload_len).map(payload_byte).collect();
    assert_eq!(all, want, "payloads concatenate to the original");
    out
}

#[test]
fn seq_advances_by_mss_per_segment() {
    let s = Spec {
        seq: 0xffff_f000, // wraps inside the frame
        ..Spec::default()
    };
    let segs = run(&s);
    assert_eq!(segs.len(), 3);
    for (i, g) in segs.iter().enumerate() {
        assert_eq!(g.seq, s.seq.wrapping_add(1448 * i as u32), "segment {i}");
    }
}

#[test]
fn ipv4_id_increments_per_segment_and_wraps() {
    let s = Spec {
        id: 0xfffe,
        payload_len: 1448 * 4,
        ..Spec::default()
    };
    let ids: Vec<_> = run(&s).iter().map(|g| g.ip_id.unwrap()).collect();
    assert_eq!(ids, [0xfffe, 0xffff, 0, 1]);
}

#[test]
fn fin_psh_only_on_the_last_cwr_only_on_the_first() {
    let s = Spec {
        flags: ACK | PSH | FIN | CWR,
        payload_len: 1448 * 3,
        ..Spec::default()
    };
    let flags: Vec<_> = run(&s).iter().map(|g| g.flags).collect();
    assert_eq!(flags, [ACK | CWR, ACK, ACK | PSH | FIN]);
}

#[test]
fn ecn_gso_type_segments_like_plain_tcp() {
    let s = Spec {
        flags: ACK | CWR,
        ..Spec::default()
    };
    let (mut vnet, frame) = build(&s);
    vnet.gso_type |= GSO_ECN;
    let mut scratch = [0u8; 2048];
    let mut flags = Vec::new();
    segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |seg| {
        flags.push(check(seg, &s).flags);
        Ok(())
    })
    .unwrap();
    assert_eq!(flags, [ACK | CWR, ACK, ACK]);
}

#[test]
fn last_short_segment_carries_the_rest() {
    let s = Spec {
        payload_len: 1448 * 2 + 17,
        ..Spec::default()
    };
    let segs = run(&s);
    let lens: Vec<_> = segs.iter().map(|g| g.payload.len()).collect();
    assert_eq!(lens, [1448, 1448, 17]);
    assert_eq!(segs[2].bytes.len(), ETH_LEN + 20 + 20 + 17);
}

#[test]
fn exact_multiple_of_mss_has_no_empty_tail() {
    let s = Spec {
        payload_len: 1448 * 2,
        ..Spec::default()
    };
    let lens: Vec<_> = run(&s).iter().map(|g| g.payload.len()).collect();
    assert_eq!(lens, [1448, 1448]);
}

#[test]
fn ip_and_tcp_options_are_copied_into_every_segment() {
    let s = Spec {
        ip_opts: &RR_OPTS,
        tcp_opts: &TS_OPTS,
        mss: 1428,
        payload_len: 5000,
        ..Spec::default()
    };
    let (_, frame) = build(&s);
    let segs = run(&s);
    assert_eq!(segs.len(), 4);
    for g in &segs {
        let ip = &g.bytes[ETH_LEN..];
        assert_eq!(ip[0], 0x47, "IHL 7");
        assert_eq!(&ip[20..28], &RR_OPTS);
        assert_eq!(&ip[28 + 20..28 + 32], &TS_OPTS);
        // Everything but lengths, IDs, seq, flags and checksums is the original's.
        assert_eq!(&g.bytes[..ETH_LEN], &frame[..ETH_LEN]);
        assert_eq!(
            &ip[8..10],
            &frame[ETH_LEN + 8..ETH_LEN + 10],
            "TTL, protocol"
        );
        assert_eq!(
            &ip[28 + 8..28 + 13],
            &frame[ETH_LEN + 36..ETH_LEN + 41],
            "ack, doff"
        );
    }
}

#[test]
fn ipv6_payload_length_per_segment() {
    let s = Spec {
        v6: true,
        tcp_opts: &TS_OPTS,
        mss: 1428,
        payload_len: 3000,
        flags: ACK | PSH | FIN,
        ..Spec::default()
    };
    let segs = run(&s);
    let flags: Vec<_> = segs.iter().map(|g| g.flags).collect();
    assert_eq!(flags, [ACK, ACK, ACK | PSH | FIN]);
    assert_eq!(segs[2].payload.len(), 3000 - 2 * 1428);
    assert_eq!(segs[1].seq, s.seq + 1428);
}

#[test]
fn tun_frames_without_l2_header() {
    for v6 in [false, true] {
        let s = Spec {
            l2: false,
            v6,
            ..Spec::default()
        };
        let (vnet, _) = build(&s);
        assert_eq!(vnet.csum_start, if v6 { 40 } else { 20 });
        assert_eq!(run(&s).len(), 3);
    }
}

#[test]
fn uso_gives_each_datagram_its_own_header() {
    for v6 in [false, true] {
        let s = Spec {
            udp: true,
            v6,
            mss: 1200,
            payload_len: 10_000,
            ..Spec::default()
        };
        let segs = run(&s);
        let lens: Vec<_> = segs.iter().map(|g| g.payload.len()).collect();
        assert_eq!(lens, [1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 400]);
        if !v6 {
            let ids: Vec<_> = segs.iter().map(|g| g.ip_id.unwrap()).collect();
            assert_eq!(ids, (0..9).map(|i| 0x1234 + i).collect::<Vec<_>>());
        }
    }
}

#[test]
fn udp_checksum_zero_is_sent_as_ffff() {
    let s = Spec {
        udp: true,
        mss: 100,
        payload_len: 150,
        ..Spec::default()
    };
    let (vnet, mut frame) = build(&s);
    // Choose the first datagram's last two payload bytes so its checksum folds to 0.
    let l4 = ETH_LEN + 20;
    let patch = l4 + 8 + 98;
    frame[patch..patch + 2].fill(0);
    let mut scratch = [0u8; 512];
    let first = GsoFrame::parse(&vnet, &frame, ETH_LEN)
        .unwrap()
        .write_segment(0, &mut scratch)
        .unwrap()
        .to_vec();
    let c = u16::from_be_bytes([first[l4 + 6], first[l4 + 7]]);
    // c is the complement of the datagram's sum S; adding the word c makes it S + !S = 0xffff,
    // whose checksum folds to 0.
    frame[patch..patch + 2].copy_from_slice(&c.to_be_bytes());
    let mut c2 = 0;
    let mut seen = Vec::new();
    segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |seg| {
        seen.push(seg.len());
        if seen.len() == 1 {
            c2 = u16::from_be_bytes([seg[l4 + 6], seg[l4 + 7]]);
            let sum = checksum::sum(&seg[l4..], checksum::sum(&seg[26..34], 17 + 108));
            assert_eq!(checksum::fold(sum), 0, "still a valid checksum");
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(c2, 0xffff);
}

#[test]
fn a_frame_within_one_mss_gives_one_complete_segment() {
    let s = Spec {
        payload_len: 1000,
        flags: ACK | PSH | FIN | CWR,
        ..Spec::default()
    };
    let segs = run(&s);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].flags, ACK | PSH | FIN | CWR);
    assert_eq!(segs[0].seq, s.seq);
    assert_eq!(segs[0].ip_id, Some(s.id));
    // No payload at all: still one segment, the headers.
    let empty = Spec {
        payload_len: 0,
        ..Spec::default()
    };
    assert_eq!(run(&empty)[0].payload.len(), 0);
}

#[test]
fn largest_frame_in_one_segment() {
    // 65535 IP bytes behind an Ethernet header, gso_size larger than the payload.
    let s = Spec {
        payload_len: 65535 - 40,
        mss: u16::MAX,
        ..Spec::default()
    };
    let segs = run(&s);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].bytes.len(), ETH_LEN + 65535);
}

#[test]
fn ethernet_padding_after_the_packet_is_dropped() {
    let s = Spec::default();
    let (vnet, mut frame) = build(&s);
    frame.extend_from_slice(&[0xee; 9]);
    let mut scratch = [0u8; 2048];
    let mut total = 0;
    segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |seg| {
        total += check(seg, &s).payload.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(total, 4000);
}

#[test]
fn write_segment_and_counts_agree() {
    let s = Spec::default();
    let (vnet, frame) = build(&s);
    let g = GsoFrame::parse(&vnet, &frame, ETH_LEN).unwrap();
    assert_eq!(g.segment_count(), 3);
    assert_eq!(g.header_len(), 54);
    assert_eq!(g.payload_len(), 4000);
    assert_eq!(g.max_segment_len(), 54 + 1448);
    let mut out = [0u8; 54 + 1448];
    assert_eq!(
        g.write_segment(2, &mut out).unwrap().len(),
        54 + 4000 - 2 * 1448
    );
    assert_eq!(
        g.write_segment(3, &mut out),
        Err(GsoError::NoSuchSegment { index: 3, count: 3 })
    );
    let mut small = [0u8; 100];
    assert_eq!(
        g.write_segment(0, &mut small),
        Err(GsoError::ScratchTooSmall {
            need: 1502,
            have: 100
        })
    );
    let mut calls = 0;
    let r = g.segment_each::<GsoError>(&mut small, |_| {
        calls += 1;
        Ok(())
    });
    assert!(matches!(r, Err(GsoError::ScratchTooSmall { .. })));
    assert_eq!(
        calls, 0,
        "nothing emitted when the scratch buffer is too small"
    );
}

#[test]
fn emit_errors_stop_the_loop() {
    #[derive(Debug, PartialEq)]
    enum TxError {
        Full,
        Gso(GsoError),
    }
    impl From<GsoError> for TxError {
        fn from(e: GsoError) -> Self {
            TxError::Gso(e)
        }
    }
    let (vnet, frame) = build(&Spec::default());
    let mut scratch = [0u8; 2048];
    let mut calls = 0;
    let r = segment(&vnet, &frame, ETH_LEN, &mut scratch, |_| {
        calls += 1;
        if calls == 2 {
            Err(TxError::Full)
        } else {
            Ok(())
        }
    });
    assert_eq!(r, Err(TxError::Full));
    assert_eq!(calls, 2);
    let bad = VnetHdr {
        gso_size: 0,
        ..vnet
    };
    let r = segment(&bad, &frame, ETH_LEN, &mut scratch, |_| Ok(()));
    assert_eq!(r, Err(TxError::Gso(GsoError::ZeroGsoSize)));
}

/// A header edit and the error it must give, one row per lie.
type Lie = (&'static str, fn(&mut VnetHdr, &mut Vec<u8>), GsoError);

#[test]
fn lying_headers_give_typed_errors() {
    let table: &[Lie] = &[
        ("gso_size 0", |v, _| v.gso_size = 0, GsoError::ZeroGsoSize),
        (
            "not GSO",
            |v, _| v.gso_type = GSO_NONE,
            GsoError::NotGso { gso_type: 0 },
        ),
        (
            "ECN bit alone is not GSO",
            |v, _| v.gso_type = GSO_ECN,
            GsoError::NotGso { gso_type: 0x80 },
        ),
        (
            "UFO is not segmented here",
            |v, _| v.gso_type = GSO_UDP,
            GsoError::UnsupportedType { gso_type: GSO_UDP },
        ),
        (
            "unknown GSO type",
            |v, _| v.gso_type = 9,
            GsoError::UnsupportedType { gso_type: 9 },
        ),
        (
            "USO on a TCP packet",
            |v, _| {
                v.gso_type = GSO_UDP_L4;
                v.csum_offset = 6;
            },
            GsoError::ProtocolMismatch {
                gso_type: GSO_UDP_L4,
                protocol: 6,
            },
        ),
        (
            "TCPv6 on an IPv4 packet",
            |v, _| v.gso_type = GSO_TCPV6,
            GsoError::VersionMismatch {
                gso_type: GSO_TCPV6,
                version: 4,
            },
        ),
        (
            "csum_start past the frame",
            |v, _| v.csum_start = 60000,
            GsoError::CsumStartMismatch {
                csum_start: 60000,
                l4_start: 34,
            },
        ),
        (
            "csum_start inside the IP header",
            |v, _| v.csum_start = 20,
            GsoError::CsumStartMismatch {
                csum_start: 20,
                l4_start: 34,
            },
        ),
        (
            "csum_offset not the TCP checksum",
            |v, _| v.csum_offset = 6,
            GsoError::CsumOffsetMismatch {
                csum_offset: 6,
                want: 16,
            },
        ),
        (
            "hdr_len past the frame",
            |v, _| v.hdr_len = 65535,
            GsoError::HdrLenOutOfBounds {
                hdr_len: 65535,
                frame_len: 4054,
            },
        ),
        (
            "gso_size below TCP's minimum",
            |v, _| v.gso_size = MIN_TCP_GSO_SIZE - 1,
            GsoError::GsoSizeTooSmall {
                gso_size: MIN_TCP_GSO_SIZE - 1,
                min: MIN_TCP_GSO_SIZE,
            },
        ),
        (
            "segment count absurd",
            |v, _| v.gso_size = 1,
            GsoError::GsoSizeTooSmall {
                gso_size: 1,
                min: MIN_TCP_GSO_SIZE,
            },
        ),
        (
            "TCP data offset below 5",
            |_, f| f[34 + 12] = 0x40,
            GsoError::BadTcpHeaderLen { doff: 4 },
        ),
        (
            "TCP options past the packet",
            |_, f| {
                f[34 + 12] = 0xf0;
                f.truncate(34 + 40);
                f[16..18].copy_from_slice(&60u16.to_be_bytes());
            },
            GsoError::Truncated {
                what: "TCP options",
                need: 34 + 60,
                frame_len: 74,
            },
        ),
        (
            "truncated in the TCP header",
            |_, f| {
                f.truncate(34 + 10);
                f[16..18].copy_from_slice(&30u16.to_be_bytes());
            },
            GsoError::Truncated {
                what: "TCP header",
                need: 54,
                frame_len: 44,
            },
        ),
        (
            "truncated in the IPv4 header",
            |_, f| f.truncate(30),
            GsoError::Truncated {
                what: "IPv4 header",
                need: 34,
                frame_len: 30,
            },
        ),
        (
            "total length past the frame",
            |_, f| f[16..18].copy_from_slice(&5000u16.to_be_bytes()),
            GsoError::BadIpLength {
                ip_len: 5000,
                header_len: 20,
                avail: 4040,
            },
        ),
        (
            "total length inside the header",
            |_, f| f[16..18].copy_from_slice(&10u16.to_be_bytes()),
            GsoError::BadIpLength {
                ip_len: 10,
                header_len: 20,
                avail: 4040,
            },
        ),
        (
            "IHL below 5",
            |_, f| f[14] = 0x44,
            GsoError::BadIpHeaderLen { ihl_bytes: 16 },
        ),
        (
            "not IP",
            |_, f| f[14] = 0x95,
            GsoError::BadIpVersion {
                version: 9,
                l3_offset: 14,
            },
        ),
        ("a fragment", |_, f| f[20] |= 0x20, GsoError::Fragment),
        (
            "a UDP packet under TSO",
            |_, f| f[23] = 17,
            GsoError::ProtocolMismatch {
                gso_type: GSO_TCPV4,
                protocol: 17,
            },
        ),
        (
            "frame shorter than the L2 offset",
            |_, f| f.truncate(10),
            GsoError::Truncated {
                what: "IP header",
                need: 15,
                frame_len: 10,
            },
        ),
    ];
    let (vnet, frame) = build(&Spec::default());
    let mut scratch = vec![0u8; 65536];
    for (what, edit, want) in table {
        let (mut v, mut f) = (vnet, frame.clone());
        edit(&mut v, &mut f);
        let mut emitted = 0;
        let r = segment::<GsoError>(&v, &f, ETH_LEN, &mut scratch, |_| {
            emitted += 1;
            Ok(())
        });
        assert_eq!(r, Err(*want), "{what}");
        assert_eq!(emitted, 0, "{what}: nothing emitted");
    }
}

#[test]
fn uso_lies_give_typed_errors() {
    let s = Spec {
        udp: true,
        mss: 1200,
        ..Spec::default()
    };
    let (vnet, frame) = build(&s);
    let mut scratch = vec![0u8; 4096];
    let mut try_with =
        |v: VnetHdr| segment::<GsoError>(&v, &frame, ETH_LEN, &mut scratch, |_| Ok(()));
    assert_eq!(
        try_with(VnetHdr { flags: 0, ..vnet }),
        Err(GsoError::UsoWithoutCsum)
    );
    assert_eq!(
        try_with(VnetHdr {
            gso_type: GSO_UDP_L4 | GSO_ECN,
            ..vnet
        }),
        Err(GsoError::UnsupportedType { gso_type: 0x85 })
    );
    assert_eq!(
        try_with(VnetHdr {
            gso_size: 31,
            ..vnet
        }),
        Err(GsoError::TooManySegments {
            segments: 130,
            gso_size: 31,
            max: MAX_UDP_SEGMENTS
        })
    );
    assert_eq!(
        try_with(VnetHdr {
            gso_type: GSO_TCPV4,
            csum_offset: 16,
            ..vnet
        }),
        Err(GsoError::ProtocolMismatch {
            gso_type: GSO_TCPV4,
            protocol: 17
        })
    );
}

#[test]
fn tso_without_needs_csum_still_gets_full_checksums() {
    // Linux accepts TSO without NEEDS_CSUM and computes the checksum itself; so do we.
    let s = Spec::default();
    let (mut vnet, mut frame) = build(&s);
    vnet.flags = FLAG_DATA_VALID;
    vnet.csum_start = 0;
    frame[34 + 16..34 + 18].copy_from_slice(&[0xde, 0xad]);
    let mut scratch = [0u8; 2048];
    let n = segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |seg| {
        check(seg, &s);
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 3);
}

#[test]
fn any_truncation_is_an_error_never_a_panic() {
    for s in [
        Spec::default(),
        Spec {
            v6: true,
            tcp_opts: &TS_OPTS,
            ..Spec::default()
        },
        Spec {
            udp: true,
            ..Spec::default()
        },
    ] {
        let (vnet, frame) = build(&s);
        let hdr = usize::from(vnet.hdr_len);
        let mut scratch = vec![0u8; 4096];
        for cut in 0..hdr {
            let r = segment::<GsoError>(&vnet, &frame[..cut], ETH_LEN, &mut scratch, |_| Ok(()));
            assert!(r.is_err(), "cut at {cut}");
        }
    }
}

// ---- complete_checksum ------------------------------------------------------------------

/// A single TCP or UDP packet with a partial checksum, as a non-GSO frame from a pod.
fn partial(s: &Spec) -> (VnetHdr, Vec<u8>) {
    let (mut vnet, frame) = build(&Spec {
        mss: 1500,
        ..s.clone()
    });
    vnet.gso_type = GSO_NONE;
    vnet.gso_size = 0;
    (vnet, frame)
}

#[test]
fn complete_checksum_finishes_tcp_and_udp() {
    for (udp, v6) in [(false, false), (false, true), (true, false), (true, true)] {
        let s = Spec {
            udp,
            v6,
            payload_len: 333,
            ..Spec::default()
        };
        let (vnet, mut frame) = partial(&s);
        complete_checksum(&vnet, &mut frame, ETH_LEN).unwrap();
        check(&frame, &s);
    }
}

#[test]
fn complete_checksum_ignores_padding_and_leaves_other_frames() {
    let s = Spec {
        payload_len: 10,
        ..Spec::default()
    };
    let (vnet, mut frame) = partial(&s);
    let len = frame.len();
    frame.extend_from_slice(&[0xff; 6]);
    complete_checksum(&vnet, &mut frame, ETH_LEN).unwrap();
    check(&frame[..len], &s);

    let untouched = frame.clone();
    let plain = VnetHdr {
        flags: FLAG_DATA_VALID,
        ..vnet
    };
    complete_checksum(&plain, &mut frame, ETH_LEN).unwrap();
    assert_eq!(frame, untouched, "no NEEDS_CSUM: nothing to do");
}

#[test]
fn complete_checksum_rejects_offsets_outside_the_packet() {
    let s = Spec {
        payload_len: 10,
        ..Spec::default()
    };
    let (vnet, frame) = partial(&s);
    // (csum_start, csum_offset, what)
    let table = [
        (20, 16, "inside the IP header"),
        (34, 30, "field past the end"),
        (34, 29, "field half past the end"),
        (65535, 65535, "both maximal"),
    ];
    for (csum_start, csum_offset, what) in table {
        let v = VnetHdr {
            csum_start,
            csum_offset,
            ..vnet
        };
        let mut f = frame.clone();
        let r = complete_checksum(&v, &mut f, ETH_LEN);
        assert!(
            matches!(r, Err(GsoError::CsumOutOfBounds { .. })),
            "{what}: {r:?}"
        );
        assert_eq!(f, frame, "{what}: frame untouched");
    }
    let gso = VnetHdr {
        gso_type: GSO_TCPV4,
        ..vnet
    };
    let mut f = frame.clone();
    assert_eq!(
        complete_checksum(&gso, &mut f, ETH_LEN),
        Err(GsoError::IsGso {
            gso_type: GSO_TCPV4
        })
    );
}

#[test]
fn complete_checksum_zero_becomes_ffff() {
    // The field holds the pseudo-header sum; make the data sum to its complement.
    let s = Spec {
        udp: true,
        payload_len: 4,
        ..Spec::default()
    };
    let (vnet, mut frame) = partial(&s);
    let l4 = ETH_LEN + 20;
    frame[l4 + 8..l4 + 10].fill(0);
    // c is the complement of the sum S; adding the word c makes the total S + !S = 0xffff,
    // whose checksum folds to 0.
    let c = checksum::checksum(&frame[l4..]);
    frame[l4 + 8..l4 + 10].copy_from_slice(&c.to_be_bytes());
    complete_checksum(&vnet, &mut frame, ETH_LEN).unwrap();
    assert_eq!(&frame[l4 + 6..l4 + 8], &[0xff, 0xff]);
}

#[test]
fn tcp_gso_size_at_the_minimum_is_segmented() {
    let s = Spec {
        mss: MIN_TCP_GSO_SIZE,
        payload_len: 100,
        ..Spec::default()
    };
    let (vnet, frame) = build(&s);
    let mut scratch = vec![0u8; 4096];
    let n = segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |seg| {
        check(seg, &s);
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 13);
}

#[test]
fn wire_len_counts_the_headers_of_every_segment() {
    let s = Spec::default();
    let (vnet, frame) = build(&s);
    let mut scratch = vec![0u8; 4096];
    let mut sent = 0;
    let n = segment::<GsoError>(&vnet, &frame, ETH_LEN, &mut scratch, |seg| {
        sent += seg.len();
        Ok(())
    })
    .unwrap();
    assert!(n > 1);
    assert_eq!(wire_len(&vnet, &frame, ETH_LEN), sent);
    assert!(sent > frame.len(), "every segment carries its own headers");
    assert_eq!(
        wire_len(&VnetHdr::default(), &frame, ETH_LEN),
        frame.len(),
        "a plain frame is its own length"
    );
    let lie = VnetHdr {
        gso_size: 0,
        ..vnet
    };
    assert_eq!(wire_len(&lie, &frame, ETH_LEN), frame.len());
}

/// BIG TCP (`--big-tcp`): a TCP super-frame longer than 64 KiB, IP length 0, IPv4, IPv6, and
/// IPv6 behind the jumbo header Linux 6.18 still inserts: segmented like any other (every
/// segment a complete packet with its own length, no jumbo header, full checksums).
#[test]
fn big_tcp_frames_segment_like_any_other() {
    for (v6, jumbo_hbh, what) in [
        (false, false, "IPv4, total length 0"),
        (true, false, "IPv6, payload length 0"),
        (true, true, "IPv6 with the jumbo header"),
    ] {
        let s = Spec {
            v6,
            jumbo_hbh,
            payload_len: 150_000,
            ..Spec::default()
        };
        let segs = run(&s);
        assert_eq!(segs.len(), 150_000usize.div_ceil(1448), "{what}");
        let last = segs.last().unwrap();
        assert_eq!(
            last.seq,
            0x1000_0000 + (segs.len() as u32 - 1) * 1448,
            "{what}"
        );
        if !v6 {
            assert_eq!(last.ip_id, Some(0x1234 + segs.len() as u16 - 1), "{what}");
        } else {
            assert!(segs.iter().all(|g| g.bytes[ETH_LEN + 6] == 6), "{what}");
        }
    }
}

/// The segments a BIG TCP frame stands for, and those of its chunks: identical, byte for
/// byte (sequence numbers, IPv4 IDs, flags, checksums). Each chunk is a GSO frame of at most
/// 65535 IP bytes with the pseudo-header sum over its own length in the checksum field.
#[test]
fn big_tcp_chunks_segment_into_the_same_segments() {
    for (v6, jumbo_hbh, payload_len) in [
        (false, false, 150_000),
        (true, false, 150_000),
        (true, true, 196_000),
        (false, false, 3 * 65_000),
        // Two full chunks of 45 segments and a last one of 1 byte: a complete segment.
        (false, false, 2 * 45 * 1448 + 1),
    ] {
        let s = Spec {
            v6,
            jumbo_hbh,
            payload_len,
            flags: ACK | PSH | FIN | CWR,
            tcp_opts: &TS_OPTS,
            ..Spec::default()
        };
        let (vnet, frame) = build(&s);
        let g = GsoFrame::parse(&vnet, &frame, ETH_LEN).unwrap();
        assert!(g.is_big());
        let mut whole = Vec::new();
        let mut scratch = vec![0xa5; 1 << 17];
        g.segment_each::<GsoError>(&mut scratch, |seg| {
            whole.push(seg.to_vec());
            Ok(())
        })
        .unwrap();
        let mut pieces = Vec::new();
        let mut chunk_buf = vec![0xa5; 1 << 17];
        for i in 0..g.chunk_count() {
            let (cv, chunk) = g.write_chunk(i, &mut chunk_buf).unwrap();
            let ip_len = chunk.len() - ETH_LEN;
            assert!(ip_len <= 65535, "chunk {i}: {ip_len} IP bytes");
            if !cv.is_gso() {
                // A chunk of at most one segment is one, complete: nothing left to do.
                assert_eq!(cv, VnetHdr::default());
                pieces.push(check(chunk, &s).bytes);
                continue;
            }
            let l4 = usize::from(cv.csum_start);
            assert_eq!(cv.csum_offset, 16);
            assert!(cv.needs_csum());
            // The field holds the pseudo-header sum: completing it gives the full checksum.
            let completed = checksum::fold(checksum::sum(&chunk[l4..], 0));
            let addrs = if v6 {
                &chunk[ETH_LEN + 8..ETH_LEN + 40]
            } else {
                &chunk[ETH_LEN + 12..ETH_LEN + 20]
            };
            let mut zeroed = chunk[l4..].to_vec();
            zeroed[16..18].fill(0);
            let pseudo = checksum::sum(addrs, 6 + zeroed.len() as u32);
            assert_eq!(completed, checksum::fold(checksum::sum(&zeroed, pseudo)));
            let n = segment::<GsoError>(&cv, chunk, ETH_LEN, &mut scratch, |seg| {
                pieces.push(seg.to_vec());
                Ok(())
            })
            .unwrap();
            assert!(n > 1);
        }
        assert_eq!(pieces.len(), whole.len(), "v6 {v6} hbh {jumbo_hbh}");
        for (i, (a, b)) in pieces.iter().zip(&whole).enumerate() {
            assert!(a == b, "segment {i} differs (v6 {v6} hbh {jumbo_hbh})");
        }
        assert!(g.write_chunk(g.chunk_count(), &mut chunk_buf).is_err());
    }
}

/// A length of 0 means "the frame's length" only on a TCP GSO frame longer than 64 KiB:
/// on a shorter one, on USO, on a jumbo header that lies, or for `complete_checksum`, it is
/// an error (a counted drop), never a panic.
#[test]
fn fake_big_tcp_frames_are_errors() {
    // IPv4 total length 0 on a 60 000-byte TCP frame.
    let (vnet, mut frame) = build(&Spec {
        payload_len: 60_000,
        ..Spec::default()
    });
    frame[ETH_LEN + 2..ETH_LEN + 4].fill(0);
    assert!(matches!(
        GsoFrame::parse(&vnet, &frame, ETH_LEN),
        Err(GsoError::BadIpLength { ip_len: 0, .. })
    ));
    // IPv6 payload length 0 on a 60 000-byte frame.
    let (vnet, mut frame) = build(&Spec {
        v6: true,
        payload_len: 60_000,
        ..Spec::default()
    });
    frame[ETH_LEN + 4..ETH_LEN + 6].fill(0);
    assert!(GsoFrame::parse(&vnet, &frame, ETH_LEN).is_err());
    // USO with total length 0 beyond 64 KiB.
    let (vnet, frame) = build(&Spec {
        udp: true,
        mss: 1000,
        payload_len: 100_000,
        ..Spec::default()
    });
    assert!(matches!(
        GsoFrame::parse(&vnet, &frame, ETH_LEN),
        Err(GsoError::BadIpLength { ip_len: 0, .. })
    ));
    // A jumbo header whose length is not the frame's, or with another option.
    for (at, value) in [(ETH_LEN + 47, 0x01u8), (ETH_LEN + 42, 0xc3)] {
        let (vnet, mut frame) = build(&Spec {
            v6: true,
            jumbo_hbh: true,
            payload_len: 100_000,
            ..Spec::default()
        });
        frame[at] ^= value;
        assert!(GsoFrame::parse(&vnet, &frame, ETH_LEN).is_err(), "{at}");
    }
    // A plain frame with a partial checksum and total length 0 beyond 64 KiB.
    let (mut vnet, mut frame) = build(&Spec {
        payload_len: 100_000,
        ..Spec::default()
    });
    vnet.gso_type = GSO_NONE;
    assert!(complete_checksum(&vnet, &mut frame, ETH_LEN).is_err());
}
