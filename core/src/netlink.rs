//! Links, addresses and routes over rtnetlink, behind a small synchronous type.
//!
//! [`Netlink`] owns an rtnetlink connection and a current-thread tokio runtime that drives
//! it; each method is one `block_on`. The socket belongs to the network namespace of the
//! thread that called [`Netlink::new`], so create it inside `crate::netns::run_in_netns` to
//! work on a pod's namespace, then use it from any thread.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    self as nl_link, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType, RouteVia,
};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::sys::ifname_problem;

/// Errors of [`Netlink`]; each names the device, address or route concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The rtnetlink socket or its runtime could not be set up.
    #[error("opening rtnetlink: {0}")]
    Connect(#[source] std::io::Error),
    /// A request failed; `object` names what it was about (`link eth0`, `route 0.0.0.0/0`).
    #[error("{op} {object}: {source}")]
    Request {
        /// The operation, e.g. `setting link`.
        op: &'static str,
        /// What it was about.
        object: String,
        /// The rtnetlink error (a kernel errno for refused requests, see [`Self::errno`]).
        #[source]
        source: rtnetlink::Error,
    },
    /// A device that must exist does not.
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    /// The device name is not one the kernel would accept.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The route cannot be expressed (e.g. an IPv6 destination via an IPv4 gateway).
    #[error("invalid route {dst} via {gateway:?}: {reason}")]
    InvalidRoute {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        gateway: Option<IpAddr>,
        /// What is wrong.
        reason: String,
    },
}

impl NetlinkError {
    /// The kernel's errno when the kernel refused the request (`EEXIST` for an address or
    /// route that is already there, `ENODEV`, ...), else `None`.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| Errno::from_raw(-c.get())),
            _ => None,
        }
    }
}

/// What [`Netlink::link_info`] reports about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The ifindex.
    pub index: u32,
    /// The hardware address, when it is a 6-byte (Ethernet) one.
    pub mac: Option<[u8; 6]>,
    /// The MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The rtnetlink kind (`tun`, `veth`, `bridge`, ...); `None` for devices without one
    /// (loopback, physical NICs).
    pub kind: Option<String>,
    /// The ifindex of the device this one is linked to (`IFLA_LINK`): a veth's peer, in the
    /// peer's namespace.
    pub link: Option<u32>,
    /// `IFF_NOARP` is set.
    pub noarp: bool,
    /// The interface alias (`IFLA_IFALIAS`), if one is set.
    pub alias: Option<String>,
    /// The GSO and GRO sizes: `IFLA_GSO_MAX_SIZE`, `IFLA_GRO_MAX_SIZE`,
    /// `IFLA_GSO_IPV4_MAX_SIZE`, `IFLA_GRO_IPV4_MAX_SIZE` (0 where the kernel reports none).
    pub gso_sizes: [u32; 4],
}

/// What [`Netlink::configure_new_link`] sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSettings {
    /// The hardware address.
    pub mac: Option<[u8; 6]>,
    /// The MTU in bytes.
    pub mtu: Option<u32>,
    /// The transmit queue length in frames.
    pub txqueuelen: Option<u32>,
    /// The interface alias (`IFLA_IFALIAS`).
    pub alias: Option<String>,
}

/// One route as [`Netlink::routes_v4`] reports it: (destination, gateway, output ifindex).
pub type RouteEntry = (IpNet, Option<IpAddr>, Option<u32>);

/// `msg` with the GSO and GRO sizes (both IPv6 and IPv4 ones) set to `n` bytes, when given.
fn with_gso_sizes<T>(mut msg: LinkMessageBuilder<T>, n: Option<u32>) -> LinkMessageBuilder<T> {
    if let Some(n) = n {
        for attr in [
            LinkAttribute::GsoMaxSize(n),
            LinkAttribute::GroMaxSize(n),
            LinkAttribute::GsoIpv4MaxSize(n),
            LinkAttribute::GroIpv4MaxSize(n),
        ] {
            msg = msg.append_extra_attribute(attr);
        }
    }
    msg
}

