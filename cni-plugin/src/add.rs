//! CNI ADD: IPAM, then the pod's TAP (or veth, or a VM pod's placeholder dummy) in its netns,
//! then the hand-off to netstackd (which binds a VM pod's vhost-user socket).
//! Every step that succeeded is undone when a later one fails, so a failed ADD leaves nothing
//! behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use ipnet::IpNet;
use netstack_core::control::version::PROTOCOL_VHOST_USER;
use netstack_core::control::{
    veth_peer_name, Attachment, AttachmentKey, Client, LinkMode, Reply, Request, VETH_ALIAS,
};
use netstack_core::netlink::{LinkSettings, Netlink};
use netstack_core::netns::run_in_netns;
use netstack_core::sys::tap::{open_queues, TunKind};
use netstack_core::wire::MacAddr;

use crate::config::NetConf;
use crate::daemon::{
    connect, control_error, create_kata_link, daemon_refusal, delete_pod_link, netns_error,
    remove_kata_links, require_daemon_protocol, CONTROL_TIMEOUT, NETWORK_LABEL,
    OLDEST_DAEMON_PROTOCOL,
};
use crate::result::{extend_prev_result, AddResult, Interface, IpamResult, ResultIp, Route};
use crate::skel::CniEnv;
use crate::{ipam, steps, CniError};

/// The MAC for a pod: the runtime's choice or, like Kubernetes' kubenet, `0a:58` followed by
/// the pod's first IPv4 address (the last four bytes of its first IPv6 address for an
/// IPv6-only pod), unique on the node and stable. The runtime's choice is read where the
/// reference bridge plugin reads it, the later overriding the earlier: `CNI_ARGS` `MAC=`
/// (podman's CNI backend), `args.cni.mac`, `runtimeConfig.mac` (the `mac` capability). A VM
/// pod (`random`) without the runtime's choice gets a random locally administered unicast
/// MAC instead: its guest's NIC has it, and guests of one node would otherwise share the
/// `0a:58` prefix with containers whose addresses they may take over.
fn pod_mac(
    conf: &NetConf,
    cni_args: &BTreeMap<String, String>,
    ipam: &IpamResult,
    random: bool,
) -> Result<MacAddr, CniError> {
    let runtime = conf.runtime_config.as_ref().and_then(|r| r.mac.as_deref());
    let args = conf
        .args
        .as_ref()
        .and_then(|a| a.cni.as_ref())
        .and_then(|c| c.mac.as_deref());
    // An empty value is no choice, as for the bridge plugin.
    let chosen = runtime
        .filter(|m| !m.is_empty())
        .map(|m| ("runtimeConfig.mac", m))
        .or(args.filter(|m| !m.is_empty()).map(|m| ("args.cni.mac", m)))
        .or(cni_args
            .get("MAC")
            .filter(|m| !m.is_empty())
            .map(|m| ("CNI_ARGS MAC", m.as_str())));
    if let Some((source, mac)) = chosen {
        let parsed: MacAddr = mac
            .parse()
            .map_err(|_| CniError::InvalidConfig(format!("{source} {mac:?} is not a MAC")))?;
        if !parsed.is_unicast() || parsed.is_zero() {
            return Err(CniError::InvalidConfig(format!(
                "{source} {mac} is not unicast"
            )));
        }
        return Ok(parsed);
    }
    if random {
        return random_mac();
    }
    let v4 = ipam.ips.iter().find_map(|ip| match ip.address.addr() {
        IpAddr::V4(a) => Some(a.octets()),
        IpAddr::V6(_) => None,
    });
    let v6 = ipam.ips.iter().find_map(|ip| match ip.address.addr() {
        IpAddr::V6(a) => {
            let o = a.octets();
            Some([o[12], o[13], o[14], o[15]])
        }
        IpAddr::V4(_) => None,
    });
    let o = v4.or(v6).unwrap_or([0x0a, 0x58, 0x00, 0x01]);
    Ok(MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]]))
}

/// A random locally administered unicast MAC (from the kernel's random pool).
fn random_mac() -> Result<MacAddr, CniError> {
    use std::io::Read;
    let mut b = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| CniError::Setup(format!("a random MAC from /dev/urandom: {e}")))?;
    b[0] = (b[0] & 0xfc) | 0x02;
    Ok(MacAddr(b))
}

