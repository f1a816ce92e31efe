//! veth mode on the supervisor's side: netstackd's own network namespace (`--dp-netns`),
//! where the peers of the pods' veths live and the kernel never routes, and the packet
//! sockets the dataplane reads them through.
//!
//! The plugin makes sure the namespace exists (it runs in the node's mount namespace, so the
//! namespace's mount outlives netstackd's own), creates the pair with the peer directly in
//! that namespace and names the peer in `attach` (where it could not, the peer is beside the
//! pod's end and the supervisor moves it over); the supervisor switches off everything
//! the kernel could do with it (no address, no ARP, no IPv6, no forwarding), turns off on the
//! pod's end the GSO types a packet socket cannot carry (`sys::ethtool`), and opens one
//! fanout packet socket per worker on it. Those sockets go to the dataplane exactly as TAP
//! queue fds do.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use super::DaemonConfig;
use crate::control::{Attachment, AttachmentKey, ErrorKind, VETH_ALIAS};
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{ensure_named_netns, is_netns, run_in_netns, NetnsError};
use crate::sys::ethtool::{disable_features, GSO_WITHOUT_VNET_TYPE};
use crate::sys::packet::{open_fanout_sockets, set_rx_ring};
use crate::sys::SysError;

/// Why a veth peer could not be taken over or the namespace of the peers set up.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// A sysctl of the namespace could not be written.
    #[error("setting {name}={value}: {source}")]
    Sysctl {
        /// The sysctl, under /proc/sys.
        name: String,
        /// The value.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file or mount of the namespace failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done, naming the path.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Entering or making a namespace failed (the pod's may be gone).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A socket or ethtool call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A device is not what the attachment says it is (missing, not a netstack veth, not the
    /// pod's peer).
    #[error("{0}")]
    Link(String),
    /// A veth attachment without a peer name.
    #[error("a veth attachment must name its peer")]
    NoPeer,
    /// Any of the above, for one pod interface.
    #[error("{key}: {source}")]
    Pod {
        /// The pod interface.
        key: AttachmentKey,
        /// What failed.
        source: Box<VethError>,
    },
}

impl VethError {
    /// The kind of the control error reply it becomes: the pod's netns gone, a bad request,
    /// otherwise a failure of the link.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VethError::Pod { source, .. } => source.kind(),
            VethError::Netns(NetnsError::NotFound { .. } | NetnsError::NotANetns { .. }) => {
                ErrorKind::NetnsGone
            }
            VethError::NoPeer => ErrorKind::InvalidNetworkConfig,
            _ => ErrorKind::Interface,
        }
    }

    fn of(key: &AttachmentKey) -> impl FnOnce(VethError) -> VethError + '_ {
        move |e| VethError::Pod {
            key: key.clone(),
            source: Box::new(e),
        }
    }
}

/// Where the veth peers live unless `--dp-netns` says otherwise: netstack's own run directory,
/// which no runtime writes into (see `crate::mounts` for why not `/run/netns`).
pub const DEFAULT_DP_NETNS: &str = "/run/netstack/netns/dp";

/// Where netstack before 0.2 kept that namespace.
pub const LEGACY_DP_NETNS: &str = "/run/netns/netstack-dp";

/// MTU of a peer: the largest a veth takes, so every frame the pod's kernel puts on its end
/// reaches netstackd, which applies the pod's MTU itself (as it does for a TAP, which has no
/// MTU check on that side).
pub const PEER_MTU: u32 = 65535;

/// The sysctls of the namespace: no forwarding, no IPv6 on anything moved in later.
const DP_SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/ip_forward", "0"),
    ("net/ipv6/conf/all/forwarding", "0"),
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
];

/// Serialises creation, so two concurrent first attachments do not mount two namespaces.
static DP_NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Writes a sysctl of the calling thread's netns; a file the kernel lacks (IPv6 disabled at
/// boot) is no error.
pub(super) fn write_sysctl(name: &str, value: &str) -> Result<(), VethError> {
    match std::fs::write(format!("/proc/sys/{name}"), value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VethError::Sysctl {
            name: name.to_owned(),
            value: value.to_owned(),
            source,
        }),
    }
}

