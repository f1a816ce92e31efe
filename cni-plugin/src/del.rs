//! CNI DEL: best effort, idempotent. Detach from netstackd (which closes a VM pod's socket),
//! delete the TAP (or veth, or placeholder dummy) if the netns is still there and a VM pod's
//! Kata socket link, release the IPAM allocation — every step runs even when an earlier one
//! failed, and anything already gone counts as done.

use netstack_core::control::{vhost_socket_name, AttachmentKey, Reply, Request};

use crate::config::NetConf;
use crate::daemon::{connect, control_error, daemon_refusal, delete_pod_link, remove_kata_links};
use crate::skel::CniEnv;
use crate::{ipam, steps, CniError};

/// DEL.
pub fn cmd_del(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();

    let key = AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let detached = steps::timed("detach", || {
        connect(&conf.socket()).and_then(|mut c| {
            let reply = c
                .call(&Request::Detach(key.clone()), &[])
                .map_err(control_error)?;
            Ok((reply, c.peer_protocol()))
        })
    });
    match detached {
        Ok((Reply::Done, _)) => {}
        Ok((Reply::Error { message, kind }, protocol)) => errors.push(daemon_refusal(
            protocol,
            &format!("detach of {key}"),
            kind,
            &message,
        )),
        Ok((other, _)) => errors.push(CniError::Setup(format!(
            "unexpected detach reply {other:?}"
        ))),
        Err(e) => errors.push(e),
    }

    // A bad NETSTACK_MODE failed the ADD: what DEL removes is then the conflist's kind.
    let mode = conf
        .pod_mode(&env.args)
        .unwrap_or_else(|_| conf.link_mode());
    if let Some(netns) = env.netns.as_deref() {
        if let Err(e) = steps::timed("link", || delete_pod_link(netns, &env.ifname, mode)) {
            errors.push(e);
        }
    }
    // Whatever mode this DEL's arguments say: an ADD of another mode may have made the link,
    // and only links to this pod's socket are touched.
    remove_kata_links(&vhost_socket_name(&key));

    if let Some(ipam_conf) = &conf.ipam {
        if let Err(e) = steps::timed("ipam", || ipam::del(env, &ipam_conf.plugin_type, stdin)) {
            errors.push(e);
        }
    }

    for e in &errors[1.min(errors.len())..] {
        eprintln!("netstack: DEL {key}: also: {e}");
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