/// The routes to install: IPAM's, each via its subnet's gateway when it names none, and a
/// default route (per address family) via the gateway when IPAM gave none.
fn routes_to_install(ipam: &IpamResult) -> Vec<Route> {
    let gw_for = |dst: &IpNet| {
        ipam.ips.iter().find_map(|ip| match (ip.address, dst) {
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => ip.gateway,
            _ => None,
        })
    };
    let mut routes: Vec<Route> = ipam
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst,
            gw: r.gw.or_else(|| gw_for(&r.dst)),
        })
        .collect();
    for default in ["0.0.0.0/0", "::/0"] {
        let default: IpNet = default.parse().expect("literal");
        if !routes.iter().any(|r| r.dst == default) {
            if let Some(gw) = gw_for(&default) {
                routes.push(Route {
                    dst: default,
                    gw: Some(gw),
                });
            }
        }
    }
    routes
}

/// What the netns part of ADD produced.
struct PodLink {
    /// The TAP's queue fds (none for a veth: netstackd opens its own sockets; none for a
    /// dummy).
    queues: Vec<OwnedFd>,
}

/// How the pod's interface is made.
#[derive(Debug, Clone, Copy)]
enum LinkKind<'a> {
    /// A persistent multi-queue TAP with this many queues.
    Tap { queues: usize },
    /// A veth pair whose peer (this name) netstackd takes into its own netns: created
    /// directly there when `dp` (netstackd's namespace, open) is given, else beside the pod's
    /// end for netstackd to move.
    Veth {
        /// The peer's name.
        peer: &'a str,
        /// netstackd's namespace for veth peers, when the plugin could open it.
        dp: Option<&'a File>,
        /// BIG TCP: the GSO/GRO size both ends get, when netstackd runs with `--big-tcp`.
        big_tcp: Option<u32>,
    },
    /// A VM pod's placeholder: a dummy (an ifb on a kernel without dummies) with the pod's
    /// MAC, addresses and routes, from which Kata's runtime reads what to give the guest. No
    /// frame passes through it.
    Dummy,
}

/// Creates the veth pair `ifname` + `peer` in the calling thread's netns, the peer directly
/// in `dp` when given, both ends with the GSO/GRO size `big_tcp` when given (BIG TCP).
/// When the kernel refuses that size (before 5.19, which allows no more than 64 KiB), the
/// reason is printed on stderr and the pair is made with the kernel's 64 KiB.
fn create_veth(
    nl: &Netlink,
    ifname: &str,
    peer: &str,
    dp: Option<&File>,
    big_tcp: Option<u32>,
) -> Result<(), CniError> {
    if let Some(size) = big_tcp {
        match create_veth_placed(nl, ifname, peer, dp, Some(size)) {
            Ok(()) => return Ok(()),
            Err(e) => eprintln!(
                "netstack: veth {ifname} with BIG TCP ({size}-byte GSO/GRO size): {e}; made \
                 with 64 KiB instead"
            ),
        }
    }
    create_veth_placed(nl, ifname, peer, dp, None)
}

/// [`create_veth`] at one GSO/GRO size. When the peer cannot be made in `dp` (an older
/// kernel, a peer name already taken there), the reason is printed on stderr and the pair
/// is made here instead: netstackd then moves the peer, as it did before netstack created it
/// in place.
fn create_veth_placed(
    nl: &Netlink,
    ifname: &str,
    peer: &str,
    dp: Option<&File>,
    gso: Option<u32>,
) -> Result<(), CniError> {
    let setup = |e: netstack_core::netlink::NetlinkError| {
        CniError::Setup(format!("creating veth {ifname}: {e}"))
    };
    if let Some(dp) = dp {
        match nl.add_veth_sized(ifname, peer, Some(dp.as_fd()), gso) {
            Ok(()) => return Ok(()),
            Err(e) => eprintln!(
                "netstack: creating veth {ifname} with its peer {peer} in netstackd's namespace: \
                 {e}; creating both here, netstackd moves the peer"
            ),
        }
    }
    nl.add_veth_sized(ifname, peer, None, gso).map_err(setup)
}

