//! The two questions the hook asks netstackd directly, each within the hook's time budget:
//! what is attached (`list`), and `detach` for a rollback. Attach and release themselves go
//! through the CNI plugin's `cmd_add`/`cmd_del`.

use std::path::Path;
use std::time::Duration;

use netstack_core::control::{
    AttachmentKey, Client, ClientError, FramingError, PodInfo, Reply, Request,
};

use crate::error::HookError;

/// One call, the failure described for the error line.
fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, HookError> {
    Client::connect(socket, timeout)
        .and_then(|mut c| c.call(request, &[]))
        .map_err(|e| match e {
            ClientError::Transport {
                source: FramingError::Io(io),
                ..
            } if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
            {
                HookError::Daemon(format!(
                    "netstackd at {} did not answer within {} ms",
                    socket.display(),
                    timeout.as_millis()
                ))
            }
            other => HookError::Daemon(other.to_string()),
        })
}

/// Every attachment netstackd holds, with its netns and mode (`list`: it needs no answer
/// from the dataplane, and has the pods whose restore failed too, which DEL releases).
pub fn attachments(socket: &Path, timeout: Duration) -> Result<Vec<PodInfo>, HookError> {
    match call(socket, &Request::List, timeout)? {
        Reply::List { pods } => Ok(pods),
        Reply::Error { message, .. } => Err(HookError::Daemon(format!(
            "netstackd refused list: {message}"
        ))),
        other => Err(HookError::Daemon(format!(
            "unexpected list reply from netstackd: {other:?}"
        ))),
    }
}

/// Detaches `key` (a no-op when it is not attached).
pub fn detach(socket: &Path, key: &AttachmentKey, timeout: Duration) -> Result<(), HookError> {
    match call(socket, &Request::Detach(key.clone()), timeout)? {
        Reply::Done => Ok(()),
        other => Err(HookError::Daemon(format!(
            "netstackd detach {key}: {other:?}"
        ))),
    }
}
