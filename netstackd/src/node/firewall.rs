//! Host firewalls: the accept rules that let pod traffic through a node whose `FORWARD` policy
//! drops (Docker sets `iptables -P FORWARD DROP`), and through forward-hook chains of other
//! nftables tables that drop by default (firewalld's `inet firewalld`).
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
//! Another table's base chain on the forward hook that drops by default still drops the packet
//! whatever an accept elsewhere says: every base chain on a hook must accept it, and an
//! accept only ends the walk of its own chain. The only way through firewalld's `table inet
//! firewalld` chain `filter_FORWARD` (or a hand-written equivalent) is a rule in that chain.
//! So at every resync netstackd finds the forward base chains of families `ip`, `ip6` and
//! `inet` (iptables-nft's own `filter FORWARD` aside: the rules above cover it) that drop by
//! default — policy drop, or a last rule that drops or rejects everything
//! ([`drops_by_default`]) — and makes sure each starts with
//!
//! ```text
//! iifname "netstack0" accept comment "netstack: uplink"
//! oifname "netstack0" accept comment "netstack: uplink"
//! ```
//!
//! (the uplink's name; interface rules cover IPv4 and IPv6 alike). Nothing else of the chain
//! changes. They are found again by comment and handle (`nft -j`), put back when someone (a
//! firewalld reload) removed them, and deleted by handle at shutdown and by `netstackd cleanup`
//! (every rule of a foreign forward chain whose comment starts with [`TAG_PREFIX`]). nft is
//! fed JSON, so table and chain names need no quoting, and every run is bounded in time.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The comment on the rules netstackd adds to other nftables tables' forward chains.
pub const UPLINK_COMMENT: &str = "netstack: uplink";

/// What every rule netstackd adds starts with: `netstackd cleanup` deletes every rule of a
/// foreign forward chain whose comment starts with it (it does not know the uplink's name).
pub const TAG_PREFIX: &str = "netstack:";

/// How long one `nft` run may take before it is killed (the reconciler is never stuck behind
/// a hung `nft`; what it was doing is retried at the next resync).
pub(super) const NFT_WAIT: Duration = Duration::from_secs(5);

/// A base chain on the forward hook, in a table netstack does not manage (any table but
/// iptables-nft's own `filter FORWARD` of families `ip` and `ip6`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignChain {
    /// `inet`, `ip` or `ip6`.
    pub family: String,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
}

impl std::fmt::Display for ForeignChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {} {} chain {}",
            self.family, self.table, self.chain
        )
    }
}

