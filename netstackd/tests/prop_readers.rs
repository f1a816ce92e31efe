//! Property tests of the readers' length decisions and of the router's lengths: whatever a
//! kernel reports (any length, any flags, any ring header) and whatever length a caller passes
//! with any bytes, the answer is a frame that lies inside its buffer or a drop, never a panic.
//! The kernel's own behaviour is checked by the root tests in `sys/tap.rs` and
//! `sys/packet.rs`.

use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};

use netstackd::stack::{DropReason, LinkCounters, PodPort, Router, Verdict};
use netstackd::sys::packet::{mmsg_rx_len, ring_rx_len, RING_FRAME};
use netstackd::sys::tap::{tap_rx_len, RxFrame};
use netstackd::wire::vnet::VNET_HDR_LEN;
use netstackd::wire::{MacAddr, VnetHdr};
use proptest::prelude::*;

const MAC_A: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 5]);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD_A: u64 = 1;
/// The `tpacket2_hdr` in front of the virtio-net header in a ring frame.
const TPACKET2_HDR_LEN: usize = 32;

static ROUTER: LazyLock<Router<()>> = LazyLock::new(|| {
    let mut r = Router::new(Ipv4Addr::new(10, 244, 1, 1), 1500);
    r.insert(PodPort {
        id: POD_A,
        mac: MAC_A,
        ipv4: vec![IP_A],
        ipv6: vec![],
        gateway_v6: None,
        mtu: 1500,
        counters: Arc::new(LinkCounters::new(1)),
        io: (),
    });
    r
});

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Lengths near the interesting edges as well as anywhere.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..200, 65_000usize..140_000, any::<usize>()]
}

proptest! {
    #![proptest_config(config())]

    /// TAP/TUN: a whole frame only when the reported length covers the header and leaves
    /// room in the buffer (a full buffer is a cut frame), and then exactly those bytes.
    #[test]
    fn tap_lengths_beyond_the_buffer_are_oversize(read in length(), buf in length()) {
        match tap_rx_len(read, buf) {
            RxFrame::Whole(n) => prop_assert!(n < buf && n + VNET_HDR_LEN == read),
            RxFrame::Oversize => prop_assert!(read >= VNET_HDR_LEN && read - VNET_HDR_LEN >= buf),
            RxFrame::Malformed => prop_assert!(read < VNET_HDR_LEN),
        }
    }

    /// recvmmsg: as for TAP, and a message flagged MSG_TRUNC is never whole.
    #[test]
    fn truncated_messages_are_never_whole(len in length(), flags in any::<i32>(), buf in length()) {
        let got = mmsg_rx_len(len, flags, buf);
        if let RxFrame::Whole(n) = got {
            prop_assert!(flags & libc::MSG_TRUNC == 0);
            prop_assert!(n <= buf && n + VNET_HDR_LEN == len);
        }
        if flags & libc::MSG_TRUNC != 0 && len >= VNET_HDR_LEN {
            prop_assert_eq!(got, RxFrame::Oversize);
        }
    }

    /// The ring: a copy is allowed only of a frame the kernel did not cut, whose header and
    /// bytes lie inside the ring frame and fit the buffer.
    #[test]
    fn ring_frames_are_copied_only_from_inside_their_slot(
        mac in prop_oneof![0usize..100, any::<u16>().prop_map(usize::from)],
        snaplen in length(),
        len in length(),
        buf in length(),
    ) {
        match ring_rx_len(mac, snaplen, len, buf) {
            RxFrame::Whole(n) => {
                prop_assert_eq!(n, snaplen);
                prop_assert_eq!(n, len);
                prop_assert!(mac >= VNET_HDR_LEN + TPACKET2_HDR_LEN);
                prop_assert!(mac + n <= RING_FRAME && n <= buf);
            }
            RxFrame::Oversize => prop_assert!(len > snaplen || snaplen > buf),
            RxFrame::Malformed => {}
        }
    }

    /// The router, given a length beyond its buffer with any bytes in it: `oversize`.
    #[test]
    fn router_lengths_beyond_the_buffer_are_oversize(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        fix_mac in any::<bool>(),
        over in prop_oneof![1usize..100, any::<usize>()],
        raw in any::<[u8; VNET_HDR_LEN]>(),
    ) {
        let mut buf = bytes;
        if fix_mac && buf.len() >= 14 {
            buf[6..12].copy_from_slice(&MAC_A.0);
            buf[12..14].copy_from_slice(&[8, 0]);
        }
        let len = buf.len().saturating_add(over);
        let mut vnet = VnetHdr::parse(&raw);
        prop_assert_eq!(
            ROUTER.from_pod(POD_A, &mut vnet, &mut buf, len),
            Verdict::Drop(DropReason::Oversize)
        );
        let ip_len = len.saturating_sub(14);
        if 14usize.saturating_add(ip_len) > buf.len() {
            prop_assert_eq!(
                ROUTER.from_uplink(&mut vnet, &mut buf, ip_len),
                Verdict::Drop(DropReason::Oversize)
            );
        }
    }
}

#[test]
fn tpacket2_header_size_is_the_kernels() {
    assert_eq!(size_of::<libc::tpacket2_hdr>(), TPACKET2_HDR_LEN);
}
