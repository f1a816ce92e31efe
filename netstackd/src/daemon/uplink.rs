//! The uplink: a multi-queue TUN in the host netns holding the pods' gateway address. The
//! host kernel routes the pod CIDR to it and takes everything the pods send off-node.

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use anyhow::Context;
use ipnet::{IpNet, Ipv4Net};

use crate::netlink::Netlink;
use crate::sys::tap::{open_queues, TunKind};

use super::DaemonConfig;

/// Creates (or, after a restart, re-attaches to) the persistent uplink TUN with one queue per
/// worker, gives it the gateway address, sets its MTU and brings it up. Returns the queue fds.
pub fn create(config: &DaemonConfig, gateway: std::net::Ipv4Addr) -> anyhow::Result<Vec<OwnedFd>> {
    let tun = open_queues(&config.uplink, TunKind::Tun, config.workers, true)
        .with_context(|| format!("creating TUN {}", config.uplink))?;
    tracing::info!(uplink = %config.uplink, offloads = format!("{:#x}", tun.offloads), "uplink TUN open");
    let nl = Netlink::new().context("opening rtnetlink in the host netns")?;
    // Before it goes up: on a link that is up the kernel swaps the qdisc and waits an RCU
    // grace period (a no-op after a restart, when the length is already set).
    nl.set_txqueuelen(&config.uplink, crate::sys::tap::TXQUEUELEN)
        .with_context(|| format!("raising the queue length of {}", config.uplink))?;
    // IPv6 on the uplink only where pods have it: an IPv4-only node's kernel would otherwise
    // send router solicitations and MLD reports into netstack, which has nowhere to route them.
    let ipv6 = if config.pod_cidr_v6.is_some() {
        "0"
    } else {
        "1"
    };
    let name = format!("net/ipv6/conf/{}/disable_ipv6", config.uplink);
    super::veth::write_sysctl(&name, ipv6)?;
    let index = nl
        .link_index(&config.uplink)?
        .with_context(|| format!("{} vanished after creation", config.uplink))?;
    // No qdisc between the node's kernel and the TUN (see `Netlink::set_noqueue_root`), set
    // before it first goes up (or on an uplink an older netstack made).
    super::no_qdisc(&nl, index, &config.uplink);
    nl.set_link(&config.uplink, None, Some(config.uplink_mtu), true)
        .with_context(|| format!("bringing {} up", config.uplink))?;
    let addr = IpNet::V4(Ipv4Net::new(gateway, config.pod_cidr.prefix_len())?);
    let present = nl.addresses(index)?;
    if !present.contains(&addr) {
        nl.add_address(index, addr)
            .with_context(|| format!("adding {addr} to {}", config.uplink))?;
    }
    // The connected route of `addr` sends the whole pod CIDR to the uplink.
    let routes = nl.routes_v4()?;
    let cidr = IpNet::V4(config.pod_cidr);
    if !routes
        .iter()
        .any(|(dst, _, oif)| *dst == cidr && *oif == Some(index))
    {
        nl.add_route(cidr, None::<IpAddr>, Some(index))
            .with_context(|| format!("routing {cidr} to {}", config.uplink))?;
    }
    if let (Some(cidr_v6), Some(gateway_v6)) = (config.pod_cidr_v6, config.gateway_v6()?) {
        // The IPv6 gateway's prefix route carries the IPv6 pod CIDR to the uplink too.
        let addr = IpNet::V6(ipnet::Ipv6Net::new(gateway_v6, cidr_v6.prefix_len())?);
        if !present.contains(&addr) {
            nl.add_address(index, addr)
                .with_context(|| format!("adding {addr} to {}", config.uplink))?;
        }
        let cidr = IpNet::V6(cidr_v6);
        if !nl
            .routes_v6()?
            .iter()
            .any(|(dst, _, oif)| *dst == cidr && *oif == Some(index))
        {
            nl.add_route(cidr, None::<IpAddr>, Some(index))
                .with_context(|| format!("routing {cidr} to {}", config.uplink))?;
        }
    }
    Ok(tun.fds)
}
