//! CNI GC (1.1.0): release everything of this network that belongs to an attachment the
//! runtime no longer knows, i.e. one missing from `cni.dev/valid-attachments` (or the older
//! `cni.dev/attachments`). Like DEL it goes on past errors and reports the first.
//!
//! - netstackd's attachments of this network (the `cni.network` label every ADD records) that
//!   are not valid are detached (netstackd closes a VM pod's socket), their TAP (veth,
//!   placeholder dummy and Kata socket link) deleted if the netns is still there, and their
//!   IPAM allocation released by an IPAM DEL for that (container id, ifname);
//! - then GC is delegated to the IPAM plugin if it implements it (speaks 1.1.0). host-local
//!   does not: its reservations (one file per address under `dataDir/<network>/`, holding
//!   the container id and ifname) are read and every stale one is released with DEL, so an
//!   allocation whose ADD died before reaching netstackd is reclaimed too.
//!
//! Attachments made by the OCI hook (`netstack-hook`, for containers no CNI runtime manages)
//! are never touched: the runtime's valid-attachments list cannot name them. They carry the
//! label [`OWNER_LABEL`] = [`HOOK_OWNER`] (older ones are told by their `/proc/PID/ns/net`
//! netns path), count as valid for the IPAM stage too, and when netstackd cannot be asked
//! which they are, the IPAM stage is skipped rather than risk releasing their addresses.

use std::collections::BTreeSet;
use std::path::PathBuf;

use netstack_core::control::{vhost_socket_name, AttachmentKey, LinkMode, PodInfo, Reply, Request};

use crate::config::{GcAttachment, NetConf};
use crate::daemon::{connect, control_error, delete_pod_link, remove_kata_links, NETWORK_LABEL};
use crate::skel::CniEnv;
use crate::{ipam, CniError};

/// The `CNI_ARGS` key a caller sets to say who owns the attachment ADD makes; ADD keeps it
/// as the label [`OWNER_LABEL`].
pub const OWNER_ARG: &str = "NETSTACK_OWNER";
/// The attachment label naming its owner.
pub const OWNER_LABEL: &str = "netstack.owner";
/// The owner value of attachments made by the OCI hook.
pub const HOOK_OWNER: &str = "hook";

/// Was this attachment made by the OCI hook (labelled so, or, before the label existed,
/// attached by a `/proc/PID/ns/net` path, the form only the hook uses)?
pub fn made_by_hook(pod: &PodInfo) -> bool {
    pod.labels.get(OWNER_LABEL).map(String::as_str) == Some(HOOK_OWNER)
        || netstack_core::netns::proc_pid(&pod.netns).is_some()
}

/// `stdin` with `keys` added to its `cni.dev/valid-attachments` (for a delegated IPAM GC).
fn with_valid(stdin: &[u8], keys: &BTreeSet<(String, String)>) -> Vec<u8> {
    if keys.is_empty() {
        return stdin.to_vec();
    }
    let Ok(mut conf) = serde_json::from_slice::<serde_json::Value>(stdin) else {
        return stdin.to_vec();
    };
    let field = if conf.get("cni.dev/valid-attachments").is_some() {
        "cni.dev/valid-attachments"
    } else {
        "cni.dev/attachments"
    };
    if let Some(list) = conf.get_mut(field).and_then(|v| v.as_array_mut()) {
        for (id, ifname) in keys {
            list.push(serde_json::json!({"containerID": id, "ifname": ifname}));
        }
    }
    serde_json::to_vec(&conf).unwrap_or_else(|_| stdin.to_vec())
}

/// Where host-local keeps reservations unless its config names a `dataDir`.
const HOST_LOCAL_DATA_DIR: &str = "/var/lib/cni/networks";

