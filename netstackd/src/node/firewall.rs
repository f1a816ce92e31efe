//! Host firewalls: the accept rules that let pod traffic through a node whose `FORWARD` policy
//! drops (Docker sets `iptables -P FORWARD DROP`), and the check for forward-hook chains of
//! other nftables tables that drop by default (firewalld's `inet firewalld`), which no rule of
//! netstack's can override.
//!
//! What crosses the host's forward hook: pod traffic leaving the node through the uplink (to
//! other nodes' pods and, masqueraded, to the outside) and its replies. Pod-to-pod traffic on
//! one node is switched in the dataplane, and pod-to-node and node-to-pod traffic meets the
//! input and output hooks, not forward.
//!
//! netstackd inserts two rules at the head of iptables' `filter FORWARD` chain per pod CIDR
//! (ip6tables' for the IPv6 one), as flannel does, each tagged with the comment
//! [`COMMENT`]:
//!
//! ```text
//! -A FORWARD -s 10.244.1.0/24 -m comment --comment "netstack: pod CIDR" -j ACCEPT
//! -A FORWARD -d 10.244.1.0/24 -m comment --comment "netstack: pod CIDR" -j ACCEPT
//! ```
//!
//! Through the `iptables` binary, not `nft`: on an iptables-nft node (Debian 12's default) the
//! `ip filter` table belongs to iptables-nft, which refuses to list a table `nft` has written
//! rules into, and on an iptables-legacy node the chain is not in nftables at all.
//!
//! Another table's base chain on the forward hook with `policy drop` still drops the packet
//! whatever an accept elsewhere says (every base chain on a hook must accept). netstackd does
//! not edit tables it does not own (firewalld rewrites its own on every reload): it lists such
//! chains ([`foreign_forward_drops`]) and warns, naming them; the README says what to do.

use std::process::Command;

use ipnet::IpNet;

use super::masquerade::{self, Family, NftError};

/// The comment on every rule netstackd adds to the host's iptables chains: how `netstackd
/// cleanup` finds them without knowing the pod CIDR, and how an operator tells them apart.
pub const COMMENT: &str = "netstack: pod CIDR";

/// The iptables chain netstackd's accept rules go into.
pub const CHAIN: &str = "FORWARD";

/// The iptables binary of a family (`NETSTACK_IPTABLES` and `NETSTACK_IP6TABLES` override them,
/// for tests).
fn binary(family: Family) -> String {
    let (var, default) = match family {
        Family::V4 => ("NETSTACK_IPTABLES", "iptables"),
        Family::V6 => ("NETSTACK_IP6TABLES", "ip6tables"),
    };
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Errors of running iptables.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The binary could not be run (no iptables on this node: no iptables policy either).
    #[error("running {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// iptables refused a command.
    #[error("{binary} {args}: {stderr}")]
    Refused {
        /// The binary.
        binary: String,
        /// The arguments, joined.
        args: String,
        /// Its complaint.
        stderr: String,
    },
}

