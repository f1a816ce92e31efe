//! Forwarding decisions for frames from a pod and packets from the uplink.
//!
//! netstackd is the pods' router: it answers every ARP request a pod makes with one virtual
//! gateway MAC (proxy ARP), validates IPv4 as Linux `ip_rcv` does, enforces that a pod only
//! sends from its own MAC and IPs, decrements TTL (ICMP time exceeded at the end), and sends
//! each packet either straight into the destination pod's TAP or to the node's uplink TUN.
//! Frames are rewritten in place; the virtio-net header travels with them, so a 64 KB TSO
//! frame is forwarded whole.
//!
//! IPv6 follows the same rules: neighbor solicitations are answered with the gateway MAC for
//! every target but the pod's own addresses (proxy NDP), the hop limit is decremented with
//! ICMPv6 time exceeded at the end, packet too big replaces fragmentation needed, and a pod
//! may only send from its own addresses — or, for neighbor discovery and MLD only, from a
//! link-local or the unspecified address. Router solicitations, MLD reports and other
//! link-local multicast are consumed: netstackd routes no multicast.
//!
//! One exception to switching pod-to-pod traffic: a packet that answers one the uplink
//! delivered with a local pod as source (a Service's DNAT, see `flow.rs`) goes back to the
//! uplink, so that conntrack sees the reply of the flow it rewrote.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::wire::icmpv6::NeighborSolicit;
use crate::wire::{
    arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, ArpPacket, EthernetFrame, Ipv4Packet, Ipv6Packet,
    MacAddr, VnetHdr,
};

use super::counters::{DropReason, LinkCounters};
use super::flow::{FlowPacket, FlowTable};

/// The MAC netstackd answers with for every address a pod asks about (locally administered).
pub const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0x4e, 0x53, 0x00, 0x00, 0x01]);

/// Largest ICMP error netstackd generates, as RFC 1812 and Linux do.
const ICMP_ERROR_MAX: usize = 576;

/// The gateway's link-local address: the modified EUI-64 of [`GATEWAY_MAC`]. ICMPv6 errors
/// come from it when the pod has no IPv6 gateway address.
pub const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x004e, 0x53ff, 0xfe00, 1);

/// One pod interface as a worker sees it; `P` is the worker's handle to its TAP queue.
pub struct PodPort<P> {
    /// The attachment id, unique for the daemon's lifetime.
    pub id: u64,
    /// The pod's MAC.
    pub mac: MacAddr,
    /// The pod's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// The pod's IPv6 addresses (link-local ones are not listed: any fe80:: source from the
    /// pod's MAC is its own).
    pub ipv6: Vec<Ipv6Addr>,
    /// The IPv6 gateway the pod routes through: the source of ICMPv6 errors sent to it.
    pub gateway_v6: Option<Ipv6Addr>,
    /// The pod interface MTU.
    pub mtu: u32,
    /// The pod's counters.
    pub counters: Arc<LinkCounters>,
    /// The worker's I/O handle for this pod.
    pub io: P,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the first `len` bytes of the buffer (an Ethernet frame) to pod `id`.
    ToPod {
        /// Destination attachment id.
        id: u64,
        /// Frame length.
        len: usize,
    },
    /// Write the IP packet at `buf[14..len]` to the uplink.
    ToUplink {
        /// Frame length including the 14-byte Ethernet header that is not sent.
        len: usize,
    },
    /// The buffer now holds a reply of `len` bytes for the pod the frame came from.
    Reply {
        /// Reply length.
        len: usize,
        /// The original frame was dropped for this reason (the reply is an ICMP error).
        dropped: Option<DropReason>,
    },
    /// Handled, nothing to send (a gratuitous ARP, say).
    Consumed,
    /// Dropped.
    Drop(DropReason),
}