/// The (container id, ifname) of every host-local reservation of network `name`.
pub fn host_local_reservations(stdin: &[u8], name: &str) -> Vec<(String, String)> {
    let conf: serde_json::Value = serde_json::from_slice(stdin).unwrap_or_default();
    let dir = conf["ipam"]["dataDir"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(HOST_LOCAL_DATA_DIR))
        .join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        // Reservation files are named by the address; `lock` and `last_reserved_ip.N` are not.
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.parse::<std::net::IpAddr>().is_err() {
            continue;
        }
        let Ok(content) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = content.lines().map(str::trim);
        let id = lines.next().unwrap_or_default().to_owned();
        // Reservations older than host-local 0.8 hold only the container id.
        let ifname = lines.next().unwrap_or("eth0").to_owned();
        if !id.is_empty() {
            found.push((id, ifname));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// GC.
pub fn cmd_gc(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let valid = conf
        .gc_valid_attachments()
        .ok_or_else(|| CniError::InvalidConfig("GC needs cni.dev/valid-attachments".into()))?;
    let is_valid = |container_id: &str, ifname: &str| {
        valid.contains(&GcAttachment {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    };
    let ipam_type = conf.ipam.as_ref().map(|i| i.plugin_type.clone());
    let mut errors: Vec<CniError> = Vec::new();
    let mut released: BTreeSet<(String, String)> = BTreeSet::new();
    // The hook's attachments: valid for every stage; `None` when netstackd could not say.
    let mut hooks: Option<BTreeSet<(String, String)>> = None;

    let listed = connect(&conf.socket()).and_then(|mut c| {
        match c.call(&Request::List, &[]).map_err(control_error)? {
            Reply::List { pods } => Ok((c, pods)),
            other => Err(CniError::Setup(format!("unexpected list reply {other:?}"))),
        }
    });
    match listed {
        Ok((mut client, pods)) => {
            let by_hook: BTreeSet<(String, String)> = pods
                .iter()
                .filter(|p| made_by_hook(p))
                .map(|p| (p.key.container_id.clone(), p.key.ifname.clone()))
                .collect();
            hooks = Some(by_hook);
            for pod in pods {
                let ours = pod.labels.get(NETWORK_LABEL) == Some(&conf.name);
                let key: AttachmentKey = pod.key.clone();
                if !ours || is_valid(&key.container_id, &key.ifname) || made_by_hook(&pod) {
                    continue;
                }
                eprintln!("netstack: GC releases stale attachment {key}");
                match client.call(&Request::Detach(key.clone()), &[]) {
                    Ok(Reply::Done) => {}
                    Ok(other) => errors.push(CniError::Setup(format!(
                        "netstackd detach {key}: {other:?}"
                    ))),
                    Err(e) => errors.push(control_error(e)),
                }
                let mode = pod.mode;
                if let Err(e) = delete_pod_link(&pod.netns, &key.ifname, mode) {
                    errors.push(e);
                }
                if mode == LinkMode::VhostUser {
                    remove_kata_links(&vhost_socket_name(&key));
                }
                if let Some(t) = &ipam_type {
                    match ipam::del_attachment(env, t, stdin, &key.container_id, &key.ifname) {
                        Ok(()) => {
                            released.insert((key.container_id.clone(), key.ifname.clone()));
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        Err(e) => errors.push(e),
    }

    let ipam_type = match (&ipam_type, &hooks) {
        (Some(t), None) => {
            eprintln!(
                "netstack: GC: IPAM GC of {t} skipped: without netstackd's list the OCI hook's attachments cannot be told from stale ones"
            );
            None
        }
        _ => ipam_type,
    };
    let hooks = hooks.unwrap_or_default();
    if let Some(t) = &ipam_type {
        match ipam::gc(env, t, &with_valid(stdin, &hooks)) {
            Ok(true) => {}
            Ok(false) if t == "host-local" => {
                for (id, ifname) in host_local_reservations(stdin, &conf.name) {
                    let k = (id.clone(), ifname.clone());
                    if is_valid(&id, &ifname) || released.contains(&k) || hooks.contains(&k) {
                        continue;
                    }
                    eprintln!("netstack: GC releases stale host-local reservation of {id}/{ifname}");
                    if let Err(e) = ipam::del_attachment(env, t, stdin, &id, &ifname) {
                        errors.push(e);
                    }
                }
            }
            Ok(false) => eprintln!(
                "netstack: IPAM plugin {t} implements no GC: only the attachments netstackd knew were released"
            ),
            Err(e) => errors.push(e),
        }
    }

    for e in errors.iter().skip(1) {
        eprintln!("netstack: GC: also: {e}");
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(netns: &str, labels: &[(&str, &str)]) -> PodInfo {
        serde_json::from_value(serde_json::json!({
            "container_id": "c1", "ifname": "eth0", "netns": netns,
            "mac": "02:00:00:00:00:01", "ips": ["10.244.1.2/24"], "mode": "tap",
            "state": "attached",
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn hook_attachments_are_told_by_label_or_proc_path() {
        assert!(made_by_hook(&pod(
            "/run/netns/x",
            &[(OWNER_LABEL, HOOK_OWNER)]
        )));
        assert!(made_by_hook(&pod("/proc/42/ns/net", &[])));
        assert!(!made_by_hook(&pod("/run/netns/x", &[(NETWORK_LABEL, "n")])));
        assert!(!made_by_hook(&pod(
            "/var/run/netns/cni-1",
            &[(OWNER_LABEL, "cni")]
        )));
    }

    #[test]
    fn delegated_gc_sees_the_hook_attachments_as_valid() {
        let stdin =
            br#"{"name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let keys = BTreeSet::from([("h1".to_owned(), "eth0".to_owned())]);
        let out: serde_json::Value = serde_json::from_slice(&with_valid(stdin, &keys)).unwrap();
        let list = out["cni.dev/valid-attachments"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1]["containerID"], "h1");
        assert_eq!(with_valid(stdin, &BTreeSet::new()), stdin.to_vec());
    }

    #[test]
    fn host_local_reservations_are_read_from_its_data_dir() {
        let dir = std::env::temp_dir().join(format!("netstack-gc-test-{}", std::process::id()));
        let net = dir.join("net1");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("10.244.1.2"), "c1\r\neth0").unwrap();
        std::fs::write(net.join("fd00::2"), "c1\r\neth0").unwrap();
        std::fs::write(net.join("10.244.1.3"), "old-format").unwrap();
        std::fs::write(net.join("last_reserved_ip.0"), "10.244.1.3").unwrap();
        std::fs::write(net.join("lock"), "").unwrap();
        let stdin = serde_json::json!({"ipam": {"type": "host-local", "dataDir": dir}});
        let found = host_local_reservations(&serde_json::to_vec(&stdin).unwrap(), "net1");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            vec![
                ("c1".to_owned(), "eth0".to_owned()),
                ("old-format".to_owned(), "eth0".to_owned())
            ]
        );
    }
}
