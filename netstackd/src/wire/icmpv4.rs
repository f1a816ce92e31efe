//! ICMPv4 (RFC 792): the errors netstackd sends and a small view for checking them.

use std::net::Ipv4Addr;

use super::ipv4::{self, MIN_HEADER_LEN, PROTO_ICMP};
use super::{checksum, Result, WireError};

/// Echo reply.
pub const TYPE_ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// Echo request.
pub const TYPE_ECHO_REQUEST: u8 = 8;
/// Time exceeded.
pub const TYPE_TIME_EXCEEDED: u8 = 11;

/// ICMP header length.
pub const HEADER_LEN: usize = 8;
/// Largest error packet, as RFC 1812 §4.3.2.3 and Linux allow.
pub const MAX_ERROR_LEN: usize = 576;

/// Is `icmp_type` an error message (never answered with another error)?
pub fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// Writes a complete IPv4 packet carrying an ICMP error about `original` (the offending packet
/// from its IP header on) into `out`, quoting as much of it as fits in 576 bytes and in `out`.
/// `rest_of_header` is the second ICMP word (the next-hop MTU for fragmentation-needed).
/// Returns the bytes written, or 0 when `out` cannot hold even the headers.
pub fn emit_error(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest_of_header: u32,
    original: &[u8],
) -> usize {
    let headers = MIN_HEADER_LEN + HEADER_LEN;
    if out.len() < headers {
        return 0;
    }
    let quote = original
        .len()
        .min(MAX_ERROR_LEN - headers)
        .min(out.len() - headers);
    let total = headers + quote;
    ipv4::emit_header(out, src, dst, PROTO_ICMP, 64, HEADER_LEN + quote, 0);
    let icmp = &mut out[MIN_HEADER_LEN..total];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&rest_of_header.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(&original[..quote]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    total
}

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` if it holds an ICMP header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Icmpv4Packet { buffer })
    }

    /// Type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// Does the checksum over the whole message verify?
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }

    /// Everything after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Ipv4Packet;

    #[test]
    fn time_exceeded_round_trips() {
        let mut original = vec![0u8; 100];
        ipv4::emit_header(
            &mut original,
            Ipv4Addr::new(10, 244, 1, 5),
            Ipv4Addr::new(10, 244, 1, 6),
            17,
            1,
            80,
            7,
        );
        let mut out = [0xa5u8; 1024];
        let n = emit_error(
            &mut out,
            Ipv4Addr::new(10, 244, 1, 1),
            Ipv4Addr::new(10, 244, 1, 5),
            TYPE_TIME_EXCEEDED,
            0,
            0,
            &original,
        );
        assert_eq!(n, 20 + 8 + 100);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(
            (ip.protocol(), ip.ttl(), usize::from(ip.total_len())),
            (PROTO_ICMP, 64, n)
        );
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 244, 1, 1));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (TYPE_TIME_EXCEEDED, 0));
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.data(), &original[..]);
    }

    #[test]
    fn long_originals_are_cut_to_576_bytes() {
        let original = vec![0x5au8; 1500];
        let mut out = [0u8; 2048];
        let n = emit_error(
            &mut out,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            TYPE_DEST_UNREACHABLE,
            4,
            1400,
            &original,
        );
        assert_eq!(n, MAX_ERROR_LEN);
        let icmp = Icmpv4Packet::new_checked(&out[20..n]).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(&out[24..28], &1400u32.to_be_bytes());
        assert_eq!(
            emit_error(
                &mut out[..27],
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST,
                3,
                4,
                0,
                &original
            ),
            0
        );
    }

    #[test]
    fn error_types() {
        assert!(is_error(TYPE_TIME_EXCEEDED) && is_error(TYPE_DEST_UNREACHABLE));
        assert!(!is_error(TYPE_ECHO_REQUEST) && !is_error(TYPE_ECHO_REPLY));
        assert_eq!(
            Icmpv4Packet::new_checked(&[0u8; 7][..]).unwrap_err(),
            WireError::Truncated
        );
    }
}