/// Creates the pod's interface (a multi-queue TAP, or a veth pair whose peer stays down for
/// netstackd to take) in the pod netns and configures it. On error the link is deleted
/// before returning.
fn create_pod_link(
    netns: &Path,
    ifname: &str,
    kind: LinkKind<'_>,
    mac: MacAddr,
    mtu: u32,
    addrs: &[IpNet],
    routes: &[Route],
) -> Result<PodLink, CniError> {
    let ifname = ifname.to_owned();
    let addrs = addrs.to_vec();
    let routes = routes.to_vec();
    run_in_netns(netns, move || -> Result<PodLink, CniError> {
        let nl = Netlink::new()
            .map_err(|e| CniError::Setup(format!("rtnetlink in the pod netns: {e}")))?;
        let exists = nl
            .link_index(&ifname)
            .map_err(|e| CniError::Setup(e.to_string()))?;
        if exists.is_some() {
            return Err(CniError::Setup(format!(
                "interface {ifname} already exists in the container"
            )));
        }
        let (tap, index) = match &kind {
            LinkKind::Tap { queues } => {
                let q = open_queues(&ifname, TunKind::Tap, *queues, true)
                    .map_err(|e| CniError::Setup(format!("creating TAP {ifname}: {e}")))?;
                (q.fds, q.ifindex)
            }
            LinkKind::Dummy => {
                nl.add_placeholder(&ifname, mac.0)
                    .map_err(|e| CniError::Setup(format!("creating {ifname}: {e}")))?;
                match nl.link_index(&ifname) {
                    Ok(Some(index)) => (Vec::new(), index),
                    Ok(None) => {
                        return Err(CniError::Setup(format!("dummy {ifname} vanished")));
                    }
                    Err(e) => {
                        let _ = nl.del_link(&ifname);
                        return Err(CniError::Setup(format!("dummy {ifname}: {e}")));
                    }
                }
            }
            LinkKind::Veth { peer, dp, big_tcp } => {
                create_veth(&nl, &ifname, peer, *dp, *big_tcp)?;
                match nl.link_index(&ifname) {
                    Ok(Some(index)) => (Vec::new(), index),
                    Ok(None) => {
                        return Err(CniError::Setup(format!("veth {ifname} vanished")));
                    }
                    Err(e) => {
                        let _ = nl.del_link(&ifname);
                        return Err(CniError::Setup(format!("veth {ifname}: {e}")));
                    }
                }
            }
        };
        let settings = match kind {
            // The pod's kernel queues a burst on a TAP while a worker serves another fd.
            LinkKind::Tap { .. } => LinkSettings {
                txqueuelen: Some(netstack_core::sys::tap::TXQUEUELEN),
                ..LinkSettings::default()
            },
            // The mark that DEL, CHECK and netstackd look for.
            LinkKind::Veth { .. } | LinkKind::Dummy => LinkSettings {
                alias: Some(VETH_ALIAS.to_owned()),
                ..LinkSettings::default()
            },
        };
        let settings = LinkSettings {
            // A placeholder got its MAC when it was made (an ifb refuses a change).
            mac: (!matches!(kind, LinkKind::Dummy)).then_some(mac.0),
            mtu: Some(mtu),
            ..settings
        };
        let configured = (|| -> Result<(), String> {
            if addrs.iter().any(|a| a.addr().is_ipv6()) {
                // IPAM made the addresses unique: skip duplicate address detection so they
                // are usable (not "tentative") when ADD returns, as ptp and bridge do.
                disable_dad(&ifname)?;
            }
            if matches!(kind, LinkKind::Tap { .. }) {
                // Frames go straight to the TAP, as on the bridge plugin's veth: bringing it
                // up is then 1 ms faster and costs no 12 MiB of per-queue qdiscs.
                if let Err(e) = nl.set_noqueue_root(index, &ifname) {
                    eprintln!("netstack: {e}; {ifname} keeps the kernel's default qdisc");
                }
            }
            // One request while the link is down (the transmit queue length set on a link
            // that is up makes the kernel swap its qdisc and wait for an RCU grace period),
            // one to bring it up.
            nl.configure_new_link(index, &ifname, &settings, true)
                .map_err(|e| e.to_string())?;
            for addr in &addrs {
                nl.add_address(index, *addr).map_err(|e| e.to_string())?;
            }
            for r in &routes {
                nl.add_route(r.dst, r.gw, Some(index))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if let Err(e) = configured {
            drop(tap);
            let _ = nl.del_link(&ifname);
            return Err(CniError::Setup(format!("configuring {ifname}: {e}")));
        }
        Ok(PodLink { queues: tap })
    })
    .map_err(netns_error)?
}

/// Turns off IPv6 duplicate address detection on `ifname` in the calling thread's netns (a
/// thread's view of /proc/sys/net is its own netns).
fn disable_dad(ifname: &str) -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
    std::fs::write(&path, "0").map_err(|e| format!("writing {path}: {e}"))
}

/// Pod metadata from CNI_ARGS kept with the attachment, and the network's name.
fn labels(env: &CniEnv, conf: &NetConf) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = env
        .args
        .iter()
        .filter(|(k, _)| k.starts_with("K8S_POD_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(NETWORK_LABEL.to_owned(), conf.name.clone());
    if let Some(owner) = env.args.get(crate::gc::OWNER_ARG) {
        labels.insert(crate::gc::OWNER_LABEL.to_owned(), owner.clone());
    }
    labels
}

/// The pod interface of the result. `mtu` and a VM pod's `socketPath` only in results of
/// 1.1.0 and later: CNI 1.1.0 added both (`socketPath` for exactly this), and an older
/// result has no place for them.
fn result_interface(
    conf: &NetConf,
    ifname: &str,
    mac: MacAddr,
    mtu: u32,
    netns: &Path,
    socket_path: Option<&Path>,
) -> Interface {
    let v110 = conf.version_at_least((1, 1, 0));
    Interface {
        name: ifname.to_owned(),
        mac: mac.to_string(),
        mtu: v110.then_some(mtu),
        sandbox: netns.display().to_string(),
        socket_path: socket_path
            .filter(|_| v110)
            .map(|p| p.display().to_string()),
    }
}

/// ADD.
pub fn cmd_add(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let netns = env.netns.as_deref().ok_or(CniError::InvalidEnv {
        var: "CNI_NETNS",
        reason: "not set".into(),
    })?;
    match std::fs::metadata(netns) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::ContainerUnknown(format!(
                "netns {} does not exist",
                netns.display()
            )))
        }
        Err(e) => {
            return Err(CniError::InvalidEnv {
                var: "CNI_NETNS",
                reason: format!("{}: {e}", netns.display()),
            })
        }
    }
    let ipam_type = conf
        .ipam
        .as_ref()
        .map(|i| i.plugin_type.clone())
        .ok_or_else(|| CniError::InvalidConfig("an ipam section is required".into()))?;
    ipam::find_plugin(env, &ipam_type)?;

    let mode = conf.pod_mode(&env.args)?;
    // Ask the daemon first: if it is down, nothing has been done yet.
    let ready = steps::timed("daemon", || connect_ready(conf, mode))?;
    // The node's mount namespace is the runtime's, and so this plugin's, not necessarily
    // netstackd's (a DaemonSet pod): namespaces an older netstack hid in the runtime's
    // directory are released from here (cheap when there are none: one read of mountinfo).
    steps::timed("mounts", || release_hidden_netns(netns));

    let allocated = steps::timed("ipam", || ipam::add(env, &ipam_type, stdin))?;
    let outcome = attach_allocated(env, conf, netns, &ready, &allocated);
    match outcome {
        Ok(value) => Ok(value),
        Err(e) => {
            if let Err(undo) = ipam::del(env, &ipam_type, stdin) {
                eprintln!("netstack: releasing the IPAM allocation after a failed ADD: {undo}");
            }
            Err(e)
        }
    }
}