/// The forward base chains of `nft -j list chains` output that netstack's iptables rules do
/// not reach, each with whether its policy is drop: families `ip`, `ip6` and `inet` (the
/// families whose forward hook routed pod traffic crosses), without iptables-nft's own
/// `filter FORWARD`.
pub fn parse_forward_chains(json: &str) -> Result<Vec<(ForeignChain, bool)>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let mut found: Vec<(ForeignChain, bool)> = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c["hook"] == "forward")
        .filter_map(|c| {
            let chain = ForeignChain {
                family: c["family"].as_str()?.to_owned(),
                table: c["table"].as_str()?.to_owned(),
                chain: c["name"].as_str()?.to_owned(),
            };
            let routed = matches!(chain.family.as_str(), "ip" | "ip6" | "inet");
            let iptables_own = matches!(chain.family.as_str(), "ip" | "ip6")
                && chain.table == "filter"
                && chain.chain == CHAIN;
            (routed && !iptables_own).then(|| (chain, c["policy"] == "drop"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Which interface an uplink rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// `iifname "<uplink>" accept`: pod traffic leaving the node.
    In,
    /// `oifname "<uplink>" accept`: its replies, and traffic to pods.
    Out,
}

impl Dir {
    fn key(self) -> &'static str {
        match self {
            Dir::In => "iifname",
            Dir::Out => "oifname",
        }
    }
}

/// What netstack needs to know of one rule of a foreign forward chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Its handle (what a delete names).
    pub handle: u64,
    /// Its comment, if any.
    pub comment: Option<String>,
    /// `Some((dir, name))` when the rule is exactly `iifname|oifname "name" accept`.
    pub accepts_interface: Option<(Dir, String)>,
    /// Whether it drops or rejects every packet that reaches it: nothing but `counter` and
    /// `log` statements before a `drop` or `reject` (firewalld's trailing `reject with icmpx
    /// admin-prohibited`).
    pub drops_all: bool,
}

impl RuleInfo {
    /// Whether netstack added it (its comment starts with [`TAG_PREFIX`]).
    pub fn tagged(&self) -> bool {
        self.comment
            .as_deref()
            .is_some_and(|c| c.starts_with(TAG_PREFIX))
    }
}

fn rule_info(rule: &serde_json::Value) -> Option<RuleInfo> {
    let handle = rule["handle"].as_u64()?;
    let expr: &[serde_json::Value] = rule["expr"].as_array().map_or(&[], |v| v.as_slice());
    let accepts_interface = match expr {
        [m, verdict] if verdict.get("accept").is_some() => {
            let m = m.get("match")?;
            let key = m["left"]["meta"]["key"].as_str();
            let dir = match key {
                Some("iifname") => Some(Dir::In),
                Some("oifname") => Some(Dir::Out),
                _ => None,
            };
            match (dir, m["op"].as_str(), m["right"].as_str()) {
                (Some(dir), Some("=="), Some(name)) => Some((dir, name.to_owned())),
                _ => None,
            }
        }
        _ => None,
    };
    let drops_all = match expr.split_last() {
        Some((last, before)) => {
            (last.get("drop").is_some() || last.get("reject").is_some())
                && before
                    .iter()
                    .all(|e| e.get("counter").is_some() || e.get("log").is_some())
        }
        None => false,
    };
    Some(RuleInfo {
        handle,
        comment: rule["comment"].as_str().map(str::to_owned),
        accepts_interface,
        drops_all,
    })
}

/// The rules of `nft -j list chain ...` output, in the chain's order.
pub fn parse_rules(json: &str) -> Result<Vec<RuleInfo>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    Ok(value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("rule"))
        .filter_map(rule_info)
        .collect())
}

/// Whether a forward chain drops what no rule accepts: its policy is drop, or its last rule
/// (netstack's own aside) drops or rejects everything that reaches it. A chain that drops
/// only in a chain it jumps to is not recognised.
pub fn drops_by_default(policy_drop: bool, rules: &[RuleInfo]) -> bool {
    policy_drop
        || rules
            .iter()
            .rfind(|r| !r.tagged())
            .is_some_and(|r| r.drops_all)
}

/// What to change in one foreign forward chain so that it accepts the uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkPlan {
    /// The rules to insert at the head.
    pub add: Vec<Dir>,
    /// Handles of netstack's rules that are not the wanted ones (another uplink's name, a
    /// second copy, a rule edited by hand), to delete.
    pub delete: Vec<u64>,
}

/// The plan for a chain with `rules` and netstack's uplink `uplink`: one tagged
/// `iifname "<uplink>" accept` and one tagged `oifname "<uplink>" accept` (found anywhere in
/// the chain; added at its head), and no other tagged rule.
pub fn plan_uplink(rules: &[RuleInfo], uplink: &str) -> UplinkPlan {
    let mut plan = UplinkPlan::default();
    let mut kept = Vec::new();
    for r in rules.iter().filter(|r| r.tagged()) {
        match &r.accepts_interface {
            Some((dir, name))
                if name == uplink
                    && r.comment.as_deref() == Some(UPLINK_COMMENT)
                    && !kept.contains(dir) =>
            {
                kept.push(*dir)
            }
            _ => plan.delete.push(r.handle),
        }
    }
    plan.add = [Dir::In, Dir::Out]
        .into_iter()
        .filter(|d| !kept.contains(d))
        .collect();
    plan
}

