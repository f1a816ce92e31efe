//! Length-prefixed messages with SCM_RIGHTS descriptors on a unix stream socket.

use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::sys::fdpass;

use super::{MAX_FDS, MAX_MESSAGE_BYTES};

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The socket failed (includes timeouts and a peer that went away mid-message).
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before a message began.
    #[error("peer closed the connection")]
    Closed,
    /// The announced length is over the limit.
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Sends one message: `body` prefixed by its length, with `fds` attached.
pub fn send_message(
    sock: &UnixStream,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FramingError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(FramingError::TooLarge(body.len()));
    }
    let mut msg = Vec::with_capacity(4 + body.len());
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
    msg.extend_from_slice(body);
    let sent = fdpass::send_with_fds(sock, &msg, fds)?;
    let mut w = sock;
    w.write_all(&msg[sent..])?;
    Ok(())
}

/// Receives one message and the descriptors sent with it.
///
/// Descriptors beyond [`MAX_FDS`] or a body over [`MAX_MESSAGE_BYTES`] fail the message; any
/// descriptors already received are closed on the way out.
pub fn recv_message(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FramingError> {
    let mut len_buf = [0u8; 4];
    let (n, fds) = fdpass::recv_with_fds(sock, &mut len_buf, MAX_FDS)?;
    if n == 0 {
        return Err(FramingError::Closed);
    }
    let mut r = sock;
    r.read_exact(&mut len_buf[n..])?;
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(FramingError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((body, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn message_and_fds_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        send_message(&a, b"{\"op\":\"status\"}", &[file.as_fd()]).unwrap();
        let (body, fds) = recv_message(&b).unwrap();
        assert_eq!(body, b"{\"op\":\"status\"}");
        assert_eq!(fds.len(), 1);
        let mut s = String::new();
        std::fs::File::from(fds.into_iter().next().unwrap())
            .read_to_string(&mut s)
            .unwrap();
        assert!(s.contains('('), "the passed fd reads /proc/self/stat");
    }

    #[test]
    fn oversized_length_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = &a;
        w.write_all(&((MAX_MESSAGE_BYTES as u32) + 1).to_be_bytes())
            .unwrap();
        assert!(matches!(recv_message(&b), Err(FramingError::TooLarge(_))));
    }

    #[test]
    fn closed_peer_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv_message(&b), Err(FramingError::Closed)));
    }

    #[test]
    fn truncated_body_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = &a;
        w.write_all(&10u32.to_be_bytes()).unwrap();
        w.write_all(b"abc").unwrap();
        drop(a);
        assert!(matches!(recv_message(&b), Err(FramingError::Io(_))));
    }
}
