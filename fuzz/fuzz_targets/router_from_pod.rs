//! A frame from pod A, as a worker reads it from the pod's TAP (virtio-net header, Ethernet
//! frame), through `Router::from_pod`. Any verdict is fine; a panic is a bug, and so is a
//! verdict that sends bytes the pod never wrote, to a pod that does not exist, or with
//! checksum offsets the receiving kernel would refuse.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack_fuzz::{mac_of, router, slot_with, split_vnet, POD_A, SLOT_LEN};
use netstackd::stack::Verdict;
use netstackd::wire::{ethernet, EthernetFrame, Ipv4Packet, Ipv6Packet};

fuzz_target!(|data: &[u8]| {
    let Some((mut vnet, frame)) = split_vnet(data) else {
        return;
    };
    let r = router();
    let (mut buf, n) = slot_with(0, frame);
    match r.from_pod(POD_A, &mut vnet, &mut buf, n) {
        Verdict::ToPod { id, len } => {
            assert_ne!(id, POD_A, "a pod's frame back to itself");
            let mac = mac_of(id).expect("verdict names an unknown pod");
            assert!(len > ethernet::HEADER_LEN && len <= n, "len {len} of {n}");
            assert_eq!(&buf[..6], &mac.0, "destination MAC");
            assert!(vnet.csum_in_bounds(len), "{vnet:?} for a {len}-byte frame");
        }
        Verdict::ToUplink { len } => {
            assert!(len > ethernet::HEADER_LEN && len <= n, "len {len} of {n}");
            let ip_len = len - ethernet::HEADER_LEN;
            assert!(
                vnet.csum_in_bounds(ip_len),
                "{vnet:?} for {ip_len} IP bytes"
            );
        }
        Verdict::Reply { len, .. } => {
            assert!(
                len > ethernet::HEADER_LEN && len <= SLOT_LEN,
                "reply of {len}"
            );
            let eth = EthernetFrame::new_checked(&buf[..len]).expect("reply is Ethernet");
            assert_eq!(eth.dst(), mac_of(POD_A).unwrap(), "reply to the sender");
            let l3 = &buf[ethernet::HEADER_LEN..len];
            match eth.ethertype() {
                ethernet::ETHERTYPE_IPV4 => {
                    let ip = Ipv4Packet::new_checked(l3).expect("reply is IPv4");
                    assert_eq!(usize::from(ip.total_len()), l3.len());
                    assert!(ip.verify_checksum(), "reply's IPv4 header checksum");
                }
                ethernet::ETHERTYPE_IPV6 => {
                    let ip = Ipv6Packet::new_checked(l3).expect("reply is IPv6");
                    assert_eq!(ip.total_len(), l3.len());
                }
                ethernet::ETHERTYPE_ARP => {}
                other => panic!("reply of ethertype {other:#06x}"),
            }
            assert!(!vnet.is_gso() && !vnet.needs_csum(), "reply with offloads");
        }
        Verdict::Consumed | Verdict::Drop(_) => {}
    }
});
