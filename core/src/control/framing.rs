//! Length-prefixed messages with SCM_RIGHTS descriptors on a unix stream socket.
//!
//! A message is one frame: a 4-byte big-endian body length, the body, and its descriptors on
//! the first byte. One frame carries at most [`FDS_PER_FRAME`] descriptors (Linux passes at
//! most 253 in one `sendmsg`, and netstack before big machines accepted 64); a message with
//! more (a pod's 65 to 256 TAP queues) sends the first ones ahead in *descriptor frames*: the
//! length word [`FDS_FRAME`] and no body, with 1 to [`FDS_PER_FRAME`] descriptors each. The
//! receiver gathers them in order and hands them out with the message that follows. It never
//! holds more than [`MAX_FDS`] for one message, refuses a descriptor frame without
//! descriptors, and a caller's deadline covers every frame: a peer cannot make it hold
//! descriptors without bound or wait for ever. A message with at most [`FDS_PER_FRAME`]
//! descriptors is on the wire exactly as before.

use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::sys::fdpass;

use super::{FDS_PER_FRAME, MAX_FDS, MAX_MESSAGE_BYTES};

/// The length word of a descriptor frame: descriptors for the message that follows, no body.
/// (Any length over [`MAX_MESSAGE_BYTES`] was refused before, so no message had it.)
pub const FDS_FRAME: u32 = u32::MAX;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The socket failed (includes timeouts, a peer that went away mid-message, and
    /// descriptors over the limit or a descriptor frame without any).
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before a message began.
    #[error("peer closed the connection")]
    Closed,
    /// The announced length is over the limit.
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Sends one message: `body` prefixed by its length, with `fds` attached (the first ones in
/// descriptor frames ahead of it when there are more than [`FDS_PER_FRAME`]).
pub fn send_message(
    sock: &UnixStream,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FramingError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(FramingError::TooLarge(body.len()));
    }
    if fds.len() > MAX_FDS {
        return Err(FramingError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} file descriptors for one message, at most {MAX_FDS}",
                fds.len()
            ),
        )));
    }
    let (ahead, with_body) = fds.split_at(fds.len() - last_chunk_len(fds.len()));
    for chunk in ahead.chunks(FDS_PER_FRAME) {
        send_frame(sock, &FDS_FRAME.to_be_bytes(), chunk)?;
    }
    let mut msg = Vec::with_capacity(4 + body.len());
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
    msg.extend_from_slice(body);
    send_frame(sock, &msg, with_body)
}

/// How many of `n` descriptors travel with the body itself: the rest fill whole descriptor
/// frames ahead of it.
fn last_chunk_len(n: usize) -> usize {
    match n % FDS_PER_FRAME {
        0 => n.min(FDS_PER_FRAME),
        r => r,
    }
}

/// Writes one frame (`bytes`) with `fds` on its first byte.
fn send_frame(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), FramingError> {
    let sent = fdpass::send_with_fds(sock, bytes, fds)?;
    let mut w = sock;
    w.write_all(&bytes[sent..])?;
    Ok(())
}

