//! Software GSO: cutting a GSO super-frame into the MTU-sized frames it stands for, and
//! completing a partial checksum, for an egress that can take neither.
//!
//! netstackd forwards 64 KB TSO frames whole wherever it can (design §4); this module is the
//! fallback, and it follows Linux (`tcp_gso_segment`, `__udp_gso_segment`, `inet_gso_segment`,
//! `ipv6_gso_segment`, `skb_checksum_help`):
//!
//! - TCP (`GSO_TCPV4`, `GSO_TCPV6`, with or without `GSO_ECN`): every segment carries a copy of
//!   the L2, IP and TCP headers (options included) and `gso_size` payload bytes, the last one
//!   the rest; `seq` advances by `gso_size` per segment; FIN and PSH stay only on the last
//!   segment, CWR only on the first.
//! - UDP (`GSO_UDP_L4`, USO): every datagram gets its own UDP header with its own length.
//! - IPv4: total length per segment, ID + 1 per segment (wrapping; virtio has no FIXEDID
//!   flag), header checksum recomputed. IPv6: payload length per segment.
//! - Every L4 checksum is computed in full from the pseudo-header, header and payload (not
//!   patched from the field's partial sum, so a lying field cannot poison it); a UDP checksum
//!   of 0 is sent as 0xffff.
//!
//! The header length comes from the packet itself (IP header length, TCP data offset), as the
//! kernel and wireguard-go compute it; `hdr_len` is only checked to lie inside the frame.
//! With `NEEDS_CSUM`, `csum_start` must be that L4 header and `csum_offset` its checksum field.
//!
//! **What the caller sends:** every output frame is a complete, ordinary packet: no GSO and
//! every checksum filled in. Send it with an all-zero virtio-net header (`VnetHdr::default()`:
//! `GSO_NONE`, no flags), so the receiving kernel verifies the checksums like any wire packet.
//! (`FLAG_DATA_VALID` would also be truthful and save the receiver that check; the zero header
//! is the recommended one, so a segmenter bug shows up as checksum drops, never as corrupted
//! data.) The same holds after [`complete_checksum`].
//!
//! Nothing here allocates: [`segment`] writes each segment into one scratch buffer the caller
//! owns and hands it to a callback. Offsets in the [`VnetHdr`] count from the start of the
//! frame given (an Ethernet frame on a TAP, with `l3_offset` 14; an IP packet on the TUN
//! uplink, with `l3_offset` 0), exactly as the device that produced the header counts them.
//!
//! A header that lies (no segment size or one below the protocol's minimum, offsets outside the
//! frame, a GSO type that does not match the packet, too many segments, truncated headers)
//! gives a [`GsoError`] before any segment is emitted; no input can make this module panic or
//! slice out of bounds. Shaping charges a super-frame as the segments it stands for
//! ([`wire_len`]).

#![forbid(unsafe_code)]

mod csum;
mod frame;
mod tcp;
mod udp;

pub use csum::complete_checksum;
pub use frame::GsoFrame;

use crate::wire::VnetHdr;

/// Most segments a TCP super-frame may stand for. Linux allows an MSS down to
/// `tcp_min_snd_mss` (48, less TCP options), at most ~1 400 segments per 64 KiB; anything above
/// this is a header asking for amplification, not TCP.
pub const MAX_TCP_SEGMENTS: usize = 2048;

/// The smallest `gso_size` a TCP super-frame may have: the least payload Linux puts in a
/// segment (`tcp_min_snd_mss`, 48 bytes, "reserves room for a full set of TCP options and 8
/// bytes of data"). A smaller one is a malformed header, not TCP: it is dropped, not segmented.
pub const MIN_TCP_GSO_SIZE: u16 = 8;

/// The smallest `gso_size` a USO super-frame may have: 1 (Linux takes any non-zero
/// `UDP_SEGMENT`; [`MAX_UDP_SEGMENTS`] bounds how many datagrams that makes).
pub const MIN_UDP_GSO_SIZE: u16 = 1;