/// A synchronous rtnetlink client bound to the network namespace it was created in.
///
/// Its methods block the calling thread; do not call them (or drop a `Netlink`) from inside
/// an async runtime: use `spawn_blocking` or a plain thread.
pub struct Netlink {
    runtime: Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

fn request_err(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let object = object.into();
    move |source| NetlinkError::Request { op, object, source }
}

fn errno_of(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

fn check_name(name: &str) -> Result<(), NetlinkError> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(NetlinkError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
    }
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetlinkError::Connect)?;
        // The socket is registered with the runtime's reactor, so create it inside it.
        let (connection, handle, _) = {
            let _guard = runtime.enter();
            rtnetlink::new_connection().map_err(NetlinkError::Connect)?
        };
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    /// Fetches the link message of `name`, or `None` when there is no such device.
    fn get_link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        check_name(name)?;
        let request = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let result = self.runtime.block_on(async {
            futures::pin_mut!(request);
            request.try_next().await
        });
        match result {
            Ok(msg) => Ok(msg),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(request_err("looking up link", name)(e)),
        }
    }

    /// The ifindex of `name`, or `None` when there is no such device.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.get_link(name)?.map(|msg| msg.header.index))
    }

    /// Index, MAC, MTU, state and kind of `name`, or `None` when there is no such device.
    pub fn link_info(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let Some(msg) = self.get_link(name)? else {
            return Ok(None);
        };
        let mut info = LinkInfo {
            index: msg.header.index,
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            link: None,
            noarp: msg.header.flags.contains(LinkFlags::Noarp),
            alias: None,
            gso_sizes: [0; 4],
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::Address(addr) => info.mac = <[u8; 6]>::try_from(addr).ok(),
                LinkAttribute::Mtu(mtu) => info.mtu = mtu,
                LinkAttribute::Link(index) => info.link = Some(index),
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => info.alias = Some(alias),
                LinkAttribute::GsoMaxSize(n) => info.gso_sizes[0] = n,
                LinkAttribute::GroMaxSize(n) => info.gso_sizes[1] = n,
                LinkAttribute::GsoIpv4MaxSize(n) => info.gso_sizes[2] = n,
                LinkAttribute::GroIpv4MaxSize(n) => info.gso_sizes[3] = n,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let nl_link::LinkInfo::Kind(kind) = i {
                            info.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(info))
    }

    /// Sets the MAC and MTU of `name` (each when given), then brings it up or down.
    ///
    /// When the MAC actually changes on a link that is up, the link is taken down first:
    /// several drivers refuse a live MAC change. Otherwise the link is not bounced, because a
    /// link going down loses its IPv4 routes and IPv6 addresses.
    pub fn set_link(
        &self,
        name: &str,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        up: bool,
    ) -> Result<(), NetlinkError> {
        let info = self
            .link_info(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
        let new_mac = mac.filter(|m| info.mac != Some(*m));
        if new_mac.is_some() || mtu.is_some() {
            let mut msg = LinkUnspec::new_with_index(info.index);
            if let Some(mac) = new_mac {
                msg = msg.address(mac.to_vec());
                if info.up {
                    msg = msg.down();
                }
            }
            if let Some(mtu) = mtu {
                msg = msg.mtu(mtu);
            }
            self.set(msg.build(), "setting MAC/MTU of link", name)?;
        }
        let msg = LinkUnspec::new_with_index(info.index);
        let msg = if up { msg.up() } else { msg.down() };
        self.set(
            msg.build(),
            if up {
                "bringing up link"
            } else {
                "bringing down link"
            },
            name,
        )
    }

    /// Configures a link just created (down) by its index, `name` naming it in errors: one
    /// request sets whatever of `settings` is given, a second brings it up when `up`. Fewer
    /// round trips than [`Self::set_link`] and friends, which look the link up by name each
    /// time. Two requests, not one: within one request the kernel applies the transmit queue
    /// length after the flags, and on a link that is up that swaps its qdisc and waits for an
    /// RCU grace period.
    pub fn configure_new_link(
        &self,
        index: u32,
        name: &str,
        settings: &LinkSettings,
        up: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkUnspec::new_with_index(index);
        if let Some(mac) = settings.mac {
            msg = msg.address(mac.to_vec());
        }
        if let Some(mtu) = settings.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(len) = settings.txqueuelen {
            msg = msg.txqueuelen(len);
        }
        if let Some(alias) = &settings.alias {
            msg = msg.alias(alias);
        }
        if *settings != LinkSettings::default() {
            self.set(msg.build(), "configuring link", name)?;
        }
        if up {
            let msg = LinkUnspec::new_with_index(index).up().build();
            self.set(msg, "bringing up link", name)?;
        }
        Ok(())
    }

    /// The kind of link `index`'s root qdisc (`noqueue`, `mq`, `noop` on a link that never went
    /// up, ...), `None` when the kernel lists none.
    pub fn root_qdisc(&self, index: u32) -> Result<Option<String>, NetlinkError> {
        use netlink_packet_route::tc::{TcAttribute, TcHandle};
        let object = format!("link #{index}");
        let signed = i32::try_from(index).map_err(|_| NetlinkError::NoSuchLink(object.clone()))?;
        let handle = self.handle.clone();
        let qdiscs: Vec<_> = self
            .runtime
            .block_on(handle.qdisc().get().index(signed).execute().try_collect())
            .map_err(request_err("listing the qdiscs of", object))?;
        Ok(qdiscs
            .into_iter()
            .filter(|q| q.header.index == signed && q.header.parent == TcHandle::ROOT)
            .find_map(|q| {
                q.attributes.into_iter().find_map(|a| match a {
                    TcAttribute::Kind(kind) => Some(kind),
                    _ => None,
                })
            }))
    }

    /// Gives link `index` (`name` naming it in errors) the `noqueue` root qdisc: frames go
    /// straight to the driver, as on a veth. Meant for a TAP or TUN before it first goes up:
    /// tun never holds a frame back in a qdisc (a full ring drops it), yet a multi-queue
    /// device has 256 transmit queues, and the default `mq` root gives each its own
    /// `pfifo_fast` with three rings of the queue length (12 MiB of kernel memory and 1 ms
    /// of bringing it up at 2048 frames). On a link that is up the swap waits for an RCU
    /// grace period.
    pub fn set_noqueue_root(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
        use netlink_packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
        };
        let index = i32::try_from(index).map_err(|_| NetlinkError::NoSuchLink(name.to_owned()))?;
        let mut tc = TcMessage::with_index(index);
        tc.header.parent = TcHandle::ROOT;
        tc.attributes.push(TcAttribute::Kind("noqueue".into()));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(tc));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut handle = self.handle.clone();
        self.runtime
            .block_on(async move {
                let mut replies = handle.request(req)?;
                while let Some(reply) = futures::StreamExt::next(&mut replies).await {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        if e.code.is_some() {
                            return Err(rtnetlink::Error::NetlinkError(e));
                        }
                    }
                }
                Ok(())
            })
            .map_err(request_err("setting the noqueue qdisc of link", name))
    }

    /// Sets the GSO size of link `index` (`name` naming it in errors), for IPv6 and IPv4
    /// (`IFLA_GSO_MAX_SIZE`, `IFLA_GSO_IPV4_MAX_SIZE`; a kernel before 6.3 ignores the
    /// second): the largest frame its TCP builds from then on.
    pub fn set_gso_max_size(&self, index: u32, name: &str, bytes: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::GsoMaxSize(bytes))
            .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(bytes))
            .build();
        self.set(msg, "setting the GSO size of link", name)
    }

    /// Sets the transmit queue length of `name` (for a TAP: the ring of frames the kernel
    /// holds for netstackd to read, per queue).
    pub fn set_txqueuelen(&self, name: &str, len: u32) -> Result<(), NetlinkError> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
        let msg = LinkUnspec::new_with_index(index).txqueuelen(len).build();
        self.set(msg, "setting the transmit queue length of link", name)
    }

    /// Creates a VM pod's placeholder `name`, down, in this namespace: a `dummy`, or where the
    /// kernel has no dummy driver (`CONFIG_DUMMY` off: the kernel answers `EOPNOTSUPP`) an
    /// `ifb`, which likewise holds a MAC, addresses and routes and drops what is sent to it.
    /// The MAC is set at creation (an ifb refuses a later change). Returns the kind made.
    /// An existing name is an error with errno `EEXIST`.
    pub fn add_placeholder(&self, name: &str, mac: [u8; 6]) -> Result<&'static str, NetlinkError> {
        check_name(name)?;
        let msg = rtnetlink::LinkDummy::new(name)
            .address(mac.to_vec())
            .build();
        match self
            .runtime
            .block_on(self.handle.link().add(msg).execute())
            .map_err(request_err("creating dummy", name.to_owned()))
        {
            Ok(()) => return Ok("dummy"),
            Err(e) if e.errno() == Some(Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(name.to_owned())
            .address(mac.to_vec())
            .build();
        self.runtime
            .block_on(self.handle.link().add(msg).execute())
            .map_err(request_err(
                "creating ifb (the kernel has no dummy)",
                name.to_owned(),
            ))?;
        Ok("ifb")
    }

    /// Creates a veth pair `name` + `peer`, both ends down, in this namespace. An existing
    /// name is an error with errno `EEXIST`.
    pub fn add_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        self.add_veth_with_peer_in(name, peer, None)
    }

    /// Creates a veth pair `name` + `peer`, both ends down: `name` in this namespace, `peer`
    /// directly in the namespace open at `peer_netns` (`IFLA_NET_NS_FD` inside
    /// `VETH_INFO_PEER`), or here too when `None`. One request and no move: the peer is never
    /// seen in this namespace, and no namespace change (with its RCU grace periods) follows.
    /// An existing name, in either namespace, is an error with errno `EEXIST`.
    pub fn add_veth_with_peer_in(
        &self,
        name: &str,
        peer: &str,
        peer_netns: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), NetlinkError> {
        self.add_veth_sized(name, peer, peer_netns, None)
    }

    /// [`Self::add_veth_with_peer_in`], with both ends' GSO and GRO size set to `gso_max_bytes`
    /// in the same request when given (BIG TCP): `IFLA_GSO_MAX_SIZE`, `IFLA_GRO_MAX_SIZE` and,
    /// for IPv4, `IFLA_GSO_IPV4_MAX_SIZE` / `IFLA_GRO_IPV4_MAX_SIZE` (Linux 6.3 on; an older
    /// kernel ignores the two it does not know, and one before 5.19 refuses a size over
    /// 65536 with `EINVAL`).
    pub fn add_veth_sized(
        &self,
        name: &str,
        peer: &str,
        peer_netns: Option<std::os::fd::BorrowedFd<'_>>,
        gso_max_bytes: Option<u32>,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        check_name(name)?;
        check_name(peer)?;
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_owned());
        if let Some(fd) = peer_netns {
            peer_msg = peer_msg.setns_by_fd(fd.as_raw_fd());
        }
        let peer_msg = with_gso_sizes(peer_msg, gso_max_bytes);
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_owned())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())));
        let msg = with_gso_sizes(msg, gso_max_bytes).build();
        self.runtime
            .block_on(self.handle.link().add(msg).execute())
            .map_err(request_err("creating veth pair", format!("{name}/{peer}")))
    }

    /// Moves link `name` into the network namespace open at `netns` (a namespace file).
    pub fn move_to_netns(
        &self,
        name: &str,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.set(msg, "moving link to another netns", name)
    }

    /// Sets the alias of link `name` (`ip link set NAME alias ALIAS`).
    pub fn set_alias(&self, name: &str, alias: &str) -> Result<(), NetlinkError> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        self.set(msg, "setting alias of link", name)
    }

    /// Turns ARP on or off on link `name` (`IFF_NOARP` when off).
    pub fn set_arp(&self, name: &str, on: bool) -> Result<(), NetlinkError> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
        let msg = LinkUnspec::new_with_index(index).arp(on).build();
        self.set(msg, "setting ARP of link", name)
    }

    fn set(&self, msg: LinkMessage, op: &'static str, name: &str) -> Result<(), NetlinkError> {
        self.runtime
            .block_on(self.handle.link().set(msg).execute())
            .map_err(request_err(op, name))
    }

    /// Adds `addr` (address and prefix length, e.g. `10.0.0.5/24`) to the link `index`.
    /// An address that is already there is an error with errno `EEXIST`.
    pub fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.runtime
            .block_on(
                self.handle
                    .address()
                    .add(index, addr.addr(), addr.prefix_len())
                    .execute(),
            )
            .map_err(request_err(
                "adding address",
                format!("{addr} to link #{index}"),
            ))
    }

    /// The addresses on link `index`, with their prefix lengths (host bits kept).
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<AddressMessage> =
            self.runtime
                .block_on(request.try_collect())
                .map_err(request_err(
                    "listing addresses of",
                    format!("link #{index}"),
                ))?;
        Ok(messages.iter().filter_map(address_of).collect())
    }

    /// Adds a route to `dst` in the main table (protocol static), via `gateway` and/or out of
    /// link `oif`. Host bits of `dst` are cleared. An IPv4 route without a gateway gets link
    /// scope, as `ip route add ... dev X` does. An existing route is an error with `EEXIST`.
    pub fn add_route(
        &self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let dst = dst.trunc();
        let invalid = |reason: String| NetlinkError::InvalidRoute {
            dst,
            gateway,
            reason,
        };
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| invalid(e.to_string()))?;
        match gateway {
            Some(gw) => {
                builder = builder.gateway(gw).map_err(|e| invalid(e.to_string()))?;
            }
            None if dst.addr().is_ipv4() => builder = builder.scope(RouteScope::Link),
            None => {}
        }
        if let Some(oif) = oif {
            builder = builder.output_interface(oif);
        }
        if gateway.is_none() && oif.is_none() {
            return Err(invalid("neither a gateway nor an output link".to_owned()));
        }
        let object = match gateway {
            Some(gw) => format!("{dst} via {gw}"),
            None => format!("{dst} dev #{}", oif.unwrap_or(0)),
        };
        self.runtime
            .block_on(self.handle.route().add(builder.build()).execute())
            .map_err(request_err("adding route", object))
    }

    /// Deletes the link `name`; `Ok(false)` when it did not exist.
    pub fn del_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        match self
            .runtime
            .block_on(self.handle.link().del(index).execute())
        {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(false),
            Err(e) => Err(request_err("deleting link", name)(e)),
        }
    }

    /// The unicast IPv4 routes of the main table as (destination, gateway, output link).
    pub fn routes_v4(&self) -> Result<Vec<RouteEntry>, NetlinkError> {
        self.routes(RouteMessageBuilder::<Ipv4Addr>::new().build(), "IPv4")
    }

    /// The unicast IPv6 routes of the main table as (destination, gateway, output link).
    pub fn routes_v6(&self) -> Result<Vec<RouteEntry>, NetlinkError> {
        self.routes(RouteMessageBuilder::<Ipv6Addr>::new().build(), "IPv6")
    }

    fn routes(
        &self,
        filter: RouteMessage,
        family: &'static str,
    ) -> Result<Vec<RouteEntry>, NetlinkError> {
        let request = self.handle.route().get(filter).execute();
        let messages: Vec<RouteMessage> =
            self.runtime
                .block_on(request.try_collect())
                .map_err(request_err(
                    "listing routes",
                    format!("({family}, main table)"),
                ))?;
        Ok(messages.iter().filter_map(route_of).collect())
    }
}

