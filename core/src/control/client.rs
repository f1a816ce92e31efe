//! The client side of the control protocol, used by the CNI plugin and tools.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::version::{decode_reply, encode_request, ReplyError};
use super::{recv_message, send_message, ErrorKind, FramingError, Reply, Request};

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
    timeout: Duration,
    /// The protocol of the daemon's last reply (`None` before the first).
    peer_protocol: Option<u32>,
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
    ///
    /// The request goes again on a new connection, after a short pause and until the
    /// client's timeout has passed, when the daemon surely did not act on it: it refused the
    /// connection as busy (every place taken by a request in progress: [`ErrorKind::Busy`]), or it had
    /// closed the connection before the request could be sent (an idle connection it closed
    /// to make room for another client). When time is up, the busy reply (it ends in
    /// `RETRYABLE`) or the transport error is returned.
    pub fn call_with_fds(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ClientError> {
        let body = encode_request(request)?;
        let started = Instant::now();
        let mut pause = BUSY_PAUSE;
        let timeout = self.timeout;
        let time_left = |pause| started.elapsed() + pause < timeout;
        loop {
            match self.exchange(&body, fds)? {
                Exchange::Reply(reply, fds_back) => {
                    let reply = self.decode(&reply)?;
                    let busy = reply.error_kind() == Some(ErrorKind::Busy);
                    if !busy || !time_left(pause) {
                        return Ok((reply, fds_back));
                    }
                }
                Exchange::NotSent(e) if !time_left(pause) => return Err(e),
                Exchange::NotSent(_) => {}
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(BUSY_PAUSE_MAX);
            *self = Client::connect(&self.path, self.timeout)?;
        }
    }

    /// One request and its reply, as bytes. A send that fails because the daemon had already
    /// closed the connection still reads the reply it may have left there (a busy refusal is
    /// written before anything is read); without one, the request was never delivered.
    fn exchange(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Exchange, ClientError> {
        let transport = |source| ClientError::Transport {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = send_message(&self.stream, body, fds) {
            let closed_by_peer = matches!(&e, FramingError::Io(io) if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ));
            if !closed_by_peer {
                return Err(transport(e));
            }
            return Ok(match recv_message(&self.stream) {
                Ok((reply, fds)) => Exchange::Reply(reply, fds),
                Err(_) => Exchange::NotSent(transport(e)),
            });
        }
        let (reply, fds) = recv_message(&self.stream).map_err(transport)?;
        Ok(Exchange::Reply(reply, fds))
    }

    /// Decodes a reply body, noting the daemon's protocol.
    fn decode(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        match decode_reply(body) {
            Ok((protocol, reply)) => {
                self.peer_protocol = Some(protocol);
                Ok(reply)
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

/// How one exchange ended.
enum Exchange {
    /// The daemon answered (the body, and any descriptors).
    Reply(Vec<u8>, Vec<std::os::fd::OwnedFd>),
    /// The daemon had closed the connection before the request could be sent: it never saw it.
    NotSent(ClientError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BUSY, RETRYABLE};
    use std::os::unix::net::UnixListener;

    /// A directory removed when dropped.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The busy refusal as a v0.1.0 daemon sends it: no kind, the message says it.
    fn busy_reply() -> Reply {
        Reply::Error {
            message: format!("{BUSY}: try again {RETRYABLE}"),
            kind: None,
        }
    }

    /// A daemon on a socket in a fresh directory: its first `refusals` connections are turned
    /// away (with `refusal`, or closed unread), the next one gets `Done`. Returns the path
    /// and the thread, which yields how many requests it read.
    fn daemon(
        refusal: Option<Reply>,
        refusals: usize,
    ) -> (Dir, PathBuf, std::thread::JoinHandle<usize>) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ns-client-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.sock");
        let dir = Dir(dir);
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let mut read = 0;
            for i in 0..=refusals {
                let (s, _) = listener.accept().unwrap();
                if i < refusals {
                    if let Some(msg) = &refusal {
                        let _ = send_message(&s, &serde_json::to_vec(msg).unwrap(), &[]);
                    }
                    continue; // closed without reading
                }
                let _ = recv_message(&s).unwrap();
                read += 1;
                send_message(&s, &serde_json::to_vec(&Reply::Done).unwrap(), &[]).unwrap();
            }
            read
        });
        (dir, path, t)
    }

    #[test]
    fn a_busy_refusal_is_retried_on_a_new_connection() {
        let (_dir, path, t) = daemon(Some(busy_reply()), 3);
        let mut c = Client::connect(&path, Duration::from_secs(10)).unwrap();
        // Let the daemon refuse before the request is written: the send may fail, the reply
        // is still read.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.call(&Request::Status, &[]).unwrap(), Reply::Done);
        assert_eq!(t.join().unwrap(), 1, "one request reached the daemon");
    }

    #[test]
    fn a_connection_closed_before_the_request_is_retried() {
        let (_dir, path, t) = daemon(None, 1);
        let mut c = Client::connect(&path, Duration::from_secs(10)).unwrap();
        // The daemon has closed this connection unread (as it closes an idle one to make
        // room) before the request is sent.
        let mut probe = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &c.stream, &mut probe).unwrap(), 0);
        assert_eq!(c.call(&Request::Status, &[]).unwrap(), Reply::Done);
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn busy_for_longer_than_the_timeout_gives_the_busy_reply() {
        let (_dir, path, _t) = daemon(Some(busy_reply()), 1000);
        let mut c = Client::connect(&path, Duration::from_millis(300)).unwrap();
        let started = Instant::now();
        match c.call(&Request::Status, &[]).unwrap() {
            Reply::Error { message, .. } => assert!(message.ends_with(RETRYABLE), "{message}"),
            other => panic!("expected the busy reply, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_refusal_of_kind_busy_is_retried_whatever_its_message() {
        let refusal = Reply::error(ErrorKind::Busy, "full up");
        let (_dir, path, t) = daemon(Some(refusal), 2);
        let mut c = Client::connect(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(c.call(&Request::Status, &[]).unwrap(), Reply::Done);
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn a_refusal_of_another_kind_is_not_retried() {
        // The message starts like a busy one, the kind says otherwise: the kind decides.
        let refusal = Reply::error(
            ErrorKind::Exists,
            format!("{BUSY}: c1/eth0 already attached"),
        );
        let (_dir, path, _t) = daemon(Some(refusal.clone()), 1);
        let mut c = Client::connect(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(c.call(&Request::Status, &[]).unwrap(), refusal);
    }
}
