//! The kernel's side of host-gw routing: netstack's routes in the main table, told apart from
//! everyone else's by their route protocol [`ROUTE_PROTOCOL`] (`ip route show proto 78`).
//!
//! [`RouteTable`] is what the reconciler needs; [`KernelRoutes`] implements it over rtnetlink
//! in the network namespace it was opened in. [`default_route_mtu`] reads the MTU of the
//! node's default-route interface, the uplink's MTU unless one is given.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType, RouteVia,
};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::runtime::Runtime;

use super::routes::{Connected, RouteChange};

/// The route protocol netstack's host-gw routes carry (0x4e, "N"; unassigned in
/// `/etc/iproute2/rt_protos`), so netstack only ever lists, changes or deletes its own.
pub const ROUTE_PROTOCOL: u8 = 78;

/// Errors of [`RouteTable`] operations; each names the route.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The rtnetlink socket could not be opened.
    #[error("opening rtnetlink: {0}")]
    Connect(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{op} {dst} via {via}: {source}")]
    Request {
        /// `adding route`, ...
        op: &'static str,
        /// The destination.
        dst: IpNet,
        /// The next hop.
        via: IpAddr,
        /// The rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Dumping the routing table failed.
    #[error("listing routes: {0}")]
    List(#[source] rtnetlink::Error),
    /// Reading a link failed.
    #[error("reading link {index}: {source}")]
    Link {
        /// Its ifindex.
        index: u32,
        /// The rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A route whose destination and next hop are of different families.
    #[error("route {dst} via {via}: address families differ")]
    Family {
        /// The destination.
        dst: IpNet,
        /// The next hop.
        via: IpAddr,
    },
}

impl RouteError {
    /// The kernel's errno when it refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            RouteError::Request {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| Errno::from_raw(-c.get())),
            _ => None,
        }
    }
}

/// Where netstack's routes live: listed, and changed one [`RouteChange`] at a time.
pub trait RouteTable {
    /// netstack's routes as (destination, next hop), duplicates included.
    fn list(&mut self) -> Result<Vec<(IpNet, IpAddr)>, RouteError>;
    /// Applies one change. Deleting a route that is already gone succeeds.
    fn apply(&mut self, change: RouteChange) -> Result<(), RouteError>;
    /// The networks this node is directly connected to, and its own addresses: what a next
    /// hop is checked against.
    fn connected(&mut self) -> Result<Connected, RouteError>;
}

/// netstack's routes in the main table of one network namespace, over rtnetlink.
pub struct KernelRoutes {
    runtime: Runtime,
    handle: Handle,
}

impl std::fmt::Debug for KernelRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelRoutes").finish_non_exhaustive()
    }
}

impl KernelRoutes {
    /// Opens rtnetlink in the calling thread's network namespace. Blocking, like
    /// [`crate::netlink::Netlink`]: never call it from inside an async runtime.
    pub fn open() -> Result<Self, RouteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RouteError::Connect)?;
        let (connection, handle, _) = {
            let _guard = runtime.enter();
            rtnetlink::new_connection().map_err(RouteError::Connect)?
        };
        runtime.spawn(connection);
        Ok(KernelRoutes { runtime, handle })
    }

    fn message(dst: IpNet, via: IpAddr) -> Result<RouteMessage, RouteError> {
        let family = || RouteError::Family { dst, via };
        if dst.addr().is_ipv4() != via.is_ipv4() {
            return Err(family());
        }
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|_| family())?
            .gateway(via)
            .map_err(|_| family())?
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build())
    }

    /// Every route of both families, all tables.
    fn dump(&self) -> Result<Vec<RouteMessage>, RouteError> {
        let mut all = Vec::new();
        for filter in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let request = self.handle.route().get(filter).execute();
            let messages: Vec<RouteMessage> = self
                .runtime
                .block_on(request.try_collect())
                .map_err(RouteError::List)?;
            all.extend(messages);
        }
        Ok(all)
    }
}