/// The local address of an address message (`IFA_LOCAL`, else `IFA_ADDRESS`) with its prefix.
fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut address = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

/// (destination, gateway, oif) of a unicast route in the main table; `None` for others.
fn route_of(msg: &RouteMessage) -> Option<RouteEntry> {
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != main || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let dst = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
    Some((dst, gateway, oif))
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::run_in_netns;
    use crate::netns::testing::NamedNetns;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    #[ignore = "needs root"]
    fn links_addresses_and_routes_round_trip() {
        let ns = NamedNetns::new();
        // No dummy driver on every kernel we run on; a veth pair does as well.
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        let nl = run_in_netns(&ns.path, || Netlink::new().unwrap()).unwrap();

        assert_eq!(nl.link_index("nst-missing").unwrap(), None);
        assert_eq!(nl.link_info("nst-missing").unwrap(), None);
        assert!(matches!(
            nl.set_link("nst-missing", None, None, true),
            Err(NetlinkError::NoSuchLink(_))
        ));
        assert!(matches!(
            nl.link_index("0123456789abcdef"),
            Err(NetlinkError::InvalidName { .. })
        ));

        let mac = [0x02, 0x4e, 0x53, 0x00, 0x00, 0x01];
        nl.set_link("d1", None, None, true).unwrap();
        nl.set_link("d0", Some(mac), Some(1400), true).unwrap();
        let info = nl.link_info("d0").unwrap().unwrap();
        assert_eq!(info.mac, Some(mac));
        assert_eq!(info.mtu, 1400);
        assert!(info.up);
        assert_eq!(info.kind.as_deref(), Some("veth"));
        assert_eq!(nl.link_index("d0").unwrap(), Some(info.index));

        // A second MAC change on a link that is up goes through the down/up dance.
        let mac2 = [0x02, 0x4e, 0x53, 0x00, 0x00, 0x02];
        nl.set_link("d0", Some(mac2), None, true).unwrap();
        let info = nl.link_info("d0").unwrap().unwrap();
        assert_eq!((info.mac, info.mtu, info.up), (Some(mac2), 1400, true));

        let v4 = net("10.1.0.2/24");
        let v6 = net("fd00:1::2/64");
        nl.add_address(info.index, v4).unwrap();
        nl.add_address(info.index, v6).unwrap();
        let err = nl.add_address(info.index, v4).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EEXIST), "{err}");
        assert!(err.to_string().contains("10.1.0.2/24"), "{err}");
        let addrs = nl.addresses(info.index).unwrap();
        assert!(addrs.contains(&v4), "{addrs:?}");
        assert!(addrs.contains(&v6), "{addrs:?}");

        let gw: IpAddr = "10.1.0.1".parse().unwrap();
        nl.add_route(net("0.0.0.0/0"), Some(gw), None).unwrap();
        nl.add_route(net("10.2.0.9/16"), None, Some(info.index))
            .unwrap();
        let routes = nl.routes_v4().unwrap();
        assert!(
            routes.contains(&(net("0.0.0.0/0"), Some(gw), Some(info.index))),
            "{routes:?}"
        );
        assert!(
            routes.contains(&(net("10.2.0.0/16"), None, Some(info.index))),
            "{routes:?}"
        );
        // The connected route of the address.
        assert!(
            routes.contains(&(net("10.1.0.0/24"), None, Some(info.index))),
            "{routes:?}"
        );
        let err = nl.add_route(net("0.0.0.0/0"), Some(gw), None).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EEXIST), "{err}");

        let gw6: IpAddr = "fd00:1::1".parse().unwrap();
        nl.add_route(net("::/0"), Some(gw6), Some(info.index))
            .unwrap();
        let routes6 = nl.routes_v6().unwrap();
        assert!(
            routes6.contains(&(net("::/0"), Some(gw6), Some(info.index))),
            "{routes6:?}"
        );
        assert!(matches!(
            nl.add_route(net("fd00:2::/64"), Some(gw), None),
            Err(NetlinkError::InvalidRoute { .. })
        ));

        nl.set_link("d0", None, None, false).unwrap();
        assert!(!nl.link_info("d0").unwrap().unwrap().up);

        // All of a new link's settings in one request, then up.
        nl.add_veth("c0", "c1").unwrap();
        let c0 = nl.link_index("c0").unwrap().unwrap();
        let mac3 = [0x02, 0x4e, 0x53, 0x00, 0x00, 0x03];
        let settings = LinkSettings {
            mac: Some(mac3),
            mtu: Some(1300),
            txqueuelen: Some(4321),
            alias: Some("netstack".into()),
        };
        nl.configure_new_link(c0, "c0", &settings, true).unwrap();
        let c = nl.link_info("c0").unwrap().unwrap();
        assert_eq!(
            (c.mac, c.mtu, c.up, c.alias.as_deref()),
            (Some(mac3), 1300, true, Some("netstack"))
        );
        let shown = std::process::Command::new("ip")
            .args(["-n", &ns.name, "link", "show", "c0"])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.contains("qlen 4321"), "{shown}");
        let err = nl
            .configure_new_link(987_654, "nst-gone", &settings, true)
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENODEV), "{err}");
        assert!(err.to_string().contains("nst-gone"), "{err}");
        assert!(nl.del_link("c0").unwrap());

        // A veth reports its peer's index; ARP can be turned off.
        assert_eq!(nl.link_info("d1").unwrap().unwrap().link, Some(info.index));
        assert!(!info.noarp);
        nl.set_arp("d0", false).unwrap();
        assert!(nl.link_info("d0").unwrap().unwrap().noarp);
        assert_eq!(info.alias, None);
        nl.set_alias("d0", "netstack").unwrap();
        assert_eq!(
            nl.link_info("d0").unwrap().unwrap().alias.as_deref(),
            Some("netstack")
        );
        nl.add_veth("v0", "v1").unwrap();
        let (v0, v1) = (
            nl.link_info("v0").unwrap().unwrap(),
            nl.link_info("v1").unwrap().unwrap(),
        );
        assert_eq!((v0.link, v1.link), (Some(v1.index), Some(v0.index)));
        assert_eq!(v0.kind.as_deref(), Some("veth"));
        let err = nl.add_veth("v0", "v2").unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EEXIST), "{err}");
        // Moved into another namespace, v1 leaves this one; v0 still names its index.
        let other = NamedNetns::new();
        let fd = std::fs::File::open(&other.path).unwrap();
        nl.move_to_netns("v1", std::os::fd::AsFd::as_fd(&fd))
            .unwrap();
        assert_eq!(nl.link_index("v1").unwrap(), None);
        let moved = run_in_netns(&other.path, || {
            Netlink::new().unwrap().link_info("v1").unwrap().unwrap()
        })
        .unwrap();
        assert_eq!(nl.link_info("v0").unwrap().unwrap().link, Some(moved.index));
        assert!(nl.del_link("v0").unwrap());

        // Created with its peer directly in the other namespace: the peer never appears
        // here, is down there, and the two name each other.
        nl.add_veth_with_peer_in("w0", "w1", Some(std::os::fd::AsFd::as_fd(&fd)))
            .unwrap();
        assert_eq!(nl.link_index("w1").unwrap(), None);
        let w0 = nl.link_info("w0").unwrap().unwrap();
        let w1 = run_in_netns(&other.path, || {
            Netlink::new().unwrap().link_info("w1").unwrap().unwrap()
        })
        .unwrap();
        assert_eq!(
            (w0.link, w1.kind.as_deref(), w1.up),
            (Some(w1.index), Some("veth"), false)
        );
        // A peer name taken over there is refused, and nothing is left here.
        let err = nl
            .add_veth_with_peer_in("w2", "w1", Some(std::os::fd::AsFd::as_fd(&fd)))
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EEXIST), "{err}");
        assert_eq!(nl.link_index("w2").unwrap(), None);
        assert!(nl.del_link("w0").unwrap());
        let gone = run_in_netns(&other.path, || {
            Netlink::new().unwrap().link_index("w1").unwrap()
        });
        assert_eq!(gone.unwrap(), None, "the peer goes with its pod end");

        // BIG TCP: both ends get the four sizes in the creating request; without, 64 KiB.
        assert_eq!(w0.gso_sizes, [65536; 4]);
        nl.add_veth_sized(
            "b0",
            "b1",
            Some(std::os::fd::AsFd::as_fd(&fd)),
            Some(196_608),
        )
        .unwrap();
        let b1 = run_in_netns(&other.path, || {
            Netlink::new().unwrap().link_info("b1").unwrap().unwrap()
        })
        .unwrap();
        assert_eq!(nl.link_info("b0").unwrap().unwrap().gso_sizes, [196_608; 4]);
        assert_eq!(b1.gso_sizes, [196_608; 4]);
        // Lowered again (netstackd without --big-tcp, for a pod made with it): GSO only.
        let b0 = nl.link_info("b0").unwrap().unwrap().index;
        nl.set_gso_max_size(b0, "b0", 65536).unwrap();
        assert_eq!(
            nl.link_info("b0").unwrap().unwrap().gso_sizes,
            [65536, 196_608, 65536, 196_608]
        );
        // Beyond the kernel's GSO_MAX_SIZE (512 KiB): refused, nothing made.
        let err = nl
            .add_veth_sized("b2", "b3", None, Some(1 << 20))
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
        assert_eq!(nl.link_index("b2").unwrap(), None);
        assert!(nl.del_link("b0").unwrap());

        assert!(nl.del_link("d0").unwrap());
        assert!(!nl.del_link("d0").unwrap());
        assert_eq!(nl.link_index("d1").unwrap(), None, "veth peer goes with it");
    }
}