/// Releases the network namespaces an older netstack hid under a self-bind of `/run/netns`
/// and of the directory of the pod's own netns (see `netstack_core::mounts`). Problems are
/// printed on stderr (the runtime logs it) and never fail the ADD.
fn release_hidden_netns(netns: &Path) {
    let mut dirs = vec![Path::new("/run/netns")];
    if let Some(dir) = netns.parent().filter(|d| *d != Path::new("/run/netns")) {
        if !dir.starts_with("/proc") {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        match netstack_core::mounts::release_hidden(dir) {
            Ok(r) if !r.unmounted.is_empty() => eprintln!(
                "netstack: released {} network namespace mount(s) hidden under a self-bind of {}: {:?}",
                r.unmounted.len(),
                dir.display(),
                r.unmounted
            ),
            Ok(_) => {}
            Err(e) => eprintln!("netstack: namespaces hidden in {}: {e}", dir.display()),
        }
    }
}

/// What ADD learns from netstackd's status before it creates anything.
struct Ready {
    /// netstackd's workers: one TAP queue each.
    workers: usize,
    /// In veth mode, netstackd's namespace for the peers, open (`None` when it could not be
    /// opened: the peer is then made beside the pod's end and moved by netstackd).
    dp: Option<File>,
    /// In veth mode, the GSO/GRO size netstackd asks of veth pods (`--big-tcp`), if any.
    big_tcp: Option<u32>,
}

/// Connects to netstackd and asks its status: the number of workers (one TAP queue each),
/// and, in veth mode, the namespace of the peers, which is made here if it is not there yet.
/// vhost-user mode needs a daemon of control protocol 3: an older one is "try again later"
/// (the upgrade under way brings it up to date).
fn connect_ready(conf: &NetConf, mode: LinkMode) -> Result<Ready, CniError> {
    let mut client = connect(&conf.socket())?;
    let status = match client.call(&Request::Status, &[]).map_err(control_error)? {
        Reply::Status(s) => s,
        Reply::Error { message, kind } => {
            return Err(daemon_refusal(
                client.peer_protocol(),
                "status",
                kind,
                &message,
            ))
        }
        other => {
            return Err(CniError::Setup(format!(
                "unexpected status reply {other:?}"
            )))
        }
    };
    let theirs = client
        .peer_protocol()
        .unwrap_or(netstack_core::control::PROTOCOL_V1);
    require_daemon_protocol(theirs, OLDEST_DAEMON_PROTOCOL, "ADD")?;
    if mode == LinkMode::VhostUser {
        require_daemon_protocol(theirs, PROTOCOL_VHOST_USER, "vhost-user mode")?;
    }
    let workers = status.workers;
    if mode == LinkMode::Veth {
        // The namespace of the veth peers is made here, in the runtime's mount namespace (the
        // node's), so its mount outlives a netstackd that runs in a mount namespace of its own
        // (a container that sees /run/netns by propagation): a restart of netstackd then does
        // not take the peers, and so the pods' eth0, with it.
        let dp = status.dp_netns.ok_or_else(|| {
            CniError::Setup("this netstackd does not report a namespace for veth mode".into())
        })?;
        netstack_core::netns::ensure_named_netns(&dp)
            .map_err(|e| CniError::Setup(format!("veth mode: {e}")))?;
        let dp = match File::open(&dp) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "netstack: opening netstackd's namespace {}: {e}; the veth peer is made \
                     in the pod's namespace and moved by netstackd",
                    dp.display()
                );
                None
            }
        };
        return Ok(Ready {
            workers,
            dp,
            big_tcp: status.big_tcp,
        });
    }
    Ok(Ready {
        workers,
        dp: None,
        big_tcp: None,
    })
}