/// The nftables JSON commands that carry out `plan` in `chain`: deletes first, then inserts
/// (each at the head, `oifname` first so that `iifname` ends up first).
pub fn plan_commands(chain: &ForeignChain, plan: &UplinkPlan, uplink: &str) -> serde_json::Value {
    let at = |extra: serde_json::Value| {
        let mut rule = serde_json::json!({
            "family": chain.family, "table": chain.table, "chain": chain.chain,
        });
        if let (Some(rule), Some(extra)) = (rule.as_object_mut(), extra.as_object()) {
            rule.extend(extra.clone());
        }
        rule
    };
    let deletes = plan
        .delete
        .iter()
        .map(|h| serde_json::json!({"delete": {"rule": at(serde_json::json!({"handle": h}))}}));
    let mut add = plan.add.clone();
    add.sort_by_key(|d| std::cmp::Reverse(*d));
    let inserts = add.into_iter().map(|dir| {
        serde_json::json!({"insert": {"rule": at(serde_json::json!({
            "comment": UPLINK_COMMENT,
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": dir.key()}}, "right": uplink}},
                {"accept": null},
            ],
        }))}})
    });
    serde_json::json!({"nftables": deletes.chain(inserts).collect::<Vec<_>>()})
}

/// Runs `binary` with `args` (and `stdin`); its stdout, or why not (killed after `wait`).
pub(super) fn run_bounded(
    binary: &str,
    args: &[&str],
    stdin: Option<&str>,
    what: &str,
    wait: Duration,
) -> Result<String, NftError> {
    let binary = binary.to_owned();
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
    // Readers on threads: a full pipe never holds nft up while this thread keeps the clock.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // netstack's commands are a few hundred bytes: the pipe takes them whole, so this
        // never blocks. A write error shows up as nft's own failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let deadline = Instant::now() + wait;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(String::from_utf8_lossy(&stdout).into_owned()),
        Some(_) => Err(NftError::Refused {
            what: what.to_owned(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        }),
        None => Err(NftError::Refused {
            what: what.to_owned(),
            stderr: format!("no answer within {} ms: killed", wait.as_millis()),
        }),
    }
}

fn unreadable(what: &str, e: serde_json::Error) -> NftError {
    NftError::Refused {
        what: what.to_owned(),
        stderr: format!("unreadable JSON: {e}"),
    }
}

/// The foreign forward chains of the calling thread's namespace, with their policies.
fn forward_chains() -> Result<Vec<(ForeignChain, bool)>, NftError> {
    let json = masquerade::nft(&["-j", "list", "chains"], None, "listing chains")?;
    parse_forward_chains(&json).map_err(|e| unreadable("listing chains", e))
}

/// The rules of one chain (listed through JSON input: a table or chain named like an nft
/// keyword needs no quoting).
fn chain_rules(chain: &ForeignChain) -> Result<Vec<RuleInfo>, NftError> {
    let what = format!("listing {chain}");
    let cmd = serde_json::json!({"nftables": [{"list": {"chain": {
        "family": chain.family, "table": chain.table, "name": chain.chain,
    }}}]});
    let json = masquerade::nft(&["-j", "-f", "-"], Some(&cmd.to_string()), &what)?;
    parse_rules(&json).map_err(|e| unreadable(&what, e))
}

/// What [`ensure_uplink`] did in one chain that drops by default: rules added (0: they were
/// there), or why not.
pub type UplinkOutcome = (ForeignChain, Result<usize, NftError>);