/// Creates the namespace at `path` if it is not there yet (normally the plugin already did)
/// and (re)applies its sysctls.
pub fn ensure_dp_netns(path: &Path) -> Result<(), VethError> {
    let _guard = DP_NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let created = ensure_named_netns(path)?;
    run_in_netns(path, || {
        DP_SYSCTLS
            .iter()
            .try_for_each(|(name, value)| write_sysctl(name, value))
    })??;
    if created {
        tracing::info!(netns = %path.display(), "created the namespace for veth peers");
    }
    Ok(())
}

/// At start: releases the namespaces an older netstack hid in `/run/netns` and in the
/// directory of `dp` (its self-bind of that directory, see `crate::mounts`), and, when `dp` is
/// the default, moves the namespace of an older netstack's veth peers there (bind-mounting the
/// same namespace, then unmounting the old name), so that its pods keep their peers. Problems are
/// logged: none of this stops netstackd from starting.
pub fn tidy_netns_dirs(dp: &Path) {
    let legacy = Path::new(LEGACY_DP_NETNS);
    let mut dirs = vec![legacy.parent().unwrap_or(legacy).to_path_buf()];
    if let Some(parent) = dp.parent().filter(|p| !dirs.iter().any(|d| d == p)) {
        dirs.push(parent.to_path_buf());
    }
    for dir in dirs {
        match crate::mounts::release_hidden(&dir) {
            Ok(r) if !r.unmounted.is_empty() => tracing::warn!(
                dir = %dir.display(),
                released = ?r.unmounted,
                removed = ?r.removed,
                "released network namespaces hidden under a self-bind of their directory"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(dir = %dir.display(), "hidden namespaces: {e}"),
        }
    }
    if dp == Path::new(DEFAULT_DP_NETNS) && is_netns(legacy) && !is_netns(dp) {
        match adopt_legacy(legacy, dp) {
            Ok(()) => tracing::info!(
                from = %legacy.display(),
                to = %dp.display(),
                "moved the namespace of the veth peers"
            ),
            Err(e) => {
                tracing::warn!(from = %legacy.display(), "keeping the old veth namespace: {e}")
            }
        }
    }
}

/// Mounts the namespace at `from` at `to` as well, then removes `from`.
fn adopt_legacy(from: &Path, to: &Path) -> Result<(), VethError> {
    use nix::mount::{mount, MsFlags};
    let io = |what: String| move |source| VethError::Io { what, source };
    let dir = to
        .parent()
        .ok_or_else(|| VethError::Link(format!("{} has no directory", to.display())))?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let _lock =
        crate::mounts::lock_beside(dir).map_err(io(format!("locking {}", dir.display())))?;
    if is_netns(to) {
        return Ok(());
    }
    crate::mounts::share_dir(dir).map_err(io(format!("sharing {}", dir.display())))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(to)
        .map_err(io(format!("creating {}", to.display())))?;
    mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        io(format!(
            "bind-mounting {} at {}",
            from.display(),
            to.display()
        ))(e.into())
    })?;
    crate::netns::remove_named_netns(from)?;
    Ok(())
}

/// At uninstall, once the namespace at `dp` is gone: the directory netstack made for it, when
/// it is the default one and empty, is unmounted (its self-bind) and removed.
pub fn remove_default_dir(dp: &Path) {
    let Some(dir) = Path::new(DEFAULT_DP_NETNS).parent() else {
        return;
    };
    if dp != Path::new(DEFAULT_DP_NETNS)
        || std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some())
    {
        return;
    }
    let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(dir);
}

fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce(&Netlink) -> Result<T, VethError> + Send,
) -> Result<T, VethError> {
    run_in_netns(netns, || {
        let nl = Netlink::new()?;
        f(&nl)
    })?
}

/// The GSO size of a link without BIG TCP (the kernel's `GSO_LEGACY_MAX_SIZE`).
pub const LEGACY_GSO_MAX_SIZE: u32 = 65536;

/// Takes over the peer of a veth attachment: moves it from the pod netns into `dp` unless it
/// is there already (the plugin creates it there; a restart finds it there), checks it is the
/// peer of the pod's interface, configures it and opens `workers` packet sockets on it.
pub fn open_peer(
    config: &DaemonConfig,
    a: &Attachment,
    workers: usize,
) -> Result<Vec<OwnedFd>, VethError> {
    let key = &a.key;
    open_peer_of(config, a, workers).map_err(VethError::of(key))
}

