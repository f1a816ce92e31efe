//! Packet formats, and nothing else: typed zero-copy views over byte buffers and the plain
//! functions that write headers. Nothing here knows about devices or sockets.
//!
//! Untrusted bytes enter only through `new_checked`; once it has passed, no accessor panics.

#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod vnet;

pub use arp::ArpPacket;
pub use ethernet::{EthernetFrame, MacAddr};
pub use ipv4::Ipv4Packet;
pub use vnet::VnetHdr;

/// Why a buffer is not a valid packet of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the header it must hold.
    #[error("truncated packet")]
    Truncated,
    /// IP version field is not the expected one.
    #[error("wrong IP version")]
    BadVersion,
    /// IPv4 header length below 20 bytes.
    #[error("bad IPv4 header length")]
    BadHeaderLen,
    /// Header checksum does not verify.
    #[error("bad header checksum")]
    BadChecksum,
    /// IPv4 total length beyond the buffer or below the header.
    #[error("bad IPv4 total length")]
    BadTotalLen,
    /// A well-formed packet of a kind not handled (e.g. ARP for another protocol).
    #[error("unsupported packet")]
    Unsupported,
}

/// Result of parsing.
pub type Result<T> = core::result::Result<T, WireError>;
