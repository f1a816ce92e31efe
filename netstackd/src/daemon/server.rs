//! The control socket: created 0600 and renamed into place only when the daemon is ready,
//! root-only (SO_PEERCRED), one thread per connection, bounded requests.
//!
//! At most [`MAX_CONNECTIONS`] connections (so threads) are served at once. A client waiting
//! between requests is disconnected after [`IDLE_TIMEOUT`], or as soon as a new client needs
//! its place (the longest idle goes first); when every connection is busy, a new client gets
//! an error reply. A request must arrive in full within [`MESSAGE_DEADLINE`] of its first
//! byte, however slowly its bytes trickle in.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};

use crate::control::version::{decode_request, encode_reply};
use crate::control::{
    recv_message_before, send_message, ErrorKind, FramingError, Reply, BUSY, RETRYABLE,
};
use crate::sys::fdpass::peer_credentials;

use super::Registry;

/// A client idle this long between requests is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Control connections served at once (one thread each).
pub const MAX_CONNECTIONS: usize = 32;

/// Time a request has to arrive in full once its first byte came.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(5);

/// Time a reply may take to be written.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections being served, and which of them wait for a request.
#[derive(Default)]
struct Connections {
    slots: Mutex<BTreeMap<u64, Slot>>,
    next_id: std::sync::atomic::AtomicU64,
}

struct Slot {
    /// A second handle on the connection, to shut it down when evicted.
    stream: UnixStream,
    /// Since when the connection waits for its next request; `None` while one is served.
    idle_since: Option<Instant>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `stream`, evicting the longest idle connection when all are taken.
    /// `None` when every connection is busy. A connection whose request has arrived but not
    /// yet been taken up by its thread (many clients connecting at once: parallel CNI ADDs)
    /// is not idle: it is never evicted.
    fn admit(&self, stream: &UnixStream) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let mut slots = self.lock();
        if slots.len() >= MAX_CONNECTIONS {
            let idlest = slots
                .iter()
                .filter_map(|(id, s)| s.idle_since.map(|t| (t, *id, s)))
                .filter(|(_, _, s)| !readable_within(&s.stream, Duration::ZERO))
                .map(|(t, id, _)| (t, id))
                .min()?
                .1;
            if let Some(evicted) = slots.remove(&idlest) {
                // Its thread sees the end of the stream and leaves.
                let _ = evicted.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slots.insert(
            id,
            Slot {
                stream: handle,
                idle_since: Some(Instant::now()),
            },
        );
        Some(id)
    }

    /// Marks connection `id` idle (waiting for a request) or busy. False if it was evicted.
    fn set_idle(&self, id: u64, idle: bool) -> bool {
        match self.lock().get_mut(&id) {
            Some(slot) => {
                slot.idle_since = idle.then(Instant::now);
                true
            }
            None => false,
        }
    }

    fn release(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Gives a connection's place back when its thread ends.
struct Release<'a>(&'a Connections, u64);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

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

/// Accepts connections on a background thread, one thread per connection, at most
/// [`MAX_CONNECTIONS`] of them.
pub fn spawn_accept_loop(listener: UnixListener, registry: Arc<Registry>) -> anyhow::Result<()> {
    let connections = Arc::new(Connections::default());
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!("accept on the control socket: {e}");
                        // Out of descriptors, most likely: let connections finish.
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let Some(id) = connections.admit(&stream) else {
                    refuse_busy(&stream);
                    continue;
                };
                let registry = Arc::clone(&registry);
                let conns = Arc::clone(&connections);
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        let _release = Release(&conns, id);
                        serve_connection(stream, &registry, &conns, id)
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a control thread: {e}");
                    connections.release(id);
                }
            }
        })
        .context("starting the control thread")?;
    Ok(())
}

/// Tells a client over the connection limit to come back later (the reply fits in the socket
/// buffer: this does not wait on the client).
fn refuse_busy(stream: &UnixStream) {
    tracing::warn!("refused a control connection: {MAX_CONNECTIONS} requests are being served");
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    reply(
        stream,
        &Reply::error(
            ErrorKind::Busy,
            format!(
                "{BUSY}: {MAX_CONNECTIONS} control requests are being served; try again {RETRYABLE}"
            ),
        ),
    );
}

/// Waits until `stream` has something to read (or was closed); false after `timeout`.
fn readable_within(stream: &UnixStream, timeout: Duration) -> bool {
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

fn reply(stream: &UnixStream, reply: &Reply) -> bool {
    reply_with_fds(stream, reply, &[])
}

fn reply_with_fds(stream: &UnixStream, reply: &Reply, fds: &[std::os::fd::OwnedFd]) -> bool {
    use std::os::fd::AsFd;
    let fds: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    match encode_reply(reply) {
        Ok(body) => send_message(stream, &body, &fds).is_ok(),
        Err(_) => false,
    }
}

fn serve_connection(stream: UnixStream, registry: &Registry, conns: &Connections, id: u64) {
    let _ = stream.set_read_timeout(Some(MESSAGE_DEADLINE));
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
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
                &Reply::error(
                    ErrorKind::PermissionDenied,
                    format!("permission denied: uid {uid} is not root"),
                ),
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
        if !conns.set_idle(id, true) || !readable_within(&stream, IDLE_TIMEOUT) {
            return;
        }
        if !conns.set_idle(id, false) {
            return;
        }
        let (body, fds) = match recv_message_before(&stream, Instant::now() + MESSAGE_DEADLINE) {
            Ok(m) => m,
            Err(FramingError::Closed) => return,
            Err(e) => {
                // The stream may be mid-message: answer once and hang up.
                reply(
                    &stream,
                    &Reply::error(ErrorKind::InvalidRequest, format!("malformed request: {e}")),
                );
                return;
            }
        };
        let (answer, out_fds) = match decode_request(&body) {
            Ok((protocol, request)) => {
                tracing::debug!(?request, protocol, fds = fds.len(), "control request");
                let (answer, out_fds) = registry.handle(request, fds);
                (for_protocol(answer, protocol), out_fds)
            }
            // The descriptors of a request we cannot read are closed here.
            Err(e) => {
                tracing::debug!("control request refused: {e}");
                (e.reply(), Vec::new())
            }
        };
        if !reply_with_fds(&stream, &answer, &out_fds) {
            return;
        }
    }
}