/// Receives one message and the descriptors sent with it (and ahead of it).
///
/// More than [`MAX_FDS`] descriptors or a body over [`MAX_MESSAGE_BYTES`] fail the message;
/// any descriptors already received are closed on the way out.
pub fn recv_message(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FramingError> {
    recv_frames(sock, None)
}

/// Receives one message like [`recv_message`], all of it before `deadline`: every read waits
/// at most until then, so a peer that trickles bytes (or descriptor frames) is cut at the
/// deadline instead of each byte restarting a read timeout. Changes the socket's read timeout.
pub fn recv_message_before(
    sock: &UnixStream,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FramingError> {
    recv_frames(sock, Some(deadline))
}

/// Reads descriptor frames until a message frame, and that message.
fn recv_frames(
    sock: &UnixStream,
    deadline: Option<Instant>,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FramingError> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        let mut len_buf = [0u8; 4];
        if let Some(deadline) = deadline {
            wait_until(sock, deadline)?;
        }
        let budget = MAX_FDS - fds.len();
        let (n, got) = fdpass::recv_with_fds(sock, &mut len_buf, budget).map_err(|e| {
            let e = match e.kind() {
                io::ErrorKind::InvalidData => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{e}: at most {MAX_FDS} file descriptors for one message"),
                ),
                _ => e,
            };
            match deadline {
                Some(d) => past(d)(e),
                None => e,
            }
        })?;
        if n == 0 {
            if fds.is_empty() && got.is_empty() {
                return Err(FramingError::Closed);
            }
            return Err(FramingError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection after descriptors for a message it never sent",
            )));
        }
        let carried = got.len();
        fds.extend(got);
        read_exact(sock, &mut len_buf[n..], deadline)?;
        let word = u32::from_be_bytes(len_buf);
        if word == FDS_FRAME {
            if carried == 0 {
                return Err(FramingError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a descriptor frame without descriptors",
                )));
            }
            continue;
        }
        let len = word as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(FramingError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        read_exact(sock, &mut body, deadline)?;
        return Ok((body, fds));
    }
}

