//! The client side of the control protocol, used by the CNI plugin and tools.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::version::{decode_reply, encode_request, ReplyError};
use super::{recv_message, send_message, FramingError, Reply, Request};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// netstackd is not listening (not started, restarting, or the path is wrong).
    #[error("netstackd is not reachable at {path}: {source}")]
    Unreachable {
        /// The socket path tried.
        path: PathBuf,
        /// Why the connect failed.
        source: std::io::Error,
    },
    /// The exchange broke off (timeout, daemon died mid-request).
    #[error("talking to netstackd at {path}: {source}")]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: FramingError,
    },
    /// The request could not be encoded, or the daemon's reply was not valid protocol JSON.
    #[error("undecodable reply from netstackd: {0}")]
    Decode(#[from] serde_json::Error),
    /// The daemon speaks a newer protocol and its reply is not one this build knows.
    #[error("{0}")]
    Newer(ReplyError),
}

impl From<ReplyError> for ClientError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Invalid(e) => ClientError::Decode(e),
            newer @ ReplyError::Newer { .. } => ClientError::Newer(newer),
        }
    }
}

/// A connection to netstackd.
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    /// The protocol of the daemon's last reply (`None` before the first).
    peer_protocol: Option<u32>,
}

impl Client {
    /// Connects to the socket at `path`; every later call times out after `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
        let unreachable = |source| ClientError::Unreachable {
            path: path.to_owned(),
            source,
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(unreachable)?;
        Ok(Client {
            stream,
            path: path.to_owned(),
            peer_protocol: None,
        })
    }

    /// The control protocol the daemon said it speaks in its last reply (1 for netstack
    /// v0.1.0, which says none); `None` until a reply was read.
    pub fn peer_protocol(&self) -> Option<u32> {
        self.peer_protocol
    }

    /// Sends `request` with `fds` attached and waits for the reply.
    pub fn call(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, ClientError> {
        self.call_with_fds(request, fds).map(|(reply, _)| reply)
    }

    /// Like [`Client::call`], and also returns the descriptors sent with the reply.
    pub fn call_with_fds(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ClientError> {
        let body = encode_request(request)?;
        let transport = |source| ClientError::Transport {
            path: self.path.clone(),
            source,
        };
        send_message(&self.stream, &body, fds).map_err(transport)?;
        let (reply, fds) = recv_message(&self.stream).map_err(transport)?;
        match decode_reply(&reply) {
            Ok((protocol, reply)) => {
                self.peer_protocol = Some(protocol);
                Ok((reply, fds))
            }
            Err(e) => {
                if let ReplyError::Newer { protocol, .. } = &e {
                    self.peer_protocol = Some(*protocol);
                }
                Err(e.into())
            }
        }
    }
}