/// The forwarding table of one worker.
pub struct Router<P> {
    pods: HashMap<u64, PodPort<P>>,
    by_ipv4: HashMap<Ipv4Addr, u64>,
    by_ipv6: HashMap<Ipv6Addr, u64>,
    gateway_v4: Ipv4Addr,
    uplink_mtu: u32,
    /// The service flow table shared by every worker; `None` when turned off.
    flows: Option<Arc<FlowTable>>,
    /// BIG TCP frames from pods are taken (`--big-tcp`): a TCP GSO frame longer than 64 KiB
    /// whose IP length field is 0.
    big_tcp: bool,
}

impl<P> Router<P> {
    /// An empty table; ICMP errors come from `gateway_v4`.
    pub fn new(gateway_v4: Ipv4Addr, uplink_mtu: u32) -> Self {
        Router {
            pods: HashMap::new(),
            by_ipv4: HashMap::new(),
            by_ipv6: HashMap::new(),
            gateway_v4,
            uplink_mtu,
            flows: None,
            big_tcp: false,
        }
    }

    /// Takes BIG TCP frames from pods (`--big-tcp`): an IPv4 total length or IPv6 payload
    /// length of 0 on a TCP GSO frame longer than 64 KiB means the frame's length. Off, such
    /// a frame is malformed.
    pub fn with_big_tcp(mut self, on: bool) -> Self {
        self.big_tcp = on;
        self
    }

    /// Is the GSO type of `vnet` `tcp_type` (ECN or not), with BIG TCP on?
    fn big_tcp_for(&self, vnet: &VnetHdr, tcp_type: u8) -> bool {
        self.big_tcp && vnet.gso_type & !crate::wire::vnet::GSO_ECN == tcp_type
    }

    /// Sends replies of flows that came from the uplink back to it, as recorded in `flows`
    /// (shared with the other workers).
    pub fn with_flows(mut self, flows: Arc<FlowTable>) -> Self {
        self.flows = Some(flows);
        self
    }

    /// Is this pod-to-pod packet the reply of a flow the uplink delivered (a Service whose
    /// endpoint is on this node)? A hit refreshes the flow. Costs one flag load while the
    /// table has never been used, one hash and one bucket probe afterwards.
    fn is_uplink_reply(&self, packet: impl FnOnce() -> FlowPacket) -> bool {
        let Some(flows) = self.flows.as_deref().filter(|f| f.is_used()) else {
            return false;
        };
        let p = packet();
        let key = if p.fragment {
            p.key.address_pair()
        } else {
            p.key
        };
        flows.lookup(&key, p.lifetime)
    }

    /// Records the reply direction of a packet the uplink delivered from a local pod: only
    /// traffic the node rewrote (DNAT to a Service endpoint) comes back that way. The
    /// address-pair key too, for UDP, so that fragments of a reply follow it.
    fn record_uplink_flow(&self, packet: impl FnOnce() -> FlowPacket) {
        let Some(flows) = self.flows.as_deref() else {
            return;
        };
        let p = packet();
        let now = flows.now();
        let reply = p.key.reversed();
        // The pair first: a record can only evict from its own bucket, so the flow's own key,
        // written last, is certainly in the table afterwards.
        if p.fragment || reply.proto == ipv4::PROTO_UDP {
            flows.record(&reply.address_pair(), p.lifetime, now);
        }
        if !p.fragment {
            flows.record(&reply, p.lifetime, now);
        }
    }

    /// Adds a pod. Its addresses must not belong to another pod (the daemon checks).
    pub fn insert(&mut self, port: PodPort<P>) {
        for ip in &port.ipv4 {
            self.by_ipv4.insert(*ip, port.id);
        }
        for ip in &port.ipv6 {
            self.by_ipv6.insert(*ip, port.id);
        }
        self.pods.insert(port.id, port);
    }

    /// Removes a pod and returns it.
    pub fn remove(&mut self, id: u64) -> Option<PodPort<P>> {
        let port = self.pods.remove(&id)?;
        self.by_ipv4.retain(|_, v| *v != id);
        self.by_ipv6.retain(|_, v| *v != id);
        Some(port)
    }

    /// The pod with attachment `id`.
    pub fn pod(&self, id: u64) -> Option<&PodPort<P>> {
        self.pods.get(&id)
    }