/// ADD with addresses chosen by the caller instead of an IPAM plugin (the netavark plugin,
/// which gets them from podman): connect, create, configure, attach; undone on error.
pub fn add_with_addresses(
    env: &CniEnv,
    conf: &NetConf,
    netns: &Path,
    addresses: &IpamResult,
) -> Result<serde_json::Value, CniError> {
    let mode = conf.pod_mode(&env.args)?;
    let ready = steps::timed("daemon", || connect_ready(conf, mode))?;
    attach_allocated(env, conf, netns, &ready, addresses)
}

/// The part of ADD after IPAM: create, configure, attach. Undoes its own steps on error.
fn attach_allocated(
    env: &CniEnv,
    conf: &NetConf,
    netns: &Path,
    ready: &Ready,
    allocated: &IpamResult,
) -> Result<serde_json::Value, CniError> {
    let mode = conf.pod_mode(&env.args)?;
    let mac = pod_mac(conf, &env.args, allocated, mode == LinkMode::VhostUser)?;
    let mtu = conf.mtu();
    let addrs: Vec<IpNet> = allocated.ips.iter().map(|ip| ip.address).collect();
    let routes = routes_to_install(allocated);
    let key = AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let peer = (mode == LinkMode::Veth).then(|| veth_peer_name(&key));
    let vhost = mode == LinkMode::VhostUser;
    let kind = match &peer {
        None if vhost => LinkKind::Dummy,
        None => LinkKind::Tap {
            queues: ready.workers,
        },
        Some(peer) => LinkKind::Veth {
            peer,
            dp: ready.dp.as_ref(),
            big_tcp: ready.big_tcp,
        },
    };
    let link = steps::timed("link", || {
        create_pod_link(netns, &env.ifname, kind, mac, mtu, &addrs, &routes)
    })?;

    let attachment = Attachment {
        key,
        netns: netns.to_owned(),
        mac,
        ips: addrs.clone(),
        gateways: allocated.ips.iter().filter_map(|ip| ip.gateway).collect(),
        mtu,
        queues: link.queues.len(),
        labels: labels(env, conf),
        bandwidth: conf.runtime_config.as_ref().and_then(|r| r.bandwidth),
        mode,
        peer,
        vhost_socket_mode: if vhost {
            Some(conf.socket_mode()?)
        } else {
            None
        },
        vhost_socket_group: conf.vhost_socket_group.filter(|_| vhost),
    };
    let fds: Vec<_> = link.queues.iter().map(|fd| fd.as_fd()).collect();
    // A connection of its own, opened now: one held through IPAM and the link's set-up would
    // sit idle there, and netstackd closes idle connections first when many clients call at
    // once (as a runtime's parallel ADDs do).
    let reply = steps::timed("attach", || {
        Client::connect(&conf.socket(), CONTROL_TIMEOUT).and_then(|mut client| {
            let reply = client.call(&Request::Attach(attachment.clone()), &fds)?;
            Ok((reply, client.peer_protocol()))
        })
    });
    drop(fds);
    drop(link);
    let mut socket_path = None;
    let failure = match reply {
        Ok((Reply::Done, _)) if !vhost => None,
        Ok((Reply::Attached { socket_path: path }, _)) if vhost => {
            socket_path = Some(path);
            None
        }
        Ok((Reply::Error { message, kind }, protocol)) => {
            Some(daemon_refusal(protocol, "attachment", kind, &message))
        }
        Ok((other, _)) => Some(undone(
            CniError::Setup(format!("unexpected attach reply {other:?}")),
            conf,
            &attachment.key,
        )),
        // The daemon may have taken it before the connection broke: detach to be sure.
        Err(e) => Some(undone(control_error(e), conf, &attachment.key)),
    };
    // Kata's runtime finds a VM pod's socket by the first address of its interface.
    let failure = failure.or_else(|| {
        let socket = socket_path.as_deref().filter(|_| conf.kata_vhost_user)?;
        let ip = addrs
            .iter()
            .map(|a| a.addr())
            .find(IpAddr::is_ipv4)
            .or_else(|| addrs.first().map(|a| a.addr()))?;
        let e = create_kata_link(ip, socket).err()?;
        Some(undone(e, conf, &attachment.key))
    });
    if let Some(e) = failure {
        if vhost {
            remove_kata_links(&netstack_core::control::vhost_socket_name(&attachment.key));
        }
        if let Err(undo) = delete_pod_link(netns, &env.ifname, mode) {
            eprintln!(
                "netstack: removing {} after a failed ADD: {undo}",
                env.ifname
            );
        }
        return Err(e);
    }

    let v040 = conf.cni_version == "0.4.0";
    let result = AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![result_interface(
            conf,
            &env.ifname,
            mac,
            mtu,
            netns,
            socket_path.as_deref(),
        )],
        ips: allocated
            .ips
            .iter()
            .map(|ip| ResultIp {
                version: v040.then_some(if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                }),
                address: ip.address,
                gateway: ip.gateway,
                interface: 0,
            })
            .collect(),
        routes,
        dns: allocated.dns.clone(),
    };
    let ours = serde_json::to_value(result)
        .map_err(|e| CniError::Setup(format!("encoding the result: {e}")))?;
    Ok(match &conf.prev_result {
        Some(prev) => extend_prev_result(prev, ours, &conf.cni_version),
        None => ours,
    })
}

