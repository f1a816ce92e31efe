//! `netstack`: the CNI plugin binary. Logs go to stderr; stdout carries exactly one JSON
//! object (a result, a version reply, or an error). The library runs the CNI protocol
//! (`skel`); this file dispatches each command to the module that carries it out.
#![forbid(unsafe_code)]

use netstack_cni::config::NetConf;
use netstack_cni::skel::{CniEnv, Command};
use netstack_cni::{add, check, del, gc, status, CniError};

fn main() -> std::process::ExitCode {
    netstack_cni::skel::run(dispatch)
}

/// Runs one command; returns what to print on success.
fn dispatch(
    env: &CniEnv,
    conf: &NetConf,
    stdin: &[u8],
) -> Result<Option<serde_json::Value>, CniError> {
    match env.command {
        Command::Add => add::cmd_add(env, conf, stdin).map(Some),
        Command::Del => del::cmd_del(env, conf, stdin).map(|()| None),
        Command::Check => check::cmd_check(env, conf, stdin).map(|()| None),
        Command::Status => status::cmd_status(env, conf, stdin).map(|()| None),
        Command::Gc => gc::cmd_gc(env, conf, stdin).map(|()| None),
        // skel answers VERSION itself, before a config is read.
        Command::Version => Ok(None),
    }
}
