//! `GsoFrame`: a GSO super-frame whose header has been checked against its bytes, and the
//! loop that writes its segments one at a time.

use super::{csum, tcp, udp, GsoError, MAX_TCP_SEGMENTS, MAX_UDP_SEGMENTS};
use crate::wire::vnet::{GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::wire::{ipv4, ipv6, VnetHdr};

/// TCP header without options.
const TCP_MIN_HEADER_LEN: usize = 20;
/// Where the TCP checksum sits in its header (`offsetof(struct tcphdr, check)`).
pub(super) const TCP_CSUM_OFFSET: u16 = 16;
/// UDP header length.
pub(super) const UDP_HEADER_LEN: usize = 8;
/// Where the UDP checksum sits in its header.
pub(super) const UDP_CSUM_OFFSET: u16 = 6;

/// The transport a super-frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// TSO: TCP segments.
    Tcp,
    /// USO: UDP datagrams.
    Udp,
}

/// A validated GSO super-frame: where its headers are and how it splits. Once
/// [`GsoFrame::parse`] has returned it, writing any of its segments cannot fail except for a
/// scratch buffer too small or an index past the last.
#[derive(Debug, Clone)]
pub struct GsoFrame<'a> {
    /// The frame, cut at the end of the IP packet (trailing padding dropped).
    frame: &'a [u8],
    /// Where the IP header starts.
    l3: usize,
    /// IPv6 (else IPv4).
    v6: bool,
    /// Where the TCP/UDP header starts.
    l4: usize,
    /// Where the headers end and the payload starts.
    hdr_end: usize,
    transport: Transport,
    /// Payload bytes per segment (`gso_size`).
    mss: usize,
    /// How many segments the frame gives (at least 1).
    count: usize,
}

