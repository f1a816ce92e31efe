//! The network configuration the runtime passes on stdin (one plugin object of a conflist,
//! with `cniVersion`, `name`, and `runtimeConfig`/`prevResult` inserted by the runtime).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use netstack_core::control::{vhost_socket_mode_problem, LinkMode, DEFAULT_VHOST_SOCKET_MODE};
use netstack_core::sys::packet::VETH_MAX_MTU;
use netstack_core::sys::tap::TAP_MAX_MTU;

use crate::{CniError, SUPPORTED_VERSIONS};

/// The pod interface MTU when the config names none.
pub const DEFAULT_MTU: u32 = 1500;

/// The smallest pod interface MTU the plugin accepts (the IPv4 minimum datagram size).
pub const MIN_MTU: u32 = 576;

/// The `CNI_ARGS` key that picks a pod's link mode (`tap`, `veth`, `vhost-user`), overriding
/// the conflist's `mode`; `runtimeConfig.netstack.mode` overrides both.
pub const MODE_ARG: &str = "NETSTACK_MODE";

/// How long STATUS waits for netstackd's socket by default: longer than a netstackd restart
/// takes, so a restart never turns the node NotReady.
pub const DEFAULT_STATUS_WAIT_MS: u64 = 10_000;

/// The plugin's configuration. Unknown keys are accepted and ignored (and reach the IPAM
/// plugin unchanged, since it gets the same stdin).
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
    /// The link mode: "tap" (default), "veth" or "vhost-user" (a pod may override it: see
    /// [`NetConf::pod_mode`]).
    #[serde(default)]
    pub mode: Option<String>,
    /// vhost-user mode: the permission bits of a VM pod's socket, an octal string ("0660");
    /// default "0600".
    #[serde(default, rename = "vhostSocketMode")]
    pub vhost_socket_mode: Option<String>,
    /// vhost-user mode: the gid a VM pod's socket belongs to (default: root's).
    #[serde(default, rename = "vhostSocketGroup")]
    pub vhost_socket_group: Option<u32>,
    /// vhost-user mode: also link the socket at `/tmp/vhostuser_<IP>/vhu.sock`, where Kata's
    /// runtime looks for a vhost-user network endpoint.
    #[serde(default, rename = "kataVhostUser")]
    pub kata_vhost_user: bool,
    /// The IPAM plugin's section; `type` names the plugin.
    #[serde(default)]
    pub ipam: Option<Ipam>,
    /// `args` (CONVENTIONS.md): per-attachment arguments from the runtime; `args.cni` is the
    /// plugins' part.
    #[serde(default)]
    pub args: Option<Args>,
    /// Capabilities the runtime filled in.
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: Option<RuntimeConfig>,
    /// The previous plugin's result in a chain (ADD), or the cached result (DEL, CHECK): kept
    /// as JSON so that fields this plugin does not know pass through unchanged.
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<serde_json::Value>,
    /// STATUS: how long to wait for netstackd's socket before reporting it unavailable, in
    /// milliseconds (0-60000).
    #[serde(default, rename = "statusWaitMs")]
    pub status_wait_ms: Option<u64>,
    /// GC: the attachments that are still valid (spec 1.1.0 after the rename).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// GC: the same list under the key the released 1.1.0 text used.
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<GcAttachment>>,
    /// The plugin's own log file (absolute), one line per command; see [`crate::log`].
    #[serde(default, rename = "logFile")]
    pub log_file: Option<PathBuf>,
    /// `error`, `info` (default) or `debug`.
    #[serde(default, rename = "logLevel")]
    pub log_level: Option<String>,
}

/// One entry of a GC request's list of valid attachments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct GcAttachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// The `args` object of the network configuration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Args {
    /// `args.cni`: the keys the reference plugins read (`mac`, `ips`, …).
    #[serde(default)]
    pub cni: Option<ArgsCni>,
}

/// The keys of `args.cni` this plugin reads; `ips` is the IPAM plugin's (host-local reads it
/// from the same stdin) and others are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArgsCni {
    /// The MAC the runtime wants for the interface (as the bridge plugin reads it).
    #[serde(default)]
    pub mac: Option<String>,
}

