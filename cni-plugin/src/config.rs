//! The network configuration the runtime passes on stdin (one plugin object of a conflist,
//! with `cniVersion`, `name`, and `runtimeConfig`/`prevResult` inserted by the runtime).

use std::path::PathBuf;

use serde::Deserialize;

use crate::{CniError, SUPPORTED_VERSIONS};

/// The pod interface MTU when the config names none.
pub const DEFAULT_MTU: u32 = 1500;

/// The plugin's configuration. Unknown keys are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// The CNI version of the request and of the result.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// Must be "netstack".
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// netstackd's control socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The pod interface MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The link mode; only "tap" in this version.
    #[serde(default)]
    pub mode: Option<String>,
    /// The IPAM plugin's section; `type` names the plugin.
    #[serde(default)]
    pub ipam: Option<Ipam>,
    /// Capabilities the runtime filled in.
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: Option<RuntimeConfig>,
}

/// The `ipam` section (the rest of it is for the IPAM plugin).
#[derive(Debug, Clone, Deserialize)]
pub struct Ipam {
    /// The IPAM plugin's binary name in CNI_PATH.
    #[serde(rename = "type")]
    pub plugin_type: String,
}

/// The `runtimeConfig` capabilities this plugin reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// `mac` capability: the MAC the runtime wants.
    #[serde(default)]
    pub mac: Option<String>,
}

impl NetConf {
    /// Parses and validates stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::Decode(format!("network config on stdin: {e}")))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion(format!(
                "{} (this plugin supports {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        if conf.plugin_type != "netstack" {
            return Err(CniError::InvalidConfig(format!(
                "type is {:?}, expected \"netstack\"",
                conf.plugin_type
            )));
        }
        if conf.name.is_empty() {
            return Err(CniError::InvalidConfig("name is empty".into()));
        }
        if let Some(mode) = conf.mode.as_deref() {
            if mode != "tap" {
                return Err(CniError::UnsupportedField {
                    field: "mode".into(),
                    value: mode.into(),
                });
            }
        }
        if let Some(mtu) = conf.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(CniError::InvalidConfig(format!(
                    "mtu {mtu} out of range 576-65535"
                )));
            }
        }
        if let Some(ipam) = &conf.ipam {
            if ipam.plugin_type.is_empty() || ipam.plugin_type.contains('/') {
                return Err(CniError::InvalidConfig(format!(
                    "ipam.type {:?} is not a plugin name",
                    ipam.plugin_type
                )));
            }
        }
        Ok(conf)
    }

    /// The control socket to use.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(netstackd::control::DEFAULT_SOCKET))
    }

    /// The pod interface MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<NetConf, CniError> {
        NetConf::parse(json.as_bytes())
    }

    #[test]
    fn minimal_config_parses_and_keeps_defaults() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","ipam":{"type":"host-local","ranges":[]},"extra":{"x":1}}"#).unwrap();
        assert_eq!(c.mtu(), 1500);
        assert_eq!(c.socket(), PathBuf::from("/run/netstack/netstackd.sock"));
        assert_eq!(c.ipam.unwrap().plugin_type, "host-local");
    }

    #[test]
    fn bad_configs_get_their_codes() {
        // (config, expected CNI code, what it covers)
        let table = [
            ("not json", 6, "undecodable stdin"),
            (r#"{"name":"n","type":"netstack"}"#, 6, "cniVersion missing"),
            (
                r#"{"cniVersion":"9.9.9","name":"n","type":"netstack"}"#,
                1,
                "unsupported version",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"netstack"}"#,
                1,
                "1.1.0 is not claimed yet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
                7,
                "wrong type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"","type":"netstack"}"#,
                7,
                "empty name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","mode":"macvlan"}"#,
                2,
                "unknown mode",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","mtu":70000}"#,
                7,
                "mtu too big",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","ipam":{"type":"../x"}}"#,
                7,
                "ipam path",
            ),
        ];
        for (json, code, what) in table {
            assert_eq!(conf(json).unwrap_err().code(), code, "{what}");
        }
    }
}