fn truncated(what: &'static str, need: usize, frame_len: usize) -> GsoError {
    GsoError::Truncated {
        what,
        need,
        frame_len,
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

impl<'a> GsoFrame<'a> {
    /// Checks `vnet` against `frame` (IP header at `l3_offset`), as Linux
    /// `virtio_net_hdr_to_skb` and the GSO handlers do: a TCP or USO GSO type matching the IP
    /// version and transport, a `gso_size` of at least [`super::min_gso_size`], whole IP and L4
    /// headers, `hdr_len` inside the frame, `csum_start`/`csum_offset` on the L4 checksum when
    /// `NEEDS_CSUM` is set (USO requires it), no IPv4 fragment, no IPv6 extension header, and a
    /// sane segment count.
    pub fn parse(vnet: &VnetHdr, frame: &'a [u8], l3_offset: usize) -> Result<Self, GsoError> {
        let gso_type = vnet.gso_type;
        let (version, transport) = match gso_type & !GSO_ECN {
            GSO_NONE => return Err(GsoError::NotGso { gso_type }),
            GSO_TCPV4 => (Some(4), Transport::Tcp),
            GSO_TCPV6 => (Some(6), Transport::Tcp),
            GSO_UDP_L4 if gso_type & GSO_ECN == 0 => (None, Transport::Udp),
            _ => return Err(GsoError::UnsupportedType { gso_type }),
        };
        if vnet.gso_size == 0 {
            return Err(GsoError::ZeroGsoSize);
        }
        let min = super::min_gso_size(gso_type);
        if vnet.gso_size < min {
            return Err(GsoError::GsoSizeTooSmall {
                gso_size: vnet.gso_size,
                min,
            });
        }

        let ip = IpHeader::parse(frame, l3_offset)?;
        if version.is_some_and(|v| v != ip.version) {
            return Err(GsoError::VersionMismatch {
                gso_type,
                version: ip.version,
            });
        }
        let want_protocol = match transport {
            Transport::Tcp => ipv4::PROTO_TCP,
            Transport::Udp => ipv4::PROTO_UDP,
        };
        if ip.protocol != want_protocol {
            return Err(GsoError::ProtocolMismatch {
                gso_type,
                protocol: ip.protocol,
            });
        }
        let frame_len = frame.len();
        let frame = &frame[..ip.end];
        let l4 = l3_offset + ip.header_len;

        let (l4_len, csum_offset, what) = match transport {
            Transport::Tcp => {
                let need = l4 + TCP_MIN_HEADER_LEN;
                if need > frame.len() {
                    return Err(truncated("TCP header", need, frame.len()));
                }
                let doff = frame[l4 + 12] >> 4;
                if doff < 5 {
                    return Err(GsoError::BadTcpHeaderLen { doff });
                }
                (usize::from(doff) * 4, TCP_CSUM_OFFSET, "TCP options")
            }
            Transport::Udp => (UDP_HEADER_LEN, UDP_CSUM_OFFSET, "UDP header"),
        };
        let hdr_end = l4 + l4_len;
        if hdr_end > frame.len() {
            return Err(truncated(what, hdr_end, frame.len()));
        }
        if vnet.needs_csum() {
            if usize::from(vnet.csum_start) != l4 {
                return Err(GsoError::CsumStartMismatch {
                    csum_start: vnet.csum_start,
                    l4_start: l4,
                });
            }
            if vnet.csum_offset != csum_offset {
                return Err(GsoError::CsumOffsetMismatch {
                    csum_offset: vnet.csum_offset,
                    want: csum_offset,
                });
            }
        } else if transport == Transport::Udp {
            return Err(GsoError::UsoWithoutCsum);
        }

        // Only a hint (the headers come from the packet), but tun.c refuses one past the frame.
        if usize::from(vnet.hdr_len) > frame_len {
            return Err(GsoError::HdrLenOutOfBounds {
                hdr_len: vnet.hdr_len,
                frame_len,
            });
        }

        let mss = usize::from(vnet.gso_size);
        let count = (frame.len() - hdr_end).div_ceil(mss).max(1);
        let max = match transport {
            Transport::Tcp => MAX_TCP_SEGMENTS,
            Transport::Udp => MAX_UDP_SEGMENTS,
        };
        if count > max {
            return Err(GsoError::TooManySegments {
                segments: count,
                gso_size: vnet.gso_size,
                max,
            });
        }
        Ok(GsoFrame {
            frame,
            l3: l3_offset,
            v6: ip.version == 6,
            l4,
            hdr_end,
            transport,
            mss,
            count,
        })
    }

    /// How many segments the frame gives (1 when its payload fits one `gso_size`).
    pub fn segment_count(&self) -> usize {
        self.count
    }

    /// Length of the headers copied into every segment (L2 + IP + TCP/UDP, options included).
    pub fn header_len(&self) -> usize {
        self.hdr_end
    }

    /// Payload bytes of the whole super-frame.
    pub fn payload_len(&self) -> usize {
        self.frame.len() - self.hdr_end
    }

    /// The longest segment, headers included: what a scratch buffer must hold.
    pub fn max_segment_len(&self) -> usize {
        self.hdr_end + self.mss.min(self.payload_len())
    }

    /// Writes segment `index` (from 0) into the front of `out` and returns it.
    pub fn write_segment<'o>(&self, index: usize, out: &'o mut [u8]) -> Result<&'o [u8], GsoError> {
        if index >= self.count {
            return Err(GsoError::NoSuchSegment {
                index,
                count: self.count,
            });
        }
        // count ≤ MAX_TCP_SEGMENTS and mss ≤ 65535: no overflow, and start ≤ frame.len().
        let start = (self.hdr_end + index * self.mss).min(self.frame.len());
        let end = (start + self.mss).min(self.frame.len());
        let len = self.hdr_end + (end - start);
        let have = out.len();
        let seg = out
            .get_mut(..len)
            .ok_or(GsoError::ScratchTooSmall { need: len, have })?;
        seg[..self.hdr_end].copy_from_slice(&self.frame[..self.hdr_end]);
        seg[self.hdr_end..].copy_from_slice(&self.frame[start..end]);

        csum::fix_ip_header(seg, self.l3, self.v6, index);
        let last = index + 1 == self.count;
        match self.transport {
            Transport::Tcp => tcp::fix_header(seg, self.l4, index * self.mss, index == 0, last),
            Transport::Udp => udp::fix_header(seg, self.l4),
        }
        csum::fill_l4_checksum(seg, self.l3, self.v6, self.l4, self.transport);
        Ok(seg)
    }

    /// Writes every segment in turn into `scratch` and hands it to `emit`; returns how many
    /// were emitted. Checks first that `scratch` holds [`GsoFrame::max_segment_len`] bytes, so
    /// either every segment is emitted or (unless `emit` fails) none.
    pub fn segment_each<E: From<GsoError>>(
        &self,
        scratch: &mut [u8],
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let need = self.max_segment_len();
        if scratch.len() < need {
            return Err(GsoError::ScratchTooSmall {
                need,
                have: scratch.len(),
            }
            .into());
        }
        for index in 0..self.count {
            emit(self.write_segment(index, scratch)?)?;
        }
        Ok(self.count)
    }
}

