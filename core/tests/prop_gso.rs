//! Property tests for the software GSO segmenter (`netstack_core::gso`): any virtio-net header with
//! any bytes (random, or a valid super-frame with a field bent or cut short) gives segments or
//! a `GsoError`, never a panic; and any valid TCP or USO super-frame (IPv4 or IPv6, with or
//! without an Ethernet header, random MSS, payload, IP and TCP options, flags, sequence number
//! and IP ID) segments into frames that each verify on their own, carry at most `gso_size`
//! payload bytes, and concatenate back to the original payload.

use netstack_core::gso::{self, GsoError, GsoFrame, MAX_TCP_SEGMENTS, MAX_UDP_SEGMENTS};
use netstack_core::wire::checksum;
use netstack_core::wire::vnet::{self, VnetHdr};
use proptest::prelude::*;

const ETH_LEN: usize = 14;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- a valid super-frame ----------------------------------------------------------------

/// What a generated super-frame looks like.
#[derive(Debug, Clone)]
struct Spec {
    v6: bool,
    l2: bool,
    udp: bool,
    ip_opts: Vec<u8>,
    tcp_opts: Vec<u8>,
    flags: u8,
    seq: u32,
    id: u16,
    mss: u16,
    payload: Vec<u8>,
}

impl Spec {
    fn l3(&self) -> usize {
        if self.l2 {
            ETH_LEN
        } else {
            0
        }
    }
}

/// The frame and header a Linux sender would produce: `NEEDS_CSUM`, the pseudo-header sum in
/// the checksum field, `csum_start` on the L4 header, `hdr_len` set.
fn build(s: &Spec) -> (VnetHdr, Vec<u8>) {
    let mut f = Vec::new();
    if s.l2 {
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(if s.v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    }
    let l3 = f.len();
    let l4_hlen = if s.udp { 8 } else { 20 + s.tcp_opts.len() };
    let l4_len = l4_hlen + s.payload.len();
    let proto = if s.udp { 17 } else { 6 };
    if s.v6 {
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        let ihl = 20 + s.ip_opts.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&s.id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0, 10, 244, 1, 5, 10, 244, 1, 6]);
        f.extend_from_slice(&s.ip_opts);
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
        f.extend_from_slice(&s.tcp_opts);
    }
    f.extend_from_slice(&s.payload);
    let addrs = if s.v6 {
        &f[l3 + 8..l3 + 40]
    } else {
        &f[l3 + 12..l3 + 20]
    };
    let pseudo = !checksum::fold(checksum::sum(addrs, u32::from(proto) + l4_len as u32));
    let field = l4 + if s.udp { 6 } else { 16 };
    f[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    let vnet = VnetHdr {
        flags: vnet::FLAG_NEEDS_CSUM,
        gso_type: match (s.udp, s.v6) {
            (true, _) => vnet::GSO_UDP_L4,
            (false, false) => vnet::GSO_TCPV4,
            (false, true) => vnet::GSO_TCPV6,
        },
        hdr_len: (l4 + l4_hlen) as u16,
        gso_size: s.mss,
        csum_start: l4 as u16,
        csum_offset: if s.udp { 6 } else { 16 },
        num_buffers: 0,
    };
    (vnet, f)
}

/// Options of 0..=40 bytes in 4-byte words.
fn options() -> impl Strategy<Value = Vec<u8>> {
    (0usize..=10).prop_flat_map(|words| prop::collection::vec(any::<u8>(), words * 4))
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.25),
        options(),
        options(),
        any::<u8>(),
        any::<u32>(),
        any::<u16>(),
    )
        .prop_flat_map(|(v6, l2, udp, ip_opts, tcp_opts, flags, seq, id)| {
            let ip_opts = if v6 { vec![] } else { ip_opts };
            let headers = if v6 { 40 } else { 20 + ip_opts.len() }
                + if udp { 8 } else { 20 + tcp_opts.len() };
            let max_payload = 65535 - headers;
            let max_segments = if udp {
                MAX_UDP_SEGMENTS
            } else {
                MAX_TCP_SEGMENTS
            };
            // An MSS that keeps the segment count within the limit for any payload here.
            let min_mss = max_payload.div_ceil(max_segments) as u16;
            let mss = prop_oneof![
                Just(1448u16),
                Just(1220u16),
                min_mss..=9000u16,
                min_mss..=u16::MAX,
            ];
            let len = prop_oneof![0usize..=3000, 0usize..=max_payload];
            (
                Just((v6, l2, udp, ip_opts, tcp_opts, flags, seq, id)),
                mss,
                len,
            )
        })
        .prop_map(
            |((v6, l2, udp, ip_opts, tcp_opts, flags, seq, id), mss, len)| Spec {
                v6,
                l2,
                udp,
                ip_opts,
                tcp_opts,
                flags,
                seq,
                id,
                mss,
                payload: (0..len).map(|i| (i * 131 + 7) as u8).collect(),
            },
        )
}

