//! Delegation to the IPAM plugin named in the config: looked up in CNI_PATH, run with the
//! same environment and the same stdin (the CNI convention, `pkg/ipam` in Go).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use crate::result::IpamResult;
use crate::skel::CniEnv;
use crate::CniError;

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

/// Runs `plugin` with `CNI_COMMAND=command`; returns its stdout on success.
fn exec(env: &CniEnv, plugin: &str, command: &str, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let path = find_plugin(env, plugin)?;
    let mut child = Process::new(&path)
        .env("CNI_COMMAND", command)
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

/// IPAM ADD: allocates addresses for this (container id, ifname).
pub fn add(env: &CniEnv, plugin: &str, stdin: &[u8]) -> Result<IpamResult, CniError> {
    let out = exec(env, plugin, "ADD", stdin)?;
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
    exec(env, plugin, "DEL", stdin).map(drop)
}
