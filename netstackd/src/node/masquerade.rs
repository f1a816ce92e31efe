//! Egress masquerade: pod traffic to anywhere outside the cluster's pod and service CIDRs is
//! SNATed to the node's address on its way out, so pods reach upstream DNS and the outside
//! world; pod-to-pod and pod-to-service traffic keeps its source address.
//!
//! The rules live in netstack's own nftables table, `ip netstack`, written whole through the
//! `nft` binary in one transaction (create, delete, define: atomic, and idempotent):
//!
//! ```text
//! table ip netstack {
//!     set no_masquerade { type ipv4_addr; flags interval; elements = { 10.244.0.0/16, ... } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.244.1.0/24 ip daddr != @no_masquerade masquerade
//!     }
//! }
//! ```

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::{IpNet, Ipv4Net};

/// The nftables table netstack owns (family `ip`).
pub const TABLE: &str = "netstack";

/// The `nft` binary (`NETSTACK_NFT` overrides it, for tests).
fn nft_binary() -> String {
    std::env::var("NETSTACK_NFT").unwrap_or_else(|_| "nft".to_owned())
}

/// Errors of running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be run.
    #[error("running {binary}: {source} (is the nftables package installed?)")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// nft refused the rules.
    #[error("nft {what}: {stderr}")]
    Refused {
        /// What was asked (`applying table ip netstack`, ...).
        what: String,
        /// nft's complaint.
        stderr: String,
    },
}

/// The addresses never masqueraded, IPv4 only, overlaps merged: the node's own pod CIDR,
/// `fixed` (the cluster and service CIDRs from the command line) and every node's pod CIDR.
pub fn no_masquerade_set(
    pod_cidr: Ipv4Net,
    fixed: &[IpNet],
    node_cidrs: impl IntoIterator<Item = IpNet>,
) -> Vec<Ipv4Net> {
    let mut all: Vec<Ipv4Net> = vec![pod_cidr.trunc()];
    all.extend(
        fixed
            .iter()
            .copied()
            .chain(node_cidrs)
            .filter_map(|n| match n.trunc() {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            }),
    );
    Ipv4Net::aggregate(&all)
}

/// The nft script that (re)defines netstack's table atomically: pod traffic from `pod_cidr`
/// to anything outside `no_masquerade` is masqueraded.
pub fn ruleset(pod_cidr: Ipv4Net, no_masquerade: &[Ipv4Net]) -> String {
    let elements = no_masquerade
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let pod_cidr = pod_cidr.trunc();
    // An empty set literal is a syntax error; the pod CIDR is always in the set anyway.
    let elements_line = if elements.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {elements} }}\n")
    };
    format!(
        "table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tset no_masquerade {{\n\
         \t\ttype ipv4_addr\n\
         \t\tflags interval\n\
         {elements_line}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != @no_masquerade masquerade\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String, NftError> {
    let binary = nft_binary();
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as nft's own failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NftError::Spawn { binary, source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Refused {
            what: what.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Writes the table (see [`ruleset`]) in the calling thread's network namespace.
pub fn apply(pod_cidr: Ipv4Net, no_masquerade: &[Ipv4Net]) -> Result<(), NftError> {
    nft(
        &["-f", "-"],
        Some(&ruleset(pod_cidr, no_masquerade)),
        &format!("applying table ip {TABLE}"),
    )
    .map(drop)
}

/// Whether netstack's table exists.
pub fn present() -> Result<bool, NftError> {
    match nft(&["list", "table", "ip", TABLE], None, "listing") {
        Ok(_) => Ok(true),
        Err(NftError::Refused { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes netstack's table; `Ok(false)` when there was none.
pub fn remove() -> Result<bool, NftError> {
    if !present()? {
        return Ok(false);
    }
    nft(
        &["delete", "table", "ip", TABLE],
        None,
        &format!("deleting table ip {TABLE}"),
    )
    .map(|_| true)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::netns::run_in_netns;
    use crate::netns::testing::{is_root, NamedNetns};

    /// Whether an address is in one of the networks (for tests and logs).
    fn covered(set: &[Ipv4Net], addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => set.iter().any(|n| n.contains(&v4)),
            IpAddr::V6(_) => false,
        }
    }

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn set_merges_overlaps_and_drops_ipv6() {
        let set = no_masquerade_set(
            v4("10.244.1.0/24"),
            &[net("10.244.0.0/16"), net("10.96.0.0/12"), net("fd00::/64")],
            [
                net("10.244.2.0/24"),
                net("10.250.0.0/24"),
                net("fd00:2::/64"),
            ],
        );
        assert_eq!(
            set,
            vec![v4("10.96.0.0/12"), v4("10.244.0.0/16"), v4("10.250.0.0/24")]
        );
        assert!(covered(&set, "10.244.9.9".parse().unwrap()));
        assert!(!covered(&set, "8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn ruleset_replaces_the_table_in_one_go() {
        let text = ruleset(
            v4("10.244.1.7/24"),
            &[v4("10.244.0.0/16"), v4("10.96.0.0/12")],
        );
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            &lines[..3],
            [
                "table ip netstack {}",
                "delete table ip netstack",
                "table ip netstack {"
            ]
        );
        assert!(
            lines.contains(&"elements = { 10.244.0.0/16, 10.96.0.0/12 }"),
            "{text}"
        );
        assert!(
            lines.contains(&"ip saddr 10.244.1.0/24 ip daddr != @no_masquerade masquerade"),
            "{text}"
        );
        assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;"));
    }

    fn have_nft() -> bool {
        Command::new(nft_binary())
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn table_is_applied_rewritten_and_removed() {
        if !is_root() || !have_nft() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let ns = NamedNetns::new();
        let listing = || nft(&["list", "table", "ip", TABLE], None, "list").unwrap();
        run_in_netns(&ns.path, || {
            assert!(!present().unwrap());
            assert!(!remove().unwrap(), "removing what is absent is fine");
            apply(v4("10.244.1.0/24"), &[v4("10.244.0.0/16")]).unwrap();
            let first = listing();
            assert!(first.contains("10.244.0.0/16"), "{first}");
            assert!(
                first.contains("ip saddr 10.244.1.0/24 ip daddr != @no_masquerade masquerade"),
                "{first}"
            );
            // Applying again replaces, never duplicates.
            apply(
                v4("10.244.1.0/24"),
                &[v4("10.244.0.0/16"), v4("10.96.0.0/12")],
            )
            .unwrap();
            let second = listing();
            assert!(second.contains("10.96.0.0/12"), "{second}");
            assert_eq!(
                second.matches("masquerade").count() - second.matches("no_masquerade").count(),
                1,
                "{second}"
            );
            assert!(present().unwrap());
            assert!(remove().unwrap());
            assert!(!present().unwrap());
        })
        .unwrap();
    }
}
