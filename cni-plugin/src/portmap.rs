//! Port mappings for the netavark plugin (`podman run -p`), done as the reference `portmap`
//! plugin does them for the CNI path: DNAT in the node's nat hooks from a node address and
//! port to the container's. netavark leaves a plugin's network to the plugin, so this is ours.
//!
//! Rules live in one nftables table, `inet netstack_netavark`: base chains `prerouting`
//! (traffic arriving at the node) and `output` (from the node itself) jump, for destinations
//! that are the node's own (`fib daddr type local`), to one chain per container holding its
//! DNAT rules; the jump carries the comment `netstack:<container id>`, which is how teardown
//! finds it. The table goes when its last container does. Host ports on loopback
//! (`127.0.0.1`) are not reachable this way, as with portmap without `route_localnet`.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde::Deserialize;

/// The nftables table the mappings live in.
pub const TABLE: &str = "netstack_netavark";
/// Where the lock file of the table lives.
const LOCK_DIR: &str = "/run/netstack";
/// The most ports one mapping may cover.
const MAX_RANGE: u16 = 4096;

/// One `podman run -p` mapping, as netavark passes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PortMapping {
    /// The port in the container.
    pub container_port: u16,
    /// The node address to listen on; empty for every address of the node.
    #[serde(default)]
    pub host_ip: String,
    /// The port on the node.
    pub host_port: u16,
    /// `tcp`, `udp`, `sctp`, or several separated by commas.
    pub protocol: String,
    /// How many consecutive ports, from `host_port` and `container_port` (0 counts as 1).
    #[serde(default)]
    pub range: u16,
}

impl PortMapping {
    /// The node address to match, `None` for any; `0.0.0.0` and `::` mean any address of
    /// their family (as netavark's own port forwarding reads them).
    fn host_ip(&self) -> Result<Option<IpAddr>, String> {
        if self.host_ip.is_empty() {
            return Ok(None);
        }
        let ip: IpAddr = self
            .host_ip
            .parse()
            .map_err(|_| format!("host_ip {:?} is not an address", self.host_ip))?;
        Ok(Some(ip))
    }

    fn protocols(&self) -> Result<Vec<&str>, String> {
        self.protocol
            .split(',')
            .map(|p| match p.trim() {
                p @ ("tcp" | "udp" | "sctp") => Ok(p),
                other => Err(format!("protocol {other:?} (tcp, udp or sctp)")),
            })
            .collect()
    }

    fn count(&self) -> u16 {
        self.range.max(1)
    }
}

/// Checks every mapping before anything is set up.
pub fn validate(mappings: &[PortMapping]) -> Result<(), String> {
    for m in mappings {
        let what = format!(
            "port mapping {}->{}/{}",
            m.host_port, m.container_port, m.protocol
        );
        m.host_ip().map_err(|e| format!("{what}: {e}"))?;
        m.protocols().map_err(|e| format!("{what}: {e}"))?;
        if m.host_port == 0 || m.container_port == 0 {
            return Err(format!("{what}: port 0"));
        }
        let last = m.count() - 1;
        if m.count() > MAX_RANGE
            || m.host_port.checked_add(last).is_none()
            || m.container_port.checked_add(last).is_none()
        {
            return Err(format!("{what}: range {} does not fit", m.range));
        }
    }
    Ok(())
}

/// The chain of one container: `ctr_` and its id's first 24 characters that are
/// alphanumeric (container ids are hex; anything else is dropped).
fn chain(container_id: &str) -> String {
    let id: String = container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("ctr_{id}")
}

fn comment(container_id: &str) -> String {
    let id: String = container_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    format!("netstack:{id}")
}