/// The two rule specifications (without `-A CHAIN`) that accept `pod_cidr`'s forwarded traffic,
/// both ways.
pub fn accept_rules(pod_cidr: IpNet) -> [Vec<String>; 2] {
    let cidr = pod_cidr.trunc().to_string();
    let rule = |dir: &str| {
        [
            dir,
            &cidr,
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            "ACCEPT",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    [rule("-s"), rule("-d")]
}

/// Seconds iptables waits for the xtables lock (iptables-legacy; iptables-nft has none) before
/// it gives up: the reconciler is never stuck behind another program's lock, and retries at
/// the next resync.
const LOCK_WAIT_SECS: &str = "5";

/// Runs iptables of `family` with `args` (after `-w` [`LOCK_WAIT_SECS`]); `Ok(None)` when it
/// exits 1 (iptables' "no such rule" for `-C` and `-D`).
fn iptables(family: Family, args: &[&str]) -> Result<Option<String>, FirewallError> {
    let binary = binary(family);
    let out = Command::new(&binary)
        .args(["-w", LOCK_WAIT_SECS])
        .args(args)
        .output()
        .map_err(|source| FirewallError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(1) if matches!(args.first(), Some(&"-C") | Some(&"-D")) => Ok(None),
        _ => Err(FirewallError::Refused {
            binary,
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

fn with_chain<'a>(op: &'a str, rule: &'a [String]) -> Vec<&'a str> {
    [op, CHAIN]
        .into_iter()
        .chain(rule.iter().map(String::as_str))
        .collect()
}

/// Inserts the accept rules of `pod_cidr` at the head of the chain unless they are there
/// (idempotent across restarts); returns how many were inserted.
pub fn ensure(pod_cidr: IpNet) -> Result<usize, FirewallError> {
    let family = Family::of(&pod_cidr);
    let mut inserted = 0;
    for rule in accept_rules(pod_cidr) {
        if iptables(family, &with_chain("-C", &rule))?.is_none() {
            let mut args = vec!["-I", CHAIN, "1"];
            args.extend(rule.iter().map(String::as_str));
            iptables(family, &args)?;
            inserted += 1;
        }
    }
    Ok(inserted)
}

/// The rules of `listing` (`iptables -S CHAIN`) that carry netstack's comment, as the
/// arguments that follow `-A CHAIN` (quotes removed: netstack's comment has no quote or
/// backslash of its own).
pub fn tagged_rules(listing: &str) -> Vec<Vec<String>> {
    let prefix = format!("-A {CHAIN} ");
    let tag = format!("--comment \"{COMMENT}\"");
    listing
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&tag))
        .map(|l| {
            let rest = &l[prefix.len()..];
            let (before, after) = rest.split_once(&tag).unwrap_or((rest, ""));
            before
                .split_whitespace()
                .map(str::to_owned)
                .chain(["--comment".to_owned(), COMMENT.to_owned()])
                .chain(after.split_whitespace().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// Deletes every rule of the chain carrying netstack's comment (of any pod CIDR: for `netstackd
/// cleanup`, which does not know it); returns how many went. No iptables binary: nothing to do.
pub fn remove_all(family: Family) -> Result<usize, FirewallError> {
    let listing = match iptables(family, &["-S", CHAIN]) {
        Ok(listing) => listing.unwrap_or_default(),
        Err(FirewallError::Spawn { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for rule in tagged_rules(&listing) {
        if iptables(family, &with_chain("-D", &rule))?.is_some() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes the accept rules of `pod_cidr` (every copy); returns how many went.
pub fn remove(pod_cidr: IpNet) -> Result<usize, FirewallError> {
    let family = Family::of(&pod_cidr);
    let mut removed = 0;
    for rule in accept_rules(pod_cidr) {
        // Bounded: a copy per restart at worst, and `-C` keeps it to one.
        for _ in 0..16 {
            if iptables(family, &with_chain("-D", &rule))?.is_none() {
                break;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// A base chain on the forward hook, in a table netstack does not manage, whose policy drops.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignDrop {
    /// `inet`, `ip`, ...
    pub family: String,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
}

impl std::fmt::Display for ForeignDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {} {} chain {}",
            self.family, self.table, self.chain
        )
    }
}

/// The chains of `nft -j list chains` output that drop forwarded packets by default and that
/// netstack's iptables rules do not reach: every forward-hook base chain with `policy drop`
/// except iptables-nft's own `filter FORWARD` of families `ip` and `ip6`.
pub fn parse_foreign_drops(json: &str) -> Result<Vec<ForeignDrop>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let mut found: Vec<ForeignDrop> = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .filter_map(|c| {
            let drop = ForeignDrop {
                family: c["family"].as_str()?.to_owned(),
                table: c["table"].as_str()?.to_owned(),
                chain: c["name"].as_str()?.to_owned(),
            };
            let iptables_own = matches!(drop.family.as_str(), "ip" | "ip6")
                && drop.table == "filter"
                && drop.chain == CHAIN;
            (!iptables_own).then_some(drop)
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The foreign forward-drop chains of the calling thread's namespace (see
/// [`parse_foreign_drops`]); none without an `nft` binary.
pub fn foreign_forward_drops() -> Result<Vec<ForeignDrop>, NftError> {
    let json = match masquerade::nft(&["-j", "list", "chains"], None, "listing chains") {
        Ok(json) => json,
        Err(NftError::Spawn { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    parse_foreign_drops(&json).map_err(|e| NftError::Refused {
        what: "listing chains".to_owned(),
        stderr: format!("unreadable JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::run_in_netns;
    use crate::netns::testing::{is_root, NamedNetns};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn accept_rules_cover_both_directions_of_the_pod_cidr_with_the_tag() {
        let [out, back] = accept_rules(net("10.244.1.7/24"));
        assert_eq!(
            out.join(" "),
            "-s 10.244.1.0/24 -m comment --comment netstack: pod CIDR -j ACCEPT"
        );
        assert_eq!(
            back.join(" "),
            "-d 10.244.1.0/24 -m comment --comment netstack: pod CIDR -j ACCEPT"
        );
        assert_eq!(out[5], COMMENT, "the comment is one argument");
        let [v6, _] = accept_rules(net("fd00:10:244:1::9/64"));
        assert_eq!(v6[1], "fd00:10:244:1::/64");
    }

    #[test]
    fn tagged_rules_come_back_from_a_listing_and_others_are_left_alone() {
        let listing = "-P FORWARD DROP\n\
             -A FORWARD -d 10.9.0.0/24 -m comment --comment \"netstack: pod CIDR\" -j ACCEPT\n\
             -A FORWARD -j DOCKER-USER\n\
             -A FORWARD -s 10.9.0.0/24 -m comment --comment \"flannel: pod CIDR\" -j ACCEPT\n\
             -A FORWARD -s 10.8.0.0/24 -m comment --comment \"netstack: pod CIDR\" -j ACCEPT\n\
             -A DOCKER-USER -s 10.7.0.0/24 -m comment --comment \"netstack: pod CIDR\" -j ACCEPT\n";
        let rules = tagged_rules(listing);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(rules[0], accept_rules(net("10.9.0.0/24"))[1]);
        assert_eq!(rules[1], accept_rules(net("10.8.0.0/24"))[0]);
    }

    #[test]
    fn foreign_drops_are_forward_base_chains_with_policy_drop_outside_iptables() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD",
                       "handle": 2, "type": "filter", "hook": "forward", "prio": 10,
                       "policy": "drop"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_INPUT",
                       "handle": 3, "type": "filter", "hook": "input", "prio": 10,
                       "policy": "drop"}},
            {"chain": {"family": "inet", "table": "open", "name": "forward", "handle": 4,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FWD_public",
                       "handle": 5}},
            {"chain": {"family": "ip6", "table": "filter", "name": "FORWARD", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "filter", "name": "FORWARD", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}"#;
        let found = parse_foreign_drops(json).unwrap();
        let names: Vec<String> = found.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            names,
            [
                "table inet filter chain FORWARD",
                "table inet firewalld chain filter_FORWARD"
            ]
        );
        assert!(parse_foreign_drops("{\"nftables\": [").is_err());
        assert_eq!(parse_foreign_drops("{}").unwrap(), vec![]);
    }

    fn have(binary: &str) -> bool {
        Command::new(binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn rules_are_inserted_once_found_and_removed_in_a_namespace() {
        if !is_root() || !have("iptables") || !have("nft") {
            eprintln!("skipped: needs root, iptables and nft");
            return;
        }
        let ns = NamedNetns::new();
        let cidr = net("10.244.1.0/24");
        run_in_netns(&ns.path, || {
            iptables(Family::V4, &["-P", CHAIN, "DROP"]).unwrap();
            iptables(
                Family::V4,
                &["-A", CHAIN, "-s", "10.9.0.0/24", "-j", "ACCEPT"],
            )
            .unwrap();
            assert_eq!(ensure(cidr).unwrap(), 2);
            assert_eq!(ensure(cidr).unwrap(), 0, "a second start adds nothing");
            let listing = iptables(Family::V4, &["-S", CHAIN]).unwrap().unwrap();
            let lines: Vec<&str> = listing.lines().collect();
            assert_eq!(lines[0], "-P FORWARD DROP");
            assert!(
                lines[1].contains("-d 10.244.1.0/24") && lines[2].contains("-s 10.244.1.0/24"),
                "ours at the head: {listing}"
            );
            assert_eq!(tagged_rules(&listing).len(), 2, "{listing}");
            assert_eq!(foreign_forward_drops().unwrap(), vec![], "iptables' own");
            masquerade::nft(&["add", "table", "inet", "hostile"], None, "adding a table").unwrap();
            masquerade::nft(
                &[
                    "add chain inet hostile forward_drop { type filter hook forward priority \
                     filter + 10; policy drop; }",
                ],
                None,
                "adding a chain",
            )
            .unwrap();
            assert_eq!(
                foreign_forward_drops().unwrap(),
                vec![ForeignDrop {
                    family: "inet".into(),
                    table: "hostile".into(),
                    chain: "forward_drop".into()
                }]
            );
            assert_eq!(remove(cidr).unwrap(), 2);
            assert_eq!(remove(cidr).unwrap(), 0);
            ensure(cidr).unwrap();
            assert_eq!(remove_all(Family::V4).unwrap(), 2);
            let left = iptables(Family::V4, &["-S", CHAIN]).unwrap().unwrap();
            assert_eq!(
                left, "-P FORWARD DROP\n-A FORWARD -s 10.9.0.0/24 -j ACCEPT\n",
                "the policy and the foreign rule stay"
            );
        })
        .unwrap();
    }
}
