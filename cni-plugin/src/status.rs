//! CNI STATUS (1.1.0): can this plugin serve ADD right now? The runtime turns a failure into
//! `NetworkReady=false`, which makes the node NotReady, so the answer is chosen with care:
//!
//! - netstackd does not answer: code **51** ("not available, existing containers may have
//!   limited connectivity"). netstackd forwards every pod's traffic; while it is down the
//!   pods' TAPs persist but nothing moves, so the honest answer is 51, not 50.
//! - netstackd answers but the IPAM plugin does not: code **50** (the pods that exist are
//!   served; only new ones cannot get addresses).
//!
//! A netstackd restart (upgrade, crash and restart by its supervisor) removes the socket for
//! the time the restart takes. STATUS therefore keeps trying the socket for `statusWaitMs`
//! (10 s by default), longer than a restart, before it reports 51: a restart never flips the
//! node NotReady, a daemon that stays down does within that bound.

use std::thread::sleep;
use std::time::{Duration, Instant};

use netstack_core::control::{Client, ClientError, Reply, Request};

use crate::config::NetConf;
use crate::daemon::CONTROL_TIMEOUT;
use crate::skel::CniEnv;
use crate::{ipam, CniError};

/// Pause between two attempts to reach netstackd.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Asks netstackd for its status, retrying while its socket is absent or refuses connections
/// until `wait` has passed.
pub fn daemon_ready(conf: &NetConf, wait: Duration) -> Result<(), CniError> {
    let socket = conf.socket();
    let deadline = Instant::now() + wait;
    loop {
        let attempt = Client::connect(&socket, CONTROL_TIMEOUT.min(wait.max(RETRY_EVERY)))
            .and_then(|mut c| c.call(&Request::Status, &[]));
        let retryable = match attempt {
            Ok(Reply::Status(s)) if s.workers > 0 => return Ok(()),
            Ok(other) => {
                return Err(CniError::NotAvailableLimited(format!(
                    "netstackd at {} answered status with {other:?}",
                    socket.display()
                )))
            }
            Err(e @ ClientError::Unreachable { .. }) | Err(e @ ClientError::Transport { .. }) => e,
            Err(e) => {
                return Err(CniError::NotAvailableLimited(format!(
                    "netstackd at {}: {e}",
                    socket.display()
                )))
            }
        };
        if Instant::now() + RETRY_EVERY > deadline {
            return Err(CniError::NotAvailableLimited(format!(
                "{retryable} (waited {} ms); pods on this node have no forwarding until it is back",
                wait.as_millis()
            )));
        }
        sleep(RETRY_EVERY);
    }
}

/// STATUS.
pub fn cmd_status(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    daemon_ready(conf, conf.status_wait())?;
    let Some(ipam_conf) = &conf.ipam else {
        return Err(CniError::InvalidConfig(
            "an ipam section is required".into(),
        ));
    };
    ipam::status(env, &ipam_conf.plugin_type, stdin).map_err(|e| match e {
        CniError::InvalidConfig(msg) => CniError::NotAvailable(msg),
        other => CniError::NotAvailable(format!("IPAM plugin {}: {other}", ipam_conf.plugin_type)),
    })
}
