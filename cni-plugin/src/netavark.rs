//! netstack as a netavark network plugin (podman 5 and later, which network only through
//! netavark): the `create`, `setup NETNS`, `teardown NETNS` and `info` subcommands of
//! netavark's plugin API 1.0.0, each reading JSON on stdin and answering JSON on stdout, or
//! `{"error": "…"}` and a non-zero exit.
//!
//! A network's `options` are the conflist's keys with the same meanings (`mode`, `socket`,
//! `mtu`); podman does the IPAM (its own, `ipam_options.driver` `host-local`) and hands each
//! container its addresses as `static_ips`, with an optional `static_mac`. `setup` then runs
//! exactly the CNI ADD path with those addresses, and programs the container's port mappings
//! itself (`portmap`), since netavark does no firewall work for a plugin's network; `teardown`
//! is the CNI DEL path plus the removal of those rules.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use netstack_core::control::{LinkMode, Reply, Request};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::add::add_with_addresses;
use crate::config::NetConf;
use crate::daemon::{connect, control_error};
use crate::del::cmd_del;
use crate::portmap::{self, PortMapping};
use crate::result::IpamResult;
use crate::skel::{CniEnv, Command};
use crate::CniError;

/// The plugin API version this binary implements.
pub const API_VERSION: &str = "1.0.0";
/// The keys a network's `options` may carry: the conflist's, and the `bandwidth` capability's
/// (bit/s and bits, as in `runtimeConfig.bandwidth`).
const OPTIONS: [&str; 7] = [
    "mode",
    "socket",
    "mtu",
    "ingressRate",
    "ingressBurst",
    "egressRate",
    "egressBurst",
];
/// The keys a container's own options (`podman run --network NAME:KEY=VALUE`) may carry: its
/// bandwidth, over the network's.
const CONTAINER_OPTIONS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

/// One subnet of a network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subnet {
    /// The subnet.
    pub subnet: IpNet,
    /// Its gateway (netstackd's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The part podman's IPAM hands out (`--ip-range`), kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_range: Option<Value>,
}

/// The fields of a netavark network this plugin reads. `create` works on the whole JSON
/// object, so fields it does not know pass through unchanged.
#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    /// The network's name.
    pub name: String,
    /// Its subnets.
    #[serde(default)]
    pub subnets: Option<Vec<Subnet>>,
    /// `podman network create -o KEY=VALUE`.
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
    /// No route out of the network: not something netstack offers.
    #[serde(default)]
    pub internal: bool,
}

/// A container's options for one network.
#[derive(Debug, Clone, Deserialize)]
pub struct PerNetworkOptions {
    /// The interface to create in the container.
    pub interface_name: String,
    /// The addresses podman chose (or the user asked for with `--ip`).
    #[serde(default)]
    pub static_ips: Option<Vec<IpAddr>>,
    /// The MAC the user asked for (`--mac-address`).
    #[serde(default)]
    pub static_mac: Option<String>,
    /// Options for this container on this network: its bandwidth.
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
}

/// What netavark sends to `setup` and `teardown`.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginExec {
    /// The container's id.
    pub container_id: String,
    /// Its name.
    #[serde(default)]
    pub container_name: String,
    /// Its port mappings (`podman run -p`).
    #[serde(default)]
    pub port_mappings: Option<Vec<PortMapping>>,
    /// The network.
    pub network: Network,
    /// The container's options on it.
    pub network_options: PerNetworkOptions,
}

/// The settings a network's options give: the conflist's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSettings {
    /// `mode`: tap (default) or veth.
    pub mode: LinkMode,
    /// `socket`: netstackd's control socket.
    pub socket: Option<PathBuf>,
    /// `mtu`.
    pub mtu: Option<u32>,
    /// The `bandwidth` keys given, by name.
    pub bandwidth: BTreeMap<String, u64>,
}

/// Checks option keys against `allowed` and reads the bandwidth keys among them.
fn read_options(
    what: &str,
    options: Option<&HashMap<String, String>>,
    allowed: &[&str],
) -> Result<BTreeMap<String, u64>, PluginError> {
    let empty = HashMap::new();
    let options = options.unwrap_or(&empty);
    let mut unknown: Vec<&str> = options
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(err(format!(
            "{what}: unknown option(s) {} (netstack takes {})",
            unknown.join(", "),
            allowed.join(", ")
        )));
    }
    CONTAINER_OPTIONS
        .iter()
        .filter_map(|k| options.get(*k).map(|v| (*k, v)))
        .map(|(k, v)| {
            v.parse::<u64>()
                .map(|n| (k.to_owned(), n))
                .map_err(|_| err(format!("{what}: option {k} {v:?} is not a number")))
        })
        .collect()
}

