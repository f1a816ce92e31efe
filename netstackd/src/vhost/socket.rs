//! A pod's vhost-user server socket and the connection a frontend makes to it.
//!
//! The socket is bound under a temporary name, given its mode (0600 unless the pod's
//! attachment names another) and group, and renamed into place, so it never exists with
//! other permissions, and a stale socket a previous netstackd left at the path is replaced;
//! a file of another type at the path is left alone and the bind refused.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::socket::{recv, MsgFlags};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{BackendReqHandler, VhostUserBackendReqHandlerMut};

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

    /// Removes the socket's path (the listener closes when dropped).
    pub fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
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
/// A vhost-user message header: request, flags, payload size (each a little-endian u32).
const HDR_LEN: usize = 12;
/// `SET_VRING_ENABLE`'s payload: the ring index and 0 or 1 (each a little-endian u32).
const VRING_STATE_LEN: usize = 8;

impl Connection {
    /// Consumes a `SET_VRING_ENABLE` that comes before `SET_FEATURES` has acked
    /// `VHOST_USER_F_PROTOCOL_FEATURES`, and returns whether it did. QEMU's vhost-user-net
    /// (7.2) sends one when the guest driver sets its features, before it starts the device
    /// and sends `SET_FEATURES`; the `vhost` crate would end the connection on it
    /// (`InactiveFeature`). The device records it as it would later (a `SET_FEATURES` with the
    /// protocol features keeps each ring's enable) and the result is acked (0 done, 1 refused)
    /// when the frontend asked for a reply and REPLY_ACK is negotiated. Once the features are
    /// acked it reads nothing.
    fn early_vring_enable(&mut self) -> Result<bool, VhostError> {
        let acked = self.device().features() & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if acked != 0 {
            return Ok(false);
        }
        let err = |e: io::Error| VhostError::Connection {
            pod: self.pod.clone(),
            source: vhost::vhost_user::Error::SocketError(e),
        };
        let mut hdr = [0u8; HDR_LEN];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_WAITALL;
        let n = recv(self.peer.as_raw_fd(), &mut hdr, flags).map_err(|e| err(e.into()))?;
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        // A short header (the frontend left) is the crate's to report.
        if n < HDR_LEN
            || word(0) != SET_VRING_ENABLE
            || u32::try_from(VRING_STATE_LEN) != Ok(word(8))
        {
            return Ok(false);
        }
        let mut msg = [0u8; HDR_LEN + VRING_STATE_LEN];
        (&self.peer).read_exact(&mut msg).map_err(err)?;
        let index = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]);
        let num = u32::from_le_bytes([msg[16], msg[17], msg[18], msg[19]]);
        // Neither 0 nor 1 is refused, as the crate refuses it.
        let done = num <= 1 && self.device().set_vring_enable(index, num == 1).is_ok();
        let reply_ack =
            self.device().protocol_features() & VhostUserProtocolFeatures::REPLY_ACK.bits();
        if reply_ack != 0 && word(4) & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
            let mut reply = [0u8; HDR_LEN + 8];
            reply[HDR_LEN] = u8::from(!done);
            let reply_flags = VhostUserHeaderFlag::REPLY.bits() | 0x1; // version 1
            reply[0..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
            reply[4..8].copy_from_slice(&reply_flags.to_le_bytes());
            reply[8..12].copy_from_slice(&8u32.to_le_bytes());
            (&self.peer).write_all(&reply).map_err(err)?;
        }
        Ok(true)
    }

    /// Reads and handles one request (blocking until it has arrived whole). An error means the
    /// connection is over: the frontend left or sent something the protocol cannot parse.
    pub fn handle_request(&mut self) -> Result<Handled, VhostError> {
        if self.early_vring_enable()? {
            return Ok(Handled::Done);
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