    /// The pod with attachment `id`, to change its I/O handle.
    pub fn pod_mut(&mut self, id: u64) -> Option<&mut PodPort<P>> {
        self.pods.get_mut(&id)
    }

    /// Every pod.
    pub fn pods(&self) -> impl Iterator<Item = &PodPort<P>> {
        self.pods.values()
    }

    /// Decides the fate of the `len`-byte Ethernet frame at the start of `buf`, received from
    /// pod `src`. `buf` may be rewritten in place (and beyond `len`, for a reply). A `len`
    /// beyond `buf` (a frame the reader cut short) is dropped as `oversize`.
    pub fn from_pod(&self, src: u64, vnet: &mut VnetHdr, buf: &mut [u8], len: usize) -> Verdict {
        let Some(pod) = self.pods.get(&src) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let Some(frame) = buf.get(..len) else {
            return Verdict::Drop(DropReason::Oversize);
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if eth.src() != pod.mac {
            return Verdict::Drop(DropReason::Spoofed);
        }
        match eth.ethertype() {
            ethernet::ETHERTYPE_ARP => self.arp_from_pod(pod, vnet, buf, len),
            ethernet::ETHERTYPE_IPV4 => self.ipv4_from_pod(pod, vnet, buf, len),
            ethernet::ETHERTYPE_IPV6 => self.ipv6_from_pod(pod, vnet, buf, len),
            _ => Verdict::Drop(DropReason::Unsupported),
        }
    }

    fn arp_from_pod(
        &self,
        pod: &PodPort<P>,
        vnet: &mut VnetHdr,
        buf: &mut [u8],
        len: usize,
    ) -> Verdict {
        let Ok(mut arp) = ArpPacket::new_checked(&mut buf[ethernet::HEADER_LEN..len]) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let sender_ip = arp.sender_ip();
        if arp.sender_mac() != pod.mac
            || !(sender_ip.is_unspecified() || pod.ipv4.contains(&sender_ip))
        {
            return Verdict::Drop(DropReason::Spoofed);
        }
        let target = arp.target_ip();
        // Replies, gratuitous announcements and duplicate-address probes need no answer: a
        // pod asking about its own address must not be told that somebody else has it.
        if arp.operation() != arp::OP_REQUEST
            || target.is_unspecified()
            || pod.ipv4.contains(&target)
            || sender_ip.is_unspecified()
        {
            return Verdict::Consumed;
        }
        arp.make_reply_in_place(GATEWAY_MAC);
        ethernet::write_header(buf, pod.mac, GATEWAY_MAC, ethernet::ETHERTYPE_ARP);
        *vnet = VnetHdr::default();
        Verdict::Reply {
            len: ethernet::HEADER_LEN + arp::PACKET_LEN,
            dropped: None,
        }
    }

    fn ipv4_from_pod(
        &self,
        pod: &PodPort<P>,
        vnet: &mut VnetHdr,
        buf: &mut [u8],
        len: usize,
    ) -> Verdict {
        let big = self.big_tcp_for(vnet, crate::wire::vnet::GSO_TCPV4);
        let ip = match Ipv4Packet::new_checked_big(&buf[ethernet::HEADER_LEN..len], big) {
            Ok(ip) => ip,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        // Trim Ethernet padding: the frame ends where the IP packet does.
        let len = ethernet::HEADER_LEN + ip.packet_len();
        if !pod.ipv4.contains(&src) {
            return Verdict::Drop(DropReason::Spoofed);
        }
        if !offload_fits(vnet, &ip, ethernet::HEADER_LEN, len) {
            return Verdict::Drop(DropReason::Malformed);
        }
        // A fragment that ends past 65535 bytes can never be reassembled ("ping of death"):
        // Linux drops it when it defragments (conntrack on every node); no pod gets it.
        // (A BIG TCP frame is longer, but no fragment: `new_checked_big` made sure.)
        if !ip.is_big()
            && ip.header_len() + usize::from(ip.frag_offset()) + ip.payload().len() > 65535
        {
            return Verdict::Drop(DropReason::Malformed);
        }
        if dst.is_broadcast() || dst.is_multicast() {
            return Verdict::Drop(DropReason::NoRoute);
        }
        if is_martian_v4(dst) {
            return Verdict::Drop(DropReason::Martian);
        }
        if ip.ttl() <= 1 {
            return self.icmp_error(
                pod,
                vnet,
                buf,
                len,
                icmpv4::TYPE_TIME_EXCEEDED,
                0,
                0,
                DropReason::TtlExceeded,
            );
        }
        let dest = self
            .by_ipv4
            .get(&dst)
            .and_then(|id| self.pods.get(id))
            .filter(|d| d.id == pod.id || !self.is_uplink_reply(|| FlowPacket::ipv4(&ip)));
        let egress_mtu = dest.map_or(self.uplink_mtu, |d| d.mtu);
        // What must fit the egress MTU: the packet, or each segment of a GSO frame.
        let ip_len = ipv4_segment_len(vnet, &ip);
        if ip_len > egress_mtu as usize && !ip.dont_frag() {
            // Linux would fragment; netstackd does not (yet), so the packet is dropped, counted.
            return Verdict::Drop(DropReason::TooBig);
        }
        if ip_len > egress_mtu as usize {
            return self.icmp_error(
                pod,
                vnet,
                buf,
                len,
                icmpv4::TYPE_DEST_UNREACHABLE,
                4,
                egress_mtu & 0xffff,
                DropReason::FragNeeded,
            );
        }
        Ipv4Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN..len]).decrement_ttl();
        match dest {
            Some(d) if d.id != pod.id => {
                ethernet::write_header(buf, d.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV4);
                Verdict::ToPod { id: d.id, len }
            }
            // A pod talking to its own address goes through its own loopback, never here.
            Some(_) => Verdict::Drop(DropReason::NoRoute),
            None => {
                vnet.shift_csum_start(-(ethernet::HEADER_LEN as i16));
                Verdict::ToUplink { len }
            }
        }
    }

