//! IPv4 headers (RFC 791): the `Ipv4Packet` view, whose `new_checked` makes the receive checks
//! of Linux `ip_rcv_core`, the forwarding TTL decrement of `ip_decrease_ttl`, and
//! `emit_header` for packets netstackd originates.

use std::net::Ipv4Addr;

use super::checksum;
use super::{Result, WireError};

/// Header length without options.
pub const MIN_HEADER_LEN: usize = 20;
/// ICMP.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// The largest packet a total length can state; a longer one is a BIG TCP frame, whose
/// total length is 0.
pub const MAX_LEN: usize = 65535;

/// A view of an IPv4 packet (its buffer may run past `total_len`: Ethernet padding).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` after the checks Linux `ip_rcv_core` makes, in its order: room for a
    /// header, version 4, IHL ≥ 5, room for the whole header, a valid header checksum, and a
    /// total length within the buffer and not below the header.
    ///
    /// Bytes past `total_len` (Ethernet padding) are allowed; use [`Ipv4Packet::total_len`] to
    /// trim them. A BIG TCP super-frame (`tot_len` 0 beyond 64 KiB) is rejected as
    /// `BadTotalLen`: see [`Ipv4Packet::new_checked_big`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        Self::new_checked_big(buffer, false)
    }

    /// [`Ipv4Packet::new_checked`], but when `big_tcp` is true (the caller knows the frame
    /// is a TCP GSO super-frame and the node allows BIG TCP) a total length of 0 on a
    /// buffer of more than 65535 bytes means "the buffer's length", as Linux `iph_totlen`
    /// reads it: a BIG TCP frame, which must also carry TCP and be no fragment. A length of
    /// 0 anywhere else stays `BadTotalLen`.
    pub fn new_checked_big(buffer: T, big_tcp: bool) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::BadVersion);
        }
        let hlen = usize::from(b[0] & 0x0f) * 4;
        if hlen < MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if b.len() < hlen {
            return Err(WireError::Truncated);
        }
        if checksum::checksum(&b[..hlen]) != 0 {
            return Err(WireError::BadChecksum);
        }
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if total == 0 && big_tcp && b.len() > MAX_LEN {
            let fragment = u16::from_be_bytes([b[6], b[7]]) & 0x3fff != 0;
            if b[9] != PROTO_TCP || fragment {
                return Err(WireError::BadTotalLen);
            }
            return Ok(Ipv4Packet { buffer });
        }
        if total > b.len() || total < hlen {
            return Err(WireError::BadTotalLen);
        }
        Ok(Ipv4Packet { buffer })
    }

    /// The packet's length in bytes: [`Ipv4Packet::total_len`], or for a BIG TCP frame
    /// (total length 0 on a buffer of more than 65535 bytes) the buffer's length.
    pub fn packet_len(&self) -> usize {
        match self.total_len() {
            0 if self.b().len() > MAX_LEN => self.b().len(),
            n => usize::from(n),
        }
    }

    /// Is this a BIG TCP frame (total length 0, longer than 65535 bytes)?
    pub fn is_big(&self) -> bool {
        self.total_len() == 0 && self.b().len() > MAX_LEN
    }

    /// Wraps `buffer` without checks: for buffers this process wrote or already checked.
    /// Accessors may panic if it is not a valid packet.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Version field.
    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }

    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0x0f) * 4
    }

    /// Total length (header + payload) in bytes.
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        self.b()[6] & 0x20 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (u16::from_be_bytes([self.b()[6], self.b()[7]]) & 0x1fff) * 8
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.b()[8]
    }

    /// Protocol.
    pub fn protocol(&self) -> u8 {
        self.b()[9]
    }

    /// Header checksum field.
    pub fn header_checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[10], self.b()[11]])
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// The payload: from the end of the header to the packet's end ([`Self::packet_len`]).
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.packet_len()]
    }

    /// Does the header checksum verify? (Always true after `new_checked`.)
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.header()) == 0
    }

    /// The wrapped buffer, padding included.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn b_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the TTL (checksum not updated).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.b_mut()[8] = ttl;
    }

    /// Sets the source address (checksum not updated).
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.b_mut()[12..16].copy_from_slice(&a.octets());
    }

    /// Sets the destination address (checksum not updated).
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.b_mut()[16..20].copy_from_slice(&a.octets());
    }

    /// Sets the total length (checksum not updated).
    pub fn set_total_len(&mut self, len: u16) {
        self.b_mut()[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let hlen = self.header_len();
        let b = self.b_mut();
        b[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&b[..hlen]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// The payload (header end to the packet's end), writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.packet_len());
        &mut self.b_mut()[start..end]
    }

    /// Decrements the TTL and patches the checksum incrementally, as Linux
    /// `ip_decrease_ttl` does (`check += htons(0x0100)` with end-around carry); returns the
    /// new TTL. Forwarding drops TTL ≤ 1 first; a TTL of 0 (which Linux would wrap to 255
    /// with a wrong checksum) is left unchanged and 0 returned.
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.b_mut();
        if b[8] == 0 {
            return 0;
        }
        // The TTL is the high byte of header word 4: lowering it by one lowers the sum by
        // 0x0100, so its complement (the checksum) rises by 0x0100.
        let check = u32::from(u16::from_be_bytes([b[10], b[11]])) + 0x0100;
        let check = check + u32::from(check >= 0xffff);
        b[10..12].copy_from_slice(&check.to_be_bytes()[2..]);
        b[8] -= 1;
        b[8]
    }
}