/// A plugin failure: the message netavark shows the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

impl From<CniError> for PluginError {
    fn from(e: CniError) -> Self {
        PluginError(e.to_string())
    }
}

fn err(msg: impl Into<String>) -> PluginError {
    PluginError(msg.into())
}

/// Reads and validates a network's options.
pub fn settings(network: &Network) -> Result<NetworkSettings, PluginError> {
    let what = format!("network {}", network.name);
    let bandwidth = read_options(&what, network.options.as_ref(), &OPTIONS)?;
    let empty = HashMap::new();
    let options = network.options.as_ref().unwrap_or(&empty);
    let mode = match options.get("mode") {
        None => LinkMode::Tap,
        Some(m) => m
            .parse()
            .map_err(|e| err(format!("network {}: option mode: {e}", network.name)))?,
    };
    let mtu = options
        .get("mtu")
        .map(|m| {
            m.parse::<u32>().map_err(|_| {
                err(format!(
                    "network {}: option mtu {m:?} is not a number",
                    network.name
                ))
            })
        })
        .transpose()?;
    let settings = NetworkSettings {
        mode,
        socket: options.get("socket").map(PathBuf::from),
        mtu,
        bandwidth,
    };
    // The conflist's own checks (MTU range, mode).
    NetConf::parse(conflist(network, &settings).to_string().as_bytes())?;
    Ok(settings)
}

/// The conflist a network stands for: the plugin object with the options' keys, no IPAM.
fn conflist(network: &Network, settings: &NetworkSettings) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": network.name,
        "type": "netstack",
        "mode": settings.mode.as_str(),
    });
    if let Some(socket) = &settings.socket {
        conf["socket"] = json!(socket);
    }
    if let Some(mtu) = settings.mtu {
        conf["mtu"] = json!(mtu);
    }
    if !settings.bandwidth.is_empty() {
        conf["runtimeConfig"] = json!({ "bandwidth": settings.bandwidth });
    }
    conf
}

/// netstackd's status (its pod CIDRs and gateway), for `create`.
fn daemon_status(socket: &Path) -> Result<netstack_core::control::DaemonStatus, PluginError> {
    let mut client = connect(socket)?;
    match client.call(&Request::Status, &[]).map_err(control_error)? {
        Reply::Status(s) => Ok(s),
        other => Err(err(format!(
            "unexpected status reply from netstackd: {other:?}"
        ))),
    }
}

