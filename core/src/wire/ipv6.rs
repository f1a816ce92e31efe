//! IPv6 (RFC 8200): a typed view of the fixed 40-byte header, the checks Linux `ipv6_rcv`
//! makes before forwarding, the hop limit, and `emit_header` for packets netstackd builds
//! (neighbor advertisements, ICMPv6 errors).
//!
//! Extension headers are not parsed: netstackd forwards them untouched (a router only reads
//! a hop-by-hop header, and forwards without one too) and looks only at `next_header`.

use std::net::Ipv6Addr;

use super::{checksum, Result, WireError};

/// The fixed header's length.
pub const HEADER_LEN: usize = 40;
/// Next header: hop-by-hop options.
pub const NEXT_HOP_BY_HOP: u8 = 0;
/// Next header: TCP.
pub const NEXT_TCP: u8 = 6;
/// Next header: UDP.
pub const NEXT_UDP: u8 = 17;
/// Next header: fragment header.
pub const NEXT_FRAGMENT: u8 = 44;
/// Next header: ICMPv6.
pub const NEXT_ICMPV6: u8 = 58;
/// The largest payload the payload length can state; a BIG TCP frame's is longer (and its
/// payload length 0).
pub const MAX_PAYLOAD_LEN: usize = 65535;
/// The hop-by-hop header Linux puts in front of a BIG TCP frame's TCP header: next header,
/// length 0 (8 bytes), the jumbo payload option (type 0xc2, 4 bytes of length).
pub const JUMBO_HBH_LEN: usize = 8;
/// The jumbo payload option's type (RFC 2675).
const OPT_JUMBO: u8 = 0xc2;
/// The IPv6 minimum link MTU (RFC 8200 §5), also the largest ICMPv6 error (RFC 4443 §2.4).
pub const MIN_MTU: usize = 1280;

