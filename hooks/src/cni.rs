//! The CNI invocation a runtime would make for this container: the `CNI_*` environment as a
//! `CniEnv` for `cmd_add`/`cmd_del`, and the same variables in the process environment for
//! the IPAM plugin they run (it inherits the hook's environment, as under a real runtime).

use std::collections::BTreeMap;
use std::path::PathBuf;

use netstack_cni::skel::{CniEnv, Command};

use crate::annotations::EGRESS_RATE_ARG;
use crate::config::Settings;
use crate::state::OciState;

/// The `CNI_*` environment for `command` on `ifname` of the container of `state`, with the
/// pod metadata `pod_args` (validated: [`crate::annotations::pod_args`]); the attachment key
/// is (OCI container id, ifname).
pub fn cni_env(
    command: Command,
    state: &OciState,
    ifname: &str,
    egress_rate_bps: Option<u64>,
    netns: Option<PathBuf>,
    settings: &Settings,
    pod_args: Vec<(&'static str, String)>,
) -> CniEnv {
    let mut args = BTreeMap::from([
        ("IgnoreUnknown".to_owned(), "1".to_owned()),
        // Marks the attachment as the hook's: CNI GC leaves it alone.
        (
            netstack_cni::gc::OWNER_ARG.to_owned(),
            netstack_cni::gc::HOOK_OWNER.to_owned(),
        ),
    ]);
    args.extend(pod_args.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if let Some(bps) = egress_rate_bps {
        args.insert(EGRESS_RATE_ARG.to_owned(), bps.to_string());
    }
    CniEnv {
        command,
        container_id: state.id.clone(),
        netns,
        ifname: ifname.to_owned(),
        args,
        path: settings.cni_path.clone(),
    }
}

/// `CNI_ARGS` as the runtime writes it: `K=V;K=V`.
pub fn cni_args_string(args: &BTreeMap<String, String>) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Puts `env` into the process environment, where the plugin's IPAM delegation expects it
/// (`netstack_cni::ipam` runs the IPAM plugin with the inherited environment plus
/// `CNI_COMMAND`). Called from the single work thread while the only other thread waits on a
/// channel, so nothing reads the environment concurrently.
pub fn export_for_delegates(env: &CniEnv) {
    std::env::set_var("CNI_CONTAINERID", &env.container_id);
    std::env::set_var("CNI_IFNAME", &env.ifname);
    std::env::set_var("CNI_ARGS", cni_args_string(&env.args));
    std::env::set_var(
        "CNI_PATH",
        std::env::join_paths(&env.path).unwrap_or_default(),
    );
    match &env.netns {
        Some(netns) => std::env::set_var("CNI_NETNS", netns),
        None => std::env::remove_var("CNI_NETNS"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> Settings {
        Settings {
            config_path: "/x".into(),
            cni_path: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            timeout: Duration::from_secs(1),
            runtime: crate::annotations::Runtime::Containerd,
        }
    }

    #[test]
    fn env_is_keyed_on_the_oci_id_and_carries_the_rate() {
        let state = OciState::parse(br#"{"id":"hxtest","pid":12}"#).unwrap();
        let env = cni_env(
            Command::Add,
            &state,
            "net0",
            Some(10_000_000),
            Some("/proc/12/ns/net".into()),
            &settings(),
            vec![],
        );
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id, "hxtest");
        assert_eq!(env.ifname, "net0");
        assert_eq!(env.netns, Some(PathBuf::from("/proc/12/ns/net")));
        assert_eq!(env.path.len(), 2);
        assert_eq!(
            cni_args_string(&env.args),
            "IgnoreUnknown=1;NETSTACK_EGRESS_RATE_BPS=10000000;NETSTACK_OWNER=hook"
        );
    }

    #[test]
    fn sandbox_env_carries_the_pod_metadata() {
        let state = OciState::parse(include_bytes!(
            "../fixtures/state/containerd-sandbox-createRuntime.json"
        ))
        .unwrap();
        let pod = crate::annotations::pod_args(&state, settings().runtime).unwrap();
        let env = cni_env(Command::Del, &state, "eth0", None, None, &settings(), pod);
        assert_eq!(env.args["K8S_POD_NAME"], "web-0");
        assert_eq!(env.args["K8S_POD_NAMESPACE"], "default");
        assert_eq!(env.args["K8S_POD_INFRA_CONTAINER_ID"], state.id);
        assert_eq!(env.args["IgnoreUnknown"], "1");
        // What the plugin itself would accept from CNI_ARGS.
        let reparsed = netstack_cni::skel::parse_cni_args(&cni_args_string(&env.args)).unwrap();
        assert_eq!(reparsed, env.args);
    }
}