/// `create`: validates a network and fills in what podman left out: the subnets (netstackd's
/// pod CIDRs) and their gateway (netstackd's), the IPAM driver (podman's `host-local`), and
/// no DNS (netstack runs no resolver for the network).
pub fn create(mut network: Value) -> Result<Value, PluginError> {
    let parsed: Network =
        serde_json::from_value(network.clone()).map_err(|e| err(format!("network config: {e}")))?;
    if parsed.internal {
        return Err(err(format!(
            "network {}: internal networks are not supported by netstack (its pods always reach the node)",
            parsed.name
        )));
    }
    let s = settings(&parsed)?;
    let conf = NetConf::parse(conflist(&parsed, &s).to_string().as_bytes())?;
    let status = daemon_status(&conf.socket())?;
    let mut cidrs: Vec<(IpNet, IpAddr)> = vec![(status.pod_cidr, status.gateway)];
    if let Some(IpNet::V6(v6)) = status.pod_cidr_v6 {
        // netstackd's IPv6 gateway is the first address of its IPv6 pod CIDR.
        let gw = std::net::Ipv6Addr::from(u128::from(v6.network()) + 1);
        cidrs.push((IpNet::V6(v6), gw.into()));
    }
    let subnets: Vec<Subnet> =
        match parsed.subnets.filter(|s| !s.is_empty()) {
            None => cidrs
                .iter()
                .map(|(net, gw)| Subnet {
                    subnet: *net,
                    gateway: Some(*gw),
                    lease_range: None,
                })
                .collect(),
            Some(given) => given
                .into_iter()
                .map(|mut sub| {
                    let (net, gw) =
                        cidrs
                            .iter()
                            .find(|(net, _)| {
                                net.contains(&sub.subnet.network())
                                    && net.prefix_len() <= sub.subnet.prefix_len()
                            })
                            .ok_or_else(|| {
                                err(format!(
                            "network {}: subnet {} is not inside netstackd's pod CIDR(s) {}",
                            parsed.name,
                            sub.subnet,
                            cidrs.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", ")
                        ))
                            })?;
                    if !sub.subnet.contains(gw) {
                        return Err(err(format!(
                        "network {}: subnet {} does not hold netstackd's gateway {gw} (of {net})",
                        parsed.name, sub.subnet
                    )));
                    }
                    match sub.gateway {
                        Some(g) if g != *gw => Err(err(format!(
                            "network {}: gateway {g} is not netstackd's gateway {gw}",
                            parsed.name
                        ))),
                        _ => {
                            sub.gateway = Some(*gw);
                            Ok(sub)
                        }
                    }
                })
                .collect::<Result<_, _>>()?,
        };
    let has_v6 = subnets.iter().any(|s| s.subnet.addr().is_ipv6());
    if network["ipv6_enabled"] == json!(true) && !has_v6 {
        return Err(err(format!(
            "network {}: IPv6 asked for, but netstackd has no IPv6 pod CIDR (--pod-cidr-v6)",
            parsed.name
        )));
    }
    let driver = network["ipam_options"]["driver"]
        .as_str()
        .unwrap_or("host-local");
    if driver != "host-local" {
        return Err(err(format!(
            "network {}: ipam driver {driver:?}: netstack takes podman's addresses (host-local)",
            parsed.name
        )));
    }
    network["subnets"] = serde_json::to_value(&subnets).map_err(|e| err(e.to_string()))?;
    network["ipv6_enabled"] = json!(has_v6);
    network["dns_enabled"] = json!(false);
    if network.get("ipam_options").is_none_or(Value::is_null) {
        network["ipam_options"] = json!({ "driver": "host-local" });
    }
    if network.get("options").is_none_or(Value::is_null) {
        network["options"] = json!({});
    }
    network["options"]["mode"] = json!(s.mode.as_str());
    Ok(network)
}

/// The CNI environment and configuration `setup`/`teardown` stand for.
fn cni_call(
    command: Command,
    netns: &Path,
    exec: &PluginExec,
) -> Result<(CniEnv, NetConf), PluginError> {
    let mut s = settings(&exec.network)?;
    let what = format!(
        "container {} on network {}",
        exec.container_id, exec.network.name
    );
    let own = read_options(
        &what,
        exec.network_options.options.as_ref(),
        &CONTAINER_OPTIONS,
    )?;
    s.bandwidth.extend(own);
    let mut conf = conflist(&exec.network, &s);
    if let Some(mac) = exec
        .network_options
        .static_mac
        .as_deref()
        .filter(|m| !m.is_empty())
    {
        let parsed: netstack_core::wire::MacAddr = mac
            .parse()
            .map_err(|_| err(format!("static_mac {mac:?} (--mac-address) is not a MAC")))?;
        if !parsed.is_unicast() || parsed.is_zero() {
            return Err(err(format!(
                "static_mac {mac} (--mac-address) is not unicast"
            )));
        }
        if conf.get("runtimeConfig").is_none() {
            conf["runtimeConfig"] = json!({});
        }
        conf["runtimeConfig"]["mac"] = json!(mac);
    }
    let conf = NetConf::parse(conf.to_string().as_bytes())?;
    let mut args = BTreeMap::new();
    if !exec.container_name.is_empty() {
        args.insert("K8S_POD_NAME".to_owned(), exec.container_name.clone());
    }
    let env = CniEnv {
        command,
        container_id: exec.container_id.clone(),
        netns: Some(netns.to_path_buf()),
        ifname: exec.network_options.interface_name.clone(),
        args,
        path: Vec::new(),
    };
    Ok((env, conf))
}

