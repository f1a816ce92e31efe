//! Length-prefixed messages with SCM_RIGHTS descriptors on a unix stream socket.

use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

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

/// Receives one message like [`recv_message`], all of it before `deadline`: every read waits
/// at most until then, so a peer that trickles bytes is cut at the deadline instead of each
/// byte restarting a read timeout. Changes the socket's read timeout.
pub fn recv_message_before(
    sock: &UnixStream,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FramingError> {
    let mut len_buf = [0u8; 4];
    wait_until(sock, deadline)?;
    let (n, fds) = fdpass::recv_with_fds(sock, &mut len_buf, MAX_FDS).map_err(past(deadline))?;
    if n == 0 {
        return Err(FramingError::Closed);
    }
    read_exact_before(sock, &mut len_buf[n..], deadline)?;
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(FramingError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    read_exact_before(sock, &mut body, deadline)?;
    Ok((body, fds))
}

/// Sets the read timeout to what is left until `deadline`.
fn wait_until(sock: &UnixStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(past(deadline)(io::ErrorKind::TimedOut.into()));
    }
    sock.set_read_timeout(Some(left))
}

/// A read timeout at the deadline, told as such.
fn past(deadline: Instant) -> impl Fn(io::Error) -> io::Error {
    move |e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if Instant::now() >= deadline => {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the message did not arrive in full before its deadline",
            )
        }
        _ => e,
    }
}

fn read_exact_before(sock: &UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    let mut r = sock;
    while done < buf.len() {
        wait_until(sock, deadline)?;
        match r.read(&mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(past(deadline)(e)),
        }
    }
    Ok(())
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

    #[test]
    fn a_trickled_message_is_cut_at_its_deadline() {
        use std::time::Duration;
        let (a, b) = UnixStream::pair().unwrap();
        // Each byte comes well within the time the reader gives the whole message, but the
        // ten of them take three times that: a per-read timeout would never fire.
        let trickler = std::thread::spawn(move || {
            let mut w = &a;
            w.write_all(&10u32.to_be_bytes()).unwrap();
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(30));
                if w.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_millis(100);
        match recv_message_before(&b, deadline) {
            Err(FramingError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(b);
        trickler.join().unwrap();
    }

    #[test]
    fn a_whole_message_arrives_before_its_deadline() {
        let (a, b) = UnixStream::pair().unwrap();
        send_message(&a, b"{}", &[]).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let (body, fds) = recv_message_before(&b, deadline).unwrap();
        assert_eq!(body, b"{}");
        assert!(fds.is_empty());
    }
}
