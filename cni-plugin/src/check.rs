//! CNI CHECK: is the attachment still what ADD made of it? Compares the device in the pod's
//! netns (a netstack TAP or veth or a VM pod's placeholder dummy, its MAC, addresses and
//! routes) and netstackd's record of the attachment with `prevResult` (for a VM pod also its
//! socket: there, a socket, of the configured mode), after asking the IPAM plugin to check
//! its own allocation.
//! Every difference is reported (code 101), each naming what differs; things added later by
//! chained plugins (more addresses, more routes) are not differences.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use netstack_core::control::{AttachmentKey, LinkMode, Reply, Request};
use netstack_core::netlink::Netlink;
use netstack_core::netns::run_in_netns;
use netstack_core::wire::MacAddr;

use crate::config::NetConf;
use crate::daemon::{connect, control_error, daemon_refusal, netns_error};
use crate::result::{PrevResult, Route};
use crate::skel::CniEnv;
use crate::{ipam, CniError};

/// What `prevResult` says about our interface.
#[derive(Debug, Clone)]
struct Expected {
    mac: Option<MacAddr>,
    addrs: Vec<IpNet>,
    routes: Vec<Route>,
    /// A VM pod's socket, when the result (1.1.0) says it.
    socket_path: Option<std::path::PathBuf>,
}

/// Picks our interface out of `prev`: the one named `CNI_IFNAME` in `netns`.
fn expected(prev: &PrevResult, ifname: &str, netns: &Path) -> Result<Expected, CniError> {
    let netns_str = netns.display().to_string();
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns_str.as_str()))
        .ok_or_else(|| {
            CniError::Mismatch(vec![format!(
                "prevResult has no interface {ifname} in sandbox {netns_str}"
            )])
        })?;
    let mac = match prev.interfaces[index].mac.as_deref() {
        Some(m) => Some(m.parse::<MacAddr>().map_err(|_| {
            CniError::Decode(format!("prevResult: interface {ifname} has MAC {m:?}"))
        })?),
        None => None,
    };
    let addrs = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| ip.address)
        .collect();
    Ok(Expected {
        mac,
        addrs,
        routes: prev.routes.clone(),
        socket_path: prev.interfaces[index].socket_path.clone(),
    })
}

/// What is really in the netns: (rtnetlink kind, MAC, addresses, routes as (dst, gw)).
type Observed = (
    Option<String>,
    Option<[u8; 6]>,
    Vec<IpNet>,
    Vec<(IpNet, Option<IpAddr>)>,
);

fn observe(netns: &Path, ifname: &str) -> Result<Option<Observed>, CniError> {
    let name = ifname.to_owned();
    run_in_netns(netns, move || -> Result<Option<Observed>, String> {
        let nl = Netlink::new().map_err(|e| e.to_string())?;
        let Some(info) = nl.link_info(&name).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let addrs = nl.addresses(info.index).map_err(|e| e.to_string())?;
        let mut routes: Vec<(IpNet, Option<IpAddr>)> = Vec::new();
        for (dst, gw, _) in nl
            .routes_v4()
            .map_err(|e| e.to_string())?
            .into_iter()
            .chain(nl.routes_v6().map_err(|e| e.to_string())?)
        {
            routes.push((dst, gw));
        }
        Ok(Some((info.kind, info.mac, addrs, routes)))
    })
    .map_err(netns_error)?
    .map_err(|e| CniError::Setup(format!("reading {ifname} in {}: {e}", netns.display())))
}

/// The differences between what `prevResult` says and what the netns holds, for an
/// interface of `mode`.
fn compare_netns(
    want: &Expected,
    ifname: &str,
    mode: LinkMode,
    seen: Option<Observed>,
) -> Vec<String> {
    let Some((kind, mac, addrs, routes)) = seen else {
        return vec![format!("interface {ifname} does not exist in the netns")];
    };
    let mut diffs = Vec::new();
    if !mode.is_device_kind(kind.as_deref()) {
        let what = match mode {
            LinkMode::Tap => "TAP",
            LinkMode::Veth => "veth",
            LinkMode::VhostUser => "placeholder dummy",
        };
        diffs.push(format!("interface {ifname} is not a netstack {what}"));
    }
    if let Some(want_mac) = want.mac {
        if mac != Some(want_mac.0) {
            let got = mac.map_or("none".to_owned(), |m| MacAddr(m).to_string());
            diffs.push(format!(
                "interface {ifname} has MAC {got}, prevResult says {want_mac}"
            ));
        }
    }
    for a in &want.addrs {
        if !addrs.contains(a) {
            diffs.push(format!("address {a} is missing from {ifname}"));
        }
    }
    for r in &want.routes {
        let dst = r.dst.trunc();
        let found = routes
            .iter()
            .any(|(d, gw)| *d == dst && (r.gw.is_none() || *gw == r.gw));
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            diffs.push(format!("route {dst}{via} is missing"));
        }
    }
    diffs
}

