//! ARP for IPv4 over Ethernet (RFC 826): the `ArpPacket` view (with the in-place proxy
//! reply netstackd answers pods with) and `ArpRepr` for building packets.

use std::net::Ipv4Addr;

use super::ethernet::{MacAddr, ETHERTYPE_IPV4};
use super::{Result, WireError};

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;
/// Request.
pub const OP_REQUEST: u16 = 1;
/// Reply.
pub const OP_REPLY: u16 = 2;

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn mac_at(b: &[u8], at: usize) -> MacAddr {
    MacAddr([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]])
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` if it is an Ethernet/IPv4 ARP packet (htype 1, ptype IPv4, 6/4 lengths).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        let htype = u16::from_be_bytes([b[0], b[1]]);
        let ptype = u16::from_be_bytes([b[2], b[3]]);
        if htype != 1 || ptype != ETHERTYPE_IPV4 || b[4] != 6 || b[5] != 4 {
            return Err(WireError::Unsupported);
        }
        Ok(ArpPacket { buffer })
    }

    /// Operation (`OP_REQUEST`, `OP_REPLY`).
    pub fn operation(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// Sender hardware address.
    pub fn sender_mac(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), 8)
    }

    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), 14)
    }

    /// Target hardware address.
    pub fn target_mac(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), 18)
    }

    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), 24)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the operation.
    pub fn set_operation(&mut self, op: u16) {
        self.buffer.as_mut()[6..8].copy_from_slice(&op.to_be_bytes());
    }

    /// Sets the sender hardware address.
    pub fn set_sender_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[8..14].copy_from_slice(&mac.0);
    }

    /// Sets the sender protocol address.
    pub fn set_sender_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[14..18].copy_from_slice(&ip.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[18..24].copy_from_slice(&mac.0);
    }

    /// Sets the target protocol address.
    pub fn set_target_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[24..28].copy_from_slice(&ip.octets());
    }

    /// Turns a request into its reply: `responder_mac` answers for the asked address
    /// (`target_ip`), sent back to the asker. The operation becomes `OP_REPLY`; the
    /// htype/ptype/hlen/plen fields stay as `new_checked` found them.
    pub fn make_reply_in_place(&mut self, responder_mac: MacAddr) {
        let (asker_mac, asker_ip, asked_ip) =
            (self.sender_mac(), self.sender_ip(), self.target_ip());
        self.set_operation(OP_REPLY);
        self.set_sender_mac(responder_mac);
        self.set_sender_ip(asked_ip);
        self.set_target_mac(asker_mac);
        self.set_target_ip(asker_ip);
    }
}

/// The fields of an Ethernet/IPv4 ARP packet, for building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// `OP_REQUEST` or `OP_REPLY`.
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Reads the fields of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Self {
        ArpRepr {
            operation: packet.operation(),
            sender_mac: packet.sender_mac(),
            sender_ip: packet.sender_ip(),
            target_mac: packet.target_mac(),
            target_ip: packet.target_ip(),
        }
    }

    /// Writes the whole 28-byte packet (htype 1, ptype IPv4, lengths 6/4) at the start of
    /// `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`PACKET_LEN`]; callers pass their own frame buffers.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..PACKET_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        let mut p = ArpPacket { buffer: b };
        p.set_operation(self.operation);
        p.set_sender_mac(self.sender_mac);
        p.set_sender_ip(self.sender_ip);
        p.set_target_mac(self.target_mac);
        p.set_target_ip(self.target_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 10.77.0.2? Tell 10.77.0.1" from 02:00:0a:4d:00:01, as Linux sent it on a veth
    /// (the ARP part of a frame captured with an AF_PACKET socket).
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01, 0x0a,
        0x4d, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x4d, 0x00, 0x02,
    ];

    /// The reply the peer kernel (02:00:0a:4d:00:02, 10.77.0.2) sent to `REQUEST`.
    static REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x00, 0x0a, 0x4d, 0x00, 0x02, 0x0a,
        0x4d, 0x00, 0x02, 0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01, 0x0a, 0x4d, 0x00, 0x01,
    ];

    const ASKER_MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01]);
    const PEER_MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0x4d, 0x00, 0x02]);

    #[test]
    fn captured_request_parses() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(
            ArpRepr::parse(&p),
            ArpRepr {
                operation: OP_REQUEST,
                sender_mac: ASKER_MAC,
                sender_ip: Ipv4Addr::new(10, 77, 0, 1),
                target_mac: MacAddr::default(),
                target_ip: Ipv4Addr::new(10, 77, 0, 2),
            }
        );
    }

    #[test]
    fn reply_in_place_matches_the_kernels_reply() {
        let mut buf = REQUEST;
        ArpPacket::new_checked(&mut buf[..])
            .unwrap()
            .make_reply_in_place(PEER_MAC);
        assert_eq!(buf, REPLY);
    }

    #[test]
    fn repr_round_trips_into_a_dirty_buffer() {
        for captured in [&REQUEST, &REPLY] {
            let repr = ArpRepr::parse(&ArpPacket::new_checked(&captured[..]).unwrap());
            let mut out = [0xa5u8; PACKET_LEN + 2];
            repr.emit(&mut out);
            assert_eq!(&out[..PACKET_LEN], &captured[..]);
            assert_eq!(&out[PACKET_LEN..], &[0xa5, 0xa5]);
        }
    }

    #[test]
    fn setters_write_their_field() {
        let mut buf = REQUEST;
        let mut p = ArpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_operation(OP_REPLY);
        p.set_sender_mac(PEER_MAC);
        p.set_sender_ip(Ipv4Addr::new(10, 77, 0, 2));
        p.set_target_mac(ASKER_MAC);
        p.set_target_ip(Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(buf, REPLY);
    }

    #[test]
    fn malformed_arp_is_rejected() {
        // (mutation of the captured request, expected outcome, what it covers)
        type Case = (fn(&mut Vec<u8>), Result<()>, &'static str);
        let table: [Case; 7] = [
            (
                |b| b.truncate(27),
                Err(WireError::Truncated),
                "one byte short",
            ),
            (|b| b.clear(), Err(WireError::Truncated), "empty"),
            (|b| b[1] = 6, Err(WireError::Unsupported), "htype IEEE 802"),
            (
                |b| b[2] = 0x86,
                Err(WireError::Unsupported),
                "ptype not IPv4",
            ),
            (|b| b[4] = 8, Err(WireError::Unsupported), "hlen not 6"),
            (|b| b[5] = 16, Err(WireError::Unsupported), "plen not 4"),
            (
                |b| b.extend_from_slice(&[0; 18]),
                Ok(()),
                "Ethernet padding to 60 bytes",
            ),
        ];
        for (mutate, want, what) in table {
            let mut b = REQUEST.to_vec();
            mutate(&mut b);
            let got = ArpPacket::new_checked(&b[..]).map(|_| ());
            assert_eq!(got, want, "{what}");
        }
        for len in 0..PACKET_LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
    }
}