/// The nft script that (re)creates a container's rules.
pub fn script(
    container_id: &str,
    container_ips: &[IpAddr],
    mappings: &[PortMapping],
) -> Result<String, String> {
    validate(mappings)?;
    let chain = chain(container_id);
    let comment = comment(container_id);
    let mut s = format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain inet {TABLE} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain inet {TABLE} {chain}\n\
         flush chain inet {TABLE} {chain}\n"
    );
    for m in mappings {
        let host_ip = m.host_ip()?;
        for proto in m.protocols()? {
            for ip in container_ips {
                let (family, v6) = match ip {
                    IpAddr::V4(_) => ("ip", false),
                    IpAddr::V6(_) => ("ip6", true),
                };
                if host_ip.is_some_and(|h| h.is_ipv6() != v6) {
                    continue;
                }
                let daddr = match host_ip {
                    Some(h) if !h.is_unspecified() => format!("{family} daddr {h} "),
                    _ => String::new(),
                };
                for i in 0..m.count() {
                    let to = if v6 {
                        format!("[{ip}]:{}", m.container_port + i)
                    } else {
                        format!("{ip}:{}", m.container_port + i)
                    };
                    s += &format!(
                        "add rule inet {TABLE} {chain} {daddr}meta nfproto {} {proto} dport {} dnat {family} to {to}\n",
                        if v6 { "ipv6" } else { "ipv4" },
                        m.host_port + i
                    );
                }
            }
        }
    }
    if !mappings.is_empty() {
        for base in ["prerouting", "output"] {
            s += &format!(
                "add rule inet {TABLE} {base} fib daddr type local jump {chain} comment \"{comment}\"\n"
            );
        }
    }
    Ok(s)
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .ok_or("nft: no stdin")?
            .write_all(input.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Serialises changes to the table between plugin processes (a teardown deleting the table
/// while a setup adds to it would lose the setup's rules).
fn lock() -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    netstack_core::mounts::lock_beside(std::path::Path::new(LOCK_DIR).join(TABLE).as_path())
        .map_err(|e| format!("locking the port-mapping table: {e}"))
}

/// Installs a container's mappings (nothing when there are none).
pub fn add(
    container_id: &str,
    container_ips: &[IpAddr],
    mappings: &[PortMapping],
) -> Result<(), String> {
    if mappings.is_empty() {
        return Ok(());
    }
    nft(
        &["-f", "-"],
        Some(&script(container_id, container_ips, mappings)?),
    )
    .map(|_| ())
}

/// Removes a container's mappings; idempotent. The table goes with the last container.
pub fn remove(container_id: &str) -> Result<(), String> {
    let _lock = lock()?;
    let listing = match nft(&["-j", "-a", "list", "table", "inet", TABLE], None) {
        Ok(l) => l,
        // No table (or no nft): nothing of ours to remove.
        Err(_) => return Ok(()),
    };
    let json: serde_json::Value =
        serde_json::from_str(&listing).map_err(|e| format!("nft's JSON: {e}"))?;
    let wanted = comment(container_id);
    let chain = chain(container_id);
    let mut script = String::new();
    let mut others = 0;
    let mut has_chain = false;
    for item in json["nftables"].as_array().into_iter().flatten() {
        if let Some(rule) = item.get("rule") {
            let base = rule["chain"].as_str().unwrap_or("");
            if base != "prerouting" && base != "output" {
                continue;
            }
            if rule["comment"].as_str() == Some(wanted.as_str()) {
                script += &format!(
                    "delete rule inet {TABLE} {base} handle {}\n",
                    rule["handle"].as_u64().unwrap_or(0)
                );
            } else {
                others += 1;
            }
        } else if item["chain"]["name"].as_str() == Some(chain.as_str()) {
            has_chain = true;
        }
    }
    if has_chain {
        script += &format!("delete chain inet {TABLE} {chain}\n");
    }
    if others == 0 {
        script = format!("delete table inet {TABLE}\n");
    }
    if script.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&script)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_ip: &str, host_port: u16, port: u16, proto: &str, range: u16) -> PortMapping {
        PortMapping {
            container_port: port,
            host_ip: host_ip.into(),
            host_port,
            protocol: proto.into(),
            range,
        }
    }

    #[test]
    fn rules_cover_each_port_protocol_and_family() {
        let ips: Vec<IpAddr> = vec!["10.244.1.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let s = script("abc123", &ips, &[mapping("", 8080, 80, "tcp,udp", 2)]).unwrap();
        for want in [
            "add rule inet netstack_netavark ctr_abc123 meta nfproto ipv4 tcp dport 8080 dnat ip to 10.244.1.7:80",
            "add rule inet netstack_netavark ctr_abc123 meta nfproto ipv4 udp dport 8081 dnat ip to 10.244.1.7:81",
            "add rule inet netstack_netavark ctr_abc123 meta nfproto ipv6 tcp dport 8081 dnat ip6 to [fd00::7]:81",
            "add rule inet netstack_netavark prerouting fib daddr type local jump ctr_abc123 comment \"netstack:abc123\"",
            "add rule inet netstack_netavark output fib daddr type local jump ctr_abc123 comment \"netstack:abc123\"",
        ] {
            assert!(s.contains(want), "missing {want} in\n{s}");
        }
        assert_eq!(
            s.matches("dnat").count(),
            8,
            "2 ports x 2 protocols x 2 families"
        );
    }

    #[test]
    fn an_unspecified_host_ip_is_any_address_of_its_family() {
        let ips: Vec<IpAddr> = vec!["10.244.1.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let s = script("c", &ips, &[mapping("0.0.0.0", 8080, 80, "tcp", 0)]).unwrap();
        assert_eq!(s.matches("dnat").count(), 1, "IPv4 only");
        assert!(
            s.contains("ctr_c meta nfproto ipv4 tcp dport 8080 dnat ip to 10.244.1.7:80"),
            "{s}"
        );
        let s = script("c", &ips, &[mapping("::", 8080, 80, "tcp", 0)]).unwrap();
        assert!(
            s.contains("ctr_c meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::7]:80"),
            "{s}"
        );
    }

    #[test]
    fn a_host_ip_limits_the_family_and_the_destination() {
        let ips: Vec<IpAddr> = vec!["10.244.1.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let s = script("c", &ips, &[mapping("192.0.2.1", 8080, 80, "tcp", 0)]).unwrap();
        assert_eq!(s.matches("dnat").count(), 1);
        assert!(s.contains(
            "ip daddr 192.0.2.1 meta nfproto ipv4 tcp dport 8080 dnat ip to 10.244.1.7:80"
        ));
    }

    #[test]
    fn bad_mappings_are_refused() {
        for (m, why) in [
            (mapping("", 8080, 80, "icmp", 1), "protocol"),
            (mapping("nope", 8080, 80, "tcp", 1), "host_ip"),
            (mapping("", 65535, 80, "tcp", 2), "range"),
            (mapping("", 0, 80, "tcp", 1), "port 0"),
            (mapping("", 1000, 80, "tcp", 5000), "range"),
        ] {
            let e = validate(&[m]).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn chain_and_comment_keep_only_safe_characters() {
        assert_eq!(chain("ab;c\"d 12"), "ctr_abcd12");
        assert_eq!(comment("a\"b"), "netstack:ab");
    }
}