/// The differences between `prevResult` and netstackd's record of the attachment.
fn compare_daemon(
    conf: &NetConf,
    mode: LinkMode,
    key: &AttachmentKey,
    netns: &Path,
    want: &Expected,
) -> Result<Vec<String>, CniError> {
    let mut client = connect(&conf.socket())?;
    let pods = match client.call(&Request::List, &[]).map_err(control_error)? {
        Reply::List { pods } => pods,
        Reply::Error { message, kind } => {
            return Err(daemon_refusal(
                client.peer_protocol(),
                "list",
                kind,
                &message,
            ))
        }
        other => return Err(CniError::Setup(format!("unexpected list reply {other:?}"))),
    };
    let Some(pod) = pods.iter().find(|p| p.key == *key) else {
        return Ok(vec![format!(
            "netstackd does not hold the attachment {key}"
        )]);
    };
    let mut diffs = Vec::new();
    if pod.state == netstack_core::control::PodState::RestoreFailed {
        diffs.push(format!(
            "netstackd holds {key} but could not restore it after a restart (it retries): {}",
            pod.error.as_deref().unwrap_or("unknown error")
        ));
    }
    if pod.mode != mode {
        diffs.push(format!(
            "netstackd serves {key} in {} mode, the config says {mode}",
            pod.mode,
        ));
    }
    if mode == LinkMode::VhostUser {
        match &pod.socket_path {
            None => diffs.push(format!("netstackd names no vhost-user socket for {key}")),
            Some(path) => {
                if let Some(prev) = want.socket_path.as_deref() {
                    if prev != path.as_path() {
                        diffs.push(format!(
                            "netstackd serves {key} on socket {}, prevResult says {}",
                            path.display(),
                            prev.display()
                        ));
                    }
                }
                diffs.extend(compare_socket(
                    path,
                    conf.socket_mode()?,
                    conf.vhost_socket_group,
                ));
            }
        }
    }
    if pod.netns != netns {
        diffs.push(format!(
            "netstackd serves {key} in netns {}, not {}",
            pod.netns.display(),
            netns.display()
        ));
    }
    if let Some(mac) = want.mac {
        if pod.mac != mac {
            diffs.push(format!(
                "netstackd allows MAC {} for {key}, prevResult says {mac}",
                pod.mac
            ));
        }
    }
    for a in &want.addrs {
        if !pod.ips.iter().any(|p| p.addr() == a.addr()) {
            diffs.push(format!("netstackd does not route {} to {key}", a.addr()));
        }
    }
    Ok(diffs)
}

/// The differences between a VM pod's socket at `path` and what the config asks: it exists,
/// is a socket, has permission bits `mode` and, when given, group `gid`.
fn compare_socket(path: &Path, mode: u32, gid: Option<u32>) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return vec![format!("vhost-user socket {}: {e}", path.display())],
    };
    if !m.file_type().is_socket() {
        return vec![format!("{} is not a socket", path.display())];
    }
    let mut diffs = Vec::new();
    if m.mode() & 0o777 != mode {
        diffs.push(format!(
            "vhost-user socket {} has mode {:04o}, the config says {mode:04o}",
            path.display(),
            m.mode() & 0o777
        ));
    }
    if let Some(gid) = gid.filter(|g| *g != m.gid()) {
        diffs.push(format!(
            "vhost-user socket {} belongs to group {}, the config says {gid}",
            path.display(),
            m.gid()
        ));
    }
    diffs
}

