//! The capture filter (`netstackd ctl capture --filter`): a small subset of tcpdump's
//! language, `host ADDR`, `port N` and `tcp|udp|icmp|icmp6|arp`, combined with `and`. It is
//! parsed once when the capture starts and matched against each Ethernet frame before a
//! record is written.

use std::net::IpAddr;

/// One term of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// Source or destination address (IPv4, IPv6, or an ARP sender/target).
    Host(IpAddr),
    /// TCP or UDP source or destination port.
    Port(u16),
    /// An IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmp6).
    Proto(u8),
    /// An ARP frame.
    Arp,
}

/// A parsed capture filter: every term must match (empty: every frame).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureFilter(Vec<Term>);

const ETH_HLEN: usize = 14;

/// What a frame carries, as far as the filter looks.
struct Seen {
    addrs: [Option<IpAddr>; 2],
    proto: Option<u8>,
    ports: Option<[u16; 2]>,
    arp: bool,
}

impl CaptureFilter {
    /// Parses `host ADDR`, `port N`, `tcp`, `udp`, `icmp`, `icmp6`, `arp`, joined by `and`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        let mut words = text.split_whitespace().peekable();
        while let Some(word) = words.next() {
            let term = match word {
                "host" => {
                    let addr = words.next().ok_or("\"host\" needs an address")?;
                    Term::Host(
                        addr.parse()
                            .map_err(|_| format!("{addr:?} is not an IP address"))?,
                    )
                }
                "port" => {
                    let port = words.next().ok_or("\"port\" needs a number")?;
                    Term::Port(
                        port.parse()
                            .map_err(|_| format!("{port:?} is not a port (0-65535)"))?,
                    )
                }
                "tcp" => Term::Proto(6),
                "udp" => Term::Proto(17),
                "icmp" => Term::Proto(1),
                "icmp6" => Term::Proto(58),
                "arp" => Term::Arp,
                other => {
                    return Err(format!(
                        "unknown filter word {other:?} (host ADDR, port N, tcp, udp, icmp, icmp6, arp, joined by and)"
                    ))
                }
            };
            terms.push(term);
            match words.next() {
                None => {}
                Some("and") if words.peek().is_some() => {}
                Some("and") => return Err("\"and\" at the end of the filter".into()),
                Some(other) => return Err(format!("expected \"and\", found {other:?}")),
            }
        }
        Ok(CaptureFilter(terms))
    }

    /// Whether the filter keeps every frame.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Does the Ethernet `frame` pass? A frame too short for what a term looks at does not.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(seen) = look(frame) else {
            return false;
        };
        self.0.iter().all(|t| match t {
            Term::Host(a) => seen.addrs.contains(&Some(*a)),
            Term::Port(p) => seen.ports.is_some_and(|ps| ps.contains(p)),
            Term::Proto(n) => seen.proto == Some(*n),
            Term::Arp => seen.arp,
        })
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn v4(b: &[u8], at: usize) -> Option<IpAddr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(IpAddr::from(a))
}

fn v6(b: &[u8], at: usize) -> Option<IpAddr> {
    let a: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(IpAddr::from(a))
}

fn ports(b: &[u8], proto: u8, at: usize) -> Option<[u16; 2]> {
    matches!(proto, 6 | 17).then(|| Some([be16(b, at)?, be16(b, at + 2)?]))?
}

fn look(f: &[u8]) -> Option<Seen> {
    match be16(f, 12)? {
        0x0800 => {
            let ihl = usize::from(f.get(ETH_HLEN)? & 0x0f) * 4;
            let proto = *f.get(ETH_HLEN + 9)?;
            Some(Seen {
                addrs: [v4(f, ETH_HLEN + 12), v4(f, ETH_HLEN + 16)],
                proto: Some(proto),
                ports: ports(f, proto, ETH_HLEN + ihl),
                arp: false,
            })
        }
        0x86dd => {
            // Extension headers are not followed: the next header must be the transport.
            let proto = *f.get(ETH_HLEN + 6)?;
            Some(Seen {
                addrs: [v6(f, ETH_HLEN + 8), v6(f, ETH_HLEN + 24)],
                proto: Some(proto),
                ports: ports(f, proto, ETH_HLEN + 40),
                arp: false,
            })
        }
        0x0806 => Some(Seen {
            addrs: [v4(f, ETH_HLEN + 14), v4(f, ETH_HLEN + 24)],
            proto: None,
            ports: None,
            arp: true,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 frame (IHL 5) from 10.0.0.1 to 10.0.0.2 of `proto`, with ports
    /// 1234 -> 53 after the header.
    fn ipv4(proto: u8) -> Vec<u8> {
        let mut f = vec![0xa5; ETH_HLEN + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[ETH_HLEN] = 0x45;
        f[ETH_HLEN + 9] = proto;
        f[ETH_HLEN + 12..ETH_HLEN + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[ETH_HLEN + 16..ETH_HLEN + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[ETH_HLEN + 20..ETH_HLEN + 24].copy_from_slice(&[0x04, 0xd2, 0x00, 0x35]);
        f
    }

    fn ipv6_udp() -> Vec<u8> {
        let mut f = vec![0xa5; ETH_HLEN + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[ETH_HLEN + 6] = 17;
        let src: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        f[ETH_HLEN + 8..ETH_HLEN + 24].copy_from_slice(&src.octets());
        f[ETH_HLEN + 40..ETH_HLEN + 44].copy_from_slice(&[0x00, 0x35, 0x04, 0xd2]);
        f
    }

    fn arp() -> Vec<u8> {
        let mut f = vec![0; ETH_HLEN + 28];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[ETH_HLEN + 14..ETH_HLEN + 18].copy_from_slice(&[10, 0, 0, 1]);
        f[ETH_HLEN + 24..ETH_HLEN + 28].copy_from_slice(&[10, 0, 0, 9]);
        f
    }

    #[test]
    fn filters_keep_only_matching_frames() {
        // (filter, frame, kept?)
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("", ipv4(6), true),
            ("udp", ipv4(17), true),
            ("udp", ipv4(6), false),
            ("tcp and port 53", ipv4(6), true),
            ("icmp and port 53", ipv4(1), false), // ICMP has no ports
            ("host 10.0.0.2", ipv4(1), true),     // destination
            ("host 10.0.0.1 and udp", ipv4(17), true),
            ("host 10.0.0.3", ipv4(17), false),
            ("port 1234", ipv6_udp(), true),
            ("host fd00::1 and udp", ipv6_udp(), true),
            ("icmp6", ipv6_udp(), false),
            ("arp", arp(), true),
            ("host 10.0.0.9", arp(), true), // the ARP target
            ("udp", arp(), false),
            ("arp", ipv4(17), false),
            ("udp", ipv4(17)[..ETH_HLEN + 5].to_vec(), false), // truncated: no protocol
        ];
        for (text, frame, kept) in cases {
            let f = CaptureFilter::parse(text).unwrap();
            assert_eq!(f.matches(&frame), kept, "{text:?}");
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        // (filter, error text)
        let cases = [
            ("host", "\"host\" needs an address"),
            ("host 10.0.0", "\"10.0.0\" is not an IP address"),
            ("port 70000", "\"70000\" is not a port"),
            ("port", "\"port\" needs a number"),
            ("udp or tcp", "expected \"and\", found \"or\""),
            ("udp and", "\"and\" at the end"),
            ("src host 1.2.3.4", "unknown filter word \"src\""),
        ];
        for (text, want) in cases {
            let e = CaptureFilter::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
