//! The hook's settings (from its environment, which runc's `config.json` and hooks.d files
//! set per hook) and its network: a CNI conflist whose first plugin is netstack's, turned
//! into the bytes a runtime would give the plugin on stdin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use netstack_cni::config::NetConf;
use serde_json::{Map, Value};

use crate::annotations::Runtime;
use crate::error::HookError;

/// The hook's CNI config unless `NETSTACK_HOOK_CONFIG` names another.
pub const DEFAULT_CONFIG: &str = "/etc/netstack/hook.conflist";
/// Where IPAM plugins are looked up unless `NETSTACK_CNI_PATH` says otherwise.
pub const DEFAULT_CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";
/// The hook's own time limit unless `NETSTACK_HOOK_TIMEOUT` (seconds) says otherwise. Keep
/// it below the runtime's `timeout` for the hook, which kills it without cleanup.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the environment tells the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The CNI conflist (`NETSTACK_HOOK_CONFIG`).
    pub config_path: PathBuf,
    /// The CNI_PATH for IPAM plugins (`NETSTACK_CNI_PATH`).
    pub cni_path: Vec<PathBuf>,
    /// The hook's time limit (`NETSTACK_HOOK_TIMEOUT`, in seconds, fractions allowed).
    pub timeout: Duration,
    /// The runtime that runs the containers this hook sees (`NETSTACK_HOOK_RUNTIME`: `none`,
    /// the default, `containerd` or `cri-o`): only its annotations decide a container's role.
    pub runtime: Runtime,
}

impl Settings {
    /// Reads the settings through `var` (the process environment in the binary).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, HookError> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let timeout = match set("NETSTACK_HOOK_TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    HookError::Config(format!(
                        "NETSTACK_HOOK_TIMEOUT={v:?} is not a number of seconds in (0, 3600]"
                    ))
                })?,
        };
        let cni_path = set("NETSTACK_CNI_PATH")
            .unwrap_or_else(|| DEFAULT_CNI_PATH.to_owned())
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let runtime = match set("NETSTACK_HOOK_RUNTIME") {
            None => Runtime::None,
            Some(v) => Runtime::parse(&v).map_err(HookError::Config)?,
        };
        Ok(Settings {
            config_path: set("NETSTACK_HOOK_CONFIG")
                .map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from),
            cni_path,
            timeout,
            runtime,
        })
    }
}

/// The network the hook attaches containers to: netstack's plugin object from the conflist,
/// with the conflist's `cniVersion` and `name` put in, as libcni does before calling it.
#[derive(Debug, Clone)]
pub struct HookNetwork {
    plugin: Map<String, Value>,
}

impl HookNetwork {
    /// Reads the conflist (or a single-plugin `.conf`) at `path`.
    pub fn load(path: &Path) -> Result<Self, HookError> {
        let bytes = std::fs::read(path).map_err(|e| {
            HookError::Config(format!("reading hook config {}: {e}", path.display()))
        })?;
        Self::parse(&bytes)
            .map_err(|e| HookError::Config(format!("hook config {}: {e}", path.display())))
    }