/// What the segmenter needs from an IP header, checked.
pub(super) struct IpHeader {
    /// 4 or 6.
    pub version: u8,
    /// IPv4 IHL × 4, or 40.
    pub header_len: usize,
    /// IPv4 protocol or IPv6 next header.
    pub protocol: u8,
    /// Where the IP packet ends in the frame (IPv4 total length, IPv6 40 + payload length).
    pub end: usize,
}

impl IpHeader {
    /// Reads the IP header at `l3` in `frame`: a whole header, a length that fits the frame,
    /// and for IPv4 IHL ≥ 5 and no fragment. The header checksum is not checked: the router
    /// has done so, and every segment gets a fresh one.
    pub fn parse(frame: &[u8], l3: usize) -> Result<Self, GsoError> {
        let ip = frame
            .get(l3..)
            .filter(|ip| !ip.is_empty())
            .ok_or(truncated("IP header", l3.saturating_add(1), frame.len()))?;
        let version = ip[0] >> 4;
        let (header_len, ip_len, protocol) = match version {
            4 => {
                if ip.len() < ipv4::MIN_HEADER_LEN {
                    return Err(truncated(
                        "IPv4 header",
                        l3 + ipv4::MIN_HEADER_LEN,
                        frame.len(),
                    ));
                }
                let ihl_bytes = usize::from(ip[0] & 0x0f) * 4;
                if ihl_bytes < ipv4::MIN_HEADER_LEN {
                    return Err(GsoError::BadIpHeaderLen { ihl_bytes });
                }
                if ip.len() < ihl_bytes {
                    return Err(truncated("IPv4 options", l3 + ihl_bytes, frame.len()));
                }
                if be16(ip, 6) & 0x3fff != 0 {
                    return Err(GsoError::Fragment);
                }
                (ihl_bytes, be16(ip, 2), ip[9])
            }
            6 => {
                if ip.len() < ipv6::HEADER_LEN {
                    return Err(truncated("IPv6 header", l3 + ipv6::HEADER_LEN, frame.len()));
                }
                (ipv6::HEADER_LEN, ipv6::HEADER_LEN + be16(ip, 4), ip[6])
            }
            version => {
                return Err(GsoError::BadIpVersion {
                    version,
                    l3_offset: l3,
                })
            }
        };
        if ip_len < header_len || ip_len > ip.len() {
            return Err(GsoError::BadIpLength {
                ip_len,
                header_len,
                avail: ip.len(),
            });
        }
        Ok(IpHeader {
            version,
            header_len,
            protocol,
            end: l3 + ip_len,
        })
    }
}