    /// Replaces the frame in `buf` with an ICMP error about it, addressed back to `pod`.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &self,
        pod: &PodPort<P>,
        vnet: &mut VnetHdr,
        buf: &mut [u8],
        len: usize,
        icmp_type: u8,
        code: u8,
        rest_of_header: u32,
        reason: DropReason,
    ) -> Verdict {
        let ip = Ipv4Packet::new_unchecked(&buf[ethernet::HEADER_LEN..len]);
        // Never an error about an error, a non-first fragment, or a non-unicast packet.
        let is_icmp_error = ip.protocol() == ipv4::PROTO_ICMP
            && ip.payload().first().is_some_and(|t| icmpv4::is_error(*t));
        if is_icmp_error || ip.frag_offset() != 0 {
            return Verdict::Drop(reason);
        }
        let dst = ip.src_addr();
        let mut quote = [0u8; ICMP_ERROR_MAX];
        let q = (len - ethernet::HEADER_LEN).min(ICMP_ERROR_MAX);
        quote[..q].copy_from_slice(&buf[ethernet::HEADER_LEN..ethernet::HEADER_LEN + q]);
        let n = icmpv4::emit_error(
            &mut buf[ethernet::HEADER_LEN..],
            self.gateway_v4,
            dst,
            icmp_type,
            code,
            rest_of_header,
            &quote[..q],
        );
        ethernet::write_header(buf, pod.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV4);
        *vnet = VnetHdr::default();
        Verdict::Reply {
            len: ethernet::HEADER_LEN + n,
            dropped: Some(reason),
        }
    }

    /// Decides the fate of an IPv4 packet from the uplink, which the caller read into
    /// `buf[14..14 + ip_len]` (the 14 bytes before it are room for the Ethernet header). An
    /// `ip_len` beyond `buf` (a packet the reader cut short) is dropped as `oversize`.
    pub fn from_uplink(&self, vnet: &mut VnetHdr, buf: &mut [u8], ip_len: usize) -> Verdict {
        let end = ethernet::HEADER_LEN.saturating_add(ip_len);
        if end > buf.len() {
            return Verdict::Drop(DropReason::Oversize);
        }
        if buf.get(ethernet::HEADER_LEN).is_some_and(|b| b >> 4 == 6) {
            return self.ipv6_from_uplink(vnet, buf, ip_len);
        }
        let ip = match Ipv4Packet::new_checked(&buf[ethernet::HEADER_LEN..end]) {
            Ok(ip) => ip,
            Err(crate::wire::WireError::BadVersion) => {
                return Verdict::Drop(DropReason::Unsupported)
            }
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        if !offload_fits(vnet, &ip, 0, ip.total_len() as usize) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let len = ethernet::HEADER_LEN + ip.total_len() as usize;
        let Some(d) = self
            .by_ipv4
            .get(&ip.dst_addr())
            .and_then(|id| self.pods.get(id))
        else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if self.by_ipv4.contains_key(&ip.src_addr()) {
            self.record_uplink_flow(|| FlowPacket::ipv4(&ip));
        }
        ethernet::write_header(buf, d.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV4);
        vnet.shift_csum_start(ethernet::HEADER_LEN as i16);
        Verdict::ToPod { id: d.id, len }
    }
}

