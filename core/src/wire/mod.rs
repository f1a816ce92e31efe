//! Packet formats: typed, zero-copy views over byte buffers, and the checksum they share.
//!
//! Every protocol is a view `XxxPacket<T: AsRef<[u8]>>` in the style of smoltcp's `wire`
//! module. Untrusted bytes enter only through `new_checked`, which validates every length the
//! accessors rely on; once it has returned `Ok`, no getter can panic. Setters live on
//! `T: AsMut<[u8]>`. The `emit_*`/`write_*` helpers build headers into buffers the caller owns
//! and document when they panic (a too-short buffer is a programming error there, not input).
//!
//! Nothing here knows about devices, sockets or forwarding policy; that lives in `link/` and
//! `stack/`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod pcap;
pub mod vnet;

pub use arp::{ArpPacket, ArpRepr};
pub use ethernet::{EthernetFrame, MacAddr};
pub use icmpv4::Icmpv4Packet;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use vnet::VnetHdr;

/// Why a buffer was rejected by a `new_checked` constructor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header (or the length a header field claims).
    #[error("packet truncated")]
    Truncated,
    /// The IP version field is not the one this view parses.
    #[error("bad IP version")]
    BadVersion,
    /// The header length field is below the protocol minimum.
    #[error("bad header length")]
    BadHeaderLen,
    /// A header checksum does not verify.
    #[error("bad checksum")]
    BadChecksum,
    /// The total length field is larger than the buffer or smaller than the header.
    #[error("bad total length")]
    BadTotalLen,
    /// A well-formed packet of a kind this module does not handle (e.g. non-Ethernet ARP).
    #[error("unsupported packet format")]
    Unsupported,
}

/// Result of parsing untrusted bytes.
pub type Result<T> = core::result::Result<T, WireError>;
