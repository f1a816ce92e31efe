//! Delegation to the IPAM plugin named in the config: looked up in CNI_PATH, run with the
//! same environment and the same stdin (the CNI convention, `pkg/ipam` in Go).
//!
//! Version negotiation: a config at a version the IPAM plugin does not speak (Debian's
//! host-local stops at 1.0.0, our conflist offers 1.1.0) is handed to it at the highest
//! version both speak that is not newer than the config's; only `cniVersion` is rewritten.
//! STATUS and GC, which only 1.1.0 plugins know, are forwarded only to plugins that speak it.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use crate::config::parse_version;
use crate::result::IpamResult;
use crate::skel::CniEnv;
use crate::{CniError, SUPPORTED_VERSIONS};

/// Finds `plugin` in the CNI_PATH directories.
pub fn find_plugin(env: &CniEnv, plugin: &str) -> Result<PathBuf, CniError> {
    env.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::InvalidConfig(format!(
                "IPAM plugin {plugin:?} not found in CNI_PATH ({})",
                env.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })
}

/// Runs `plugin` with `CNI_COMMAND=command` and the variables in `overrides` set (an empty
/// value removes the variable); returns its stdout on success.
fn exec(
    env: &CniEnv,
    plugin: &str,
    command: &str,
    stdin: &[u8],
    overrides: &[(&str, &str)],
) -> Result<Vec<u8>, CniError> {
    let path = find_plugin(env, plugin)?;
    let mut process = Process::new(&path);
    process.env("CNI_COMMAND", command);
    for (k, v) in overrides {
        if v.is_empty() {
            process.env_remove(k);
        } else {
            process.env(k, v);
        }
    }
    if std::env::var_os("CNI_PATH").is_none() {
        // GC and STATUS callers always set it; a library caller may not have.
        process.env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        );
    }
    let mut child = process
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::Setup(format!("running IPAM plugin {}: {e}", path.display())))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading stdin is reported by its exit status below.
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::Setup(format!("waiting for IPAM plugin {plugin}: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    #[derive(serde::Deserialize)]
    struct Err {
        code: Option<u32>,
        msg: Option<String>,
        details: Option<String>,
    }
    let parsed: Option<Err> = serde_json::from_slice(&out.stdout).ok();
    let (code, msg, details) = match parsed {
        Some(e) => (
            e.code.unwrap_or(999),
            e.msg.unwrap_or_default(),
            e.details.unwrap_or_default(),
        ),
        None => (
            999,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::new(),
        ),
    };
    Err(CniError::Delegate {
        code,
        msg: format!("IPAM plugin {plugin} failed ({command}): {msg}"),
        details,
    })
}

/// The versions `plugin` reports in answer to VERSION.
pub fn supported_versions(env: &CniEnv, plugin: &str) -> Result<Vec<String>, CniError> {
    let out = exec(env, plugin, "VERSION", br#"{"cniVersion":"1.0.0"}"#, &[])?;
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(rename = "supportedVersions")]
        supported_versions: Vec<String>,
    }
    serde_json::from_slice::<Reply>(&out)
        .map(|r| r.supported_versions)
        .map_err(|e| CniError::Decode(format!("VERSION reply of IPAM plugin {plugin}: {e}")))
}

/// The version to speak to a plugin supporting `theirs` about a config at `conf_version`:
/// the config's own when they speak it, else the newest both sides implement that is older.
pub fn negotiate(conf_version: &str, theirs: &[String]) -> Option<String> {
    if theirs.iter().any(|v| v == conf_version) {
        return Some(conf_version.to_owned());
    }
    let limit = parse_version(conf_version)?;
    SUPPORTED_VERSIONS
        .iter()
        .filter(|v| theirs.iter().any(|t| t == *v))
        .filter_map(|v| parse_version(v).map(|p| (p, *v)))
        .filter(|(p, _)| *p <= limit)
        .max()
        .map(|(_, v)| v.to_owned())
}