/// The smallest `gso_size` GSO type `gso_type` may carry (1 for a type this module does not
/// segment: only 0 is refused there).
pub fn min_gso_size(gso_type: u8) -> u16 {
    match gso_type & !crate::wire::vnet::GSO_ECN {
        crate::wire::vnet::GSO_TCPV4 | crate::wire::vnet::GSO_TCPV6 => MIN_TCP_GSO_SIZE,
        _ => MIN_UDP_GSO_SIZE,
    }
}

/// The bytes a frame puts on the wire once segmented, which shaping charges: a GSO super-frame
/// stands for its segments, each with its own copy of the headers; any other frame (or one
/// whose header does not parse, which is dropped later) is its own length.
pub fn wire_len(vnet: &VnetHdr, frame: &[u8], l3_offset: usize) -> usize {
    if !vnet.is_gso() {
        return frame.len();
    }
    match GsoFrame::parse(vnet, frame, l3_offset) {
        Ok(g) => g.segment_count() * g.header_len() + g.payload_len(),
        Err(_) => frame.len(),
    }
}

/// Most datagrams a USO super-frame may stand for: Linux `UDP_MAX_SEGMENTS`, which
/// `virtio_net_hdr_to_skb` enforces on frames from a TAP.
pub const MAX_UDP_SEGMENTS: usize = 128;

