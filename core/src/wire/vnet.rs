//! The virtio-net header a TAP/TUN with `IFF_VNET_HDR` or a packet socket with
//! `PACKET_VNET_HDR` puts before every frame (`struct virtio_net_hdr`, 10 bytes,
//! little-endian on every host netstack runs on).

/// Header length netstack sets on every device (`TUNSETVNETHDRSZ`); packet sockets always
/// use this size.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial (from `csum_start`).
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;
/// Not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = 1;
/// UDP fragmentation offload (UFO).
pub const GSO_UDP: u8 = 3;
/// TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = 4;
/// UDP segmentation offload (USO).
pub const GSO_UDP_L4: u8 = 5;
/// ECN bit of `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `GSO_*` type, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksum starts (relative to the frame the device carries).
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start`.
    pub csum_offset: u16,
    /// Mergeable-buffer count: not carried by the 10-byte header netstack uses, so always 0
    /// after [`VnetHdr::parse`] and never written by [`VnetHdr::emit`].
    pub num_buffers: u16,
}

fn le16(b: &[u8; VNET_HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl VnetHdr {
    /// Reads a header.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le16(b, 2),
            gso_size: le16(b, 4),
            csum_start: le16(b, 6),
            csum_offset: le16(b, 8),
            num_buffers: 0,
        }
    }

    /// Writes the header.
    pub fn emit(&self, b: &mut [u8; VNET_HDR_LEN]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Is this a GSO super-frame?
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Does the L4 checksum still need completing?
    pub fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// Moves the header's offsets by `delta` bytes, for a frame moving between a TAP (offsets
    /// count the 14-byte Ethernet header) and a TUN (they do not): `csum_start` when
    /// `NEEDS_CSUM` is set, and `hdr_len` when it is non-zero on a GSO frame.
    ///
    /// The arithmetic wraps: an offset that pointed inside the removed header becomes a huge
    /// one that [`VnetHdr::csum_in_bounds`] (and the kernel) rejects, never a plausible one.
    pub fn shift_csum_start(&mut self, delta: i16) {
        if self.needs_csum() {
            self.csum_start = self.csum_start.wrapping_add_signed(delta);
        }
        if self.is_gso() && self.hdr_len != 0 {
            self.hdr_len = self.hdr_len.wrapping_add_signed(delta);
        }
    }

    /// Does the partial checksum (`csum_start + csum_offset` and its 2 bytes) lie inside a
    /// frame of `frame_len` bytes? Always true without `NEEDS_CSUM`. The same test the kernel
    /// makes in `virtio_net_hdr_to_skb`; a header from a pod must pass it before use.
    pub fn csum_in_bounds(&self, frame_len: usize) -> bool {
        !self.needs_csum()
            || usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 <= frame_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_little_endian() {
        // A TSO frame as a pod's kernel hands it to a TAP: NEEDS_CSUM, TCPv4, mss 1448,
        // csum at 14 + 20 (+16 for TCP).
        let raw = [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let h = VnetHdr::parse(&raw);
        assert_eq!(h.gso_size, 1448);
        assert_eq!((h.csum_start, h.csum_offset, h.hdr_len), (34, 16, 66));
        assert!(h.is_gso() && h.needs_csum());
        let mut out = [0xa5; VNET_HDR_LEN];
        h.emit(&mut out);
        assert_eq!(out, raw);
    }

    #[test]
    fn shifting_moves_only_meaningful_offsets() {
        let mut h = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            csum_start: 34,
            ..Default::default()
        };
        h.shift_csum_start(-14);
        assert_eq!((h.csum_start, h.hdr_len), (20, 52));
        let mut plain = VnetHdr::default();
        plain.shift_csum_start(14);
        assert_eq!(plain, VnetHdr::default());
        let ecn_only = VnetHdr {
            gso_type: GSO_ECN,
            ..Default::default()
        };
        assert!(!ecn_only.is_gso());
    }

    #[test]
    fn shifting_follows_the_flags() {
        // (header before, delta, (csum_start, hdr_len) after, what it covers)
        let table = [
            (
                (FLAG_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 34),
                -14,
                (20, 52),
                "TSO with ECN: both move",
            ),
            (
                (FLAG_NEEDS_CSUM, GSO_NONE, 66, 34),
                -14,
                (20, 66),
                "no GSO: hdr_len is only a hint, left alone",
            ),
            (
                (FLAG_NEEDS_CSUM, GSO_UDP_L4, 0, 20),
                14,
                (34, 0),
                "USO without hdr_len: TUN to TAP",
            ),
            (
                (FLAG_DATA_VALID, GSO_NONE, 0, 34),
                -14,
                (34, 0),
                "no NEEDS_CSUM: csum_start is meaningless, left alone",
            ),
            (
                (FLAG_NEEDS_CSUM, GSO_NONE, 0, 6),
                -14,
                (65528, 0),
                "offset inside the Ethernet header wraps out of range",
            ),
        ];
        for ((flags, gso_type, hdr_len, csum_start), delta, want, what) in table {
            let mut h = VnetHdr {
                flags,
                gso_type,
                hdr_len,
                csum_start,
                csum_offset: 6,
                ..Default::default()
            };
            h.shift_csum_start(delta);
            assert_eq!((h.csum_start, h.hdr_len), want, "{what}");
        }
    }

    #[test]
    fn partial_checksum_must_lie_inside_the_frame() {
        let h = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(h.csum_in_bounds(52));
        assert!(!h.csum_in_bounds(51));
        let mut wrapped = h;
        wrapped.csum_start = 65528;
        assert!(!wrapped.csum_in_bounds(65535));
        assert!(VnetHdr::default().csum_in_bounds(0));
    }
}