/// Checks one output frame on its own and returns its L4 payload.
fn check_segment(
    seg: &[u8],
    s: &Spec,
    index: usize,
    count: usize,
    offset: usize,
) -> Result<Vec<u8>, TestCaseError> {
    let l3 = s.l3();
    let ip = &seg[l3..];
    let (ihl, addrs) = if s.v6 {
        prop_assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])) + 40,
            ip.len()
        );
        (40, &ip[8..40])
    } else {
        let ihl = usize::from(ip[0] & 15) * 4;
        prop_assert_eq!(ihl, 20 + s.ip_opts.len());
        prop_assert_eq!(&ip[20..ihl], &s.ip_opts[..]);
        prop_assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        prop_assert_eq!(checksum::checksum(&ip[..ihl]), 0, "IPv4 header checksum");
        let id = u16::from_be_bytes([ip[4], ip[5]]);
        prop_assert_eq!(id, s.id.wrapping_add(index as u16));
        (ihl, &ip[12..20])
    };
    let l4 = &ip[ihl..];
    let proto = if s.udp { 17 } else { 6 };
    let sum = checksum::sum(l4, checksum::sum(addrs, proto + l4.len() as u32));
    prop_assert_eq!(checksum::fold(sum), 0, "L4 checksum");
    if s.udp {
        prop_assert_eq!(usize::from(u16::from_be_bytes([l4[4], l4[5]])), l4.len());
        return Ok(l4[8..].to_vec());
    }
    let thlen = usize::from(l4[12] >> 4) * 4;
    prop_assert_eq!(&l4[20..thlen], &s.tcp_opts[..]);
    let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    prop_assert_eq!(seq, s.seq.wrapping_add(offset as u32));
    let mut want = s.flags;
    if index + 1 != count {
        want &= !(FIN | PSH);
    }
    if index != 0 {
        want &= !CWR;
    }
    prop_assert_eq!(l4[13], want, "flags");
    Ok(l4[thlen..].to_vec())
}

// ---- any input --------------------------------------------------------------------------

fn vnet_hdr() -> impl Strategy<Value = VnetHdr> {
    let gso_type = prop_oneof![
        1 => Just(vnet::GSO_NONE),
        3 => Just(vnet::GSO_TCPV4),
        1 => Just(vnet::GSO_TCPV4 | vnet::GSO_ECN),
        1 => Just(vnet::GSO_UDP),
        2 => Just(vnet::GSO_TCPV6),
        2 => Just(vnet::GSO_UDP_L4),
        1 => any::<u8>(),
    ];
    let flags = prop_oneof![Just(vnet::FLAG_NEEDS_CSUM), Just(0u8), any::<u8>()];
    let small = prop_oneof![0u16..128, any::<u16>()];
    let offset = prop_oneof![Just(6u16), Just(16u16), any::<u16>()];
    (
        flags,
        gso_type,
        small.clone(),
        prop_oneof![0u16..4, 1u16..2000, any::<u16>()],
        small,
        offset,
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VnetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
                num_buffers: 0,
            },
        )
}

/// A valid super-frame's header and bytes with one thing bent: a byte changed, the frame cut
/// short, or the header replaced by an arbitrary one.
fn bent_frame() -> impl Strategy<Value = (VnetHdr, Vec<u8>, usize)> {
    (
        spec(),
        vnet_hdr(),
        0usize..3,
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(s, other, how, at, byte)| {
            let (mut v, mut f) = build(&s);
            match how {
                0 => {
                    let i = at.index(f.len().min(120));
                    f[i] = byte;
                }
                1 => f.truncate(at.index(f.len() + 1)),
                _ => v = other,
            }
            (v, f, s.l3())
        })
}

fn any_input() -> impl Strategy<Value = (VnetHdr, Vec<u8>, usize)> {
    prop_oneof![
        (
            vnet_hdr(),
            prop::collection::vec(any::<u8>(), 0..256),
            prop_oneof![Just(0usize), Just(ETH_LEN), 0usize..300]
        ),
        bent_frame(),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn segmenting_any_input_never_panics(
        (v, f, l3) in any_input(),
        scratch_len in prop_oneof![Just(1usize << 17), 0usize..2000],
        index in 0usize..4000,
    ) {
        let mut scratch = vec![0u8; scratch_len];
        let mut emitted = 0usize;
        let r = gso::segment::<GsoError>(&v, &f, l3, &mut scratch, |seg| {
            assert!(seg.len() <= f.len(), "a segment is never longer than its super-frame");
            emitted += 1;
            Ok(())
        });
        if let Ok(n) = r {
            prop_assert_eq!(n, emitted);
            prop_assert!(n >= 1);
        }
        if let Ok(g) = GsoFrame::parse(&v, &f, l3) {
            let _ = g.write_segment(index, &mut scratch);
        }
        let mut copy = f.clone();
        if gso::complete_checksum(&v, &mut copy, l3).is_err() {
            prop_assert_eq!(copy, f, "a refused frame is left untouched");
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_super_frames_segment_back_into_their_payload(s in spec()) {
        let (v, f) = build(&s);
        let mss = usize::from(s.mss);
        let count = s.payload.len().div_ceil(mss).max(1);
        let mut scratch = vec![0xa5u8; 1 << 17];
        let mut segs = Vec::new();
        let n = gso::segment::<GsoError>(&v, &f, s.l3(), &mut scratch, |seg| {
            segs.push(seg.to_vec());
            Ok(())
        });
        prop_assert_eq!(n, Ok(count));
        let mut payload = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let p = check_segment(seg, &s, i, count, payload.len())?;
            prop_assert!(p.len() <= mss, "segment {} has {} > mss {}", i, p.len(), mss);
            if i + 1 != count {
                prop_assert_eq!(p.len(), mss, "only the last segment is short");
            }
            payload.extend_from_slice(&p);
        }
        prop_assert_eq!(payload, s.payload.clone());
    }

    #[test]
    fn completed_checksums_verify(s in spec()) {
        // The same packet without GSO: its checksum completed in place must verify.
        let s = Spec { payload: s.payload[..s.payload.len().min(1400)].to_vec(), ..s };
        let (mut v, mut f) = build(&s);
        v.gso_type = vnet::GSO_NONE;
        v.gso_size = 0;
        gso::complete_checksum(&v, &mut f, s.l3()).expect("valid partial checksum");
        let p = check_segment(&f, &s, 0, 1, 0)?;
        prop_assert_eq!(p, s.payload.clone());
    }
}
