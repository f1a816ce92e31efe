//! The software GSO segmenter against real TSO/USO frames the Linux kernel wrote into a TAP
//! (captured by `tests/data/capture_tso.py`: 10-byte virtio-net header + Ethernet frame), with
//! an independent parser as the judge: the segments go into a pcap file that tshark reads back
//! with checksum validation on. Every IP, TCP and UDP checksum must be good, TCP sequence
//! numbers contiguous, every segment at most `gso_size`, the flags where Linux puts them, IPv4
//! IDs consecutive, options copied, and the payloads reassembled equal to the original.
//!
//! tshark is installed by `scripts/deps.sh`; without it this test fails rather than skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use netstack_core::gso::{self, GsoError};
use netstack_core::wire::vnet::{self, VNET_HDR_LEN};
use netstack_core::wire::VnetHdr;

const ETH_LEN: usize = 14;
/// The fixtures' virtio-net header: `struct virtio_net_hdr`, 10 bytes.
const FIXTURE_VNET_LEN: usize = 10;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;

/// A pcap file in the temp dir, removed when the test ends (passing or not).
struct TempPcap(PathBuf);

impl Drop for TempPcap {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_pcap(name: &str, frames: &[Vec<u8>]) -> TempPcap {
    let path =
        std::env::temp_dir().join(format!("netstackd-gso-{}-{name}.pcap", std::process::id()));
    let mut b = Vec::new();
    // Classic pcap, microsecond timestamps, snaplen 262144, LINKTYPE_ETHERNET.
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&262_144u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        b.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        b.extend_from_slice(&(i as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(f);
    }
    std::fs::write(&path, b).expect("write pcap");
    TempPcap(path)
}

const FIELDS: &[&str] = &[
    "frame.len",
    "ip.checksum.status",
    "ip.id",
    "ip.len",
    "ipv6.plen",
    "tcp.checksum.status",
    "tcp.seq_raw",
    "tcp.flags",
    "tcp.len",
    "tcp.options",
    "tcp.payload",
    "udp.checksum.status",
    "udp.length",
    "udp.payload",
];

/// One packet as tshark decoded it: field name → value (empty when absent).
struct Row(Vec<String>);

impl Row {
    fn get(&self, field: &str) -> &str {
        let i = FIELDS
            .iter()
            .position(|f| *f == field)
            .expect("known field");
        self.0.get(i).map_or("", String::as_str)
    }

    fn num(&self, field: &str) -> u64 {
        let v = self.get(field);
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        };
        parsed.unwrap_or_else(|_| panic!("{field} = {v:?} is not a number"))
    }
}

fn tshark(pcap: &Path) -> Vec<Row> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap);
    for o in [
        "tcp.check_checksum:TRUE",
        "ip.check_checksum:TRUE",
        "udp.check_checksum:TRUE",
        "tcp.desegment_tcp_streams:FALSE",
        "tcp.analyze_sequence_numbers:FALSE",
    ] {
        cmd.args(["-o", o]);
    }
    cmd.args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark must be installed (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| Row(l.split('\t').map(str::to_owned).collect()))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| *c != ':').collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The original super-frame, read by offsets (an oracle independent of the segmenter).
struct Original {
    vnet: VnetHdr,
    frame: Vec<u8>,
    v6: bool,
    udp: bool,
    ip_id: u16,
    seq: u32,
    flags: u8,
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
}

fn load(name: &str) -> Original {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let vnet = VnetHdr::parse(raw[..VNET_HDR_LEN].try_into().expect("vnet header"));
    let frame = raw[FIXTURE_VNET_LEN..].to_vec();
    let v6 = u16::from_be_bytes([frame[12], frame[13]]) == 0x86dd;
    let ip = &frame[ETH_LEN..];
    let (ihl, end, proto) = if v6 {
        (
            40,
            40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            ip[6],
        )
    } else {
        let ihl = usize::from(ip[0] & 15) * 4;
        (ihl, usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip[9])
    };
    let udp = proto == 17;
    let l4 = &ip[ihl..end];
    let thlen = if udp { 8 } else { usize::from(l4[12] >> 4) * 4 };
    Original {
        vnet,
        v6,
        udp,
        ip_id: if v6 {
            0
        } else {
            u16::from_be_bytes([ip[4], ip[5]])
        },
        seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
        flags: if udp { 0 } else { l4[13] },
        tcp_options: if udp { vec![] } else { l4[20..thlen].to_vec() },
        payload: l4[thlen..].to_vec(),
        frame,
    }
}

