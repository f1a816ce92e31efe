//! The control socket's decoder, which takes bytes from any root process on the node: the
//! input is written into one end of a real `UnixStream::pair()` and `recv_message` reads
//! messages from the other until it gives up; each body is decoded as a `Request` (what the
//! daemon reads) and a `Reply` (what the plugin and hook read). A panic or a hang is a bug,
//! and so is a value that does not encode back to itself.

#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netstackd::control::{recv_message, FramingError, Reply, Request, MAX_MESSAGE_BYTES};

/// Input beyond this is ignored: written before anything reads, it must fit the socket buffer.
const MAX_INPUT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let (a, b) = UnixStream::pair().expect("socketpair");
    b.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    (&a).write_all(data).expect("write the input");
    drop(a);
    // Every message takes at least its 4-byte length, so this ends.
    for _ in 0..=data.len() / 4 + 1 {
        match recv_message(&b) {
            Ok((body, fds)) => {
                assert!(fds.is_empty());
                assert!(body.len() <= MAX_MESSAGE_BYTES);
                decode(&body);
            }
            Err(FramingError::Io(e)) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the decoder waited for bytes that never come: {e}"
                );
                return;
            }
            Err(FramingError::Closed | FramingError::TooLarge(_)) => return,
        }
    }
    panic!("recv_message kept returning messages");
});

/// Decodes a body as both ends of the protocol would; what decodes must round-trip.
fn decode(body: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<Request>(body) {
        let again: Request = serde_json::from_slice(&serde_json::to_vec(&req).unwrap())
            .unwrap_or_else(|e| panic!("{req:?} does not decode again: {e}"));
        assert_eq!(again, req);
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(body) {
        let again: Reply = serde_json::from_slice(&serde_json::to_vec(&reply).unwrap())
            .unwrap_or_else(|e| panic!("{reply:?} does not decode again: {e}"));
        assert_eq!(again, reply);
    }
}
