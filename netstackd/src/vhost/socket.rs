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

impl Connection {
    /// Reads and handles one request (blocking until it has arrived whole). An error means the
    /// connection is over: the frontend left or sent something the protocol cannot parse.
    pub fn handle_request(&mut self) -> Result<Handled, VhostError> {
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