/// Segments one fixture, has tshark check the result, and returns the segment count.
fn segment_and_check(name: &str) -> usize {
    let o = load(name);
    assert!(o.vnet.is_gso(), "{name}: a GSO frame");
    let mss = usize::from(o.vnet.gso_size);
    let mut scratch = vec![0u8; 65536];
    let mut segs = Vec::new();
    gso::segment::<GsoError>(&o.vnet, &o.frame, ETH_LEN, &mut scratch, |s| {
        segs.push(s.to_vec());
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(segs.len(), o.payload.len().div_ceil(mss), "{name}: count");

    let pcap = write_pcap(name, &segs);
    let rows = tshark(&pcap.0);
    assert_eq!(rows.len(), segs.len(), "{name}: tshark read every segment");

    let mut payload = Vec::new();
    let last = rows.len() - 1;
    for (i, r) in rows.iter().enumerate() {
        let at = format!("{name} segment {i}");
        assert_eq!(r.num("frame.len"), segs[i].len() as u64, "{at}");
        if o.v6 {
            assert_eq!(
                r.num("ipv6.plen") as usize,
                segs[i].len() - ETH_LEN - 40,
                "{at}"
            );
        } else {
            assert_eq!(r.get("ip.checksum.status"), "1", "{at}: IPv4 checksum good");
            assert_eq!(r.num("ip.len") as usize, segs[i].len() - ETH_LEN, "{at}");
            assert_eq!(
                r.num("ip.id"),
                u64::from(o.ip_id.wrapping_add(i as u16)),
                "{at}"
            );
        }
        let seg_payload = if o.udp {
            assert_eq!(r.get("udp.checksum.status"), "1", "{at}: UDP checksum good");
            let p = unhex(r.get("udp.payload"));
            assert_eq!(r.num("udp.length") as usize, 8 + p.len(), "{at}");
            p
        } else {
            assert_eq!(r.get("tcp.checksum.status"), "1", "{at}: TCP checksum good");
            let p = unhex(r.get("tcp.payload"));
            assert_eq!(r.num("tcp.len") as usize, p.len(), "{at}");
            let want_seq = o.seq.wrapping_add(payload.len() as u32);
            assert_eq!(
                r.num("tcp.seq_raw"),
                u64::from(want_seq),
                "{at}: contiguous"
            );
            assert_eq!(unhex(r.get("tcp.options")), o.tcp_options, "{at}: options");
            let mut want_flags = o.flags;
            if i != last {
                want_flags &= !(FIN | PSH);
            }
            if i != 0 {
                want_flags &= !CWR;
            }
            assert_eq!(r.num("tcp.flags"), u64::from(want_flags), "{at}: flags");
            p
        };
        assert!(seg_payload.len() <= mss, "{at}: at most gso_size");
        if i != last {
            assert_eq!(seg_payload.len(), mss, "{at}: only the last is short");
        }
        payload.extend_from_slice(&seg_payload);
    }
    assert_eq!(
        hex(&payload),
        hex(&o.payload),
        "{name}: reassembled payload"
    );
    segs.len()
}

#[test]
fn ipv4_tso_with_tcp_timestamps() {
    let o = load("tso_v4_timestamps.bin");
    assert_eq!(o.vnet.gso_type, vnet::GSO_TCPV4);
    assert_eq!(o.tcp_options.len(), 12, "NOP NOP timestamps");
    assert_eq!(o.payload.len() % usize::from(o.vnet.gso_size), 0);
    assert!(
        segment_and_check("tso_v4_timestamps.bin") > 20,
        "a large frame"
    );
}

#[test]
fn ipv4_tso_with_a_short_last_segment_and_fin() {
    let o = load("tso_v4_short_last.bin");
    assert_ne!(o.payload.len() % usize::from(o.vnet.gso_size), 0);
    assert_eq!(o.flags & (FIN | PSH), FIN | PSH);
    segment_and_check("tso_v4_short_last.bin");
}

#[test]
fn ipv4_tso_with_ip_options() {
    let o = load("tso_v4_ip_options.bin");
    assert_eq!(o.frame[ETH_LEN] & 15, 7, "IHL 7: record route");
    let n = segment_and_check("tso_v4_ip_options.bin");
    assert!(n > 1);
}

#[test]
fn ipv6_tso() {
    let o = load("tso_v6.bin");
    assert_eq!(o.vnet.gso_type, vnet::GSO_TCPV6);
    assert!(o.v6);
    assert!(segment_and_check("tso_v6.bin") > 20, "a large frame");
}

#[test]
fn uso_ipv4_and_ipv6() {
    for name in ["uso_v4.bin", "uso_v6.bin"] {
        let o = load(name);
        assert_eq!(o.vnet.gso_type, vnet::GSO_UDP_L4, "{name}");
        assert_eq!(o.payload.len(), 10_000, "{name}");
        assert_eq!(segment_and_check(name), 9, "{name}: 8 × 1200 + 400");
    }
}
