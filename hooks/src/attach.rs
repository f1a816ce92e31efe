//! createRuntime: attach a container that asks for it and is not attached yet, through the
//! CNI plugin's ADD (IPAM, TAP in the container's netns, fds to netstackd). ADD undoes its own
//! steps when one fails; [`roll_back`] undoes an ADD cut short by the hook's deadline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netstack_cni::add::cmd_add;
use netstack_cni::daemon::delete_pod_link;
use netstack_cni::skel::{CniEnv, Command};
use netstack_core::control::AttachmentKey;
use netstack_core::netns::same_netns;

use crate::annotations::{pod_args, role, NetRequest, Role};
use crate::cni::{cni_env, export_for_delegates};
use crate::config::{HookNetwork, Settings};
use crate::daemon;
use crate::deadline::Deadline;
use crate::error::HookError;
use crate::netns::container_netns;
use crate::release::{release_one, surviving_netns};
use crate::state::OciState;
use crate::Outcome;

/// An ADD under way: what a rollback needs to undo it.
#[derive(Debug, Clone)]
pub struct PendingAdd {
    /// The CNI environment of the ADD.
    pub env: CniEnv,
    /// The plugin config bytes (the IPAM plugin reads them too).
    pub config: Vec<u8>,
    /// The IPAM plugin's name.
    pub ipam_type: String,
    /// netstackd's control socket.
    pub socket: PathBuf,
}

/// Where the work thread records an ADD before starting it, for the deadline's rollback.
pub type PendingSlot = Arc<Mutex<Option<PendingAdd>>>;

/// The createRuntime stage.
pub fn create_runtime(
    state: &OciState,
    settings: &Settings,
    deadline: Deadline,
    pending: &PendingSlot,
) -> Result<Outcome, HookError> {
    if role(state, settings.runtime) == Role::PodMember {
        return Ok(Outcome::Skipped(
            "an application container of a pod: the pod's sandbox carries its network".into(),
        ));
    }
    let request = NetRequest::from_state(state)?;
    if !request.attach {
        return Ok(Outcome::Skipped(
            "no netstack.io/attach=true annotation".into(),
        ));
    }
    // Checked before anything is done: the labels netstackd would keep.
    let mut pod = pod_args(state, settings.runtime)?;
    if let Some(mode) = request.mode {
        pod.push((netstack_cni::config::MODE_ARG, mode.to_string()));
    }
    let network = HookNetwork::load(&settings.config_path)?;
    let conf = network
        .net_conf(request.mtu_bytes, request.egress_rate_bps)
        .map_err(|e| HookError::Config(format!("{}: {e}", settings.config_path.display())))?;
    let netns = container_netns(state)?;

    // Never fight CNI: a netns netstackd already serves is left alone.
    let socket = conf.socket();
    let pods = daemon::attachments(&socket, deadline.remaining())?;
    if let Some(pod) = pods
        .iter()
        .find(|p| same_netns(&p.netns, &netns).unwrap_or(false))
    {
        return Ok(Outcome::Skipped(format!(
            "already attached as {} (netns {})",
            pod.key,
            pod.netns.display()
        )));
    }
    // This container id attached in another netns is a leftover (a runtime that died before
    // poststop, a restarted container): release it, or netstackd would refuse the key.
    let config = network.plugin_config(request.mtu_bytes, request.egress_rate_bps);
    for stale in pods.iter().filter(|p| p.key.container_id == state.id) {
        release_one(
            state,
            settings,
            &conf,
            &config,
            &stale.key.ifname,
            surviving_netns(&stale.netns),
            Some(stale.mode),
        )
        .map_err(|e| {
            HookError::Daemon(format!("releasing the stale attachment {}: {e}", stale.key))
        })?;
    }

    let env = cni_env(
        Command::Add,
        state,
        &request.ifname,
        request.egress_rate_bps,
        Some(netns.clone()),
        settings,
        pod,
    );
    let ipam_type = conf
        .ipam
        .as_ref()
        .map(|i| i.plugin_type.clone())
        .unwrap_or_default();
    export_for_delegates(&env);
    *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingAdd {
        env: env.clone(),
        config: config.clone(),
        ipam_type,
        socket,
    });
    let result = cmd_add(&env, &conf, &config)?;
    let addresses = result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Outcome::Attached {
        ifname: request.ifname,
        netns,
        addresses,
    })
}