/// A view of an IPv6 packet (fixed header and payload).
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` after the checks of Linux `ipv6_rcv`: version 6, a whole fixed header,
    /// and a payload length that fits the buffer (bytes after it are padding, see
    /// [`Ipv6Packet::total_len`]). A zero payload length on a packet longer than 64 KiB (a
    /// jumbogram, or a BIG TCP frame) is refused: see [`Ipv6Packet::new_checked_big`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        Self::new_checked_big(buffer, false)
    }

    /// [`Ipv6Packet::new_checked`], but when `big_tcp` is true (the caller knows the frame is
    /// a TCP GSO super-frame and the node allows BIG TCP) a payload length of 0 on a payload
    /// of more than 65535 bytes means "the rest of the buffer": a BIG TCP frame, carrying TCP
    /// either directly or behind the hop-by-hop jumbo option Linux inserts (RFC 2675: an
    /// 8-byte header whose only option is the jumbo payload length, which must equal the
    /// buffer's payload). A zero payload length anywhere else is refused, as it was.
    pub fn new_checked_big(buffer: T, big_tcp: bool) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::BadVersion);
        }
        let payload = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if payload == 0 && b.len() - HEADER_LEN > MAX_PAYLOAD_LEN {
            let big = big_tcp
                && match b[6] {
                    NEXT_TCP => true,
                    NEXT_HOP_BY_HOP => jumbo_hbh_len(b) == Some(b.len() - HEADER_LEN),
                    _ => false,
                };
            return if big {
                Ok(Ipv6Packet { buffer })
            } else {
                Err(WireError::BadTotalLen)
            };
        }
        if HEADER_LEN + payload > b.len() {
            return Err(WireError::BadTotalLen);
        }
        if payload == 0 && b[6] == NEXT_HOP_BY_HOP {
            return Err(WireError::Unsupported);
        }
        Ok(Ipv6Packet { buffer })
    }

    /// Wraps `buffer` without checks; accessors may panic on short input.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Payload length field.
    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// Header plus payload: where the packet ends in the buffer (for a BIG TCP frame, its
    /// payload length 0 on more than 65535 bytes, the buffer's end).
    pub fn total_len(&self) -> usize {
        if self.is_big() {
            return self.buffer.as_ref().len();
        }
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// Is this a BIG TCP frame (payload length 0, payload longer than 65535 bytes)?
    pub fn is_big(&self) -> bool {
        self.payload_len() == 0 && self.buffer.as_ref().len() > HEADER_LEN + MAX_PAYLOAD_LEN
    }

    /// The transport protocol and where its header starts in the payload: the next header,
    /// at 0, or behind a BIG TCP frame's hop-by-hop jumbo header (TCP at 8).
    pub fn transport(&self) -> (u8, usize) {
        let b = self.buffer.as_ref();
        if self.is_big() && b[6] == NEXT_HOP_BY_HOP {
            (b[HEADER_LEN], JUMBO_HBH_LEN)
        } else {
            (b[6], 0)
        }
    }

    /// Next header (the first extension header or the transport protocol).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), 8)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), 24)
    }

    /// The payload, up to the payload length (padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hops: u8) {
        self.buffer.as_mut()[7] = hops;
    }

    /// Decrements the hop limit (there is no header checksum to fix) and returns the new one.
    pub fn decrement_hop_limit(&mut self) -> u8 {
        let h = self.hop_limit().saturating_sub(1);
        self.set_hop_limit(h);
        h
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The jumbo payload length of the hop-by-hop header at 40 in `b`, when it is exactly the one
/// Linux inserts for BIG TCP (TCP next, 8 bytes, only the jumbo option); else `None`.
pub fn jumbo_hbh_len(b: &[u8]) -> Option<usize> {
    let h = b.get(HEADER_LEN..HEADER_LEN + JUMBO_HBH_LEN)?;
    if h[0] != NEXT_TCP || h[1] != 0 || h[2] != OPT_JUMBO || h[3] != 4 {
        return None;
    }
    usize::try_from(u32::from_be_bytes([h[4], h[5], h[6], h[7]])).ok()
}

fn addr_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Writes a 40-byte IPv6 header (traffic class and flow label 0) into `buf[..40]`.
///
/// # Panics
/// If `buf` is shorter than 40 bytes or `payload_len` exceeds 65535.
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload_len: usize,
) {
    let payload_len = u16::try_from(payload_len).expect("IPv6 payload over 65535 bytes");
    let h = &mut buf[..HEADER_LEN];
    h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
}

/// The unfolded sum of the IPv6 pseudo-header (RFC 8200 §8.1) for an upper-layer packet of
/// `upper_len` bytes; chain the upper-layer bytes onto it with [`checksum::sum`].
pub fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, upper_len: usize) -> u32 {
    let mut p = [0u8; 40];
    p[0..16].copy_from_slice(&src.octets());
    p[16..32].copy_from_slice(&dst.octets());
    p[32..36].copy_from_slice(&(upper_len as u32).to_be_bytes());
    p[39] = next_header;
    checksum::sum(&p, 0)
}

/// Is `a` a link-local unicast address (fe80::/10)?
pub fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX, RFC 4291 §2.7.1).
pub fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMPv6 echo request fd00::5 -> fd00::6, hop limit 64, 8-byte payload, as captured.
    static PACKET_BYTES: [u8; 56] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x10, 0x3a,
        0x40, // version, payload 16, ICMPv6, hops 64
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, // src
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x06, // dst
        0x80, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01, // echo request (checksum unset)
        1, 2, 3, 4, 5, 6, 7, 8,
    ];

    #[test]
    fn fields_parse() {
        let p = Ipv6Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(p.payload_len(), 16);
        assert_eq!(p.total_len(), 56);
        assert_eq!(p.next_header(), NEXT_ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "fd00::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00::6".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload().len(), 16);
    }

    #[test]
    fn emit_round_trips() {
        let mut buf = [0xa5u8; 56];
        emit_header(
            &mut buf,
            "fd00::5".parse().unwrap(),
            "fd00::6".parse().unwrap(),
            NEXT_ICMPV6,
            64,
            16,
        );
        buf[40..].copy_from_slice(&PACKET_BYTES[40..]);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = PACKET_BYTES.to_vec();
        padded.extend_from_slice(&[0; 8]);
        let p = Ipv6Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.total_len(), 56);
    }

    #[test]
    fn hop_limit_decrements() {
        let mut b = PACKET_BYTES;
        let mut p = Ipv6Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.decrement_hop_limit(), 63);
        assert_eq!(p.hop_limit(), 63);
    }

    #[test]
    fn bad_packets_are_rejected() {
        // (mutation, expected error, what it covers)
        type Mutation = fn(&mut Vec<u8>);
        let table: [(Mutation, WireError, &str); 4] = [
            (|b| b.truncate(39), WireError::Truncated, "short header"),
            (
                |b| b[0] = 0x45,
                WireError::BadVersion,
                "IPv4 version nibble",
            ),
            (
                |b| b[5] = 17,
                WireError::BadTotalLen,
                "payload beyond the buffer",
            ),
            (
                |b| {
                    b[4] = 0;
                    b[5] = 0;
                    b[6] = NEXT_HOP_BY_HOP;
                },
                WireError::Unsupported,
                "jumbogram",
            ),
        ];
        for (mutate, err, what) in table {
            let mut b = PACKET_BYTES.to_vec();
            mutate(&mut b);
            assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap_err(), err, "{what}");
        }
    }

    #[test]
    fn solicited_node_address() {
        let a: Ipv6Addr = "fd00:10:244:1::1:2a05".parse().unwrap();
        assert_eq!(
            solicited_node(&a),
            "ff02::1:ff01:2a05".parse::<Ipv6Addr>().unwrap()
        );
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
    }

    /// BIG TCP: payload length 0 on a payload longer than 65535 bytes is taken only with
    /// `big_tcp` and TCP, directly or behind an exact jumbo header; the length is then the
    /// buffer's. Every other payload length 0 on such a buffer is `BadTotalLen`.
    #[test]
    fn big_tcp_payload_length_zero() {
        let big = |hbh: Option<u32>, next: u8| {
            let mut p = PACKET_BYTES[..40].to_vec();
            p[4..6].fill(0);
            p[6] = next;
            if let Some(len) = hbh {
                p.extend_from_slice(&[NEXT_TCP, 0, 0xc2, 4]);
                p.extend_from_slice(&len.to_be_bytes());
            }
            p.resize(40 + 70_000, 0x5a);
            p
        };
        let direct = big(None, NEXT_TCP);
        let ip = Ipv6Packet::new_checked_big(&direct[..], true).unwrap();
        assert_eq!((ip.total_len(), ip.transport()), (70_040, (NEXT_TCP, 0)));
        let jumbo = big(Some(70_000), NEXT_HOP_BY_HOP);
        let ip = Ipv6Packet::new_checked_big(&jumbo[..], true).unwrap();
        assert_eq!((ip.total_len(), ip.transport()), (70_040, (NEXT_TCP, 8)));
        let refused = [
            (big(None, NEXT_TCP), false, "BIG TCP off"),
            (big(None, NEXT_UDP), true, "UDP"),
            (
                big(Some(69_999), NEXT_HOP_BY_HOP),
                true,
                "a jumbo length that lies",
            ),
            (
                big(None, NEXT_HOP_BY_HOP),
                true,
                "a hop-by-hop header that is no jumbo",
            ),
        ];
        for (p, on, what) in refused {
            let got = Ipv6Packet::new_checked_big(&p[..], on).map(|_| ());
            assert_eq!(got, Err(WireError::BadTotalLen), "{what}");
        }
        // Not longer than 64 KiB: the old rules (an empty payload, padding after it).
        let mut small = direct.clone();
        small.truncate(40 + 65_535);
        let ip = Ipv6Packet::new_checked_big(&small[..], true).unwrap();
        assert_eq!(ip.total_len(), 40);
    }
}