    /// Parses conflist bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let doc: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut plugin = match doc.get("plugins") {
            Some(Value::Array(plugins)) => match plugins.first() {
                Some(Value::Object(first)) => first.clone(),
                _ => return Err("\"plugins\" has no plugin object".into()),
            },
            Some(_) => return Err("\"plugins\" is not a list".into()),
            // A single-plugin .conf already carries cniVersion and name.
            None => doc.clone(),
        };
        for key in ["cniVersion", "name"] {
            let value = doc
                .get(key)
                .ok_or_else(|| format!("{key:?} is missing"))?
                .clone();
            plugin.insert(key.to_owned(), value);
        }
        let network = HookNetwork { plugin };
        let conf = network.net_conf(None, None).map_err(|e| e.to_string())?;
        if conf.ipam.is_none() {
            return Err("the netstack plugin has no \"ipam\" section".into());
        }
        Ok(network)
    }

    /// The plugin's stdin for one container: the plugin object, with `mtu` replaced when the
    /// container asks for its own, and an egress rate as the runtime passes the CNI
    /// `bandwidth` capability (`runtimeConfig.bandwidth`, which netstackd's qdisc enforces),
    /// with a burst of 100 ms at that rate.
    pub fn plugin_config(&self, mtu_bytes: Option<u32>, egress_rate_bps: Option<u64>) -> Vec<u8> {
        let mut plugin = self.plugin.clone();
        if let Some(mtu) = mtu_bytes {
            plugin.insert("mtu".into(), mtu.into());
        }
        if let Some(rate) = egress_rate_bps {
            let burst = (rate / 10).max(1);
            plugin.insert(
                "runtimeConfig".into(),
                serde_json::json!({ "bandwidth": { "egressRate": rate, "egressBurst": burst } }),
            );
        }
        serde_json::to_vec(&plugin).expect("a JSON map always serializes")
    }

    /// The plugin config as the plugin parses it.
    pub fn net_conf(
        &self,
        mtu_bytes: Option<u32>,
        egress_rate_bps: Option<u64>,
    ) -> Result<NetConf, netstack_cni::CniError> {
        NetConf::parse(&self.plugin_config(mtu_bytes, egress_rate_bps))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CONFLIST: &str = r#"{
      "cniVersion": "1.0.0", "name": "netstack-hook",
      "plugins": [
        { "type": "netstack", "socket": "/run/x.sock", "mtu": 1500,
          "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.244.1.0/24" }]] } },
        { "type": "portmap", "capabilities": { "portMappings": true } } ] }"#;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn settings_default_without_environment() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.config_path, PathBuf::from("/etc/netstack/hook.conflist"));
        assert_eq!(
            s.cni_path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.runtime, Runtime::None);
    }

    #[test]
    fn settings_come_from_the_environment() {
        let s = Settings::from_vars(vars(&[
            ("NETSTACK_HOOK_CONFIG", "/x/hook.conflist"),
            ("NETSTACK_CNI_PATH", "/a::/b"),
            ("NETSTACK_HOOK_TIMEOUT", "2.5"),
            ("NETSTACK_HOOK_RUNTIME", "cri-o"),
        ]))
        .unwrap();
        assert_eq!(s.runtime, Runtime::CriO);
        assert_eq!(s.config_path, PathBuf::from("/x/hook.conflist"));
        assert_eq!(s.cni_path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(s.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn an_unknown_runtime_is_rejected() {
        let err = Settings::from_vars(vars(&[("NETSTACK_HOOK_RUNTIME", "docker")])).unwrap_err();
        assert!(
            err.to_string().contains("NETSTACK_HOOK_RUNTIME=\"docker\""),
            "{err}"
        );
    }

    #[test]
    fn bad_timeouts_are_rejected() {
        for t in ["0", "-1", "ten", "NaN", "inf", "99999"] {
            assert!(
                Settings::from_vars(vars(&[("NETSTACK_HOOK_TIMEOUT", t)])).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn plugin_config_is_the_first_plugin_with_version_and_name() {
        let net = HookNetwork::parse(CONFLIST.as_bytes()).unwrap();
        let conf: Value = serde_json::from_slice(&net.plugin_config(None, None)).unwrap();
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["name"], "netstack-hook");
        assert_eq!(conf["type"], "netstack");
        assert_eq!(conf["mtu"], 1500);
        assert_eq!(conf["ipam"]["type"], "host-local");
        assert!(conf.get("plugins").is_none());
        let parsed = net.net_conf(None, None).unwrap();
        assert_eq!(parsed.socket(), PathBuf::from("/run/x.sock"));
    }

    #[test]
    fn an_egress_rate_becomes_the_bandwidth_capability() {
        let net = HookNetwork::parse(CONFLIST.as_bytes()).unwrap();
        let conf: Value =
            serde_json::from_slice(&net.plugin_config(None, Some(10_000_000))).unwrap();
        assert_eq!(conf["runtimeConfig"]["bandwidth"]["egressRate"], 10_000_000);
        assert_eq!(conf["runtimeConfig"]["bandwidth"]["egressBurst"], 1_000_000);
        let bw = net.net_conf(None, Some(10_000_000)).unwrap();
        let bw = bw.runtime_config.unwrap().bandwidth.unwrap();
        assert_eq!((bw.egress_rate, bw.ingress_rate), (10_000_000, 0));
    }

    #[test]
    fn the_container_mtu_replaces_the_configured_one() {
        let net = HookNetwork::parse(CONFLIST.as_bytes()).unwrap();
        assert_eq!(net.net_conf(Some(9000), None).unwrap().mtu(), 9000);
        assert_eq!(net.net_conf(None, None).unwrap().mtu(), 1500);
    }

    #[test]
    fn a_single_plugin_conf_is_accepted() {
        let net = HookNetwork::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netstack","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert_eq!(net.net_conf(None, None).unwrap().name, "n");
    }

    #[test]
    fn unusable_conflists_are_rejected() {
        // (conflist, what it covers)
        let table = [
            ("not json", "not JSON"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "no plugin",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#,
                "plugins not a list",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"netstack","ipam":{"type":"host-local"}}]}"#,
                "no cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local"}}]}"#,
                "first plugin is not netstack",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"netstack"}]}"#,
                "no ipam",
            ),
        ];
        for (conflist, what) in table {
            assert!(HookNetwork::parse(conflist.as_bytes()).is_err(), "{what}");
        }
    }
}
