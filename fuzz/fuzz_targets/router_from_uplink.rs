//! An IP packet from the node's uplink TUN (virtio-net header, IPv4 or IPv6 packet), read as a
//! worker reads it (14 bytes into the slot, room for the Ethernet header), through
//! `Router::from_uplink`. A panic is a bug, and so is a frame to a pod that does not exist,
//! with bytes the uplink never gave, or with checksum offsets the pod's kernel would refuse.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack_fuzz::{mac_of, router, slot_with, split_vnet};
use netstackd::stack::Verdict;
use netstackd::wire::ethernet;

fuzz_target!(|data: &[u8]| {
    let Some((mut vnet, packet)) = split_vnet(data) else {
        return;
    };
    let r = router();
    let (mut buf, n) = slot_with(ethernet::HEADER_LEN, packet);
    if let Verdict::ToPod { id, len } = r.from_uplink(&mut vnet, &mut buf, n) {
        let mac = mac_of(id).expect("verdict names an unknown pod");
        assert!(
            len > ethernet::HEADER_LEN && len <= ethernet::HEADER_LEN + n,
            "len {len} for {n} IP bytes"
        );
        assert_eq!(&buf[..6], &mac.0, "destination MAC");
        assert!(vnet.csum_in_bounds(len), "{vnet:?} for a {len}-byte frame");
    }
});