/// CHECK.
pub fn cmd_check(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let netns = env.netns.as_deref().ok_or(CniError::InvalidEnv {
        var: "CNI_NETNS",
        reason: "not set".into(),
    })?;
    let prev_raw = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
    let prev: PrevResult = serde_json::from_value(prev_raw.clone())
        .map_err(|e| CniError::Decode(format!("prevResult: {e}")))?;
    let want = expected(&prev, &env.ifname, netns)?;
    let ipam_conf = conf
        .ipam
        .as_ref()
        .ok_or_else(|| CniError::InvalidConfig("an ipam section is required".into()))?;
    // The IPAM plugin checks its own allocation first (SPEC.md: CHECK is delegated).
    ipam::check(env, &ipam_conf.plugin_type, stdin)?;

    if !netns.exists() {
        return Err(CniError::ContainerUnknown(format!(
            "netns {} does not exist",
            netns.display()
        )));
    }
    let mode = conf.pod_mode(&env.args)?;
    let mut diffs = compare_netns(&want, &env.ifname, mode, observe(netns, &env.ifname)?);
    let key = AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    diffs.extend(compare_daemon(conf, mode, &key, netns, &want)?);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::Mismatch(diffs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev() -> PrevResult {
        serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:01:05","sandbox":"/run/netns/p"}],
                "ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}],
                "routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}"#,
        )
        .unwrap()
    }

    fn observed() -> Observed {
        (
            Some("tun".to_owned()),
            Some([0x0a, 0x58, 10, 244, 1, 5]),
            vec!["10.244.1.5/24".parse().unwrap()],
            vec![
                (
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.244.1.1".parse().unwrap()),
                ),
                ("10.244.1.0/24".parse().unwrap(), None),
            ],
        )
    }

    #[test]
    fn a_matching_netns_has_no_differences() {
        let want = expected(&prev(), "eth0", Path::new("/run/netns/p")).unwrap();
        assert!(compare_netns(&want, "eth0", LinkMode::Tap, Some(observed())).is_empty());
        let mut veth = observed();
        veth.0 = Some("veth".to_owned());
        assert!(compare_netns(&want, "eth0", LinkMode::Veth, Some(veth.clone())).is_empty());
        assert_eq!(
            compare_netns(&want, "eth0", LinkMode::Tap, Some(veth)),
            vec!["interface eth0 is not a netstack TAP".to_owned()]
        );
        assert_eq!(
            compare_netns(&want, "eth0", LinkMode::Veth, Some(observed())),
            vec!["interface eth0 is not a netstack veth".to_owned()]
        );
    }

    #[test]
    fn each_difference_is_named() {
        let want = expected(&prev(), "eth0", Path::new("/run/netns/p")).unwrap();
        // (change to the netns, text expected in the difference)
        type Change = fn(&mut Observed);
        let table: [(Change, &str); 4] = [
            (|o| o.0 = None, "is not a netstack TAP"),
            (
                |o| o.1 = Some([2, 0, 0, 0, 0, 1]),
                "has MAC 02:00:00:00:00:01",
            ),
            (|o| o.2.clear(), "address 10.244.1.5/24 is missing"),
            (
                |o| o.3.truncate(0),
                "route 0.0.0.0/0 via 10.244.1.1 is missing",
            ),
        ];
        for (change, text) in table {
            let mut o = observed();
            change(&mut o);
            let diffs = compare_netns(&want, "eth0", LinkMode::Tap, Some(o));
            assert_eq!(diffs.len(), 1, "{text}: {diffs:?}");
            assert!(diffs[0].contains(text), "{text}: {diffs:?}");
        }
        assert_eq!(
            compare_netns(&want, "eth0", LinkMode::Tap, None),
            vec!["interface eth0 does not exist in the netns".to_owned()]
        );
    }

    #[test]
    fn a_vm_pods_socket_must_be_a_socket_of_the_configured_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("netstack-check-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vu.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(compare_socket(&path, 0o600, None).is_empty());
        let d = compare_socket(&path, 0o660, None);
        assert!(
            d.len() == 1 && d[0].contains("has mode 0600, the config says 0660"),
            "{d:?}"
        );
        let d = compare_socket(&path, 0o600, Some(4_000_000));
        assert!(
            d.len() == 1 && d[0].contains("the config says 4000000"),
            "{d:?}"
        );
        let file = dir.join("plain");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            compare_socket(&file, 0o600, None),
            [format!("{} is not a socket", file.display())]
        );
        std::fs::remove_file(&path).unwrap();
        let d = compare_socket(&path, 0o600, None);
        assert!(d.len() == 1 && d[0].contains("No such file"), "{d:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        // The placeholder is a dummy: a TAP in its place is a difference.
        let want = expected(&prev(), "eth0", Path::new("/run/netns/p")).unwrap();
        let mut dummy = observed();
        dummy.0 = Some("dummy".to_owned());
        assert!(compare_netns(&want, "eth0", LinkMode::VhostUser, Some(dummy)).is_empty());
        assert_eq!(
            compare_netns(&want, "eth0", LinkMode::VhostUser, Some(observed())),
            ["interface eth0 is not a netstack placeholder dummy"]
        );
    }

    #[test]
    fn prev_result_must_name_our_interface() {
        let e = expected(&prev(), "eth1", Path::new("/run/netns/p")).unwrap_err();
        assert_eq!(e.code(), 101);
        let e = expected(&prev(), "eth0", Path::new("/run/netns/other")).unwrap_err();
        assert!(e.to_string().contains("sandbox /run/netns/other"));
    }
}