/// The `ipam` section (the rest of it is for the IPAM plugin).
#[derive(Debug, Clone, Deserialize)]
pub struct Ipam {
    /// The IPAM plugin's binary name in CNI_PATH.
    #[serde(rename = "type")]
    pub plugin_type: String,
}

/// The `runtimeConfig` capabilities this plugin reads. `portMappings` is left to a chained
/// `portmap`; other capabilities are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// `mac` capability: the MAC the runtime wants.
    #[serde(default)]
    pub mac: Option<String>,
    /// `ips` capability: the addresses the runtime wants. The IPAM plugin reads them from the
    /// same stdin (host-local and static honour it); this plugin only checks their syntax.
    #[serde(default)]
    pub ips: Option<Vec<String>>,
    /// `bandwidth` capability: rates in bit/s, bursts in bits (CONVENTIONS.md); the same
    /// JSON shape as netstackd's, which records it with the attachment.
    #[serde(default)]
    pub bandwidth: Option<netstack_core::control::Bandwidth>,
    /// `netstack`: this plugin's own per-pod settings.
    #[serde(default)]
    pub netstack: Option<RuntimeNetstack>,
}

/// `runtimeConfig.netstack`: per-pod settings of this plugin.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeNetstack {
    /// The pod's link mode, overriding the conflist's and `CNI_ARGS` `NETSTACK_MODE`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// Parses a link mode named by `source`; an unknown one is "unsupported field" (code 2)
/// naming where it came from.
fn parse_mode(source: &str, mode: &str) -> Result<LinkMode, CniError> {
    mode.parse::<LinkMode>()
        .map_err(|_| CniError::UnsupportedField {
            field: source.into(),
            value: mode.into(),
        })
}