/// `failure`, after taking back the attachment of `key` that netstackd may hold (a detach,
/// tried twice). When netstackd cannot be made to let it go, the error says so: its socket and
/// state stay until a DEL, while the IPAM reservation is released with this ADD.
fn undone(failure: CniError, conf: &NetConf, key: &AttachmentKey) -> CniError {
    let mut why = String::new();
    for _ in 0..2 {
        match connect(&conf.socket()).and_then(|mut c| {
            c.call(&Request::Detach(key.clone()), &[])
                .map_err(control_error)
        }) {
            Ok(Reply::Done) => return failure,
            Ok(other) => why = format!("{other:?}"),
            Err(e) => why = e.to_string(),
        }
    }
    CniError::Setup(format!(
        "{failure}; and netstackd may still hold {key} (detach failed: {why}): run DEL for it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(json: &str) -> IpamResult {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_route_goes_via_the_gateway() {
        let r = routes_to_install(&ipam(
            r#"{"ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0"}]}"#,
        ));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].gw.unwrap().to_string(), "10.244.1.1");
    }

    #[test]
    fn a_default_route_is_added_when_ipam_gives_none() {
        let r = routes_to_install(&ipam(
            r#"{"ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1"}],"routes":[{"dst":"10.96.0.0/12","gw":"10.244.1.254"}]}"#,
        ));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gw.unwrap().to_string(), "10.244.1.254");
        assert_eq!(r[1].dst.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn mac_is_derived_from_the_first_ipv4() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"netstack"}"#).unwrap();
        let none = BTreeMap::new();
        let mac = pod_mac(
            &conf,
            &none,
            &ipam(r#"{"ips":[{"address":"10.244.1.5/24"}]}"#),
            false,
        )
        .unwrap();
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:05");
    }

    /// The bridge plugin's order: CNI_ARGS, then args.cni, then runtimeConfig, each overriding
    /// the one before; a bad value names where it came from.
    #[test]
    fn runtime_mac_comes_from_the_three_places_with_the_bridge_plugins_precedence() {
        let ip = ipam(r#"{"ips":[{"address":"10.244.1.5/24"}]}"#);
        let env_mac: BTreeMap<String, String> =
            [("MAC".to_owned(), "0a:00:00:00:00:01".to_owned())].into();
        let conf = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"netstack"{extra}}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        let args = r#","args":{"cni":{"mac":"0a:00:00:00:00:02"}}"#;
        let rc = r#","runtimeConfig":{"mac":"0a:00:00:00:00:03"}"#;
        let cases = [
            ("", &env_mac, "0a:00:00:00:00:01"),
            (args, &env_mac, "0a:00:00:00:00:02"),
            (
                &format!("{args}{rc}") as &str,
                &env_mac,
                "0a:00:00:00:00:03",
            ),
            (rc, &BTreeMap::new(), "0a:00:00:00:00:03"),
        ];
        for (extra, env, want) in cases {
            assert_eq!(
                pod_mac(&conf(extra), env, &ip, false).unwrap().to_string(),
                want,
                "{extra}"
            );
        }
        let bad: BTreeMap<String, String> = [("MAC".to_owned(), "zz".to_owned())].into();
        let e = pod_mac(&conf(""), &bad, &ip, false).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("CNI_ARGS MAC"), "{e}");
        let e = pod_mac(
            &conf(r#","args":{"cni":{"mac":"01:00:5e:00:00:01"}}"#),
            &env_mac,
            &ip,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("args.cni.mac"), "{e}");
        // A VM pod takes the runtime's choice too, and only without one a random MAC.
        assert_eq!(
            pod_mac(&conf(rc), &BTreeMap::new(), &ip, true)
                .unwrap()
                .to_string(),
            "0a:00:00:00:00:03"
        );
        assert_eq!(
            pod_mac(&conf(""), &env_mac, &ip, true).unwrap().to_string(),
            "0a:00:00:00:00:01"
        );
    }

    /// The peer is made directly in netstackd's namespace and never appears in the pod's; a
    /// namespace fd the kernel refuses (here not a namespace at all) falls back to the pair
    /// beside the pod's end, for netstackd to move.
    #[test]
    #[ignore = "needs root"]
    fn the_peer_is_made_in_netstackds_netns_or_else_beside_the_pods_end() {
        use netstack_core::netns::testing::NamedNetns;
        let (pod, dp) = (NamedNetns::new(), NamedNetns::new());
        let dp_file = File::open(&dp.path).unwrap();
        let not_a_netns = File::open("/dev/null").unwrap();
        let in_pod = run_in_netns(&pod.path, || {
            let nl = Netlink::new().unwrap();
            create_veth(&nl, "e0", "nsvtest0", Some(&dp_file), None).unwrap();
            create_veth(&nl, "e1", "nsvtest1", Some(&not_a_netns), None).unwrap();
            create_veth(&nl, "e2", "nsvtest2", None, None).unwrap();
            ["e0", "nsvtest0", "e1", "nsvtest1", "nsvtest2"]
                .map(|n| nl.link_index(n).unwrap().is_some())
        })
        .unwrap();
        assert_eq!(in_pod, [true, false, true, true, true]);
        let in_dp = run_in_netns(&dp.path, || {
            let nl = Netlink::new().unwrap();
            ["nsvtest0", "nsvtest1"].map(|n| nl.link_index(n).unwrap().is_some())
        })
        .unwrap();
        assert_eq!(in_dp, [true, false]);
    }

    /// BIG TCP (netstackd `--big-tcp`): both ends get the size, IPv6 and IPv4; a size the
    /// kernel refuses (as one before 5.19 refuses anything over 64 KiB) still makes the pair,
    /// at 64 KiB.
    #[test]
    #[ignore = "needs root"]
    fn big_tcp_sizes_both_ends_or_falls_back_to_64_kib() {
        use netstack_core::netns::testing::NamedNetns;
        let (pod, dp) = (NamedNetns::new(), NamedNetns::new());
        let dp_file = File::open(&dp.path).unwrap();
        let in_pod = run_in_netns(&pod.path, || {
            let nl = Netlink::new().unwrap();
            create_veth(&nl, "e0", "nsvtest0", Some(&dp_file), Some(196_608)).unwrap();
            create_veth(&nl, "e1", "nsvtest1", Some(&dp_file), Some(1 << 20)).unwrap();
            ["e0", "e1"].map(|n| nl.link_info(n).unwrap().unwrap().gso_sizes)
        })
        .unwrap();
        assert_eq!(in_pod, [[196_608; 4], [65_536; 4]]);
        let in_dp = run_in_netns(&dp.path, || {
            let nl = Netlink::new().unwrap();
            ["nsvtest0", "nsvtest1"].map(|n| nl.link_info(n).unwrap().unwrap().gso_sizes)
        })
        .unwrap();
        assert_eq!(in_dp, [[196_608; 4], [65_536; 4]]);
    }

    #[test]
    fn runtime_mac_must_be_unicast() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netstack","runtimeConfig":{"mac":"01:00:5e:00:00:01"}}"#,
        )
        .unwrap();
        let none = BTreeMap::new();
        let e = pod_mac(
            &conf,
            &none,
            &ipam(r#"{"ips":[{"address":"10.244.1.5/24"}]}"#),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn socket_path_is_in_results_of_1_1_0_only() {
        let mac: MacAddr = "02:5a:00:00:00:01".parse().unwrap();
        let sock = Path::new("/run/netstack/vhost/vuf53f02b3bfe94942.sock");
        let netns = Path::new("/run/netns/vm1");
        // (cniVersion, socket path, the interface's JSON)
        let table = [
            (
                "1.1.0",
                Some(sock),
                r#"{"name":"eth0","mac":"02:5a:00:00:00:01","mtu":1500,"sandbox":"/run/netns/vm1","socketPath":"/run/netstack/vhost/vuf53f02b3bfe94942.sock"}"#,
            ),
            (
                "1.0.0",
                Some(sock),
                r#"{"name":"eth0","mac":"02:5a:00:00:00:01","sandbox":"/run/netns/vm1"}"#,
            ),
            (
                "0.4.0",
                Some(sock),
                r#"{"name":"eth0","mac":"02:5a:00:00:00:01","sandbox":"/run/netns/vm1"}"#,
            ),
            (
                "1.1.0",
                None,
                r#"{"name":"eth0","mac":"02:5a:00:00:00:01","mtu":1500,"sandbox":"/run/netns/vm1"}"#,
            ),
        ];
        for (version, socket, want) in table {
            let conf = NetConf::parse(
                format!(r#"{{"cniVersion":"{version}","name":"n","type":"netstack"}}"#).as_bytes(),
            )
            .unwrap();
            let i = result_interface(&conf, "eth0", mac, 1500, netns, socket);
            assert_eq!(serde_json::to_string(&i).unwrap(), want, "{version}");
        }
    }

    #[test]
    fn a_vm_pod_without_a_chosen_mac_gets_a_random_local_unicast_one() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"netstack"}"#).unwrap();
        let ip = ipam(r#"{"ips":[{"address":"10.244.1.5/24"}]}"#);
        let macs: Vec<MacAddr> = (0..8)
            .map(|_| pod_mac(&conf, &BTreeMap::new(), &ip, true).unwrap())
            .collect();
        for m in &macs {
            assert_eq!(m.0[0] & 0x03, 0x02, "local, unicast: {m}");
            assert!(m.is_unicast() && !m.is_zero(), "{m}");
        }
        let distinct: std::collections::BTreeSet<_> = macs.iter().map(|m| m.0).collect();
        assert!(distinct.len() > 1, "random: {macs:?}");
    }
}