/// `reply` as a client of `protocol` can read it: a client before protocol 3 does not know
/// the link mode `vhost-user`, so its `list` leaves VM pods out (it could read none of the
/// list otherwise).
fn for_protocol(reply: Reply, protocol: u32) -> Reply {
    match reply {
        Reply::List { mut pods } if protocol < crate::control::version::PROTOCOL_VHOST_USER => {
            pods.retain(|p| p.mode != crate::control::LinkMode::VhostUser);
            Reply::List { pods }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_client_before_protocol_3_gets_a_list_without_vm_pods_it_can_read() {
        let pod = |id: &str, mode: &str| -> crate::control::PodInfo {
            serde_json::from_value(serde_json::json!({
                "container_id": id, "ifname": "eth0", "netns": "/run/netns/x",
                "mac": "02:00:00:00:00:01", "ips": ["10.244.1.2/24"], "mode": mode,
                "state": "attached", "labels": {},
            }))
            .unwrap()
        };
        let list = Reply::List {
            pods: vec![pod("a", "tap"), pod("vm", "vhost-user"), pod("b", "veth")],
        };
        let Reply::List { pods } = for_protocol(list.clone(), 2) else {
            panic!()
        };
        let ids: Vec<_> = pods.iter().map(|p| p.key.container_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        // A client of protocol 2 reads `mode` as an enum of tap and veth (v0.1.0's LinkMode,
        // which protocol 2 kept): every mode it gets is one it knows; it would not know them all.
        let modes = |reply: &Reply| -> Vec<serde_json::Value> {
            let Reply::List { pods } = reply else {
                panic!()
            };
            pods.iter()
                .map(|p| serde_json::to_value(p.mode).unwrap())
                .collect()
        };
        let reads = |m: &serde_json::Value| {
            serde_json::from_value::<crate::control::v0_1_0::LinkMode>(m.clone()).is_ok()
        };
        assert!(modes(&for_protocol(list.clone(), 2)).iter().all(reads));
        assert!(!modes(&list).iter().all(reads));
        assert_eq!(for_protocol(list.clone(), 3), list);
    }

    #[test]
    fn the_busy_refusal_says_its_kind_and_keeps_the_v0_1_0_message() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        refuse_busy(&ours);
        let (body, _) = crate::control::recv_message(&theirs).unwrap();
        let (_, reply) = crate::control::version::decode_reply(&body).unwrap();
        let Reply::Error { message, kind } = &reply else {
            panic!("not an error: {reply:?}");
        };
        assert_eq!(*kind, Some(ErrorKind::Busy));
        // A v0.1.0 client tells it by its message.
        assert!(
            message.starts_with(BUSY) && message.ends_with(RETRYABLE),
            "{message}"
        );
    }

    #[test]
    fn a_connection_whose_request_is_waiting_is_not_evicted() {
        use std::io::Write;
        let conns = Connections::default();
        let mut peers = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let (ours, theirs) = UnixStream::pair().unwrap();
            ids.push(conns.admit(&ours).unwrap());
            peers.push((ours, theirs));
            std::thread::sleep(Duration::from_millis(1));
        }
        // The oldest has sent its request; its thread has not read it yet.
        (&peers[0].1).write_all(&2u32.to_be_bytes()).unwrap();
        let (extra, _extra_peer) = UnixStream::pair().unwrap();
        assert!(conns.admit(&extra).is_some());
        assert!(
            conns.set_idle(ids[0], false),
            "the one with a request stays"
        );
        assert!(!conns.set_idle(ids[1], true), "the next idlest made room");
    }

    #[test]
    fn a_full_house_evicts_the_longest_idle_and_refuses_when_all_are_busy() {
        let conns = Connections::default();
        let mut peers = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let (ours, theirs) = UnixStream::pair().unwrap();
            ids.push(conns.admit(&ours).unwrap());
            peers.push((ours, theirs));
        }
        // All busy but two; the older of those two goes first.
        for &id in &ids {
            assert!(conns.set_idle(id, false));
        }
        assert!(conns.set_idle(ids[7], true));
        std::thread::sleep(Duration::from_millis(5));
        assert!(conns.set_idle(ids[3], true));
        let (extra, _extra_peer) = UnixStream::pair().unwrap();
        assert!(conns.admit(&extra).is_some());
        assert!(
            !conns.set_idle(ids[7], true),
            "the longest idle was evicted"
        );
        assert!(conns.set_idle(ids[3], true), "the other idle one stays");
        let mut buf = [0u8; 1];
        let mut evicted = &peers[7].0;
        assert_eq!(
            evicted.read(&mut buf).unwrap(),
            0,
            "its stream was shut down"
        );
        // Busy everywhere now: a newcomer is refused, nobody evicted.
        assert!(conns.set_idle(ids[3], false));
        let all: Vec<u64> = conns.lock().keys().copied().collect();
        for id in all {
            conns.set_idle(id, false);
        }
        let (late, _late_peer) = UnixStream::pair().unwrap();
        assert_eq!(conns.admit(&late), None);
        assert_eq!(conns.lock().len(), MAX_CONNECTIONS);
        conns.release(ids[0]);
        assert!(
            conns.admit(&late).is_some(),
            "a released place is free again"
        );
    }
}
