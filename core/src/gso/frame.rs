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
    /// Bytes between the IP header and the TCP header that no segment keeps: a BIG TCP
    /// frame's IPv6 jumbo header (8), else 0.
    ext: usize,
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

        let ip = IpHeader::parse(frame, l3_offset, transport == Transport::Tcp)?;
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
        let l4 = l3_offset + ip.header_len + ip.ext_len;

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
            ext: ip.ext_len,
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

    /// Length of the headers copied into every segment (L2 + IP + TCP/UDP, options included;
    /// a BIG TCP frame's jumbo header is not).
    pub fn header_len(&self) -> usize {
        self.hdr_end - self.ext
    }

    /// Is this a BIG TCP frame (an IP packet longer than 65535 bytes)?
    pub fn is_big(&self) -> bool {
        self.frame.len() - self.l3 > MAX_IP_LEN
    }

    /// Payload bytes of the whole super-frame.
    pub fn payload_len(&self) -> usize {
        self.frame.len() - self.hdr_end
    }

    /// The longest segment, headers included: what a scratch buffer must hold.
    pub fn max_segment_len(&self) -> usize {
        self.header_len() + self.mss.min(self.payload_len())
    }

    /// Copies the headers into `seg` (which is `header_len()` + payload long) less a BIG TCP
    /// frame's jumbo header (the IPv6 next header then names TCP), then `payload`.
    fn copy_headers_and(&self, seg: &mut [u8], payload: std::ops::Range<usize>) {
        let ip_end = self.l4 - self.ext;
        let out_hdr_end = self.header_len();
        seg[..ip_end].copy_from_slice(&self.frame[..ip_end]);
        seg[ip_end..out_hdr_end].copy_from_slice(&self.frame[self.l4..self.hdr_end]);
        if self.ext != 0 {
            seg[self.l3 + 6] = ipv4::PROTO_TCP;
        }
        seg[out_hdr_end..].copy_from_slice(&self.frame[payload]);
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
        let len = self.header_len() + (end - start);
        let have = out.len();
        let seg = out
            .get_mut(..len)
            .ok_or(GsoError::ScratchTooSmall { need: len, have })?;
        self.copy_headers_and(seg, start..end);

        let l4 = self.l4 - self.ext;
        csum::fix_ip_header(seg, self.l3, self.v6, index);
        let last = index + 1 == self.count;
        match self.transport {
            Transport::Tcp => tcp::fix_header(seg, l4, index * self.mss, index == 0, last),
            Transport::Udp => udp::fix_header(seg, l4),
        }
        csum::fill_l4_checksum(seg, self.l3, self.v6, l4, self.transport);
        Ok(seg)
    }

    /// Payload bytes per chunk when a BIG TCP frame is cut into GSO frames of at most 64 KiB
    /// ([`Self::write_chunk`]): as many whole segments as fit an IP packet of 65535 bytes.
    fn chunk_payload(&self) -> usize {
        let headers = self.header_len() - self.l3;
        (MAX_IP_LEN.saturating_sub(headers) / self.mss).max(1) * self.mss
    }

    /// How many GSO frames of at most 64 KiB [`Self::write_chunk`] cuts this frame into (1
    /// for a frame that is no BIG TCP frame).
    pub fn chunk_count(&self) -> usize {
        self.payload_len().div_ceil(self.chunk_payload()).max(1)
    }

    /// Writes chunk `index` (from 0) of a TCP super-frame into the front of `out`: a GSO frame
    /// of at most 65535 IP bytes standing for the next whole segments, as a device without BIG
    /// TCP takes it (a TAP, the TUN, a guest), and returns its virtio-net header and bytes.
    /// Each chunk carries a copy of the headers (a jumbo header dropped) with its own IP
    /// length, the IPv4 ID its first segment would have (+ the segments before it), the TCP
    /// sequence number of its first byte, FIN and PSH only on the last chunk and CWR only on
    /// the first, and in the TCP checksum field the pseudo-header sum over its own length
    /// (`NEEDS_CSUM`), so that the device segments it exactly as it would have segmented the
    /// whole. A chunk of one segment or less is a complete segment (full checksum, an all-zero
    /// header), as [`Self::write_segment`] writes it.
    pub fn write_chunk<'o>(
        &self,
        index: usize,
        out: &'o mut [u8],
    ) -> Result<(VnetHdr, &'o [u8]), GsoError> {
        let count = self.chunk_count();
        if index >= count || self.transport != Transport::Tcp {
            return Err(GsoError::NoSuchSegment { index, count });
        }
        let per = self.chunk_payload();
        let start = (self.hdr_end + index * per).min(self.frame.len());
        let end = (start + per).min(self.frame.len());
        let len = self.header_len() + (end - start);
        let have = out.len();
        let seg = out
            .get_mut(..len)
            .ok_or(GsoError::ScratchTooSmall { need: len, have })?;
        self.copy_headers_and(seg, start..end);

        let l4 = self.l4 - self.ext;
        csum::fix_ip_header(seg, self.l3, self.v6, index * (per / self.mss));
        let last = index + 1 == count;
        tcp::fix_header(seg, l4, index * per, index == 0, last);
        if end - start <= self.mss {
            csum::fill_l4_checksum(seg, self.l3, self.v6, l4, Transport::Tcp);
            return Ok((VnetHdr::default(), seg));
        }
        csum::fill_pseudo_header_sum(seg, self.l3, self.v6, l4);
        let vnet = VnetHdr {
            flags: crate::wire::vnet::FLAG_NEEDS_CSUM,
            gso_type: if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            // Every length here is below 65536: a chunk is at most 65535 IP bytes.
            hdr_len: u16::try_from(self.header_len()).unwrap_or(u16::MAX),
            gso_size: u16::try_from(self.mss).unwrap_or(u16::MAX),
            csum_start: u16::try_from(l4).unwrap_or(u16::MAX),
            csum_offset: TCP_CSUM_OFFSET,
            num_buffers: 0,
        };
        Ok((vnet, seg))
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

/// The longest IP packet a length field can state; longer is a BIG TCP frame.
const MAX_IP_LEN: usize = 65535;

/// What the segmenter needs from an IP header, checked.
pub(super) struct IpHeader {
    /// 4 or 6.
    pub version: u8,
    /// IPv4 IHL × 4, or 40.
    pub header_len: usize,
    /// A BIG TCP frame's IPv6 jumbo header between the IP and the TCP header (8), else 0.
    pub ext_len: usize,
    /// IPv4 protocol or IPv6 next header.
    pub protocol: u8,
    /// Where the IP packet ends in the frame (IPv4 total length, IPv6 40 + payload length).
    pub end: usize,
}

impl IpHeader {
    /// Reads the IP header at `l3` in `frame`: a whole header, a length that fits the frame,
    /// and for IPv4 IHL ≥ 5 and no fragment. The header checksum is not checked: the router
    /// has done so, and every segment gets a fresh one. With `big_tcp` (a TCP GSO frame), an
    /// IP length of 0 on a packet longer than 65535 bytes means the rest of the frame (a BIG
    /// TCP frame, which the router let through only with `--big-tcp`), and an IPv6 jumbo
    /// header in front of its TCP header is skipped.
    pub fn parse(frame: &[u8], l3: usize, big_tcp: bool) -> Result<Self, GsoError> {
        let ip = frame
            .get(l3..)
            .filter(|ip| !ip.is_empty())
            .ok_or(truncated("IP header", l3.saturating_add(1), frame.len()))?;
        let version = ip[0] >> 4;
        let (header_len, ip_len, protocol, ext_len) = match version {
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
                let len = match be16(ip, 2) {
                    0 if big_tcp && ip.len() > MAX_IP_LEN => ip.len(),
                    n => n,
                };
                (ihl_bytes, len, ip[9], 0)
            }
            6 => {
                if ip.len() < ipv6::HEADER_LEN {
                    return Err(truncated("IPv6 header", l3 + ipv6::HEADER_LEN, frame.len()));
                }
                let payload = ip.len() - ipv6::HEADER_LEN;
                match (be16(ip, 4), ip[6]) {
                    (0, ipv6::NEXT_TCP) if big_tcp && payload > MAX_IP_LEN => {
                        (ipv6::HEADER_LEN, ip.len(), ip[6], 0)
                    }
                    (0, ipv6::NEXT_HOP_BY_HOP)
                        if big_tcp
                            && payload > MAX_IP_LEN
                            && ipv6::jumbo_hbh_len(ip) == Some(payload) =>
                    {
                        (
                            ipv6::HEADER_LEN,
                            ip.len(),
                            ipv6::NEXT_TCP,
                            ipv6::JUMBO_HBH_LEN,
                        )
                    }
                    (n, next) => (ipv6::HEADER_LEN, ipv6::HEADER_LEN + n, next, 0),
                }
            }
            version => {
                return Err(GsoError::BadIpVersion {
                    version,
                    l3_offset: l3,
                })
            }
        };
        if ip_len < header_len + ext_len || ip_len > ip.len() {
            return Err(GsoError::BadIpLength {
                ip_len,
                header_len,
                avail: ip.len(),
            });
        }
        Ok(IpHeader {
            version,
            header_len,
            ext_len,
            protocol,
            end: l3 + ip_len,
        })
    }
}