/// The IPv6 paths, beside the IPv4 ones above and following the same rules.
impl<P> Router<P> {
    fn ipv6_from_pod(
        &self,
        pod: &PodPort<P>,
        vnet: &mut VnetHdr,
        buf: &mut [u8],
        len: usize,
    ) -> Verdict {
        let big = self.big_tcp_for(vnet, crate::wire::vnet::GSO_TCPV6);
        let ip = match Ipv6Packet::new_checked_big(&buf[ethernet::HEADER_LEN..len], big) {
            Ok(ip) => ip,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        // Trim Ethernet padding: the frame ends where the IPv6 packet does.
        let len = ethernet::HEADER_LEN + ip.total_len();
        let own = pod.ipv6.contains(&src);
        let link_scope = ipv6::is_link_local(&src) || src.is_unspecified();
        if !own && !link_scope {
            return Verdict::Drop(DropReason::Spoofed);
        }
        if let Some(icmp_type) = ndp_or_mld_type(&ip) {
            return self.ndp_from_pod(pod, vnet, buf, len, icmp_type);
        }
        if dst.is_multicast() {
            // Link-local multicast (service discovery, ...) stays on the pod's link.
            return Verdict::Consumed;
        }
        if !own {
            // A link-local or unspecified source may not leave the link (RFC 4291 §2.5.6).
            return Verdict::Drop(if link_scope && !src.is_unspecified() {
                DropReason::NoRoute
            } else {
                DropReason::Spoofed
            });
        }
        if !offload_fits_v6(vnet, &ip, ethernet::HEADER_LEN, len) {
            return Verdict::Drop(DropReason::Malformed);
        }
        if dst.is_loopback() {
            return Verdict::Drop(DropReason::Martian);
        }
        if dst.is_unspecified() || ipv6::is_link_local(&dst) {
            return Verdict::Drop(DropReason::NoRoute);
        }
        if ip.hop_limit() <= 1 {
            return self.icmpv6_error(
                pod,
                vnet,
                buf,
                len,
                icmpv6::TYPE_TIME_EXCEEDED,
                icmpv6::CODE_HOP_LIMIT_EXCEEDED,
                0,
                DropReason::TtlExceeded,
            );
        }
        let dest = self
            .by_ipv6
            .get(&dst)
            .and_then(|id| self.pods.get(id))
            .filter(|d| d.id == pod.id || !self.is_uplink_reply(|| FlowPacket::ipv6(&ip)));
        let egress_mtu = dest.map_or(self.uplink_mtu, |d| d.mtu);
        if ipv6_segment_len(vnet, &ip_len_view(buf, len)) > egress_mtu as usize {
            // IPv6 routers never fragment: packet too big, whatever the sender wanted; for a
            // GSO frame, when the segments it stands for would not fit.
            return self.icmpv6_error(
                pod,
                vnet,
                buf,
                len,
                icmpv6::TYPE_PACKET_TOO_BIG,
                0,
                egress_mtu,
                DropReason::FragNeeded,
            );
        }
        Ipv6Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN..len]).decrement_hop_limit();
        match dest {
            Some(d) if d.id != pod.id => {
                ethernet::write_header(buf, d.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV6);
                Verdict::ToPod { id: d.id, len }
            }
            Some(_) => Verdict::Drop(DropReason::NoRoute),
            None => {
                vnet.shift_csum_start(-(ethernet::HEADER_LEN as i16));
                Verdict::ToUplink { len }
            }
        }
    }

    /// Neighbor discovery and MLD from a pod: a solicitation for any address but the pod's
    /// own is answered with the gateway MAC; everything else (router solicitations, MLD
    /// reports, unsolicited advertisements, duplicate address detection) is consumed.
    fn ndp_from_pod(
        &self,
        pod: &PodPort<P>,
        vnet: &mut VnetHdr,
        buf: &mut [u8],
        len: usize,
        icmp_type: u8,
    ) -> Verdict {
        if icmp_type != icmpv6::TYPE_NEIGHBOR_SOLICIT {
            return Verdict::Consumed;
        }
        let ip = Ipv6Packet::new_unchecked(&buf[ethernet::HEADER_LEN..len]);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let ns = match NeighborSolicit::parse(src, dst, ip.hop_limit(), ip.payload()) {
            Ok(ns) => ns,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        if ns.source_mac.is_some_and(|m| m != pod.mac) {
            return Verdict::Drop(DropReason::Spoofed);
        }
        // Duplicate address detection (unspecified source) and questions about the pod's own
        // addresses must not be told that somebody else has them.
        if src.is_unspecified() || ns.target == src || pod.ipv6.contains(&ns.target) {
            return Verdict::Consumed;
        }
        let flags = icmpv6::NA_FLAG_ROUTER | icmpv6::NA_FLAG_SOLICITED | icmpv6::NA_FLAG_OVERRIDE;
        let n = icmpv6::emit_neighbor_advert(
            &mut buf[ethernet::HEADER_LEN..],
            ns.target,
            src,
            flags,
            GATEWAY_MAC,
        );
        ethernet::write_header(buf, pod.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV6);
        *vnet = VnetHdr::default();
        Verdict::Reply {
            len: ethernet::HEADER_LEN + n,
            dropped: None,
        }
    }

    /// Replaces the frame in `buf` with an ICMPv6 error about it, addressed back to `pod`
    /// from its IPv6 gateway (or the gateway's link-local address).
    #[allow(clippy::too_many_arguments)]
    fn icmpv6_error(
        &self,
        pod: &PodPort<P>,
        vnet: &mut VnetHdr,
        buf: &mut [u8],
        len: usize,
        icmp_type: u8,
        code: u8,
        rest_of_header: u32,
        reason: DropReason,
    ) -> Verdict {
        let ip = Ipv6Packet::new_unchecked(&buf[ethernet::HEADER_LEN..len]);
        // Never an error about an error (RFC 4443 §2.4 (e)).
        let is_icmp_error = ip.next_header() == ipv6::NEXT_ICMPV6
            && ip.payload().first().is_some_and(|t| icmpv6::is_error(*t));
        if is_icmp_error {
            return Verdict::Drop(reason);
        }
        let dst = ip.src_addr();
        let src = pod.gateway_v6.unwrap_or(GATEWAY_LINK_LOCAL);
        let mut quote = [0u8; ipv6::MIN_MTU];
        let q = (len - ethernet::HEADER_LEN).min(ipv6::MIN_MTU);
        quote[..q].copy_from_slice(&buf[ethernet::HEADER_LEN..ethernet::HEADER_LEN + q]);
        let n = icmpv6::emit_error(
            &mut buf[ethernet::HEADER_LEN..],
            src,
            dst,
            icmp_type,
            code,
            rest_of_header,
            &quote[..q],
        );
        ethernet::write_header(buf, pod.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV6);
        *vnet = VnetHdr::default();
        Verdict::Reply {
            len: ethernet::HEADER_LEN + n,
            dropped: Some(reason),
        }
    }

    /// An IPv6 packet from the uplink at `buf[14..14 + ip_len]`: to the pod that owns its
    /// destination, or dropped (the node's own multicast, MLD and router solicitations that
    /// the kernel sends on the uplink end here as `no_route`).
    fn ipv6_from_uplink(&self, vnet: &mut VnetHdr, buf: &mut [u8], ip_len: usize) -> Verdict {
        let end = ethernet::HEADER_LEN + ip_len;
        let ip = match Ipv6Packet::new_checked(&buf[ethernet::HEADER_LEN..end]) {
            Ok(ip) => ip,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        if !offload_fits_v6(vnet, &ip, 0, ip.total_len()) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let len = ethernet::HEADER_LEN + ip.total_len();
        let Some(d) = self
            .by_ipv6
            .get(&ip.dst_addr())
            .and_then(|id| self.pods.get(id))
        else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if self.by_ipv6.contains_key(&ip.src_addr()) {
            self.record_uplink_flow(|| FlowPacket::ipv6(&ip));
        }
        ethernet::write_header(buf, d.mac, GATEWAY_MAC, ethernet::ETHERTYPE_IPV6);
        vnet.shift_csum_start(ethernet::HEADER_LEN as i16);
        Verdict::ToPod { id: d.id, len }
    }
}

/// Is `dst` an IPv4 destination no router forwards from a pod ("martian", as Linux
/// `ip_route_input_slow` calls them): 0.0.0.0/8 ("this network"), 127.0.0.0/8 (the node's
/// loopback, which a node with `route_localnet` set, as kube-proxy sets it, would otherwise
/// deliver to its own loopback listeners) and 240.0.0.0/4 (reserved). 255.255.255.255 is
/// in 240/4 but is the limited broadcast, dropped before this as `no_route` with the other
/// broadcasts and multicasts.
pub fn is_martian_v4(dst: Ipv4Addr) -> bool {
    let first = dst.octets()[0];
    first == 0 || first == 127 || (first >= 240 && !dst.is_broadcast())
}

/// The ICMPv6 type of a neighbor discovery (133-137) or MLD (130-132, 143) message: directly
/// after the IPv6 header, or after a hop-by-hop header (MLD carries a router alert).
fn ndp_or_mld_type<T: AsRef<[u8]>>(ip: &Ipv6Packet<T>) -> Option<u8> {
    let payload = ip.payload();
    let icmp = match ip.next_header() {
        ipv6::NEXT_ICMPV6 => payload,
        ipv6::NEXT_HOP_BY_HOP if payload.len() >= 8 && payload[0] == ipv6::NEXT_ICMPV6 => {
            payload.get((usize::from(payload[1]) + 1) * 8..)?
        }
        _ => return None,
    };
    let t = *icmp.first()?;
    matches!(t, 130..=137 | icmpv6::TYPE_MLDV2_REPORT).then_some(t)
}

/// [`offload_fits`] for IPv6: the checksum to complete lies after the fixed header and inside
/// the packet; a GSO type is TCPv6 over TCP or USO over UDP, with a segment size.
fn offload_fits_v6<T: AsRef<[u8]>>(
    vnet: &VnetHdr,
    ip: &Ipv6Packet<T>,
    l3: usize,
    len: usize,
) -> bool {
    if vnet.needs_csum() {
        let start = usize::from(vnet.csum_start);
        let end = start + usize::from(vnet.csum_offset) + 2;
        if start < l3 + ipv6::HEADER_LEN || end > len {
            return false;
        }
    }
    if vnet.is_gso() {
        let proto = ip.transport().0;
        let proto_matches = match vnet.gso_type & !crate::wire::vnet::GSO_ECN {
            crate::wire::vnet::GSO_TCPV6 => proto == ipv6::NEXT_TCP,
            crate::wire::vnet::GSO_UDP_L4 => proto == ipv6::NEXT_UDP,
            _ => false,
        };
        if !proto_matches || vnet.gso_size < crate::gso::min_gso_size(vnet.gso_type) {
            return false;
        }
    }
    true
}

/// A read-only view of the IPv6 packet in an Ethernet frame of `len` bytes (already checked).
fn ip_len_view(buf: &[u8], len: usize) -> Ipv6Packet<&[u8]> {
    Ipv6Packet::new_unchecked(&buf[ethernet::HEADER_LEN..len])
}

/// The IPv6 length that must fit the egress MTU: the packet's, or for a GSO frame that of each
/// segment it stands for (IPv6 header, TCP or UDP header, `gso_size`), as for IPv4. Call after
/// `offload_fits_v6`.
fn ipv6_segment_len<T: AsRef<[u8]>>(vnet: &VnetHdr, ip: &Ipv6Packet<T>) -> usize {
    let total = ip.total_len();
    if !vnet.is_gso() {
        return total;
    }
    // A BIG TCP frame's jumbo header is not in the segments (it is dropped with the length).
    let l4 = ip.transport().1;
    let transport = match vnet.gso_type & !crate::wire::vnet::GSO_ECN {
        crate::wire::vnet::GSO_TCPV6 => ip
            .payload()
            .get(l4 + 12)
            .map_or(20, |off| usize::from(off >> 4).max(5) * 4),
        crate::wire::vnet::GSO_UDP_L4 => 8,
        _ => 0,
    };
    (ipv6::HEADER_LEN + transport + usize::from(vnet.gso_size)).min(total)
}

/// The IPv4 length that must fit the egress MTU: the packet's, or for a GSO frame that of each
/// segment it stands for, as Linux `skb_gso_network_seglen` counts it (IP header, TCP or UDP
/// header, `gso_size`; UFO's `gso_size` already counts the UDP header). A segment size larger
/// than the payload means one segment: the packet. Call after `offload_fits`.
fn ipv4_segment_len<T: AsRef<[u8]>>(vnet: &VnetHdr, ip: &Ipv4Packet<T>) -> usize {
    let total = ip.packet_len();
    if !vnet.is_gso() {
        return total;
    }
    let transport = match vnet.gso_type & !crate::wire::vnet::GSO_ECN {
        crate::wire::vnet::GSO_TCPV4 => ip
            .payload()
            .get(12)
            .map_or(20, |off| usize::from(off >> 4).max(5) * 4),
        crate::wire::vnet::GSO_UDP_L4 => 8,
        _ => 0,
    };
    (ip.header_len() + transport + usize::from(vnet.gso_size)).min(total)
}

/// Does the virtio-net header describe this IPv4 packet, as Linux `virtio_net_hdr_to_skb`
/// requires? A checksum to complete must lie inside the L4 part of the packet, and a GSO type
/// must match the transport protocol and carry a segment size. `l3` is where the IP header
/// starts in the frame the offsets count from (14 on a TAP, 0 on a TUN); `len` ends the packet.
fn offload_fits<T: AsRef<[u8]>>(vnet: &VnetHdr, ip: &Ipv4Packet<T>, l3: usize, len: usize) -> bool {
    if vnet.needs_csum() {
        let start = usize::from(vnet.csum_start);
        let end = start + usize::from(vnet.csum_offset) + 2;
        if start < l3 + ip.header_len() || end > len {
            return false;
        }
    }
    if vnet.is_gso() {
        let proto_matches = match vnet.gso_type & !crate::wire::vnet::GSO_ECN {
            crate::wire::vnet::GSO_TCPV4 => ip.protocol() == ipv4::PROTO_TCP,
            crate::wire::vnet::GSO_UDP | crate::wire::vnet::GSO_UDP_L4 => {
                ip.protocol() == ipv4::PROTO_UDP
            }
            _ => false,
        };
        if !proto_matches || vnet.gso_size < crate::gso::min_gso_size(vnet.gso_type) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