/// The container's addresses with their subnet's prefix and gateway, as an IPAM result.
fn addresses(exec: &PluginExec) -> Result<IpamResult, PluginError> {
    let name = &exec.network.name;
    let ips = exec
        .network_options
        .static_ips
        .as_deref()
        .unwrap_or_default();
    if ips.is_empty() {
        return Err(err(format!(
            "network {name}: no address for container {} (podman assigns them: is the network's ipam driver host-local?)",
            exec.container_id
        )));
    }
    let subnets = exec.network.subnets.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for ip in ips {
        let sub = subnets
            .iter()
            .find(|s| s.subnet.contains(ip))
            .ok_or_else(|| {
                err(format!(
                    "network {name}: address {ip} is in none of the network's subnets"
                ))
            })?;
        let address = IpNet::new(*ip, sub.subnet.prefix_len()).map_err(|e| err(e.to_string()))?;
        let mut entry = json!({ "address": address.to_string() });
        if let Some(gw) = sub.gateway {
            entry["gateway"] = json!(gw.to_string());
        }
        out.push(entry);
    }
    // A default route for each family the container has an address of.
    let mut routes = Vec::new();
    if ips.iter().any(IpAddr::is_ipv4) {
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if ips.iter().any(IpAddr::is_ipv6) {
        routes.push(json!({ "dst": "::/0" }));
    }
    serde_json::from_value(json!({ "ips": out, "routes": routes }))
        .map_err(|e| err(format!("addresses: {e}")))
}

/// The status block netavark expects, from the CNI result of the ADD path.
fn status_block(ifname: &str, result: &Value) -> Value {
    let mac = result["interfaces"][0]["mac"].clone();
    let subnets: Vec<Value> = result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|ip| {
                    let mut s = json!({ "ipnet": ip["address"] });
                    if !ip["gateway"].is_null() {
                        s["gateway"] = ip["gateway"].clone();
                    }
                    s
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "dns_search_domains": [],
        "dns_server_ips": [],
        "interfaces": { ifname: { "mac_address": mac, "subnets": subnets } },
    })
}

/// `setup NETNS`: the CNI ADD path with podman's addresses, then the port mappings. Undoes
/// everything on error.
pub fn setup(netns: &Path, exec: &PluginExec) -> Result<Value, PluginError> {
    let (env, conf) = cni_call(Command::Add, netns, exec)?;
    let addrs = addresses(exec)?;
    let mappings = exec.port_mappings.as_deref().unwrap_or_default();
    portmap::validate(mappings).map_err(err)?;
    if !netns.exists() {
        return Err(err(format!(
            "network namespace {} does not exist",
            netns.display()
        )));
    }
    let result = add_with_addresses(&env, &conf, netns, &addrs)?;
    let container_ips: Vec<IpAddr> = addrs.ips.iter().map(|i| i.address.addr()).collect();
    if let Err(e) = portmap::add(&exec.container_id, &container_ips, mappings) {
        let _ = portmap::remove(&exec.container_id);
        let _ = cmd_del(&env, &conf, b"");
        return Err(err(format!("port mappings: {e}")));
    }
    Ok(status_block(&env.ifname, &result))
}

/// `teardown NETNS`: the CNI DEL path (idempotent) and the port mappings' rules.
pub fn teardown(netns: &Path, exec: &PluginExec) -> Result<(), PluginError> {
    let (mut env, conf) = cni_call(Command::Del, netns, exec)?;
    if !netns.exists() {
        env.netns = None;
    }
    let rules = portmap::remove(&exec.container_id);
    cmd_del(&env, &conf, b"")?;
    rules.map_err(|e| err(format!("removing port mappings: {e}")))
}

/// `info`.
pub fn info() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": API_VERSION,
        "name": "netstack",
    })
}