/// `stdin` as `plugin` can take it: unchanged for configs up to 1.0.0 (every IPAM plugin of
/// the last years speaks those), otherwise with `cniVersion` lowered as [`negotiate`] says.
fn stdin_for<'a>(env: &CniEnv, plugin: &str, stdin: &'a [u8]) -> Result<Cow<'a, [u8]>, CniError> {
    let mut conf: serde_json::Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::Decode(format!("network config on stdin: {e}")))?;
    let version = conf["cniVersion"].as_str().unwrap_or_default().to_owned();
    if parse_version(&version).is_none_or(|v| v < (1, 1, 0)) {
        return Ok(Cow::Borrowed(stdin));
    }
    let theirs = supported_versions(env, plugin)?;
    let chosen = negotiate(&version, &theirs).ok_or_else(|| {
        CniError::IncompatibleVersion(format!(
            "{version}: IPAM plugin {plugin} supports only {}",
            theirs.join(", ")
        ))
    })?;
    if chosen == version {
        return Ok(Cow::Borrowed(stdin));
    }
    conf["cniVersion"] = chosen.into();
    Ok(Cow::Owned(
        serde_json::to_vec(&conf).expect("a JSON value always serializes"),
    ))
}

/// IPAM ADD: allocates addresses for this (container id, ifname).
pub fn add(env: &CniEnv, plugin: &str, stdin: &[u8]) -> Result<IpamResult, CniError> {
    let out = exec(env, plugin, "ADD", &stdin_for(env, plugin, stdin)?, &[])?;
    let result: IpamResult = serde_json::from_slice(&out)
        .map_err(|e| CniError::Decode(format!("result of IPAM plugin {plugin}: {e}")))?;
    if result.ips.is_empty() {
        return Err(CniError::Setup(format!(
            "IPAM plugin {plugin} returned no IP"
        )));
    }
    Ok(result)
}

/// IPAM DEL: releases what ADD allocated. Succeeds when nothing is allocated.
pub fn del(env: &CniEnv, plugin: &str, stdin: &[u8]) -> Result<(), CniError> {
    exec(env, plugin, "DEL", &stdin_for(env, plugin, stdin)?, &[]).map(drop)
}

/// IPAM DEL for another attachment than the invocation's (GC of a stale attachment).
pub fn del_attachment(
    env: &CniEnv,
    plugin: &str,
    stdin: &[u8],
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let overrides = [
        ("CNI_CONTAINERID", container_id),
        ("CNI_IFNAME", ifname),
        ("CNI_NETNS", ""),
        ("CNI_ARGS", ""),
    ];
    exec(
        env,
        plugin,
        "DEL",
        &stdin_for(env, plugin, stdin)?,
        &overrides,
    )
    .map(drop)
}

/// IPAM CHECK: the plugin verifies its own allocation for this attachment.
pub fn check(env: &CniEnv, plugin: &str, stdin: &[u8]) -> Result<(), CniError> {
    exec(env, plugin, "CHECK", &stdin_for(env, plugin, stdin)?, &[]).map(drop)
}

/// Does `plugin` implement STATUS and GC (does it speak 1.1.0)?
pub fn speaks_1_1(env: &CniEnv, plugin: &str) -> Result<bool, CniError> {
    Ok(supported_versions(env, plugin)?
        .iter()
        .any(|v| parse_version(v).is_some_and(|p| p >= (1, 1, 0))))
}

/// IPAM STATUS for plugins that implement it; for older ones, that the plugin is there and
/// answers VERSION (all that can be asked of them).
pub fn status(env: &CniEnv, plugin: &str, stdin: &[u8]) -> Result<(), CniError> {
    if speaks_1_1(env, plugin)? {
        exec(env, plugin, "STATUS", stdin, &[]).map(drop)
    } else {
        Ok(())
    }
}

/// IPAM GC for plugins that implement it. Returns false when the plugin does not (the caller
/// then releases stale allocations one by one with DEL).
pub fn gc(env: &CniEnv, plugin: &str, stdin: &[u8]) -> Result<bool, CniError> {
    if !speaks_1_1(env, plugin)? {
        return Ok(false);
    }
    exec(env, plugin, "GC", stdin, &[]).map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn negotiation_picks_the_newest_common_version_not_above_the_config() {
        // (config version, what the IPAM plugin speaks, expected, what it covers)
        let host_local = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        let table = [
            ("1.1.0", &host_local[..], Some("1.0.0"), "Debian host-local"),
            ("1.0.0", &host_local[..], Some("1.0.0"), "same version"),
            ("0.4.0", &host_local[..], Some("0.4.0"), "old config"),
            ("1.1.0", &["1.1.0"][..], Some("1.1.0"), "a 1.1 plugin"),
            ("1.1.0", &["0.3.1"][..], None, "nothing in common"),
        ];
        for (conf, theirs, want, what) in table {
            assert_eq!(negotiate(conf, &v(theirs)).as_deref(), want, "{what}");
        }
    }
}