/// Fills `buf`, each read waiting at most until `deadline` when there is one.
fn read_exact(sock: &UnixStream, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
    match deadline {
        Some(deadline) => read_exact_before(sock, buf, deadline),
        None => {
            let mut r = sock;
            r.read_exact(buf)
        }
    }
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

    /// `n` pipes, each holding its index as two bytes: the read ends to send, the write ends
    /// kept (dropping them would let a reader see EOF).
    fn numbered_pipes(n: usize) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for i in 0..n {
            let (r, w) = nix::unistd::pipe().unwrap();
            nix::unistd::write(&w, &(i as u16).to_be_bytes()).unwrap();
            reads.push(r);
            writes.push(w);
        }
        (reads, writes)
    }

    fn index_of(fd: OwnedFd) -> u16 {
        let mut b = [0u8; 2];
        std::fs::File::from(fd).read_exact(&mut b).unwrap();
        u16::from_be_bytes(b)
    }

    #[test]
    fn any_descriptor_count_up_to_the_limit_arrives_whole_and_in_order() {
        // Each side of a frame boundary, and the most a message may carry.
        for n in [0, 1, 63, 64, 65, 127, 128, 129, 200, 256, MAX_FDS] {
            let (a, b) = UnixStream::pair().unwrap();
            let (reads, _writes) = numbered_pipes(n);
            let (body, fds) = std::thread::scope(|s| {
                s.spawn(|| {
                    let borrowed: Vec<_> = reads.iter().map(|fd| fd.as_fd()).collect();
                    send_message(&a, b"{\"op\":\"attach\"}", &borrowed).unwrap();
                    send_message(&a, b"{}", &[]).unwrap();
                });
                recv_message(&b).unwrap()
            });
            assert_eq!(body, b"{\"op\":\"attach\"}", "{n} fds");
            assert_eq!(fds.len(), n);
            let order: Vec<u16> = fds.into_iter().map(index_of).collect();
            assert_eq!(
                order,
                (0..n as u16).collect::<Vec<_>>(),
                "{n} fds out of order"
            );
            // The next message starts where this one ended.
            let (body, fds) = recv_message(&b).unwrap();
            assert_eq!((body.as_slice(), fds.len()), (&b"{}"[..], 0));
        }
    }

    #[test]
    fn up_to_a_frame_of_descriptors_the_wire_is_as_before() {
        let (a, b) = UnixStream::pair().unwrap();
        let (reads, _writes) = numbered_pipes(FDS_PER_FRAME);
        let borrowed: Vec<_> = reads.iter().map(|fd| fd.as_fd()).collect();
        send_message(&a, b"{}", &borrowed).unwrap();
        let mut head = [0u8; 6];
        let (n, fds) = fdpass::recv_with_fds(&b, &mut head, FDS_PER_FRAME).unwrap();
        assert_eq!(&head[..n], &[0, 0, 0, 2, b'{', b'}']);
        assert_eq!(
            fds.len(),
            FDS_PER_FRAME,
            "all of them on the message itself"
        );
    }

    #[test]
    fn more_than_a_frame_go_ahead_in_descriptor_frames() {
        let (a, b) = UnixStream::pair().unwrap();
        let (reads, _writes) = numbered_pipes(2 * FDS_PER_FRAME + 3);
        let borrowed: Vec<_> = reads.iter().map(|fd| fd.as_fd()).collect();
        send_message(&a, b"{}", &borrowed).unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut word = [0u8; 4];
            let (n, fds) = fdpass::recv_with_fds(&b, &mut word, MAX_FDS).unwrap();
            assert_eq!(n, 4);
            seen.push((u32::from_be_bytes(word), fds.len()));
        }
        assert_eq!(
            seen,
            [
                (FDS_FRAME, FDS_PER_FRAME),
                (FDS_FRAME, FDS_PER_FRAME),
                (2, 3)
            ]
        );
    }

    #[test]
    fn more_than_the_limit_is_not_sent() {
        let (a, _b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let fds = vec![file.as_fd(); MAX_FDS + 1];
        match send_message(&a, b"{}", &fds) {
            Err(FramingError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Writes one descriptor frame by hand, as a hostile peer would.
    fn descriptor_frame(sock: &UnixStream, fds: &[BorrowedFd<'_>]) {
        send_frame(sock, &FDS_FRAME.to_be_bytes(), fds).unwrap();
    }

    /// Has every copy of this pipe's read end been closed (the receiver's too)? Writing then
    /// fails with EPIPE.
    fn reader_gone(write: &OwnedFd) -> bool {
        nix::unistd::write(write, b"x") == Err(nix::errno::Errno::EPIPE)
    }

    #[test]
    fn a_peer_sending_descriptors_past_the_limit_is_cut_and_they_are_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        // A receiver without the bound would wait for the message: fail instead of hanging.
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let sender = std::thread::spawn(move || {
            // Frame after frame of descriptors and never a message: 5 x 64 > MAX_FDS.
            for _ in 0..5 {
                let copies: Vec<OwnedFd> =
                    (0..FDS_PER_FRAME).map(|_| r.try_clone().unwrap()).collect();
                let borrowed: Vec<_> = copies.iter().map(|fd| fd.as_fd()).collect();
                if send_frame(&a, &FDS_FRAME.to_be_bytes(), &borrowed).is_err() {
                    break;
                }
            }
            a
        });
        match recv_message(&b) {
            Err(FramingError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                assert!(e.to_string().contains(&MAX_FDS.to_string()), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let a = sender.join().unwrap();
        drop(b);
        drop(a);
        assert!(reader_gone(&w), "the receiver kept some of the descriptors");
    }

    #[test]
    fn a_descriptor_frame_without_descriptors_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&FDS_FRAME.to_be_bytes()).unwrap();
        (&a).write_all(&2u32.to_be_bytes()).unwrap();
        (&a).write_all(b"{}").unwrap();
        match recv_message(&b) {
            Err(FramingError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn descriptors_for_a_message_that_never_comes_are_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        descriptor_frame(&a, &[r.as_fd()]);
        drop(r);
        drop(a);
        match recv_message(&b) {
            Err(FramingError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(reader_gone(&w), "the receiver kept the descriptor");
    }

    #[test]
    fn descriptor_frames_count_against_the_deadline() {
        use std::time::Duration;
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // One descriptor frame every 30 ms, ten of them: each within the read timeout a
        // per-read deadline would give, three times the message's deadline in all.
        let sender = std::thread::spawn(move || {
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(30));
                if send_frame(&a, &FDS_FRAME.to_be_bytes(), &[r.as_fd()]).is_err() {
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
        sender.join().unwrap();
        assert!(reader_gone(&w), "the receiver kept the descriptors");
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