/// Runs one subcommand: `args` are the arguments after the program name.
pub fn run(args: &[String], stdin: &[u8]) -> Result<Option<Value>, PluginError> {
    let parse_exec = || -> Result<PluginExec, PluginError> {
        serde_json::from_slice(stdin).map_err(|e| err(format!("plugin options on stdin: {e}")))
    };
    let netns = || {
        args.get(1)
            .map(PathBuf::from)
            .ok_or_else(|| err("the network namespace path argument is missing"))
    };
    match args.first().map(String::as_str) {
        Some("create") => {
            let network: Value = serde_json::from_slice(stdin)
                .map_err(|e| err(format!("network config on stdin: {e}")))?;
            create(network).map(Some)
        }
        Some("setup") => setup(&netns()?, &parse_exec()?).map(Some),
        Some("teardown") => teardown(&netns()?, &parse_exec()?).map(|()| None),
        Some("info") | None => Ok(Some(info())),
        Some(other) => Err(err(format!(
            "unknown subcommand {other:?} (create, setup NETNS, teardown NETNS, info)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(options: Value) -> Network {
        serde_json::from_value(json!({ "name": "n", "options": options })).unwrap()
    }

    #[test]
    fn options_are_the_conflists_keys_and_nothing_else() {
        let s = settings(&network(
            json!({"mode": "veth", "mtu": "9000", "socket": "/s"}),
        ))
        .unwrap();
        assert_eq!(s.mode, LinkMode::Veth);
        assert_eq!(s.mtu, Some(9000));
        assert_eq!(s.socket.as_deref(), Some(Path::new("/s")));
        assert_eq!(settings(&network(Value::Null)).unwrap().mode, LinkMode::Tap);
        let e = settings(&network(json!({"vlan": "3", "mode": "tap"}))).unwrap_err();
        assert!(e.0.contains("unknown option(s) vlan"), "{e}");
        assert!(settings(&network(json!({"mode": "macvlan"}))).is_err());
        assert!(settings(&network(json!({"mtu": "big"}))).is_err());
        assert!(
            settings(&network(json!({"mtu": "100"}))).is_err(),
            "below the conflist's range"
        );
        let s = settings(&network(
            json!({"egressRate": "1000000", "egressBurst": "80000"}),
        ))
        .unwrap();
        assert_eq!(s.bandwidth["egressRate"], 1_000_000);
        assert!(settings(&network(json!({"egressRate": "fast"}))).is_err());
    }

    #[test]
    fn a_containers_bandwidth_overrides_the_networks_and_reaches_runtime_config() {
        let exec: PluginExec = serde_json::from_value(json!({
            "container_id": "c1",
            "network": {"name": "n", "options": {"ingressRate": "8000", "ingressBurst": "800"}},
            "network_options": {"interface_name": "eth0", "static_mac": "0a:58:00:00:00:01",
                                 "options": {"ingressRate": "16000"}}
        }))
        .unwrap();
        let (_, conf) = cni_call(Command::Add, Path::new("/run/netns/x"), &exec).unwrap();
        let rc = conf.runtime_config.unwrap();
        let bw = rc.bandwidth.unwrap();
        assert_eq!((bw.ingress_rate, bw.ingress_burst), (16000, 800));
        assert_eq!(rc.mac.as_deref(), Some("0a:58:00:00:00:01"));
        let mut bad = exec.clone();
        bad.network_options.options = Some([("mtu".to_owned(), "9000".to_owned())].into());
        assert!(
            cni_call(Command::Add, Path::new("/x"), &bad).is_err(),
            "mtu is the network's"
        );
    }

    #[test]
    fn addresses_take_their_subnets_prefix_and_gateway() {
        let exec: PluginExec = serde_json::from_value(json!({
            "container_id": "c1",
            "network": {"name": "n", "subnets": [
                {"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"},
                {"subnet": "fd00::/64", "gateway": "fd00::1"}]},
            "network_options": {"interface_name": "eth0", "static_ips": ["10.244.1.7", "fd00::7"]}
        }))
        .unwrap();
        let a = addresses(&exec).unwrap();
        assert_eq!(a.ips[0].address.to_string(), "10.244.1.7/24");
        assert_eq!(a.ips[1].address.to_string(), "fd00::7/64");
        assert_eq!(a.routes.len(), 2);
        let mut outside = exec.clone();
        outside.network_options.static_ips = Some(vec!["10.9.9.9".parse().unwrap()]);
        assert!(addresses(&outside)
            .unwrap_err()
            .0
            .contains("in none of the network's subnets"));
        outside.network_options.static_ips = None;
        assert!(addresses(&outside).unwrap_err().0.contains("no address"));
    }

    #[test]
    fn the_status_block_names_the_interface_mac_and_subnets() {
        let r = json!({"interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:07"}],
                       "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 0}]});
        assert_eq!(
            status_block("eth0", &r),
            json!({"dns_search_domains": [], "dns_server_ips": [],
                   "interfaces": {"eth0": {"mac_address": "0a:58:0a:f4:01:07",
                       "subnets": [{"ipnet": "10.244.1.7/24", "gateway": "10.244.1.1"}]}}})
        );
    }

    #[test]
    fn unknown_subcommands_and_missing_arguments_are_errors() {
        assert!(run(&["frobnicate".into()], b"").is_err());
        assert!(run(&["setup".into()], b"{}")
            .unwrap_err()
            .0
            .contains("namespace path"));
        assert_eq!(
            run(&["info".into()], b"").unwrap().unwrap()["api_version"],
            "1.0.0"
        );
        assert!(run(&["create".into()], b"not json").is_err());
    }
}
