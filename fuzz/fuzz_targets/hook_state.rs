//! The OCI state a runtime writes on the hook's stdin: any bytes into `OciState::parse`, then,
//! for a state that parses, the annotations into `NetRequest::from_state` and the plugin
//! config the hook would hand the CNI plugin. A panic is a bug, and so is a request the hook
//! accepts that gives a plugin config the plugin refuses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack_hook::annotations::{pod_args, role, NetRequest, Runtime};
use netstack_hook::config::HookNetwork;
use netstack_hook::state::OciState;

/// The conflist the e2e tests install for the hook.
const CONFLIST: &[u8] = br#"{"cniVersion":"1.0.0","name":"netstack","plugins":[
  {"type":"netstack","mtu":1500,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}}]}"#;

fuzz_target!(|data: &[u8]| {
    let state = match OciState::parse(data) {
        Ok(state) => state,
        Err(e) => {
            let _ = e.container_id();
            let _ = e.to_string();
            return;
        }
    };
    assert!(!state.id.is_empty());
    assert!(state.pid.is_none_or(|p| p != 0 && i32::try_from(p).is_ok()));
    for runtime in [Runtime::None, Runtime::Containerd, Runtime::CriO] {
        let _ = role(&state, runtime);
        // Accepted pod metadata never carries what CNI_ARGS cannot hold.
        if let Ok(args) = pod_args(&state, runtime) {
            for (_, v) in args {
                assert!(
                    !v.contains([';', '=']) && !v.chars().any(char::is_control),
                    "{v:?}"
                );
            }
        }
    }
    let Ok(req) = NetRequest::from_state(&state) else {
        return;
    };
    let network = HookNetwork::parse(CONFLIST).expect("the test conflist parses");
    if let Err(e) = network.net_conf(req.mtu_bytes, req.egress_rate_bps) {
        panic!("the hook accepted {req:?} but the plugin refuses its config: {e}");
    }
});