/// Why a frame could not be segmented or checksummed. Every variant is a property of the frame
/// or its header (count it as malformed), except [`GsoError::ScratchTooSmall`] and
/// [`GsoError::NoSuchSegment`], which are the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// [`segment`] was given a frame whose header asks for no segmentation.
    #[error("not a GSO frame (gso_type {gso_type:#04x})")]
    NotGso {
        /// The header's `gso_type`.
        gso_type: u8,
    },
    /// [`complete_checksum`] was given a GSO frame: segment it instead.
    #[error("GSO frame (gso_type {gso_type:#04x}) given to complete_checksum: segment it")]
    IsGso {
        /// The header's `gso_type`.
        gso_type: u8,
    },
    /// A GSO type this module does not segment (UFO, unknown values, USO with the ECN bit).
    #[error("GSO type {gso_type:#04x} is not supported")]
    UnsupportedType {
        /// The header's `gso_type`.
        gso_type: u8,
    },
    /// `gso_size` is 0.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// `gso_size` is below the protocol's minimum ([`MIN_TCP_GSO_SIZE`]).
    #[error("gso_size {gso_size} is below the minimum of {min}")]
    GsoSizeTooSmall {
        /// The header's `gso_size`.
        gso_size: u16,
        /// The least the GSO type allows.
        min: u16,
    },
    /// The frame ends inside a header.
    #[error("{what} truncated: needs {need} bytes, the frame has {frame_len}")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Bytes the frame would need.
        need: usize,
        /// Bytes it has.
        frame_len: usize,
    },
    /// The IP version nibble is neither 4 nor 6.
    #[error("IP version {version} at offset {l3_offset}")]
    BadIpVersion {
        /// The version found.
        version: u8,
        /// Where the IP header was expected.
        l3_offset: usize,
    },
    /// IPv4 IHL below 5.
    #[error("IPv4 header length {ihl_bytes} is below 20")]
    BadIpHeaderLen {
        /// IHL × 4.
        ihl_bytes: usize,
    },
    /// The IP length field is below the header or past the end of the frame.
    #[error(
        "IP packet length {ip_len} does not fit: header {header_len}, {avail} bytes available"
    )]
    BadIpLength {
        /// Header plus payload as the IP header states it.
        ip_len: usize,
        /// The IP header's length.
        header_len: usize,
        /// Bytes from the IP header to the end of the frame.
        avail: usize,
    },
    /// An IPv4 fragment (MF or a fragment offset) claims to be a GSO frame.
    #[error("IPv4 fragment cannot be a GSO frame")]
    Fragment,
    /// The GSO type names another IP version than the packet has.
    #[error("GSO type {gso_type:#04x} on an IPv{version} packet")]
    VersionMismatch {
        /// The header's `gso_type`.
        gso_type: u8,
        /// The packet's IP version.
        version: u8,
    },
    /// The GSO type names another transport than the packet carries (or an IPv6 extension
    /// header stands between them, which netstackd does not segment).
    #[error("GSO type {gso_type:#04x} on a packet with protocol/next header {protocol}")]
    ProtocolMismatch {
        /// The header's `gso_type`.
        gso_type: u8,
        /// The IPv4 protocol or IPv6 next header.
        protocol: u8,
    },
    /// TCP data offset below 5.
    #[error("TCP data offset {doff} is below 5")]
    BadTcpHeaderLen {
        /// The data offset in 32-bit words.
        doff: u8,
    },
    /// `csum_start` is not where the L4 header starts.
    #[error("csum_start {csum_start} is not the L4 header at {l4_start}")]
    CsumStartMismatch {
        /// The header's `csum_start`.
        csum_start: u16,
        /// Where the packet's L4 header starts.
        l4_start: usize,
    },
    /// `csum_offset` is not the transport's checksum field.
    #[error("csum_offset {csum_offset} is not the checksum field at {want}")]
    CsumOffsetMismatch {
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// 16 for TCP, 6 for UDP.
        want: u16,
    },
    /// USO without `NEEDS_CSUM` (Linux refuses it too).
    #[error("USO frame without NEEDS_CSUM")]
    UsoWithoutCsum,
    /// The partial checksum lies outside the packet (or inside its IP header).
    #[error(
        "checksum at {csum_start}+{csum_offset} is outside the L4 part ({l4_min}..{packet_end})"
    )]
    CsumOutOfBounds {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// The first offset a checksum may start at (end of the fixed IP header).
        l4_min: usize,
        /// Where the packet ends in the frame.
        packet_end: usize,
    },
    /// `hdr_len` points past the end of the frame.
    #[error("hdr_len {hdr_len} is past the end of a {frame_len}-byte frame")]
    HdrLenOutOfBounds {
        /// The header's `hdr_len`.
        hdr_len: u16,
        /// The frame's length.
        frame_len: usize,
    },
    /// More segments than [`MAX_TCP_SEGMENTS`] / [`MAX_UDP_SEGMENTS`].
    #[error("{segments} segments of {gso_size} bytes exceed the limit of {max}")]
    TooManySegments {
        /// Segments the frame would give.
        segments: usize,
        /// The header's `gso_size`.
        gso_size: u16,
        /// The limit for this transport.
        max: usize,
    },
    /// The caller's scratch buffer cannot hold a segment.
    #[error("a {need}-byte segment does not fit the {have}-byte scratch buffer")]
    ScratchTooSmall {
        /// Bytes the segment needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// [`GsoFrame::write_segment`] was asked for a segment past the last.
    #[error("segment {index} asked of a frame with {count}")]
    NoSuchSegment {
        /// The index asked for.
        index: usize,
        /// How many segments there are.
        count: usize,
    },
}

/// Segments the GSO super-frame `frame` described by `vnet` (offsets counted from the start
/// of `frame`, the IP header at `l3_offset`): each segment is written into `scratch` and
/// handed to `emit` as a complete frame (same L2 header, full checksums), in order. Returns
/// the number of segments emitted.
///
/// The frame is validated whole before the first segment is written, so a bad frame emits
/// nothing. `scratch` must hold [`GsoFrame::max_segment_len`] bytes (L2 + L3 + L4 headers +
/// `gso_size`); a buffer as long as the frame always does (a worker's 128 KiB frame buffer,
/// say; 64 KiB is not enough for a one-segment frame of 65535 IP bytes behind Ethernet). An
/// error from `emit` stops the loop and is returned as is; a [`GsoError`] is converted into
/// `E` (use [`GsoFrame::parse`] and [`GsoFrame::segment_each`] to tell them apart).
pub fn segment<E: From<GsoError>>(
    vnet: &VnetHdr,
    frame: &[u8],
    l3_offset: usize,
    scratch: &mut [u8],
    emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    GsoFrame::parse(vnet, frame, l3_offset)?.segment_each(scratch, emit)
}

#[cfg(test)]
mod tests;