fn open_peer_of(
    config: &DaemonConfig,
    a: &Attachment,
    workers: usize,
) -> Result<Vec<OwnedFd>, VethError> {
    let dp = config.dp_netns.as_path();
    let ring = config.veth_rx_ring;
    let key = &a.key;
    let peer = a.peer.clone().ok_or(VethError::NoPeer)?;
    ensure_dp_netns(dp)?;
    let dp_file = File::open(dp).map_err(|source| VethError::Io {
        what: format!("opening {}", dp.display()),
        source,
    })?;
    // There already when the plugin created it in place, or after a restart.
    let in_place = {
        let peer = peer.clone();
        in_netns(dp, move |nl| Ok(nl.link_info(&peer)?.is_some()))?
    };
    // The largest frame the dataplane takes from a pod: a pod made under another setting
    // (BIG TCP since turned off, or a larger --big-tcp-size) is brought down to it.
    let gso_cap = match config.big_tcp_bytes {
        0 => LEGACY_GSO_MAX_SIZE,
        n => n,
    };
    let pod_side = {
        let (peer, ifname) = (peer.clone(), key.ifname.clone());
        let key_name = key.to_string();
        in_netns(&a.netns, move |nl| {
            let pod_side = || -> Result<_, VethError> {
                match nl.link_info(&ifname)? {
                    Some(i)
                        if i.kind.as_deref() == Some("veth")
                            && i.alias.as_deref() == Some(VETH_ALIAS) =>
                    {
                        Ok(i)
                    }
                    Some(_) => Err(VethError::Link(format!("{ifname} is not a netstack veth"))),
                    None => Err(VethError::Link(format!("{ifname} no longer exists"))),
                }
            };
            let info = pod_side()?;
            // GSO types a packet socket cannot describe are segmented by the pod's kernel.
            disable_features(&ifname, GSO_WITHOUT_VNET_TYPE)?;
            if info.gso_sizes[0] > gso_cap || info.gso_sizes[2] > gso_cap {
                tracing::info!(
                    pod = %key_name,
                    from = info.gso_sizes[0].max(info.gso_sizes[2]),
                    to = gso_cap,
                    "lowering the pod's GSO size to what the dataplane takes (--big-tcp)"
                );
                nl.set_gso_max_size(info.index, &ifname, gso_cap)?;
            }
            if in_place {
                return Ok(info);
            }
            match nl.link_info(&peer)? {
                Some(i) if i.kind.as_deref() == Some("veth") => {
                    // Each namespace change waits for RCU grace periods: the plugin creates
                    // the peer in place, and this path is its fallback (or an older plugin's).
                    tracing::info!(
                        pod = %key_name,
                        peer = %peer,
                        "veth peer is in the pod's namespace: moving it into the namespace of the peers"
                    );
                    nl.move_to_netns(&peer, dp_file.as_fd())?
                }
                Some(_) => return Err(VethError::Link(format!("{peer} is not a veth"))),
                None => {
                    return Err(VethError::Link(format!(
                        "veth peer {peer} no longer exists"
                    )))
                }
            }
            // Read again: the move may have given the peer another index.
            pod_side()
        })?
    };
    in_netns(dp, move |nl| {
        let info = nl
            .link_info(&peer)?
            .ok_or_else(|| VethError::Link(format!("veth peer {peer} vanished")))?;
        if info.kind.as_deref() != Some("veth") || pod_side.link != Some(info.index) {
            return Err(VethError::Link(format!(
                "{peer} is not the peer of the pod's interface"
            )));
        }
        // Before it goes up, so the kernel never sends anything on it.
        write_sysctl(&format!("net/ipv6/conf/{peer}/disable_ipv6"), "1")?;
        nl.set_arp(&peer, false)?;
        nl.set_link(&peer, None, Some(PEER_MTU), true)?;
        let sockets = open_fanout_sockets(info.index, workers)?;
        if ring {
            for fd in &sockets {
                set_rx_ring(fd.as_fd())?;
            }
        }
        Ok(sockets)
    })
}

/// Deletes a peer from `dp` (its pod-side end goes with it). `Ok(false)` when it, or the
/// namespace, is not there.
pub fn delete_peer(dp: &Path, peer: &str) -> Result<bool, VethError> {
    let peer = peer.to_owned();
    match run_in_netns(dp, move || -> Result<bool, VethError> {
        Ok(Netlink::new()?.del_link(&peer)?)
    }) {
        Ok(r) => r,
        Err(NetnsError::NotFound { .. } | NetnsError::NotANetns { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