/// Makes every foreign forward chain of the calling thread's namespace that drops by default
/// ([`drops_by_default`]) accept `uplink` both ways ([`plan_uplink`], carried out in one nft
/// transaction per chain). Chains that do not drop by default are left alone. No `nft`
/// binary: nothing to do.
pub fn ensure_uplink(uplink: &str) -> Result<Vec<UplinkOutcome>, NftError> {
    let chains = match forward_chains() {
        Ok(chains) => chains,
        Err(NftError::Spawn { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut outcomes = Vec::new();
    for (chain, policy_drop) in chains {
        let rules = match chain_rules(&chain) {
            Ok(rules) => rules,
            // Gone between the two listings (a firewalld reload): nothing to do there.
            Err(_) if !policy_drop => continue,
            Err(e) => {
                outcomes.push((chain, Err(e)));
                continue;
            }
        };
        if !drops_by_default(policy_drop, &rules) {
            continue;
        }
        let plan = plan_uplink(&rules, uplink);
        let result = if plan == UplinkPlan::default() {
            Ok(0)
        } else {
            let cmd = plan_commands(&chain, &plan, uplink).to_string();
            masquerade::nft(
                &["-j", "-f", "-"],
                Some(&cmd),
                &format!("writing into {chain}"),
            )
            .map(|_| plan.add.len())
        };
        outcomes.push((chain, result));
    }
    Ok(outcomes)
}

/// Deletes every rule netstack added to foreign forward chains (every rule of such a chain
/// whose comment starts with [`TAG_PREFIX`], by handle), whatever the uplink's name; returns
/// how many went. No `nft` binary: nothing to do.
pub fn remove_uplink_rules() -> Result<usize, NftError> {
    let chains = match forward_chains() {
        Ok(chains) => chains,
        Err(NftError::Spawn { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for (chain, _) in chains {
        let Ok(rules) = chain_rules(&chain) else {
            continue;
        };
        let plan = UplinkPlan {
            add: Vec::new(),
            delete: rules
                .iter()
                .filter(|r| r.tagged())
                .map(|r| r.handle)
                .collect(),
        };
        if plan.delete.is_empty() {
            continue;
        }
        let cmd = plan_commands(&chain, &plan, "").to_string();
        masquerade::nft(
            &["-j", "-f", "-"],
            Some(&cmd),
            &format!("deleting from {chain}"),
        )?;
        removed += plan.delete.len();
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::run_in_netns;
    use crate::netns::testing::NamedNetns;

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
    fn forward_chains_are_routed_families_base_chains_outside_iptables() {
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
        let found = parse_forward_chains(json).unwrap();
        let names: Vec<(String, bool)> = found.iter().map(|(c, d)| (c.to_string(), *d)).collect();
        assert_eq!(
            names,
            [
                ("table inet filter chain FORWARD".to_owned(), true),
                ("table inet firewalld chain filter_FORWARD".to_owned(), true),
                ("table inet open chain forward".to_owned(), false),
            ]
        );
        assert!(parse_forward_chains("{\"nftables\": [").is_err());
        assert_eq!(parse_forward_chains("{}").unwrap(), vec![]);
    }

    fn chain(family: &str, table: &str, name: &str) -> ForeignChain {
        ForeignChain {
            family: family.into(),
            table: table.into(),
            chain: name.into(),
        }
    }

    /// `nft -j list chains` of a namespace with iptables-nft's FORWARD (policy drop), a
    /// firewalld-shaped `inet firewalld` (policy accept, a trailing reject), a hand-written
    /// `ip6 hand forward_drop` (policy drop) and a netdev ingress chain (recorded with nft
    /// 1.0.6).
    const CHAINS: &str = include_str!("testdata/nft_chains.json");
    /// `nft -j list chain inet firewalld filter_FORWARD` of it: netstack's `iifname
    /// "netstack0"` rule, a stale tagged `oifname "old0"` one, then firewalld's rules down to
    /// `meta pkttype host log ...` and `reject with icmpx admin-prohibited`.
    const FIREWALLD_FORWARD: &str = include_str!("testdata/nft_filter_forward.json");
    /// `nft -j list chain ip6 hand forward_drop`: policy drop, one `ip6 saddr ... counter
    /// drop`.
    const HAND_FORWARD: &str = include_str!("testdata/nft_hand_forward.json");

    #[test]
    fn a_recorded_ruleset_gives_the_forward_chains_to_look_at() {
        assert_eq!(
            parse_forward_chains(CHAINS).unwrap(),
            [
                (chain("inet", "firewalld", "filter_FORWARD"), false),
                (chain("ip6", "hand", "forward_drop"), true),
            ],
            "not iptables' FORWARD, not the input chain, the regular chain or netdev"
        );
    }

    #[test]
    fn a_recorded_firewalld_chain_drops_by_its_last_rule_and_gets_the_missing_rule() {
        let rules = parse_rules(FIREWALLD_FORWARD).unwrap();
        assert_eq!(rules.len(), 9, "{rules:?}");
        assert_eq!(rules[0].handle, 6);
        assert_eq!(
            rules[0].accepts_interface,
            Some((Dir::In, "netstack0".to_owned()))
        );
        assert!(rules[0].tagged() && rules[1].tagged() && !rules[2].tagged());
        assert_eq!(rules[8].handle, 14);
        assert!(rules[8].drops_all, "reject with icmpx admin-prohibited");
        assert!(!rules[7].drops_all, "a log rule");
        assert!(!rules[5].drops_all, "ct state invalid drop: conditional");
        assert!(
            drops_by_default(false, &rules),
            "policy accept, but the last rule rejects everything"
        );
        assert!(!drops_by_default(false, &rules[..8]), "without the reject");
        assert!(drops_by_default(true, &[]));
        assert!(!drops_by_default(false, &[]));
        let plan = plan_uplink(&rules, "netstack0");
        assert_eq!(
            plan,
            UplinkPlan {
                add: vec![Dir::Out],
                delete: vec![7],
            },
            "the iifname rule stays, the stale old0 one goes, the oifname one is added"
        );
        let other = plan_uplink(&rules, "ns1");
        assert_eq!(other.add, [Dir::In, Dir::Out]);
        assert_eq!(other.delete, [6, 7], "another uplink's rules go");
        // Ours only: the chain's own verdict decides.
        let ours: Vec<RuleInfo> = rules[..2].to_vec();
        assert!(!drops_by_default(false, &ours));
    }

    #[test]
    fn a_recorded_hand_written_chain_drops_by_policy_and_gets_both_rules() {
        let rules = parse_rules(HAND_FORWARD).unwrap();
        assert_eq!(rules.len(), 1);
        assert!(
            !rules[0].drops_all,
            "ip6 saddr ... counter drop is conditional"
        );
        assert!(drops_by_default(true, &rules));
        let plan = plan_uplink(&rules, "netstack0");
        assert_eq!(plan.add, [Dir::In, Dir::Out]);
        assert!(plan.delete.is_empty());
        assert!(parse_rules("not json").is_err());
    }

    #[test]
    fn plans_become_one_nft_transaction_with_the_comment() {
        let c = chain("inet", "firewalld", "filter_FORWARD");
        let plan = UplinkPlan {
            add: vec![Dir::In, Dir::Out],
            delete: vec![7],
        };
        let cmd = plan_commands(&c, &plan, "netstack0");
        let cmds = cmd["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(
            cmds[0],
            serde_json::json!({"delete": {"rule": {"family": "inet", "table": "firewalld",
                "chain": "filter_FORWARD", "handle": 7}}})
        );
        // Each insert goes to the head: oifname first, so iifname ends up first.
        let inserted: Vec<&str> = cmds[1..]
            .iter()
            .map(|c| {
                c["insert"]["rule"]["expr"][0]["match"]["left"]["meta"]["key"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(inserted, ["oifname", "iifname"]);
        for c in &cmds[1..] {
            let rule = &c["insert"]["rule"];
            assert_eq!(rule["comment"], UPLINK_COMMENT);
            assert_eq!(rule["expr"][0]["match"]["right"], "netstack0");
            assert_eq!(rule["expr"][1], serde_json::json!({"accept": null}));
        }
        // What nft would print back parses into exactly the wanted rules: no second plan.
        let listed: Vec<RuleInfo> = cmds[1..]
            .iter()
            .rev()
            .enumerate()
            .map(|(i, c)| {
                let mut rule = c["insert"]["rule"].clone();
                rule["handle"] = serde_json::json!(20 + i);
                rule_info(&rule).unwrap()
            })
            .collect();
        assert_eq!(plan_uplink(&listed, "netstack0"), UplinkPlan::default());
    }

    #[test]
    fn a_hung_command_is_killed_and_failures_are_told_apart() {
        let hung = run_bounded("sleep", &["30"], None, "hanging", Duration::from_millis(50));
        match hung {
            Err(NftError::Refused { what, stderr }) => {
                assert_eq!(what, "hanging");
                assert!(stderr.contains("no answer within 50 ms"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
        let echoed = run_bounded("cat", &[], Some("{}"), "echo", NFT_WAIT).unwrap();
        assert_eq!(echoed, "{}", "stdin reaches it, its stdout comes back");
        assert!(matches!(
            run_bounded("false", &[], None, "failing", NFT_WAIT),
            Err(NftError::Refused { .. })
        ));
        assert!(matches!(
            run_bounded("/nonexistent/nft", &[], None, "missing", NFT_WAIT),
            Err(NftError::Spawn { .. })
        ));
    }

    #[test]
    #[ignore = "needs root"]
    fn rules_are_inserted_once_found_and_removed_in_a_namespace() {
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
            assert_eq!(ensure_uplink("ns0").unwrap().len(), 0, "iptables' own");
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
            let before =
                masquerade::nft(&["list", "table", "inet", "hostile"], None, "listing").unwrap();
            let outcomes = ensure_uplink("ns0").unwrap();
            assert_eq!(outcomes.len(), 1, "{outcomes:?}");
            assert_eq!(outcomes[0].0, chain("inet", "hostile", "forward_drop"));
            assert_eq!(outcomes[0].1.as_ref().unwrap(), &2);
            let listing = masquerade::nft(
                &["list", "chain", "inet", "hostile", "forward_drop"],
                None,
                "listing",
            )
            .unwrap();
            assert!(
                listing.contains("iifname \"ns0\" accept comment \"netstack: uplink\"")
                    && listing.contains("oifname \"ns0\" accept comment \"netstack: uplink\""),
                "{listing}"
            );
            assert_eq!(
                ensure_uplink("ns0").unwrap()[0].1.as_ref().unwrap(),
                &0,
                "idempotent"
            );
            assert_eq!(remove_uplink_rules().unwrap(), 2);
            assert_eq!(
                masquerade::nft(&["list", "table", "inet", "hostile"], None, "listing").unwrap(),
                before,
                "the table is as it was"
            );
            assert_eq!(remove_uplink_rules().unwrap(), 0);
            // A table and a chain named like nft keywords (`fwd`, `forward`): JSON needs no
            // quoting.
            let odd = r#"{"nftables": [{"add": {"table": {"family": "inet", "name": "fwd"}}},
                {"add": {"chain": {"family": "inet", "table": "fwd", "name": "forward",
                 "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}}]}"#;
            masquerade::nft(&["-j", "-f", "-"], Some(odd), "adding a table").unwrap();
            let outcomes = ensure_uplink("ns0").unwrap();
            assert_eq!(outcomes.len(), 2, "{outcomes:?}");
            assert!(
                outcomes.iter().all(|(_, r)| matches!(r, Ok(2))),
                "{outcomes:?}"
            );
            assert_eq!(remove_uplink_rules().unwrap(), 4);
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
