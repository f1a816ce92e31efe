//! CNI GC (1.1.0): release everything of this network that belongs to an attachment the
//! runtime no longer knows, i.e. one missing from `cni.dev/valid-attachments` (or the older
//! `cni.dev/attachments`). Like DEL it goes on past errors and reports the first.
//!
//! - netstackd's attachments of this network (the `cni.network` label every ADD records) that
//!   are not valid are detached, their TAP deleted if the netns is still there, and their
//!   IPAM allocation released by an IPAM DEL for that (container id, ifname);
//! - then GC is delegated to the IPAM plugin if it implements it (speaks 1.1.0). host-local
//!   does not: its reservations (one file per address under `dataDir/<network>/`, holding
//!   the container id and ifname) are read and every stale one is released with DEL, so an
//!   allocation whose ADD died before reaching netstackd is reclaimed too.

use std::collections::BTreeSet;
use std::path::PathBuf;

use netstackd::control::{AttachmentKey, Reply, Request};

use crate::add::{connect, control_error, delete_pod_link, NETWORK_LABEL};
use crate::config::{GcAttachment, NetConf};
use crate::skel::CniEnv;
use crate::{ipam, CniError};

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

    let listed = connect(&conf.socket()).and_then(|mut c| {
        match c.call(&Request::List, &[]).map_err(control_error)? {
            Reply::List { pods } => Ok((c, pods)),
            other => Err(CniError::Setup(format!("unexpected list reply {other:?}"))),
        }
    });
    match listed {
        Ok((mut client, pods)) => {
            for pod in pods {
                let ours = pod.labels.get(NETWORK_LABEL) == Some(&conf.name);
                let key: AttachmentKey = pod.key.clone();
                if !ours || is_valid(&key.container_id, &key.ifname) {
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
                let mode = pod.mode.parse().unwrap_or_default();
                if let Err(e) = delete_pod_link(&pod.netns, &key.ifname, mode) {
                    errors.push(e);
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

    if let Some(t) = &ipam_type {
        match ipam::gc(env, t, stdin) {
            Ok(true) => {}
            Ok(false) if t == "host-local" => {
                for (id, ifname) in host_local_reservations(stdin, &conf.name) {
                    if is_valid(&id, &ifname) || released.contains(&(id.clone(), ifname.clone()))
                    {
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
