//! IPv4 headers (RFC 791), with the receive checks of Linux `ip_rcv_core`.

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

/// A view of an IPv4 packet (its buffer may run past `total_len`: Ethernet padding).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` after the checks Linux `ip_rcv_core` makes, in its order: room for a
    /// header, version 4, IHL ≥ 5, room for the whole header, a valid header checksum, and a
    /// total length within the buffer and not below the header.
    pub fn new_checked(buffer: T) -> Result<Self> {
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
        if total > b.len() || total < hlen {
            return Err(WireError::BadTotalLen);
        }
        Ok(Ipv4Packet { buffer })
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

    /// The payload: from the end of the header to `total_len`.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..usize::from(self.total_len())]
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

    /// Decrements the TTL and patches the checksum incrementally, as Linux
    /// `ip_decrease_ttl` does (RFC 1624); returns the new TTL.
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.b_mut();
        let mut check = u32::from(u16::from_be_bytes([b[10], b[11]]));
        check += 0x0100;
        let check = (check + u32::from(check >= 0xffff)) as u16;
        b[10..12].copy_from_slice(&check.to_be_bytes());
        b[8] = b[8].wrapping_sub(1);
        b[8]
    }
}

/// Writes a 20-byte IPv4 header at the start of `buf` for a payload of `payload_len` bytes,
/// with DF clear and the checksum filled.
///
/// # Panics
/// If `buf` is shorter than 20 bytes.
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    payload_len: usize,
    ident: u16,
) {
    let total = (MIN_HEADER_LEN + payload_len) as u16;
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

    /// An ICMP echo request 10.244.1.5 -> 10.244.1.6, ttl 64, DF, as `ping -c1` sent it
    /// (84 bytes; header checksum 0x4b0f... verified by the test below, not trusted).
    fn echo_request() -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x54, 0x3c, 0x9a, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 0x0a, 0xf4,
            0x01, 0x05, 0x0a, 0xf4, 0x01, 0x06,
        ];
        p.extend_from_slice(&[0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01]);
        p.extend((0..56).map(|i| i as u8));
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    #[test]
    fn valid_packet_parses() {
        let p = echo_request();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!((ip.header_len(), ip.total_len()), (20, 84));
        assert_eq!(
            (ip.ttl(), ip.protocol(), ip.ident()),
            (64, PROTO_ICMP, 0x3c9a)
        );
        assert!(ip.dont_frag() && !ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 244, 1, 6));
        assert_eq!(ip.payload().len(), 64);
        assert_eq!(checksum::checksum(ip.header()), 0);
    }

    #[test]
    fn ip_rcv_checks() {
        // (mutation of a valid 84-byte packet, expected result, which ip_rcv check)
        type Case = (fn(&mut Vec<u8>), Option<WireError>, &'static str);
        let table: [Case; 9] = [
            (
                |p| p.truncate(19),
                Some(WireError::Truncated),
                "shorter than a header",
            ),
            (|p| p[0] = 0x65, Some(WireError::BadVersion), "version 6"),
            (|p| p[0] = 0x44, Some(WireError::BadHeaderLen), "ihl 4"),
            (
                |p| {
                    p[0] = 0x4f;
                    p.truncate(40)
                },
                Some(WireError::Truncated),
                "ihl 15 beyond the buffer",
            ),
            (
                |p| p[10] ^= 1,
                Some(WireError::BadChecksum),
                "bad header checksum",
            ),
            (
                |p| {
                    p[3] = 0x55;
                    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum()
                },
                Some(WireError::BadTotalLen),
                "total length past the buffer",
            ),
            (
                |p| {
                    p[2] = 0;
                    p[3] = 19;
                    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum()
                },
                Some(WireError::BadTotalLen),
                "total length below the header",
            ),
            (
                |p| p.extend_from_slice(&[0; 6]),
                None,
                "Ethernet padding after the packet",
            ),
            (
                |p| {
                    p[0] = 0x46;
                    p.insert(20, 0);
                    p.insert(20, 0);
                    p.insert(20, 0);
                    p.insert(20, 1);
                    p[3] = 88;
                    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum()
                },
                None,
                "a 4-byte option",
            ),
        ];
        for (mutate, want, what) in table {
            let mut p = echo_request();
            mutate(&mut p);
            assert_eq!(Ipv4Packet::new_checked(&p[..]).err(), want, "{what}");
        }
    }

    #[test]
    fn incremental_ttl_update_equals_a_full_recompute() {
        let mut seed = 0x9e37_79b9u32;
        for ttl in 1..=255u8 {
            for _ in 0..40 {
                let mut p = echo_request();
                for i in (1..8).chain(12..20) {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    p[i] = seed as u8;
                }
                p[2] = 0;
                p[3] = 84;
                p[8] = ttl;
                Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
                let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
                assert_eq!(ip.decrement_ttl(), ttl - 1);
                let incremental = ip.header_checksum();
                ip.fill_checksum();
                let full = ip.header_checksum();
                // 0x0000 and 0xffff are the same value in ones' complement.
                assert!(
                    incremental == full
                        || (incremental | full) == 0xffff && (incremental & full) == 0,
                    "ttl {ttl}: incremental {incremental:#06x} vs full {full:#06x}"
                );
                assert!(Ipv4Packet::new_checked(&p[..]).is_ok());
            }
        }
    }

    #[test]
    fn emitted_header_round_trips() {
        let mut buf = [0xa5u8; 28];
        emit_header(
            &mut buf,
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            PROTO_UDP,
            9,
            8,
            0x1234,
        );
        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (ip.total_len(), ip.ttl(), ip.protocol(), ip.ident()),
            (28, 9, PROTO_UDP, 0x1234)
        );
        assert!(!ip.dont_frag());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(1, 2, 3, 4));
    }
}