/// Checks `mtu` against the largest MTU the interface of `mode` takes: the kernel would
/// refuse a larger one with a bare EINVAL halfway through ADD.
fn check_mtu(mtu: u32, mode: LinkMode) -> Result<(), CniError> {
    let (kind, max) = match mode {
        LinkMode::Veth => ("veth", VETH_MAX_MTU),
        LinkMode::Tap => ("TAP", TAP_MAX_MTU),
        // The placeholder dummy takes any MTU; netstackd's limit is 65535.
        LinkMode::VhostUser => ("vhost-user pod", 65535),
    };
    if !(MIN_MTU..=max).contains(&mtu) {
        return Err(CniError::InvalidConfig(format!(
            "mtu {mtu} out of range {MIN_MTU}-{max}: the largest MTU a {kind} takes is {max}"
        )));
    }
    Ok(())
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
            parse_mode("mode", mode)?;
        }
        if let Some(mode) = conf.runtime_mode() {
            parse_mode("runtimeConfig.netstack.mode", mode)?;
        }
        conf.socket_mode()?;
        if let Some(mtu) = conf.mtu {
            check_mtu(mtu, conf.link_mode())?;
        }
        if let Some(file) = conf.log_file.as_ref().filter(|f| !f.as_os_str().is_empty()) {
            if !file.is_absolute() {
                return Err(CniError::InvalidConfig(format!(
                    "logFile {} is not an absolute path",
                    file.display()
                )));
            }
        }
        if let Some(level) = conf.log_level.as_deref().filter(|l| !l.is_empty()) {
            if crate::log::Level::parse(level).is_none() {
                return Err(CniError::InvalidConfig(format!(
                    "logLevel {level:?} is not one of error, info, debug"
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
        if conf.status_wait_ms.is_some_and(|ms| ms > 60_000) {
            return Err(CniError::InvalidConfig(
                "statusWaitMs must be at most 60000".into(),
            ));
        }
        if let Some(rc) = &conf.runtime_config {
            for ip in rc.ips.iter().flatten() {
                if ip.parse::<IpNet>().is_err() && ip.parse::<IpAddr>().is_err() {
                    return Err(CniError::InvalidConfig(format!(
                        "runtimeConfig.ips: {ip:?} is not an IP address"
                    )));
                }
            }
            if let Some(bw) = rc.bandwidth {
                for (dir, rate, burst) in [
                    ("ingress", bw.ingress_rate, bw.ingress_burst),
                    ("egress", bw.egress_rate, bw.egress_burst),
                ] {
                    if rate > 0 && burst == 0 {
                        return Err(CniError::InvalidConfig(format!(
                            "runtimeConfig.bandwidth: {dir}Rate {rate} needs a non-zero {dir}Burst"
                        )));
                    }
                }
            }
        }
        if conf.prev_result.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(CniError::Decode("prevResult is not a JSON object".into()));
        }
        Ok(conf)
    }

    /// The link mode of the config, `runtimeConfig.netstack.mode` over the conflist's
    /// `mode` (both validated by [`NetConf::parse`]; TAP when neither names one). A pod's
    /// `CNI_ARGS` may override the conflist's too: see [`NetConf::pod_mode`].
    pub fn link_mode(&self) -> LinkMode {
        self.runtime_mode()
            .or(self.mode.as_deref())
            .and_then(|m| m.parse().ok())
            .unwrap_or_default()
    }

    /// `runtimeConfig.netstack.mode`, if set and not empty.
    fn runtime_mode(&self) -> Option<&str> {
        self.runtime_config
            .as_ref()
            .and_then(|r| r.netstack.as_ref())
            .and_then(|n| n.mode.as_deref())
            .filter(|m| !m.is_empty())
    }

    /// The link mode of one pod: `runtimeConfig.netstack.mode`, else `CNI_ARGS`
    /// `NETSTACK_MODE` ([`MODE_ARG`]), else the conflist's `mode`, else TAP. A bad
    /// `NETSTACK_MODE`, or an MTU the pod's kind of interface cannot take, is refused.
    pub fn pod_mode(&self, cni_args: &BTreeMap<String, String>) -> Result<LinkMode, CniError> {
        let mode = match (
            self.runtime_mode(),
            cni_args.get(MODE_ARG).filter(|m| !m.is_empty()),
        ) {
            (Some(m), _) => parse_mode("runtimeConfig.netstack.mode", m)?,
            (None, Some(m)) => parse_mode("CNI_ARGS NETSTACK_MODE", m)?,
            (None, None) => self.link_mode(),
        };
        if let Some(mtu) = self.mtu {
            check_mtu(mtu, mode)?;
        }
        Ok(mode)
    }

    /// The permission bits of a VM pod's socket: `vhostSocketMode` read as octal, 0600 by
    /// default.
    pub fn socket_mode(&self) -> Result<u32, CniError> {
        let Some(text) = self.vhost_socket_mode.as_deref() else {
            return Ok(DEFAULT_VHOST_SOCKET_MODE);
        };
        let mode =
            u32::from_str_radix(text.strip_prefix("0o").unwrap_or(text), 8).map_err(|_| {
                CniError::InvalidConfig(format!(
                    "vhostSocketMode {text:?} is not an octal mode such as \"0660\""
                ))
            })?;
        match vhost_socket_mode_problem(mode) {
            Some(problem) => Err(CniError::InvalidConfig(format!(
                "vhostSocketMode {text:?}: {problem}"
            ))),
            None => Ok(mode),
        }
    }

    /// Is the config's version at least `major.minor.patch`?
    pub fn version_at_least(&self, want: (u32, u32, u32)) -> bool {
        parse_version(&self.cni_version).is_some_and(|v| v >= want)
    }

    /// How long STATUS waits for netstackd.
    pub fn status_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.status_wait_ms.unwrap_or(DEFAULT_STATUS_WAIT_MS))
    }

    /// GC's valid attachments: both keys, merged; `None` when the request has neither.
    pub fn gc_valid_attachments(&self) -> Option<Vec<GcAttachment>> {
        if self.valid_attachments.is_none() && self.attachments.is_none() {
            return None;
        }
        let mut all: Vec<GcAttachment> = self
            .valid_attachments
            .iter()
            .chain(self.attachments.iter())
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        Some(all)
    }

    /// The control socket to use.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(netstack_core::control::DEFAULT_SOCKET))
    }

    /// The pod interface MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }
}

