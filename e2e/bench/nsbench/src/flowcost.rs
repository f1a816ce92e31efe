//! `flow-lookup`: what netstackd's service flow table (`netstackd::stack::flow`) costs a
//! pod-to-pod packet, timed on this CPU: taking the tuple from an IPv4 UDP packet and looking
//! it up, with the table never used (one flag load), holding ENTRIES flows (a miss: one keyed
//! hash, one cache line), and for a recorded flow (a hit, refreshed). Single thread, bounded
//! by a count of lookups per case; prints ns per packet.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result};
use netstack_core::wire::{ipv4, Ipv4Packet};
use netstackd::stack::flow::{FlowPacket, FlowTable, Lifetime, DEFAULT_CAPACITY};
use serde_json::{json, Value};

/// Times `lookups` packets in each case with a table of `entries` recorded flows.
pub fn run(entries: u32, lookups: u32) -> Result<Value> {
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6));
    let mut packet = vec![0u8; 28];
    ipv4::emit_header(&mut packet, b, a, ipv4::PROTO_UDP, 64, 8, 1);
    packet[20..24].copy_from_slice(&[0, 53, 0x9c, 0x40]);
    let ip = Ipv4Packet::new_checked(&packet[..]).context("the test packet")?;
    let unused = FlowTable::new(DEFAULT_CAPACITY);
    let full = FlowTable::new(DEFAULT_CAPACITY);
    let template = FlowPacket::ipv4(&ip).key;
    for i in 0..entries {
        // Other flows between the same pods: the packets below never match them.
        let mut k = template;
        k.sport = 1 + (i % 60_000) as u16;
        k.dport = 1 + (i / 60_000) as u16;
        full.record(&k, Lifetime::Fixed(120), full.now());
    }
    let time = |table: &FlowTable, vary: bool| {
        let start = Instant::now();
        let mut hits = 0u32;
        for i in 0..lookups {
            // As the router does: the tuple is taken only once the table has been used.
            if !table.is_used() {
                continue;
            }
            let mut p = FlowPacket::ipv4(black_box(&ip));
            if vary {
                // Different misses, so each lands in another bucket.
                p.key.dport ^= (i & 0x3ff) as u16;
            }
            hits += u32::from(table.lookup(black_box(&p.key), p.lifetime));
        }
        (start.elapsed().as_nanos() as f64 / f64::from(lookups), hits)
    };
    let (unused_ns, _) = time(&unused, true);
    let (miss_ns, miss_hits) = time(&full, true);
    full.record(&template, Lifetime::Fixed(120), full.now());
    let (hit_ns, hits) = time(&full, false);
    Ok(json!({
        "role": "flow-lookup",
        "entries": full.stats().entries,
        "lookups": lookups,
        "unused_ns": (unused_ns * 100.0).round() / 100.0,
        "miss_ns": (miss_ns * 100.0).round() / 100.0,
        "false_hits": miss_hits,
        "hit_ns": (hit_ns * 100.0).round() / 100.0,
        "hits": hits,
    }))
}