/// Undoes an ADD the deadline cut short: IPAM release and TAP removal first (they do not
/// need netstackd, which may be the thing that hangs), then netstackd detach within `limit`.
/// Every step runs; each is a no-op when its part was never done. Returns the steps that
/// failed, each with its error.
pub fn roll_back(add: &PendingAdd, limit: Duration) -> Vec<String> {
    let mut failed = Vec::new();
    if let Err(e) = netstack_cni::ipam::del(&add.env, &add.ipam_type, &add.config) {
        failed.push(format!("IPAM release: {e}"));
    }
    if let Some(netns) = &add.env.netns {
        let mode = netstack_cni::config::NetConf::parse(&add.config)
            .and_then(|c| c.pod_mode(&add.env.args))
            .unwrap_or_default();
        if let Err(e) = delete_pod_link(netns, &add.env.ifname, mode) {
            failed.push(format!("removing {}: {e}", add.env.ifname));
        }
    }
    let key = AttachmentKey {
        container_id: add.env.container_id.clone(),
        ifname: add.env.ifname.clone(),
    };
    if let Err(e) = daemon::detach(&add.socket, &key, limit) {
        failed.push(format!("detach: {e}"));
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: &str) -> Result<Outcome, HookError> {
        let settings = Settings {
            config_path: "/nonexistent/hook.conflist".into(),
            cni_path: Vec::new(),
            timeout: Duration::from_secs(1),
            runtime: crate::annotations::Runtime::CriO,
        };
        let state = OciState::parse(json.as_bytes()).unwrap();
        create_runtime(
            &state,
            &settings,
            Deadline::after(Duration::from_secs(1)),
            &PendingSlot::default(),
        )
    }

    #[test]
    fn containers_that_do_not_ask_are_skipped_before_any_config_is_read() {
        // (state, what it covers)
        let table = [
            (r#"{"id":"c","pid":1}"#, "no annotation"),
            (
                r#"{"id":"c","pid":1,"annotations":{"netstack.io/attach":"false"}}"#,
                "opted out",
            ),
            (
                r#"{"id":"c","pid":1,"annotations":{"netstack.io/attach":"true","io.kubernetes.cri-o.ContainerType":"container"}}"#,
                "a pod's application container",
            ),
        ];
        for (json, what) in table {
            assert!(matches!(run(json), Ok(Outcome::Skipped(_))), "{what}");
        }
    }

    #[test]
    fn an_annotated_container_needs_the_config() {
        let err =
            run(r#"{"id":"c","pid":1,"annotations":{"netstack.io/attach":"true"}}"#).unwrap_err();
        assert!(matches!(err, HookError::Config(_)), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/hook.conflist"),
            "{err}"
        );
    }

    #[test]
    fn a_spoofed_sandbox_annotation_of_another_runtime_is_a_pod_member_still() {
        // Under CRI-O (the runtime in `run`), containerd's annotation means nothing.
        let json = r#"{"id":"c","pid":1,"annotations":{"netstack.io/attach":"true","io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.cri.container-type":"sandbox"}}"#;
        assert!(matches!(run(json), Ok(Outcome::Skipped(_))));
    }

    #[test]
    fn control_characters_in_pod_metadata_fail_before_the_config_is_read() {
        let json = r#"{"id":"c","pid":1,"annotations":{"netstack.io/attach":"true","io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.name":"web\u001b[2J"}}"#;
        let err = run(json).unwrap_err();
        assert!(
            matches!(
                err,
                HookError::Annotation {
                    key: "io.kubernetes.pod.name",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !err.to_string().contains('\u{1b}'),
            "the error line carries no raw control character: {err}"
        );
    }

    #[test]
    fn a_bad_annotation_fails_before_the_config_is_read() {
        let err = run(
            r#"{"id":"c","pid":1,"annotations":{"netstack.io/attach":"true","netstack.io/mtu":"9"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                HookError::Annotation {
                    key: "netstack.io/mtu",
                    ..
                }
            ),
            "{err}"
        );
    }
}