/// `"1.0.0"` as (1, 0, 0); `None` for anything that is not three numbers.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
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
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","logFile":"cni.log"}"#,
                7,
                "relative logFile",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","logFile":"/l","logLevel":"loud"}"#,
                7,
                "unknown logLevel",
            ),
            (r#"{"name":"n","type":"netstack"}"#, 6, "cniVersion missing"),
            (
                r#"{"cniVersion":"9.9.9","name":"n","type":"netstack"}"#,
                1,
                "unsupported version",
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"n","type":"netstack"}"#,
                1,
                "0.3.1 is not implemented",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","runtimeConfig":{"ips":["not-an-ip"]}}"#,
                7,
                "ips capability with a bad address",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","runtimeConfig":{"bandwidth":{"egressRate":1000}}}"#,
                7,
                "bandwidth rate without a burst",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","prevResult":[1]}"#,
                6,
                "prevResult that is not an object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","statusWaitMs":600000}"#,
                7,
                "status wait over a minute",
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

    #[test]
    fn capabilities_and_gc_keys_parse() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"netstack",
                "runtimeConfig":{"mac":"0a:58:00:00:00:09","ips":["10.244.1.9/24","fd00::9"],
                  "bandwidth":{"ingressRate":1000000,"ingressBurst":4294967295,"egressRate":0},
                  "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let rc = c.runtime_config.clone().unwrap();
        assert_eq!(rc.ips.unwrap().len(), 2);
        assert_eq!(rc.bandwidth.unwrap().ingress_rate, 1_000_000);
        let valid = c.gc_valid_attachments().unwrap();
        assert_eq!(valid.len(), 2, "both keys, merged and deduplicated");
        assert!(c.version_at_least((1, 1, 0)));
        assert!(
            !conf(r#"{"cniVersion":"1.0.0","name":"n","type":"netstack"}"#)
                .unwrap()
                .version_at_least((1, 1, 0))
        );
    }

    #[test]
    fn mtu_is_checked_against_the_link_kinds_limit() {
        // (mode, mtu, accepted, what the row covers)
        let table = [
            (None, 65521, true, "TAP at its limit"),
            (None, 65522, false, "TAP one over (the kernel says EINVAL)"),
            (Some("tap"), 65535, false, "TAP at the veth limit"),
            (Some("veth"), 65535, true, "veth at its limit"),
            (Some("veth"), 65536, false, "veth one over"),
            (Some("veth"), 575, false, "under the minimum"),
            (None, 576, true, "the minimum"),
        ];
        for (mode, mtu, accepted, what) in table {
            let mode = mode.map_or(String::new(), |m| format!(r#","mode":"{m}""#));
            let json = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"netstack","mtu":{mtu}{mode}}}"#
            );
            match conf(&json) {
                Ok(c) => {
                    assert!(accepted, "{what}: accepted");
                    assert_eq!(c.mtu(), mtu, "{what}");
                }
                Err(e) => {
                    assert!(!accepted, "{what}: {e}");
                    assert_eq!(e.code(), 7, "{what}: {e}");
                    let msg = e.to_string();
                    assert!(msg.contains(&mtu.to_string()), "{what}: {msg}");
                }
            }
        }
        let e = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","mtu":65535}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("65535") && e.contains("65521") && e.contains("TAP"),
            "{e}"
        );
    }

    #[test]
    fn link_mode_defaults_to_tap() {
        // (config, mode it selects)
        let table = [
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack"}"#,
                LinkMode::Tap,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","mode":"tap"}"#,
                LinkMode::Tap,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"netstack","mode":"veth"}"#,
                LinkMode::Veth,
            ),
        ];
        for (json, mode) in table {
            assert_eq!(conf(json).unwrap().link_mode(), mode, "{json}");
        }
    }

    #[test]
    fn vhost_user_keys_parse_with_their_defaults() {
        let c = conf(r#"{"cniVersion":"1.1.0","name":"n","type":"netstack","mode":"vhost-user"}"#)
            .unwrap();
        assert_eq!(c.link_mode(), LinkMode::VhostUser);
        assert_eq!(c.socket_mode().unwrap(), 0o600);
        assert_eq!(c.vhost_socket_group, None);
        assert!(!c.kata_vhost_user);
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"netstack","mode":"vhost-user",
                "vhostSocketMode":"0660","vhostSocketGroup":107,"kataVhostUser":true}"#,
        )
        .unwrap();
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.vhost_socket_group, Some(107));
        assert!(c.kata_vhost_user);
        // (vhostSocketMode, what the row covers): each is refused with code 7.
        let table = [
            ("660x", "not octal"),
            ("0680", "8 is not an octal digit"),
            ("", "empty"),
            ("0400", "owner cannot write"),
            ("04600", "setuid"),
            ("-0600", "negative"),
            ("0666", "any user could act as the pod's VM"),
        ];
        for (mode, what) in table {
            let json = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"netstack","mode":"vhost-user","vhostSocketMode":"{mode}"}}"#
            );
            let e = conf(&json).unwrap_err();
            assert_eq!(e.code(), 7, "{what}: {e}");
            assert!(e.to_string().contains("vhostSocketMode"), "{what}: {e}");
        }
        let e =
            conf(r#"{"cniVersion":"1.1.0","name":"n","type":"netstack","vhostSocketMode":600}"#)
                .unwrap_err();
        assert_eq!(e.code(), 6, "a number, not a string: {e}");
    }

    /// A pod's mode: runtimeConfig over CNI_ARGS over the conflist; a bad one names its
    /// source.
    #[test]
    fn a_pod_picks_its_mode_by_runtime_config_or_cni_args() {
        let args =
            |m: &str| -> BTreeMap<String, String> { [(MODE_ARG.to_owned(), m.to_owned())].into() };
        let none = BTreeMap::new();
        let base = r#""cniVersion":"1.1.0","name":"n","type":"netstack""#;
        let rc = |m: &str| format!(r#","runtimeConfig":{{"netstack":{{"mode":"{m}"}}}}"#);
        // (conflist extra, CNI_ARGS, mode chosen, what the row covers)
        let table: [(String, &BTreeMap<String, String>, LinkMode, &str); 6] = [
            (String::new(), &none, LinkMode::Tap, "nothing: TAP"),
            (
                r#","mode":"veth""#.into(),
                &none,
                LinkMode::Veth,
                "the conflist",
            ),
            (
                String::new(),
                &args("vhost-user"),
                LinkMode::VhostUser,
                "CNI_ARGS",
            ),
            (
                r#","mode":"veth""#.into(),
                &args("tap"),
                LinkMode::Tap,
                "CNI_ARGS over the conflist",
            ),
            (
                rc("vhost-user"),
                &args("veth"),
                LinkMode::VhostUser,
                "runtimeConfig over CNI_ARGS",
            ),
            (
                format!(r#","mode":"veth"{}"#, rc("tap")),
                &none,
                LinkMode::Tap,
                "runtimeConfig over the conflist",
            ),
        ];
        for (extra, a, want, what) in table {
            let c = conf(&format!("{{{base}{extra}}}")).unwrap();
            assert_eq!(c.pod_mode(a).unwrap(), want, "{what}");
        }
        let c = conf(&format!("{{{base}}}")).unwrap();
        let e = c.pod_mode(&args("macvlan")).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("NETSTACK_MODE"), "{e}");
        let e = conf(&format!("{{{base}{}}}", rc("vhost_user"))).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("runtimeConfig.netstack.mode"), "{e}");
        // The MTU is checked against the pod's own kind: 65535 is too much for a TAP.
        let c = conf(&format!(r#"{{{base},"mode":"veth","mtu":65535}}"#)).unwrap();
        assert_eq!(c.pod_mode(&none).unwrap(), LinkMode::Veth);
        assert_eq!(
            c.pod_mode(&args("vhost-user")).unwrap(),
            LinkMode::VhostUser
        );
        assert_eq!(c.pod_mode(&args("tap")).unwrap_err().code(), 7);
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("1.10.0"), Some((1, 10, 0)));
        assert!(parse_version("1.10.0") > parse_version("1.9.0"));
        assert_eq!(parse_version("1.0"), None);
        assert_eq!(parse_version("1.0.0.0"), None);
    }
}
