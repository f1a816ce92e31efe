//! The supervisor's thread for one VM pod: it accepts a frontend on the pod's socket, serves
//! its requests, and keeps the dataplane in step with what the frontend negotiated.
//!
//! Once queue pair 0 is complete and enabled, the device is handed to the dataplane
//! ([`DeviceSink::attach`]) with every pair that is (see `NetBackend::ready_pairs` for why
//! this is what QEMU's sequence calls for), and handed over again whenever that set changes
//! (a pair enabled or disabled later); before any request that stops or changes a served ring
//! (`GET_VRING_BASE`, a new memory table, a reset, new ring parameters or kick eventfd, a
//! disable) and when the frontend leaves, the pod is taken away from it first
//! ([`DeviceSink::detach`]), so the dataplane never touches memory or rings the frontend has
//! taken back. After a change the device is handed over again as soon as it is complete,
//! each ring resuming at the used index in guest memory. A new call eventfd on a served ring
//! (QEMU sends one whenever the guest changes its interrupt vectors) takes nothing away: it
//! is handed over alone ([`DeviceSink::set_call`]), and frames keep flowing. A frontend that leaves may connect again; the socket stays until
//! [`VhostServer::stop`].

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dataplane::PodSpec;

use super::attach::VhostAttach;
use super::socket::VhostSocket;

/// Where the device goes: the dataplane (through the supervisor), or a test's recorder.
pub trait DeviceSink: Send + Sync + 'static {
    /// Serve pod `spec` over `device`, whose fds are `fds`.
    fn attach(&self, spec: &PodSpec, device: VhostAttach, fds: Vec<OwnedFd>) -> Result<(), String>;
    /// Stop serving pod `id`; returns once the dataplane no longer touches its rings.
    fn detach(&self, id: u64);

    /// Vring `vring` of pod `id`, being served, has the call eventfd `call` now: hand it over
    /// without taking the rings away. An error (the default) makes the server take the device
    /// away and hand it over again instead.
    fn set_call(&self, id: u64, vring: usize, call: Option<OwnedFd>) -> Result<(), String> {
        let _ = (id, vring, call);
        Err("new call eventfds are not handed over".into())
    }
}

/// A pod's socket and the thread that serves it.
pub struct VhostServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    peer: Arc<Mutex<Option<UnixStream>>>,
    /// A duplicate of the listening socket: shut down to end a waiting `accept`.
    listener: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl VhostServer {
    /// Serves `sock` for pod `spec` with a device of `pairs` queue pairs, handing it to `sink`.
    pub fn start(
        sock: VhostSocket,
        spec: PodSpec,
        pairs: usize,
        sink: Arc<dyn DeviceSink>,
    ) -> std::io::Result<Self> {
        let path = sock.path().to_path_buf();
        let listener = sock.listener_handle()?;
        let stop = Arc::new(AtomicBool::new(false));
        let peer = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, peer) = (Arc::clone(&stop), Arc::clone(&peer));
            std::thread::Builder::new()
                .name(format!("vhost-{}", spec.id))
                .spawn(move || run(sock, spec, pairs, sink, stop, peer))?
        };
        Ok(VhostServer {
            path,
            stop,
            peer,
            listener,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends the connection (the pod is taken away from the dataplane), closes and removes the
    /// socket. Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        if let Some(p) = lock(&self.peer).as_ref() {
            let _ = p.shutdown(std::net::Shutdown::Both);
        }
        // Ends an accept that is waiting, or the next one (the thread sees `stop` and leaves),
        // even when the socket's path was removed or replaced meanwhile.
        if let Err(e) = super::socket::shutdown_listener(&self.listener) {
            tracing::warn!(path = %self.path.display(), "shutting the vhost-user socket down: {e}");
        }
        let _ = thread.join();
    }
}

impl Drop for VhostServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands the dataplane the call eventfds the frontend changed on served rings; false when
/// one could not be (the device must then be handed over anew).
fn hand_over_calls(
    conn: &super::socket::Connection,
    sink: &dyn DeviceSink,
    spec: &PodSpec,
) -> bool {
    let changes = match conn.device().take_call_changes() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(container_id = %spec.container_id, "duplicating a call eventfd: {e}");
            return false;
        }
    };
    for (vring, call) in changes {
        if let Err(e) = sink.set_call(spec.id, vring, call) {
            tracing::info!(
                container_id = %spec.container_id,
                vring,
                "a new call eventfd goes with a new handover: {e}"
            );
            return false;
        }
    }
    true
}

fn run(
    sock: VhostSocket,
    spec: PodSpec,
    pairs: usize,
    sink: Arc<dyn DeviceSink>,
    stop: Arc<AtomicBool>,
    peer: Arc<Mutex<Option<UnixStream>>>,
) {
    let pod = spec.container_id.clone();
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match sock.accept(&pod, pairs) {
            Ok(c) => c,
            Err(e) => {
                if !stop.load(Ordering::SeqCst) {
                    tracing::warn!(container_id = %pod, "{e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        match conn.peer() {
            Ok(p) => *lock(&peer) = Some(p),
            Err(e) => tracing::warn!(container_id = %pod, "vhost-user connection: {e}"),
        }
        // Checked after the peer is published: a stop from now on shuts it down.
        if stop.load(Ordering::SeqCst) {
            break;
        }
        tracing::info!(container_id = %pod, "vhost-user frontend connected");
        let attached = Arc::new(AtomicBool::new(false));
        {
            let (attached, sink, id) = (Arc::clone(&attached), Arc::clone(&sink), spec.id);
            conn.device().set_stop_hook(Box::new(move || {
                if attached.swap(false, Ordering::SeqCst) {
                    sink.detach(id);
                }
            }));
        }
        // The pairs the dataplane serves while `attached`.
        let mut served: Vec<usize> = Vec::new();
        let end = loop {
            if let Err(e) = conn.handle_request() {
                break e;
            }
            if attached.load(Ordering::SeqCst) {
                // A pair enabled later (the guest's VQ_PAIRS_SET) changes what is served:
                // the device is taken away and handed over again with it. A new call
                // eventfd alone is handed over with the rings kept.
                if conn.device().ready_pairs(pairs) == served
                    && hand_over_calls(&conn, &*sink, &spec)
                {
                    continue;
                }
                if attached.swap(false, Ordering::SeqCst) {
                    sink.detach(spec.id);
                }
            }
            let state = conn.device().attach_state(pairs);
            match state {
                None => {}
                Some(Err(e)) => {
                    tracing::warn!(container_id = %pod, "duplicating the device's fds: {e}")
                }
                Some(Ok((device, fds))) => {
                    let set: Vec<usize> = device.pairs.iter().map(|p| p.index).collect();
                    match sink.attach(&spec, device, fds) {
                        Ok(()) => {
                            attached.store(true, Ordering::SeqCst);
                            conn.device().mark_attached(&set);
                            tracing::info!(
                                container_id = %pod,
                                pairs = set.len(),
                                "vhost-user device served"
                            );
                            served = set;
                        }
                        Err(e) => tracing::warn!(
                            container_id = %pod,
                            "the dataplane refused the vhost-user device: {e}"
                        ),
                    }
                }
            }
        };
        if attached.swap(false, Ordering::SeqCst) {
            sink.detach(spec.id);
        }
        *lock(&peer) = None;
        tracing::info!(container_id = %pod, "vhost-user frontend gone: {end}");
    }
    let _ = sock.remove();
}
