//! The client side of the control protocol, used by the CNI plugin and tools.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{recv_message, send_message, FramingError, Reply, Request, BUSY};

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
    /// The daemon's reply was not valid protocol JSON.
    #[error("undecodable reply from netstackd: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A connection to netstackd.
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
}

/// First pause before sending a request again that a busy daemon refused; doubled each time
/// up to [`BUSY_PAUSE_MAX`], for at most the client's timeout in all.
const BUSY_PAUSE: Duration = Duration::from_millis(5);
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(200);

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
            timeout,
        })
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
    ///
    /// A daemon that refuses the connection as busy (every place taken by a request in
    /// progress: [`BUSY`]) has read nothing from it, so the request goes again on a new
    /// connection after a short pause, until the client's timeout has passed; then the busy
    /// reply is returned (it ends in `RETRYABLE`).
    pub fn call_with_fds(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ClientError> {
        let body = serde_json::to_vec(request)?;
        let started = Instant::now();
        let mut pause = BUSY_PAUSE;
        loop {
            let (reply, fds_back) = self.exchange(&body, fds)?;
            let reply: Reply = serde_json::from_slice(&reply)?;
            let busy = matches!(&reply, Reply::Error { message } if message.starts_with(BUSY));
            if !busy || started.elapsed() + pause >= self.timeout {
                return Ok((reply, fds_back));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(BUSY_PAUSE_MAX);
            *self = Client::connect(&self.path, self.timeout)?;
        }
    }

    /// One request and its reply, as bytes. A send that fails because the daemon already
    /// closed the connection still reads the reply it may have left (a busy refusal is written
    /// before the request is read).
    fn exchange(
        &mut self,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>), ClientError> {
        let transport = |source| ClientError::Transport {
            path: self.path.clone(),
            source,
        };
        let sent = send_message(&self.stream, body, fds);
        let closed_by_peer = |e: &FramingError| {
            matches!(e, FramingError::Io(io) if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ))
        };
        if let Err(e) = sent {
            if !closed_by_peer(&e) {
                return Err(transport(e));
            }
            return recv_message(&self.stream).map_err(|_| transport(e));
        }
        recv_message(&self.stream).map_err(transport)
    }
}