/// Writes a 20-byte IPv4 header at the start of `buf` for a payload of `payload_len` bytes:
/// TOS 0, DF and MF clear, fragment offset 0, no options, checksum filled.
///
/// # Panics
/// If `buf` is shorter than 20 bytes or `20 + payload_len` exceeds 65535.
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    payload_len: usize,
    ident: u16,
) {
    let total =
        u16::try_from(MIN_HEADER_LEN + payload_len).expect("IPv4 total length over 65535 bytes");
    let h = &mut buf[..MIN_HEADER_LEN];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h[6..8].copy_from_slice(&[0, 0]);
    h[8] = ttl;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    Ipv4Packet::new_unchecked(h).fill_checksum();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMP echo request 10.77.0.1 -> 10.77.0.2 (ttl 64, DF, id 0x15a7, header checksum
    /// 0x1086) as Linux sent it on a veth, captured with an AF_PACKET socket.
    static ECHO_REQUEST: [u8; 52] = [
        0x45, 0x00, 0x00, 0x34, 0x15, 0xa7, 0x40, 0x00, 0x40, 0x01, 0x10, 0x86, 0x0a, 0x4d, 0x00,
        0x01, 0x0a, 0x4d, 0x00, 0x02, 0x08, 0x00, 0xa0, 0x79, 0x12, 0x34, 0x00, 0x01, 0x10, 0x11,
        0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20,
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
    ];

    /// The echo reply the peer kernel sent back (DF clear, id 0xfac0, checksum 0x6b6c).
    static ECHO_REPLY: [u8; 52] = [
        0x45, 0x00, 0x00, 0x34, 0xfa, 0xc0, 0x00, 0x00, 0x40, 0x01, 0x6b, 0x6c, 0x0a, 0x4d, 0x00,
        0x02, 0x0a, 0x4d, 0x00, 0x01, 0x00, 0x00, 0xa8, 0x79, 0x12, 0x34, 0x00, 0x01, 0x10, 0x11,
        0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20,
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
    ];

    #[test]
    fn captured_request_parses() {
        let ip = Ipv4Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!((ip.header_len(), ip.total_len()), (20, 52));
        assert_eq!(
            (ip.ttl(), ip.protocol(), ip.ident(), ip.header_checksum()),
            (64, PROTO_ICMP, 0x15a7, 0x1086)
        );
        assert!(ip.dont_frag() && !ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(ip.header(), &ECHO_REQUEST[..20]);
        assert_eq!(ip.payload(), &ECHO_REQUEST[20..]);
        assert!(ip.verify_checksum());
    }

    #[test]
    fn captured_reply_parses() {
        let ip = Ipv4Packet::new_checked(&ECHO_REPLY[..]).unwrap();
        assert!(!ip.dont_frag());
        assert_eq!((ip.ident(), ip.header_checksum()), (0xfac0, 0x6b6c));
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 77, 0, 2));
    }

    #[test]
    fn fragment_fields() {
        let mut p = ECHO_REQUEST;
        // MF set, offset 185 units of 8 bytes.
        p[6] = 0x20;
        p[7] = 185;
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.more_frags() && !ip.dont_frag());
        assert_eq!(ip.frag_offset(), 1480);
        p[6] = 0x1f;
        p[7] = 0xff;
        assert_eq!(Ipv4Packet::new_unchecked(&p[..]).frag_offset(), 0x1fff * 8);
    }

    #[test]
    fn ip_rcv_checks() {
        // (mutation of the captured 52-byte echo request, expected outcome, which check)
        type Case = (fn(&mut Vec<u8>), Result<()>, &'static str);
        let table: [Case; 10] = [
            // pskb_may_pull(skb, sizeof(struct iphdr))
            (
                |p| p.truncate(19),
                Err(WireError::Truncated),
                "shorter than a header",
            ),
            (|p| p.clear(), Err(WireError::Truncated), "empty"),
            // iph->version != 4
            (|p| p[0] = 0x65, Err(WireError::BadVersion), "version 6"),
            // iph->ihl < 5
            (|p| p[0] = 0x44, Err(WireError::BadHeaderLen), "ihl 4"),
            // pskb_may_pull(skb, iph->ihl * 4)
            (
                |p| {
                    p[0] = 0x4f;
                    p.truncate(56)
                },
                Err(WireError::Truncated),
                "ihl 15 (60 bytes) beyond a 56-byte buffer",
            ),
            // ip_fast_csum(iph, iph->ihl)
            (
                |p| p[10] ^= 1,
                Err(WireError::BadChecksum),
                "bad header checksum",
            ),
            // skb->len < len: a truncated packet
            (
                |p| {
                    p[3] = 53;
                    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum()
                },
                Err(WireError::BadTotalLen),
                "total length one past the buffer",
            ),
            // len < iph->ihl * 4
            (
                |p| {
                    p[3] = 19;
                    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum()
                },
                Err(WireError::BadTotalLen),
                "total length below the header",
            ),
            // valid: pskb_trim_rcsum drops the padding later
            (
                |p| p.extend_from_slice(&[0; 8]),
                Ok(()),
                "Ethernet padding to 60 bytes",
            ),
            // valid: a header with options
            (
                |p| {
                    p[0] = 0x46;
                    p.splice(20..20, [0x94, 0x04, 0x00, 0x00]); // Router Alert
                    p[3] = 56;
                    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum()
                },
                Ok(()),
                "a 4-byte option",
            ),
        ];
        for (mutate, want, what) in table {
            let mut p = ECHO_REQUEST.to_vec();
            mutate(&mut p);
            let got = Ipv4Packet::new_checked(&p[..]).map(|_| ());
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn padding_and_options_are_outside_the_payload() {
        let mut p = ECHO_REQUEST.to_vec();
        p.extend_from_slice(&[0xee; 8]);
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.payload(), &ECHO_REQUEST[20..]);
        assert_eq!(ip.into_inner().len(), 60);

        p.truncate(52);
        p[0] = 0x46;
        p.splice(20..20, [0x94, 0x04, 0x00, 0x00]);
        p[3] = 56;
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.fill_checksum();
        assert_eq!(ip.header_len(), 24);
        assert_eq!(&ip.header()[20..], &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(ip.payload(), &ECHO_REQUEST[20..]);
        ip.payload_mut()[0] = 0;
        assert_eq!(p[24], 0);
    }

    #[test]
    fn setters_and_fill_checksum() {
        let mut p = ECHO_REQUEST;
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        ip.set_src_addr(Ipv4Addr::new(10, 77, 0, 2));
        ip.set_dst_addr(Ipv4Addr::new(10, 77, 0, 1));
        ip.set_ttl(63);
        ip.set_total_len(48);
        assert!(!ip.verify_checksum());
        ip.fill_checksum();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.ttl(), ip.total_len()),
            (
                Ipv4Addr::new(10, 77, 0, 2),
                Ipv4Addr::new(10, 77, 0, 1),
                63,
                48
            )
        );
        assert!(Ipv4Packet::new_checked(&p[..]).is_ok());
    }

    #[test]
    fn decrement_ttl_of_captured_packet() {
        let mut p = ECHO_REQUEST;
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        assert_eq!(ip.decrement_ttl(), 63);
        // 0x1086 + 0x0100: the checksum Linux forwards this packet with.
        assert_eq!(ip.header_checksum(), 0x1186);
        assert!(Ipv4Packet::new_checked(&p[..]).is_ok());

        let mut zero = ECHO_REQUEST;
        zero[8] = 0;
        Ipv4Packet::new_unchecked(&mut zero[..]).fill_checksum();
        let before = zero;
        assert_eq!(Ipv4Packet::new_unchecked(&mut zero[..]).decrement_ttl(), 0);
        assert_eq!(zero, before);
    }

    /// `ip_decrease_ttl` exactly as the C reads on a little-endian host: the checksum loaded
    /// as a native u16, `htons(0x0100)` == 1 added, `check >= 0xffff` carried around.
    fn linux_le_check(be_check: u16) -> u16 {
        let native = u32::from(u16::from_le_bytes(be_check.to_be_bytes())) + 1;
        let native = (native + u32::from(native >= 0xffff)) as u16;
        u16::from_be_bytes(native.to_le_bytes())
    }

    #[test]
    fn incremental_update_matches_linux_for_every_checksum_value() {
        for check in 0..=u16::MAX {
            let mut p = ECHO_REQUEST;
            p[10..12].copy_from_slice(&check.to_be_bytes());
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.decrement_ttl();
            assert_eq!(ip.header_checksum(), linux_le_check(check), "{check:#06x}");
        }
    }

    #[test]
    fn incremental_ttl_update_equals_a_full_recompute() {
        // xorshift32: random-ish but reproducible headers, options included.
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed.to_be_bytes()[3]
        };
        let mut checked = 0u32;
        for ttl in 1..=255u8 {
            for _ in 0..64 {
                let ihl = 5 + next() % 11;
                let hlen = usize::from(ihl) * 4;
                let mut p = [0u8; 60];
                for byte in p.iter_mut() {
                    *byte = next();
                }
                p[0] = 0x40 | ihl;
                p[2..4].copy_from_slice(&u16::try_from(hlen).unwrap().to_be_bytes());
                p[8] = ttl;
                let p = &mut p[..hlen];
                Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
                let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
                assert_eq!(ip.decrement_ttl(), ttl - 1);
                let incremental = ip.header_checksum();
                ip.fill_checksum();
                // Exact equality: neither form ever produces 0xffff for a non-zero header.
                assert_eq!(incremental, ip.header_checksum(), "ttl {ttl}, ihl {ihl}");
                checked += 1;
            }
        }
        assert_eq!(checked, 255 * 64);
    }

    #[test]
    fn emitted_header_round_trips() {
        let mut buf = [0xa5u8; 30];
        emit_header(
            &mut buf,
            Ipv4Addr::new(10, 77, 0, 2),
            Ipv4Addr::new(10, 77, 0, 1),
            PROTO_ICMP,
            64,
            32,
            0xfac0,
        );
        // The captured reply's header: same fields, DF clear, same checksum.
        assert_eq!(&buf[..20], &ECHO_REPLY[..20]);
        assert_eq!(&buf[20..], &[0xa5; 10]);
        let mut udp = [0xa5u8; 28];
        emit_header(
            &mut udp,
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            PROTO_UDP,
            9,
            8,
            0x1234,
        );
        let ip = Ipv4Packet::new_checked(&udp[..]).unwrap();
        assert_eq!(
            (ip.total_len(), ip.ttl(), ip.protocol(), ip.ident()),
            (28, 9, PROTO_UDP, 0x1234)
        );
        assert!(!ip.dont_frag() && !ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8))
        );
    }

    /// BIG TCP: total length 0 means "the buffer's length" only when the caller says the
    /// frame is a TCP GSO frame with BIG TCP on, on a TCP packet longer than 65535 bytes that
    /// is no fragment; every other length 0 is `BadTotalLen`.
    #[test]
    fn big_tcp_total_length_zero() {
        let big = |len: usize, mutate: fn(&mut [u8])| {
            let mut p = ECHO_REQUEST.to_vec();
            p.resize(len, 0x5a);
            p[2..4].fill(0);
            p[9] = PROTO_TCP;
            mutate(&mut p);
            Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
            p
        };
        let p = big(70_000, |_| {});
        let ip = Ipv4Packet::new_checked_big(&p[..], true).unwrap();
        assert!(ip.is_big());
        assert_eq!((ip.packet_len(), ip.payload().len()), (70_000, 69_980));
        // (buffer length, mutation, big_tcp, what)
        type Case = (usize, fn(&mut [u8]), bool, &'static str);
        let refused: [Case; 6] = [
            (70_000, |_| {}, false, "BIG TCP off"),
            (65_535, |_| {}, true, "not longer than 64 KiB"),
            (1_000, |_| {}, true, "a small packet"),
            (70_000, |p| p[9] = PROTO_UDP, true, "UDP"),
            (70_000, |p| p[6] |= 0x20, true, "more fragments"),
            (70_000, |p| p[7] = 1, true, "a fragment offset"),
        ];
        for (len, mutate, on, what) in refused {
            let p = big(len, mutate);
            let got = Ipv4Packet::new_checked_big(&p[..], on).map(|_| ());
            assert_eq!(got, Err(WireError::BadTotalLen), "{what}");
        }
        assert_eq!(
            Ipv4Packet::new_checked(&p[..]).map(|_| ()),
            Err(WireError::BadTotalLen),
            "new_checked never takes one"
        );
    }
}