impl RouteTable for KernelRoutes {
    fn list(&mut self) -> Result<Vec<(IpNet, IpAddr)>, RouteError> {
        Ok(self.dump()?.iter().filter_map(ours).collect())
    }

    fn connected(&mut self) -> Result<Connected, RouteError> {
        let mut connected = Connected::default();
        for msg in self.dump()? {
            match route_kind(&msg) {
                Some(Kind::Connected(net)) => connected.networks.push(net),
                Some(Kind::Local(addr)) => connected.local.push(addr),
                None => {}
            }
        }
        Ok(connected)
    }

    fn apply(&mut self, change: RouteChange) -> Result<(), RouteError> {
        let err = |op, dst, via| {
            move |source| RouteError::Request {
                op,
                dst,
                via,
                source,
            }
        };
        match change {
            RouteChange::Add { dst, via } => self
                .runtime
                .block_on(self.handle.route().add(Self::message(dst, via)?).execute())
                .map_err(err("adding route", dst, via)),
            RouteChange::Replace { dst, via } => self
                .runtime
                .block_on(
                    self.handle
                        .route()
                        .add(Self::message(dst, via)?)
                        .replace()
                        .execute(),
                )
                .map_err(err("replacing route", dst, via)),
            RouteChange::Delete { dst, via } => {
                let result = self
                    .runtime
                    .block_on(self.handle.route().del(Self::message(dst, via)?).execute())
                    .map_err(err("deleting route", dst, via));
                match result {
                    Err(e) if e.errno() == Some(Errno::ESRCH) => Ok(()),
                    other => other,
                }
            }
        }
    }
}

/// The kernel's local table (`ip route show table local`).
const RT_TABLE_LOCAL: u32 = 255;

/// What a route says about this node's links.
enum Kind {
    /// A main-table route without a gateway, through an interface: a directly connected
    /// network (IPv6 link-local and catch-all /0 routes left out).
    Connected(IpNet),
    /// A local-table address of this node.
    Local(IpAddr),
}

fn route_kind(msg: &RouteMessage) -> Option<Kind> {
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut gateway = false;
    let mut oif = false;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = true,
            RouteAttribute::Oif(_) => oif = true,
            _ => {}
        }
    }
    let dst = dst?;
    if table == RT_TABLE_LOCAL && msg.header.kind == RouteType::Local {
        return Some(Kind::Local(dst));
    }
    let prefix = msg.header.destination_prefix_length;
    let link_local = matches!(dst, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || msg.header.kind != RouteType::Unicast
        || gateway
        || !oif
        || prefix == 0
        || link_local
    {
        return None;
    }
    IpNet::new(dst, prefix)
        .ok()
        .map(|n| Kind::Connected(n.trunc()))
}

/// (destination, next hop) of a unicast main-table route with netstack's protocol.
fn ours(msg: &RouteMessage) -> Option<(IpNet, IpAddr)> {
    if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
        || msg.header.kind != RouteType::Unicast
    {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut via = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Gateway(a) => via = ip_of(a),
            RouteAttribute::Via(RouteVia::Inet(v4)) => via = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => via = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = IpNet::new(dst?, msg.header.destination_prefix_length).ok()?;
    Some((dst, via?))
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table default route's (metric, output link), for a route through one link.
fn default_route(msg: &RouteMessage) -> Option<(u32, u32)> {
    if msg.header.destination_prefix_length != 0 || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut oif = None;
    let mut metric = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some((metric, oif?))
}

impl KernelRoutes {
    /// The name and MTU of the link carrying the default route (see [`default_route_mtu`]).
    pub fn default_route_mtu(&self) -> Result<Option<(String, u32)>, RouteError> {
        let routes = self.dump()?;
        let pick = |v4: bool| {
            routes
                .iter()
                .filter(|m| (m.header.address_family == AddressFamily::Inet) == v4)
                .filter_map(default_route)
                .min()
        };
        let Some((_, index)) = pick(true).or_else(|| pick(false)) else {
            return Ok(None);
        };
        let request = self.handle.link().get().match_index(index).execute();
        let link = self
            .runtime
            .block_on(async {
                futures::pin_mut!(request);
                request.try_next().await
            })
            .map_err(|source| RouteError::Link { index, source })?;
        let Some(link) = link else {
            return Ok(None);
        };
        let mut name = index.to_string();
        let mut mtu = None;
        for attr in link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = n,
                LinkAttribute::Mtu(m) => mtu = Some(m),
                _ => {}
            }
        }
        Ok(mtu.map(|m| (name, m)))
    }
}

