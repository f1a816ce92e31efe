//! Ethernet II frames and MAC addresses: the `EthernetFrame` view, `MacAddr` (shown, parsed
//! and serialized as `aa:bb:cc:dd:ee:ff`) and `write_header` for frames netstackd builds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Result, WireError};

/// Ethernet header length.
pub const HEADER_LEN: usize = 14;
/// IPv4 ethertype.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP ethertype.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IPv6 ethertype.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A MAC address; shown and serialized as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Is this the broadcast address?
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Is the group bit set (multicast or broadcast)?
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Is this an individual (unicast) address?
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Is this 00:00:00:00:00:00?
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six colon-separated hex octets")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = || MacParseError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            // Check the digits first: from_str_radix alone would also take "+a".
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct MacVisitor;
        impl serde::de::Visitor<'_> for MacVisitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address like \"0a:58:0a:f4:01:05\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(MacVisitor)
    }
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` if it holds at least a header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// Wraps `buffer` without checks, for buffers this process built; accessors panic if it is
    /// shorter than [`HEADER_LEN`].
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        let b = self.buffer.as_ref();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        let b = self.buffer.as_ref();
        MacAddr([b[6], b[7], b[8], b[9], b[10], b[11]])
    }

    /// Ethertype.
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[0..6].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[6..12].copy_from_slice(&mac.0);
    }

    /// Sets the ethertype.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[12..14].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// Writes an Ethernet header at the start of `buf`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`]; callers pass their own frame buffers.
pub fn write_header(buf: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst.0);
    buf[6..12].copy_from_slice(&src.0);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole ARP request frame as Linux sent it on a veth (captured with an AF_PACKET
    /// socket): broadcast from 02:00:0a:4d:00:01, "who has 10.77.0.2? tell 10.77.0.1".
    static ARP_REQUEST_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01, 0x0a, 0x4d,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x4d, 0x00, 0x02,
    ];

    #[test]
    fn captured_frame_parses() {
        let f = EthernetFrame::new_checked(&ARP_REQUEST_FRAME[..]).unwrap();
        assert!(f.dst().is_broadcast() && f.dst().is_multicast());
        assert_eq!(f.src(), MacAddr([0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01]));
        assert!(f.src().is_unicast());
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(f.payload(), &ARP_REQUEST_FRAME[HEADER_LEN..]);
        assert_eq!(f.into_inner().len(), 42);
    }

    #[test]
    fn header_round_trips_through_write_header() {
        let f = EthernetFrame::new_checked(&ARP_REQUEST_FRAME[..]).unwrap();
        let mut out = [0xa5u8; 42];
        write_header(&mut out, f.dst(), f.src(), f.ethertype());
        out[HEADER_LEN..].copy_from_slice(f.payload());
        assert_eq!(out, ARP_REQUEST_FRAME);
    }

    #[test]
    fn setters_rewrite_only_their_field() {
        let mut out = ARP_REQUEST_FRAME;
        let mut g = EthernetFrame::new_checked(&mut out[..]).unwrap();
        g.set_dst(MacAddr([2, 0, 0, 0, 0, 9]));
        g.set_src(MacAddr([2, 0, 0, 0, 0, 8]));
        g.set_ethertype(ETHERTYPE_IPV6);
        g.payload_mut()[0] = 0x77;
        assert_eq!(
            &out[..15],
            &[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8, 0x86, 0xdd, 0x77]
        );
        assert_eq!(&out[15..], &ARP_REQUEST_FRAME[15..]);
    }

    #[test]
    fn truncated_frames_are_rejected() {
        // Every length below a header is Truncated; exactly a header is a frame with no payload.
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_REQUEST_FRAME[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
        let bare = EthernetFrame::new_checked(&ARP_REQUEST_FRAME[..HEADER_LEN]).unwrap();
        assert!(bare.payload().is_empty());
    }

    #[test]
    fn mac_text_form() {
        let m: MacAddr = "0A:58:0a:F4:01:05".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(format!("{m:?}"), "0a:58:0a:f4:01:05");
        assert!(m.is_unicast() && !m.is_zero() && !m.is_broadcast());
        assert!(MacAddr::default().is_zero());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
        // (input, what it covers)
        for (bad, what) in [
            ("", "empty"),
            ("0a:58:0a:f4:01", "five octets"),
            ("0a:58:0a:f4:01:05:06", "seven octets"),
            ("0a:58:0a:f4:01:05:", "trailing colon"),
            ("0a:58:0a:f4:01:5", "one-digit octet"),
            ("0a:58:0a:f4:01:005", "three-digit octet"),
            ("zz:58:0a:f4:01:05", "not hex"),
            ("+a:58:0a:f4:01:05", "sign that from_str_radix accepts"),
            ("0a-58-0a-f4-01-05", "dashes"),
            (" 0a:58:0a:f4:01:05", "leading space"),
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(err, MacParseError(bad.to_owned()), "{what}");
        }
        assert_eq!(
            "nope".parse::<MacAddr>().unwrap_err().to_string(),
            "invalid MAC address \"nope\": expected six colon-separated hex octets"
        );
    }

    #[test]
    fn mac_serde_is_the_text_form() {
        let m = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"0a:58:0a:f4:01:05\"");
        assert_eq!(
            serde_json::from_str::<MacAddr>("\"0A:58:0A:F4:01:05\"").unwrap(),
            m
        );
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
        assert!(serde_json::from_str::<MacAddr>("[10, 88, 10, 244, 1, 5]").is_err());
    }
}
