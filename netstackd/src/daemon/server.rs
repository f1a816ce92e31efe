//! The control socket: created 0600 and renamed into place only when the daemon is ready,
//! root-only (SO_PEERCRED), one thread per connection, bounded requests.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

use crate::control::{recv_message, send_message, FramingError, Reply, Request};
use crate::sys::fdpass::peer_credentials;

use super::Registry;

/// A client idle this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts later, so they
/// can be taken synchronously by [`wait_for_termination`].
pub fn block_termination_signals() -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().context("blocking termination signals")?;
    Ok(set)
}

/// Waits for one of the blocked signals.
pub fn wait_for_termination(set: &SigSet) -> Signal {
    loop {
        if let Ok(sig) = set.wait() {
            return sig;
        }
    }
}

/// Binds the control socket: bound under a temporary name, made 0600, then renamed to
/// `path`, so the socket appears with its final permissions when the daemon is ready.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path
        .parent()
        .with_context(|| format!("socket path {} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving the socket to {}", path.display()))?;
    Ok(listener)
}

/// Accepts connections on a background thread, one thread per connection.
pub fn spawn_accept_loop(listener: UnixListener, registry: Arc<Registry>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let registry = Arc::clone(&registry);
                        let spawned = std::thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || serve_connection(stream, &registry));
                        if let Err(e) = spawned {
                            tracing::warn!("cannot start a control thread: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("accept on the control socket: {e}"),
                }
            }
        })
        .context("starting the control thread")?;
    Ok(())
}

fn reply(stream: &UnixStream, reply: &Reply) -> bool {
    reply_with_fds(stream, reply, &[])
}

fn reply_with_fds(stream: &UnixStream, reply: &Reply, fds: &[std::os::fd::OwnedFd]) -> bool {
    use std::os::fd::AsFd;
    let fds: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    match serde_json::to_vec(reply) {
        Ok(body) => send_message(stream, &body, &fds).is_ok(),
        Err(_) => false,
    }
}

fn serve_connection(stream: UnixStream, registry: &Registry) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    match peer_credentials(&stream) {
        Ok((_, 0, _)) => {}
        Ok((pid, uid, _)) => {
            tracing::warn!(
                pid,
                uid,
                "refused a control connection from a non-root user"
            );
            reply(
                &stream,
                &Reply::Error {
                    message: format!("permission denied: uid {uid} is not root"),
                },
            );
            // Let the peer read the refusal: stop writing, discard what it sent (bounded).
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = std::io::copy(
                &mut std::io::Read::take(&stream, 1 << 16),
                &mut std::io::sink(),
            );
            return;
        }
        Err(e) => {
            tracing::warn!("cannot read the peer's credentials: {e}");
            return;
        }
    }
    loop {
        let (body, fds) = match recv_message(&stream) {
            Ok(m) => m,
            Err(FramingError::Closed) => return,
            Err(e) => {
                // The stream may be mid-message: answer once and hang up.
                reply(
                    &stream,
                    &Reply::Error {
                        message: format!("malformed request: {e}"),
                    },
                );
                return;
            }
        };
        let (answer, out_fds) = match serde_json::from_slice::<Request>(&body) {
            Ok(request) => {
                tracing::debug!(?request, fds = fds.len(), "control request");
                registry.handle(request, fds)
            }
            // The descriptors of a request we cannot read are closed here.
            Err(e) => (
                Reply::Error {
                    message: format!("malformed request: {e}"),
                },
                Vec::new(),
            ),
        };
        if !reply_with_fds(&stream, &answer, &out_fds) {
            return;
        }
    }
}
