//! ARP for IPv4 over Ethernet (RFC 826).

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

    /// Turns a request into its reply, answered by `responder_mac` for the asked address.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 10.244.1.1? Tell 10.244.1.5", as Linux sends it (captured with tcpdump -xx).
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 0x0a,
        0xf4, 0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xf4, 0x01, 0x01,
    ];

    #[test]
    fn request_parses() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.operation(), OP_REQUEST);
        assert_eq!(p.sender_mac().to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(p.sender_ip(), Ipv4Addr::new(10, 244, 1, 5));
        assert!(p.target_mac().is_zero());
        assert_eq!(p.target_ip(), Ipv4Addr::new(10, 244, 1, 1));
    }

    #[test]
    fn reply_in_place() {
        let mut buf = REQUEST;
        let gw = MacAddr([2, 0x4e, 0x53, 0, 0, 1]);
        ArpPacket::new_checked(&mut buf[..])
            .unwrap()
            .make_reply_in_place(gw);
        let r = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(r.operation(), OP_REPLY);
        assert_eq!(
            (r.sender_mac(), r.sender_ip()),
            (gw, Ipv4Addr::new(10, 244, 1, 1))
        );
        assert_eq!(r.target_mac().to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(r.target_ip(), Ipv4Addr::new(10, 244, 1, 5));
    }

    #[test]
    fn malformed_arp_is_rejected() {
        // (mutation, expected error, what it covers)
        type Case = (fn(&mut [u8; 28]), WireError, &'static str);
        let table: [Case; 4] = [
            (|b| b[1] = 6, WireError::Unsupported, "htype not Ethernet"),
            (|b| b[2] = 0x86, WireError::Unsupported, "ptype not IPv4"),
            (|b| b[4] = 8, WireError::Unsupported, "hlen not 6"),
            (|b| b[5] = 16, WireError::Unsupported, "plen not 4"),
        ];
        for (mutate, err, what) in table {
            let mut b = REQUEST;
            mutate(&mut b);
            assert_eq!(ArpPacket::new_checked(&b[..]).unwrap_err(), err, "{what}");
        }
        for len in 0..PACKET_LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
    }
}
