//! A pod's vhost-user server socket and the connection a frontend makes to it.
//!
//! The socket is bound under a temporary name, given its mode (0600 unless the pod's
//! attachment names another) and group, and renamed into place, so it never exists with
//! other permissions, and a stale socket a previous netstackd left at the path is replaced;
//! a file of another type at the path is left alone and the bind refused.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::BackendReqHandler;

use super::backend::NetBackend;
use super::VhostError;

/// A pod's listening vhost-user socket.
#[derive(Debug)]
pub struct VhostSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl VhostSocket {
    /// Creates the socket `name` in `dir` (created if missing), mode 0600, replacing a stale
    /// socket of that name.
    pub fn bind(dir: &Path, name: &str) -> Result<Self, VhostError> {
        Self::bind_with(dir, name, 0o600, None)
    }

    /// Creates the socket `name` in `dir` (created if missing) with permission bits `mode`
    /// and, when given, group `gid` (the owner stays netstackd's uid), replacing a stale
    /// socket of that name.
    pub fn bind_with(
        dir: &Path,
        name: &str,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Self, VhostError> {
        let path = dir.join(name);
        let err = |source: io::Error| VhostError::Socket {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_socket() => return Err(VhostError::NotASocket { path }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))
            .and_then(|()| match gid {
                Some(gid) => std::os::unix::fs::lchown(&tmp, None, Some(gid)),
                None => Ok(()),
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(VhostSocket { path, listener })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a frontend and returns its connection, serving a fresh device of
    /// `queue_pairs` queue pairs for pod `pod`.
    pub fn accept(&self, pod: &str, queue_pairs: usize) -> Result<Connection, VhostError> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|source| VhostError::Socket {
                path: self.path.clone(),
                source,
            })?;
        let device = Arc::new(Mutex::new(NetBackend::new(pod, queue_pairs)));
        let peer = stream.try_clone().map_err(|source| VhostError::Socket {
            path: self.path.clone(),
            source,
        })?;
        Ok(Connection {
            pod: pod.to_string(),
            peer,
            handler: BackendReqHandler::from_stream(stream, Arc::clone(&device)),
            device,
        })
    }

    /// A duplicate of the listening socket, for [`shutdown_listener`] from another thread.
    pub fn listener_handle(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.listener.try_clone().map(std::os::fd::OwnedFd::from)
    }

    /// Removes the socket's path (the listener closes when dropped).
    pub fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Shuts the listening socket `listener` (a [`VhostSocket::listener_handle`]) down: an
/// `accept` waiting on it, or made on it later, fails at once (EINVAL). Unlike a connection
/// to the socket's path, this works when the path is gone or is another socket now.
pub fn shutdown_listener(listener: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        .map_err(io::Error::from)
}

/// One frontend's connection and the device state it negotiates.
pub struct Connection {
    pod: String,
    /// A duplicate of the stream, to end the connection from another thread.
    peer: std::os::unix::net::UnixStream,
    handler: BackendReqHandler<Mutex<NetBackend>>,
    device: Arc<Mutex<NetBackend>>,
}

/// What one request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Recorded (or answered).
    Done,
    /// Refused by the device and NACKed; nothing changed and the connection stays.
    Refused,
}

/// `VHOST_USER_SET_VRING_ENABLE`'s request code.
const SET_VRING_ENABLE: u32 = 18;
/// The header flags: the protocol version (1), a reply, the frontend wants a reply.
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

impl Connection {
    /// Takes a SET_VRING_ENABLE that arrives before SET_FEATURES acked `PROTOCOL_FEATURES`,
    /// which the `vhost` crate's handler refuses by ending the connection. QEMU sends exactly
    /// that with `queues` > 1: virtio-net enables the pairs the guest uses and disables the
    /// others (`peer_attach`/`peer_detach`) when the guest writes its features, before
    /// DRIVER_OK makes vhost_net_start send SET_FEATURES. The request is recorded like any
    /// enable (QEMU sends the enables again once the rings are started) and acked when asked.
    /// True when it was one.
    fn early_vring_enable(&mut self) -> io::Result<bool> {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
        let (features, protocol) = {
            let d = self.device();
            (d.features(), d.protocol_features())
        };
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            return Ok(false);
        }
        // The header (request, flags, size) and the vring state (index, num).
        let mut msg = [0u8; 20];
        let n = nix::sys::socket::recv(
            self.peer.as_raw_fd(),
            &mut msg,
            nix::sys::socket::MsgFlags::MSG_PEEK,
        )?;
        let word = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        if n < msg.len() || word(0) != SET_VRING_ENABLE || word(8) != 8 {
            return Ok(false);
        }
        let (flags, index, num) = (word(4), word(12), word(16));
        // The bytes peeked, taken.
        (&self.peer).read_exact(&mut msg)?;
        let done = match num {
            0 | 1 => {
                use vhost::vhost_user::VhostUserBackendReqHandlerMut;
                self.device().set_vring_enable(index, num == 1).is_ok()
            }
            _ => false,
        };
        let reply_ack = protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
        if reply_ack && flags & FLAG_NEED_REPLY != 0 {
            let mut reply = [0u8; 20];
            reply[..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
            reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
            reply[8..12].copy_from_slice(&8u32.to_le_bytes());
            reply[12..].copy_from_slice(&u64::from(!done).to_le_bytes());
            (&self.peer).write_all(&reply)?;
        }
        Ok(true)
    }

    /// Reads and handles one request (blocking until it has arrived whole). An error means the
    /// connection is over: the frontend left or sent something the protocol cannot parse.
    pub fn handle_request(&mut self) -> Result<Handled, VhostError> {
        match self.early_vring_enable() {
            Ok(true) => return Ok(Handled::Done),
            Ok(false) => {}
            Err(e) => {
                return Err(VhostError::Connection {
                    pod: self.pod.clone(),
                    source: vhost::vhost_user::Error::SocketBroken(e),
                })
            }
        }
        let (refused, fatal) = {
            let d = self.device();
            (d.refused(), d.fatal())
        };
        match self.handler.handle_request() {
            Ok(()) => Ok(Handled::Done),
            Err(_) if self.device().refused() > refused && self.device().fatal() == fatal => {
                Ok(Handled::Refused)
            }
            Err(source) => Err(VhostError::Connection {
                pod: self.pod.clone(),
                source,
            }),
        }
    }

    /// Serves requests until the frontend leaves; returns why the connection ended.
    pub fn serve(&mut self) -> VhostError {
        loop {
            if let Err(e) = self.handle_request() {
                return e;
            }
        }
    }

    /// The device state, locked.
    pub fn device(&self) -> MutexGuard<'_, NetBackend> {
        // A panic while the lock was held left the state as it was between two messages.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A duplicate of the connection's stream: shutting it down ends the connection (a
    /// blocked [`handle_request`](Self::handle_request) returns an error).
    pub fn peer(&self) -> io::Result<std::os::unix::net::UnixStream> {
        self.peer.try_clone()
    }

    /// The device state, shared (it outlives the connection).
    pub fn device_arc(&self) -> Arc<Mutex<NetBackend>> {
        Arc::clone(&self.device)
    }
}
