//! ICMPv4 (RFC 792): `emit_error` for the errors netstackd sends while forwarding (time
//! exceeded, fragmentation needed, unreachable) and a small `Icmpv4Packet` view.

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

/// Destination unreachable: network unreachable.
pub const CODE_NET_UNREACHABLE: u8 = 0;
/// Destination unreachable: host unreachable.
pub const CODE_HOST_UNREACHABLE: u8 = 1;
/// Destination unreachable: port unreachable.
pub const CODE_PORT_UNREACHABLE: u8 = 3;
/// Destination unreachable: fragmentation needed and DF set (next-hop MTU in the low 16 bits
/// of `rest_of_header`).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Destination unreachable: communication administratively prohibited.
pub const CODE_ADMIN_PROHIBITED: u8 = 13;
/// Time exceeded: TTL exceeded in transit.
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// ICMP header length.
pub const HEADER_LEN: usize = 8;
/// Largest error packet, as RFC 1812 §4.3.2.3 and Linux allow.
pub const MAX_ERROR_LEN: usize = 576;

/// Is `icmp_type` an error message, never to be answered with another error? Destination
/// unreachable, source quench, redirect, time exceeded and parameter problem: the types
/// Linux's `icmp_pointers[].error` marks, which `icmp_send` consults.
pub fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// Writes a complete IPv4 packet carrying an ICMP error about `original` (the offending packet
/// from its IP header on) into `out`, quoting as much of it as fits in 576 bytes and in `out`.
/// `rest_of_header` is the second ICMP word (the next-hop MTU for fragmentation-needed, 0
/// otherwise).
///
/// The IP header has TTL 64, TOS 0, DF clear, ident 0 and both checksums complete. `original`
/// should be the packet trimmed to its `total_len`. Deciding whether an error may be sent at
/// all (not about an ICMP error, a non-first fragment, a broadcast) is the caller's job.
/// Returns the bytes written, or 0 (and writes nothing) when `out` cannot hold the 28 bytes
/// of headers.
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

    /// Rest of header: the second 32-bit word (echo id and sequence, next-hop MTU, ...).
    pub fn rest_of_header(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// Does the checksum over the whole buffer verify? The buffer must be exactly the ICMP
    /// message (e.g. [`Ipv4Packet::payload`](super::Ipv4Packet::payload)).
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }

    /// Everything after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the type (checksum not updated).
    pub fn set_msg_type(&mut self, msg_type: u8) {
        self.buffer.as_mut()[0] = msg_type;
    }

    /// Sets the code (checksum not updated).
    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[1] = code;
    }

    /// Recomputes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        let b = self.buffer.as_mut();
        b[2..4].fill(0);
        let c = checksum::checksum(b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Ipv4Packet;

    /// An ICMP echo request 10.77.0.1 -> 10.77.0.2 (ttl 64, DF, id 0x15a7) as Linux sent it on
    /// a veth, captured with an AF_PACKET socket: IP checksum 0x1086, ICMP checksum 0xa079.
    static ECHO_REQUEST: [u8; 52] = [
        0x45, 0x00, 0x00, 0x34, 0x15, 0xa7, 0x40, 0x00, 0x40, 0x01, 0x10, 0x86, 0x0a, 0x4d, 0x00,
        0x01, 0x0a, 0x4d, 0x00, 0x02, 0x08, 0x00, 0xa0, 0x79, 0x12, 0x34, 0x00, 0x01, 0x10, 0x11,
        0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20,
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
    ];

    /// The ICMP part of the peer kernel's echo reply (checksum 0xa879).
    static ECHO_REPLY_ICMP: [u8; 32] = [
        0x00, 0x00, 0xa8, 0x79, 0x12, 0x34, 0x00, 0x01, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
        0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
        0x26, 0x27,
    ];

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

    #[test]
    fn captured_echo_parses_and_verifies() {
        let ip = Ipv4Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (TYPE_ECHO_REQUEST, 0));
        assert_eq!(icmp.checksum(), 0xa079);
        assert_eq!(icmp.rest_of_header(), 0x1234_0001);
        assert_eq!(icmp.data(), &ECHO_REQUEST[28..]);
        assert!(icmp.verify_checksum());
        let mut corrupt = ECHO_REQUEST;
        corrupt[51] ^= 0x40;
        assert!(!Icmpv4Packet::new_checked(&corrupt[20..])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn echo_request_turned_into_the_kernels_reply() {
        let mut icmp_bytes = [0u8; 32];
        icmp_bytes.copy_from_slice(&ECHO_REQUEST[20..]);
        let mut icmp = Icmpv4Packet::new_checked(&mut icmp_bytes[..]).unwrap();
        icmp.set_msg_type(TYPE_ECHO_REPLY);
        icmp.set_code(0);
        icmp.fill_checksum();
        assert_eq!(icmp_bytes, ECHO_REPLY_ICMP);
    }

    #[test]
    fn time_exceeded_quotes_the_whole_small_packet() {
        // The captured request arriving with TTL 1: forwarding must answer time exceeded.
        let mut original = ECHO_REQUEST;
        original[8] = 1;
        Ipv4Packet::new_unchecked(&mut original[..]).fill_checksum();
        let mut out = [0xa5u8; 1514];
        let n = emit_error(
            &mut out,
            GATEWAY,
            Ipv4Addr::new(10, 77, 0, 1),
            TYPE_TIME_EXCEEDED,
            CODE_TTL_EXCEEDED,
            0,
            &original,
        );
        assert_eq!(n, 20 + 8 + 52);
        assert!(out[n..].iter().all(|&b| b == 0xa5), "wrote past the packet");

        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.protocol(), ip.ttl(), usize::from(ip.total_len())),
            (PROTO_ICMP, 64, n)
        );
        assert!(!ip.dont_frag() && !ip.more_frags());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (GATEWAY, Ipv4Addr::new(10, 77, 0, 1))
        );
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (icmp.msg_type(), icmp.code()),
            (TYPE_TIME_EXCEEDED, CODE_TTL_EXCEEDED)
        );
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.rest_of_header(), 0);
        assert_eq!(icmp.data(), &original[..]);
    }

    #[test]
    fn frag_needed_is_cut_to_576_bytes() {
        // A 1500-byte DF packet that does not fit a 1400-byte egress MTU.
        let mut original = vec![0x5au8; 1500];
        ipv4::emit_header(
            &mut original,
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::new(192, 0, 2, 7),
            ipv4::PROTO_TCP,
            64,
            1480,
            0x4242,
        );
        let mut out = [0xa5u8; 2048];
        let n = emit_error(
            &mut out,
            GATEWAY,
            Ipv4Addr::new(10, 77, 0, 1),
            TYPE_DEST_UNREACHABLE,
            CODE_FRAG_NEEDED,
            1400,
            &original,
        );
        assert_eq!(n, MAX_ERROR_LEN);
        assert!(out[n..].iter().all(|&b| b == 0xa5));
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            (icmp.msg_type(), icmp.code(), icmp.rest_of_header()),
            (TYPE_DEST_UNREACHABLE, CODE_FRAG_NEEDED, 1400)
        );
        assert_eq!(&out[24..28], &[0, 0, 0x05, 0x78]);
        assert_eq!(icmp.data(), &original[..MAX_ERROR_LEN - 28]);
    }

    #[test]
    fn quote_is_limited_by_the_output_buffer() {
        let mut out = [0xa5u8; 40];
        let n = emit_error(
            &mut out,
            GATEWAY,
            Ipv4Addr::new(10, 77, 0, 1),
            TYPE_DEST_UNREACHABLE,
            CODE_HOST_UNREACHABLE,
            0,
            &ECHO_REQUEST,
        );
        assert_eq!(n, 40);
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.data(), &ECHO_REQUEST[..12]);

        // Too small for the headers: nothing written.
        let mut tiny = [0xa5u8; 27];
        let n = emit_error(
            &mut tiny,
            GATEWAY,
            GATEWAY,
            TYPE_DEST_UNREACHABLE,
            CODE_HOST_UNREACHABLE,
            0,
            &ECHO_REQUEST,
        );
        assert_eq!(n, 0);
        assert_eq!(tiny, [0xa5; 27]);
    }

    #[test]
    fn error_types() {
        // (type, is an error, what)
        for (t, want, what) in [
            (TYPE_ECHO_REPLY, false, "echo reply"),
            (TYPE_DEST_UNREACHABLE, true, "destination unreachable"),
            (4, true, "source quench"),
            (5, true, "redirect"),
            (TYPE_ECHO_REQUEST, false, "echo request"),
            (TYPE_TIME_EXCEEDED, true, "time exceeded"),
            (12, true, "parameter problem"),
            (13, false, "timestamp"),
        ] {
            assert_eq!(is_error(t), want, "{what}");
        }
    }

    #[test]
    fn truncated_icmp_is_rejected() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ECHO_REPLY_ICMP[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
        assert!(Icmpv4Packet::new_checked(&ECHO_REPLY_ICMP[..HEADER_LEN]).is_ok());
    }
}
