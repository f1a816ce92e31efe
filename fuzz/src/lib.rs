//! What the fuzz targets share: the router a worker would have with two pods attached, and a
//! frame buffer as large as a worker's slot.
//!
//! Fuzz inputs that carry a frame start with the 10-byte virtio-net header the device puts
//! before it ([`split_vnet`]), so the fuzzer drives checksum and GSO offloads as a hostile pod
//! (or the uplink) can.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use netstackd::stack::{LinkCounters, PodPort, Router};
use netstackd::wire::vnet::VNET_HDR_LEN;
use netstackd::wire::{MacAddr, VnetHdr};

pub use netstackd::dataplane::qdisc::SLOT_LEN;

/// Pod A: the source of every frame `router_from_pod` sends.
pub const POD_A: u64 = 1;
/// Pod B: a second pod on the node, with a smaller MTU.
pub const POD_B: u64 = 2;
/// Pod A's MAC.
pub const MAC_A: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 5]);
/// Pod B's MAC.
pub const MAC_B: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 6]);
/// Pod A's IPv4 address.
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// Pod B's IPv4 address.
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
/// The pods' IPv4 gateway.
pub const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// Pod A's IPv6 address.
pub const IP6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
/// Pod B's IPv6 address.
pub const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 6);
/// The pods' IPv6 gateway.
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);
/// The uplink's MTU.
pub const UPLINK_MTU: u32 = 1500;
/// Pod B's MTU (pod A has the uplink's), so MTU checks differ by destination.
pub const MTU_B: u32 = 1400;

/// A worker's router with pods A and B attached.
pub fn router() -> Router<()> {
    let mut r = Router::new(GW, UPLINK_MTU);
    let pods = [
        (POD_A, MAC_A, IP_A, IP6_A, UPLINK_MTU),
        (POD_B, MAC_B, IP_B, IP6_B, MTU_B),
    ];
    for (id, mac, ip, ip6, mtu) in pods {
        r.insert(PodPort {
            id,
            mac,
            ipv4: vec![ip],
            ipv6: vec![ip6],
            gateway_v6: Some(GW6),
            mtu,
            counters: Arc::new(LinkCounters::new(1)),
            io: (),
        });
    }
    r
}

/// The pod's MAC, by attachment id.
pub fn mac_of(id: u64) -> Option<MacAddr> {
    match id {
        POD_A => Some(MAC_A),
        POD_B => Some(MAC_B),
        _ => None,
    }
}

/// Splits a fuzz input into the virtio-net header and the bytes after it; `None` when the
/// input is shorter than the header.
pub fn split_vnet(data: &[u8]) -> Option<(VnetHdr, &[u8])> {
    let (hdr, rest) = data.split_first_chunk::<VNET_HDR_LEN>()?;
    Some((VnetHdr::parse(hdr), rest))
}

/// A frame buffer as a worker's slot holds it: `SLOT_LEN` bytes, filled with 0xa5 past the
/// bytes that were "read" so a verdict that reaches beyond them shows up.
pub fn slot_with(at: usize, bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![0xa5u8; SLOT_LEN];
    let n = bytes.len().min(SLOT_LEN - at);
    buf[at..at + n].copy_from_slice(&bytes[..n]);
    (buf, n)
}
