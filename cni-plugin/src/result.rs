//! CNI result types (SPEC.md "Success"), for the versions this plugin speaks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One address of an IPAM result.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamIp {
    /// Address with prefix length.
    pub address: IpNet,
    /// The gateway for this subnet.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// One route of an IPAM result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; the subnet's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// What an IPAM plugin returns (the abbreviated result: no interfaces).
#[derive(Debug, Clone, Deserialize)]
pub struct IpamResult {
    /// Allocated addresses.
    #[serde(default)]
    pub ips: Vec<IpamIp>,
    /// Routes to install.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings, passed through.
    #[serde(default)]
    pub dns: Option<serde_json::Value>,
}

/// An interface of the result.
#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC.
    pub mac: String,
    /// Its MTU: only in 1.1.0 results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container.
    pub sandbox: String,
    /// A VM pod's vhost-user socket: only in 1.1.0 results (the version that added it).
    #[serde(rename = "socketPath", skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
}

/// An address of the result.
#[derive(Debug, Clone, Serialize)]
pub struct ResultIp {
    /// "4" or "6": present only in 0.4.0 results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// Address with prefix length.
    pub address: IpNet,
    /// Gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// The ADD result printed on stdout.
#[derive(Debug, Clone, Serialize)]
pub struct AddResult {
    /// Same as the request's.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The pod interface.
    pub interfaces: Vec<Interface>,
    /// Its addresses.
    pub ips: Vec<ResultIp>,
    /// The routes installed.
    pub routes: Vec<Route>,
    /// DNS, from IPAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<serde_json::Value>,
}

/// A result read back (`prevResult` of CHECK, DEL and chained ADD): only what CHECK compares,
/// leniently (any version from 0.4.0 on).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevResult {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<PrevIp>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// An interface of a `prevResult`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevInterface {
    /// Name.
    pub name: String,
    /// MAC, if given.
    #[serde(default)]
    pub mac: Option<String>,
    /// Netns path; empty for host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// A VM pod's vhost-user socket (1.1.0).
    #[serde(default, rename = "socketPath")]
    pub socket_path: Option<std::path::PathBuf>,
}

/// An address of a `prevResult`.
#[derive(Debug, Clone, Deserialize)]
pub struct PrevIp {
    /// Address with prefix length.
    pub address: IpNet,
    /// Gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// Appends this plugin's result `ours` to a chained `prevResult`: interfaces, addresses and
/// routes are added after the previous ones (our addresses' `interface` indexes shifted to
/// match), DNS is kept from the previous result when it has any, and every other field of the
/// previous result passes through unchanged.
pub fn extend_prev_result(
    prev: &serde_json::Value,
    ours: serde_json::Value,
    cni_version: &str,
) -> serde_json::Value {
    let mut out = prev.clone();
    let offset = prev["interfaces"].as_array().map_or(0, Vec::len);
    let mut ours = ours;
    if let Some(ips) = ours["ips"].as_array_mut() {
        for ip in ips {
            if let Some(i) = ip["interface"].as_u64() {
                ip["interface"] = (i + offset as u64).into();
            }
        }
    }
    for key in ["interfaces", "ips", "routes"] {
        let mut list = out[key].as_array().cloned().unwrap_or_default();
        list.extend(ours[key].as_array().cloned().unwrap_or_default());
        out[key] = list.into();
    }
    let prev_has_dns = prev["dns"].as_object().is_some_and(|d| !d.is_empty());
    if !prev_has_dns && !ours["dns"].is_null() {
        out["dns"] = ours["dns"].take();
    }
    out["cniVersion"] = cni_version.into();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_result_parses() {
        // As printed by Debian's host-local 1.1.1 for cniVersion 0.4.0.
        let raw = r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.244.1.2/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let r: IpamResult = serde_json::from_str(raw).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.244.1.1");
        assert!(r.routes[0].gw.is_none());
    }

    #[test]
    fn a_chained_result_keeps_the_previous_one_and_its_unknown_fields() {
        let prev = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "192.0.2.9/32", "interface": 0}],
            "routes": [],
            "dns": {"nameservers": ["192.0.2.53"]},
            "x-vendor": {"kept": true}
        });
        let ours = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {}
        });
        let out = extend_prev_result(&prev, ours, "1.0.0");
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(
            out["ips"][1]["interface"], 1,
            "our address points at our interface"
        );
        assert_eq!(out["ips"][0]["address"], "192.0.2.9/32");
        assert_eq!(out["routes"].as_array().unwrap().len(), 1);
        assert_eq!(out["dns"]["nameservers"][0], "192.0.2.53");
        assert_eq!(out["x-vendor"]["kept"], true);
        let back: PrevResult = serde_json::from_value(out).unwrap();
        assert_eq!(back.ips[1].interface, Some(1));
    }
}