/// The name and MTU of the link carrying the calling thread's namespace's default route: the
/// IPv4 one, else the IPv6 one; of several, the one with the lowest metric. `None` without a
/// default route through a single link.
pub fn default_route_mtu() -> Result<Option<(String, u32)>, RouteError> {
    KernelRoutes::open()?.default_route_mtu()
}

/// Removes every netstack route of the calling thread's namespace (for `netstackd cleanup`);
/// returns how many there were.
pub fn remove_all() -> Result<usize, RouteError> {
    let mut table = KernelRoutes::open()?;
    let routes = table.list()?;
    for &(dst, via) in &routes {
        table.apply(RouteChange::Delete { dst, via })?;
    }
    Ok(routes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::run_in_netns;
    use crate::netns::testing::NamedNetns;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    #[ignore = "needs root"]
    fn connected_networks_and_local_addresses_come_from_the_kernel() {
        let ns = NamedNetns::new();
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "n0", "type", "veth", "peer", "name", "n1"]);
        ns.ip(&["addr", "add", "192.168.78.1/24", "dev", "n0"]);
        ns.ip(&["addr", "add", "fd00:78::1/64", "dev", "n0", "nodad"]);
        ns.ip(&["link", "set", "n0", "up"]);
        ns.ip(&["link", "set", "n1", "up"]);
        // A link that is down has no connected route.
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        ns.ip(&["addr", "add", "172.31.0.1/24", "dev", "d0"]);
        // A route through a gateway is not a connected network.
        ns.ip(&["route", "add", "10.9.0.0/24", "via", "192.168.78.9"]);
        let c = run_in_netns(&ns.path, || {
            KernelRoutes::open().unwrap().connected().unwrap()
        })
        .unwrap();
        assert!(c.networks.contains(&net("192.168.78.0/24")), "{c:?}");
        assert!(c.networks.contains(&net("fd00:78::/64")), "{c:?}");
        assert!(!c.networks.contains(&net("10.9.0.0/24")), "{c:?}");
        assert!(!c.networks.contains(&net("172.31.0.0/24")), "{c:?}");
        assert!(
            !c.networks
                .iter()
                .any(|n| n.addr().to_string().starts_with("fe80")),
            "{c:?}"
        );
        assert!(c.local.contains(&ip("192.168.78.1")), "{c:?}");
        assert!(c.local.contains(&ip("fd00:78::1")), "{c:?}");
    }

    #[test]
    #[ignore = "needs root"]
    fn the_mtu_is_the_default_route_links_with_the_lowest_metric() {
        let ns = NamedNetns::new();
        let mtu = || run_in_netns(&ns.path, || default_route_mtu().unwrap()).unwrap();
        assert_eq!(mtu(), None, "no default route");
        for (dev, peer, addr, link_mtu) in [
            ("w0", "w1", "192.168.79.1/24", "1400"),
            ("v0", "v1", "192.168.80.1/24", "9000"),
        ] {
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
            ns.ip(&["link", "set", dev, "mtu", link_mtu]);
            ns.ip(&["addr", "add", addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", peer, "up"]);
        }
        ns.ip(&["route", "add", "10.0.0.0/8", "via", "192.168.80.9"]);
        assert_eq!(mtu(), None, "a route that is not the default one");
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.80.9",
            "metric",
            "200",
        ]);
        assert_eq!(mtu(), Some(("v0".to_owned(), 9000)));
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.79.9",
            "metric",
            "100",
        ]);
        assert_eq!(
            mtu(),
            Some(("w0".to_owned(), 1400)),
            "the lower metric wins"
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn routes_are_added_replaced_listed_and_deleted_by_protocol() {
        let ns = NamedNetns::new();
        ns.ip(&["link", "add", "n0", "type", "veth", "peer", "name", "n1"]);
        ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "n0"]);
        ns.ip(&["link", "set", "n0", "up"]);
        ns.ip(&["link", "set", "n1", "up"]);
        // Someone else's route: netstack must never list or touch it.
        ns.ip(&["route", "add", "10.9.0.0/24", "via", "192.168.77.9"]);
        let (listed, after_replace, after_delete, cleaned, foreign_left) =
            run_in_netns(&ns.path, || {
                let mut t = KernelRoutes::open().unwrap();
                assert_eq!(t.list().unwrap(), vec![], "the foreign route is not ours");
                t.apply(RouteChange::Add {
                    dst: net("10.2.0.0/24"),
                    via: ip("192.168.77.2"),
                })
                .unwrap();
                t.apply(RouteChange::Add {
                    dst: net("10.3.0.0/24"),
                    via: ip("192.168.77.3"),
                })
                .unwrap();
                let e = t
                    .apply(RouteChange::Add {
                        dst: net("10.9.0.0/24"),
                        via: ip("192.168.77.4"),
                    })
                    .unwrap_err();
                assert_eq!(e.errno(), Some(Errno::EEXIST), "{e}");
                let unreachable = t
                    .apply(RouteChange::Add {
                        dst: net("10.4.0.0/24"),
                        via: ip("172.31.0.1"),
                    })
                    .unwrap_err();
                assert!(unreachable
                    .to_string()
                    .contains("10.4.0.0/24 via 172.31.0.1"));
                let mut listed = t.list().unwrap();
                listed.sort();
                t.apply(RouteChange::Replace {
                    dst: net("10.2.0.0/24"),
                    via: ip("192.168.77.20"),
                })
                .unwrap();
                let mut after_replace = t.list().unwrap();
                after_replace.sort();
                t.apply(RouteChange::Delete {
                    dst: net("10.3.0.0/24"),
                    via: ip("192.168.77.3"),
                })
                .unwrap();
                // Deleting what is gone is fine.
                t.apply(RouteChange::Delete {
                    dst: net("10.3.0.0/24"),
                    via: ip("192.168.77.3"),
                })
                .unwrap();
                let after_delete = t.list().unwrap();
                let cleaned = remove_all().unwrap();
                let foreign = std::process::Command::new("ip")
                    .args(["route", "show", "10.9.0.0/24"])
                    .output()
                    .unwrap();
                (
                    listed,
                    after_replace,
                    after_delete,
                    cleaned,
                    String::from_utf8_lossy(&foreign.stdout).into_owned(),
                )
            })
            .unwrap();
        assert_eq!(
            listed,
            vec![
                (net("10.2.0.0/24"), ip("192.168.77.2")),
                (net("10.3.0.0/24"), ip("192.168.77.3"))
            ]
        );
        assert_eq!(
            after_replace,
            vec![
                (net("10.2.0.0/24"), ip("192.168.77.20")),
                (net("10.3.0.0/24"), ip("192.168.77.3"))
            ]
        );
        assert_eq!(
            after_delete,
            vec![(net("10.2.0.0/24"), ip("192.168.77.20"))]
        );
        assert_eq!(cleaned, 1);
        assert!(
            foreign_left.contains("via 192.168.77.9"),
            "{foreign_left:?}"
        );
    }
}
