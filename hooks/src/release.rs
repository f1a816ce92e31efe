//! poststop: release everything netstack holds for a container, whoever attached it (this
//! hook or a CNI runtime), through the CNI plugin's DEL for each of its interfaces: netstackd
//! detach by (container id, ifname), the TAP if its netns survives, the IPAM allocation.
//! Idempotent: a second call, or one for a container never attached, changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use netstack_cni::config::NetConf;
use netstack_cni::del::cmd_del;
use netstack_cni::skel::Command;
use netstack_cni::CniError;

use netstack_core::control::LinkMode;

use crate::annotations::{pod_args, role, Role, ATTACH, DEFAULT_IFNAME, IFNAME, MODE};
use crate::cni::{cni_env, export_for_delegates};
use crate::config::{HookNetwork, Settings};
use crate::daemon;
use crate::deadline::Deadline;
use crate::error::HookError;
use crate::state::OciState;
use crate::Outcome;

/// The interface the hook would have attached, if the container asked for one: its IPAM
/// allocation is released even when netstackd has no attachment left (it restarted, or the
/// attach failed half-way). Lenient: an invalid name was never attached, so it is skipped.
fn requested_ifname(state: &OciState) -> Option<String> {
    if state.annotation(ATTACH) != Some("true") {
        return None;
    }
    match state.annotation(IFNAME) {
        None => Some(DEFAULT_IFNAME.to_owned()),
        Some(name) if netstack_core::control::valid_ifname(name) => Some(name.to_owned()),
        Some(_) => None,
    }
}

/// The netns to delete a TAP from at poststop. A `/proc/PID/...` path died with the container's
/// process, and the PID may belong to another process by now: never touch it. A pinned path
/// (`/run/netns/...`) that still exists is the pod's netns, and its TAP goes.
pub(crate) fn surviving_netns(path: &Path) -> Option<PathBuf> {
    (!path.starts_with("/proc") && path.exists()).then(|| path.to_owned())
}

/// CNI DEL of one interface of the container: netstackd detach, the TAP if `netns` is given,
/// the IPAM allocation; with `mode` (netstackd's, or the container's annotation) what the
/// plugin removes is that mode's (a VM pod's Kata socket link too).
pub(crate) fn release_one(
    state: &OciState,
    settings: &Settings,
    conf: &NetConf,
    config: &[u8],
    ifname: &str,
    netns: Option<PathBuf>,
    mode: Option<LinkMode>,
) -> Result<(), CniError> {
    // DEL needs no labels: a bad one (refused at createRuntime) must not keep the release
    // from happening.
    let mut pod = pod_args(state, settings.runtime).unwrap_or_default();
    if let Some(mode) = mode {
        pod.push((netstack_cni::config::MODE_ARG, mode.to_string()));
    }
    let env = cni_env(Command::Del, state, ifname, None, netns, settings, pod);
    export_for_delegates(&env);
    cmd_del(&env, conf, config)
}

/// The poststop stage.
pub fn poststop(
    state: &OciState,
    settings: &Settings,
    deadline: Deadline,
) -> Result<Outcome, HookError> {
    if role(state, settings.runtime) == Role::PodMember {
        return Ok(Outcome::Skipped(
            "an application container of a pod: the pod's sandbox carries its network".into(),
        ));
    }
    let network = HookNetwork::load(&settings.config_path)?;
    let conf = network
        .net_conf(None, None)
        .map_err(|e| HookError::Config(format!("{}: {e}", settings.config_path.display())))?;
    let config = network.plugin_config(None, None);

    // ifname -> the netns to clean it from and its mode.
    let mut targets: BTreeMap<String, (Option<PathBuf>, Option<LinkMode>)> = BTreeMap::new();
    let listed = daemon::attachments(&conf.socket(), deadline.remaining());
    if let Ok(pods) = &listed {
        for pod in pods.iter().filter(|p| p.key.container_id == state.id) {
            targets.insert(
                pod.key.ifname.clone(),
                (surviving_netns(&pod.netns), Some(pod.mode)),
            );
        }
    }
    if let Some(ifname) = requested_ifname(state) {
        let mode = state.annotation(MODE).and_then(|m| m.parse().ok());
        targets.entry(ifname).or_insert((None, mode));
    }

    let mut errors: Vec<HookError> = Vec::new();
    let mut released = Vec::new();
    for (ifname, (netns, mode)) in targets {
        match release_one(state, settings, &conf, &config, &ifname, netns, mode) {
            Ok(()) => released.push(ifname),
            Err(e) => errors.push(HookError::Cni(e)),
        }
    }
    // netstackd down: the IPAM part is done above, the attachment is unknown: fail loudly.
    listed?;
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(Outcome::Released(released)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: &str) -> OciState {
        OciState::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_requested_ifname_is_released_even_without_an_attachment() {
        // (state, expected ifname, what it covers)
        let table = [
            (r#"{"id":"c"}"#, None, "not annotated"),
            (
                r#"{"id":"c","annotations":{"netstack.io/attach":"true"}}"#,
                Some("eth0"),
                "the default name",
            ),
            (
                r#"{"id":"c","annotations":{"netstack.io/attach":"true","netstack.io/ifname":"net1"}}"#,
                Some("net1"),
                "a chosen name",
            ),
            (
                r#"{"id":"c","annotations":{"netstack.io/attach":"true","netstack.io/ifname":"bad/name"}}"#,
                None,
                "an invalid name was never attached",
            ),
            (
                r#"{"id":"c","annotations":{"netstack.io/attach":"false"}}"#,
                None,
                "opted out",
            ),
        ];
        for (json, want, what) in table {
            assert_eq!(requested_ifname(&state(json)).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn proc_paths_are_never_reused_at_poststop() {
        assert_eq!(surviving_netns(Path::new("/proc/1/ns/net")), None);
        assert_eq!(
            surviving_netns(Path::new("/run/netns/nst-missing-xyz")),
            None
        );
        assert_eq!(
            surviving_netns(Path::new("/etc/hostname")),
            Some(PathBuf::from("/etc/hostname"))
        );
    }
}
