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
    /// The netns path for interfaces inside the container.
    pub sandbox: String,
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
}
