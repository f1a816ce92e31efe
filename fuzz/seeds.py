#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/corpus/<target>/ (run from anywhere).

Seeds are small and real: TSO frames cut down from the kernel captures in
core/tests/data/ (headers as Linux wrote them, a few hundred payload bytes, a small
gso_size so they still split), hand-built frames of the kinds pods send (ARP, ICMP echo, UDP,
IPv6 neighbor solicitation, TTL 1, don't-fragment over the MTU), the control protocol's
messages as the plugin and daemon frame them, the conflist the manifests install, and the OCI
states captured from runc, podman, containerd and CRI-O in hooks/fixtures/state/.

The addresses match fuzz/src/lib.rs: pod A 10.244.1.5 / fd00:10:244:1::5, pod B .6 / ::6.
Regenerating gives the same bytes; libFuzzer finds the rest.
"""

import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

MAC_A = bytes([0x0A, 0x58, 10, 244, 1, 5])
MAC_B = bytes([0x0A, 0x58, 10, 244, 1, 6])
GW_MAC = bytes([0x02, 0x4E, 0x53, 0x00, 0x00, 0x01])
IP_A, IP_B, GW = bytes([10, 244, 1, 5]), bytes([10, 244, 1, 6]), bytes([10, 244, 1, 1])
OUTSIDE = bytes([192, 0, 2, 7])
IP6_A = bytes.fromhex("fd000010024400010000000000000005")
IP6_B = bytes.fromhex("fd000010024400010000000000000006")
OUTSIDE6 = bytes.fromhex("20010db8000000000000000000000007")
LL_A = bytes.fromhex("fe800000000000000858" "0afffef40105")

NO_VNET = bytes(10)
GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 1, 4, 5


def csum_sum(data, initial=0):
    if len(data) % 2:
        data += b"\0"
    s = initial + sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum(data, initial=0):
    return (~csum_sum(data, initial)) & 0xFFFF


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def eth(dst, src, ethertype):
    return dst + src + struct.pack("!H", ethertype)


def ipv4(src, dst, proto, payload, ttl=64, df=True, ident=0x1234):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident,
                      0x4000 if df else 0, ttl, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src, dst, nh, payload, hops=64):
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, hops) + src + dst + payload


def pseudo4(src, dst, proto, length):
    return src + dst + struct.pack("!BBH", 0, proto, length)


def pseudo6(src, dst, nh, length):
    return src + dst + struct.pack("!IxxxB", length, nh)


def udp(pseudo, sport, dport, data):
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    c = csum(pseudo + hdr + data) or 0xFFFF
    return hdr[:6] + struct.pack("!H", c) + data


def icmp_echo(data=b"netstack"):
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x77, 1)
    return hdr[:2] + struct.pack("!H", csum(hdr + data)) + hdr[4:] + data


def icmp6(pseudo_src, pseudo_dst, body):
    c = csum(pseudo6(pseudo_src, pseudo_dst, 58, len(body)) + body)
    return body[:2] + struct.pack("!H", c) + body[4:]


def arp_request(sender_mac, sender_ip, target_ip):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + sender_mac + sender_ip + bytes(6) + target_ip
    return eth(b"\xff" * 6, sender_mac, 0x0806) + body


def captured_tso(name, payload_len, gso_size):
    """A kernel TSO capture cut to `payload_len` bytes of payload: vnet header and frame."""
    with open(os.path.join(ROOT, "netstackd", "tests", "data", name), "rb") as f:
        raw = f.read()
    hdr, frame = bytearray(raw[:10]), bytearray(raw[10:])
    ihl = (frame[14] & 0x0F) * 4
    doff = (frame[14 + ihl + 12] >> 4) * 4
    head = 14 + ihl + doff
    frame = frame[: head + payload_len]
    struct.pack_into("!H", frame, 16, len(frame) - 14)
    struct.pack_into("!H", frame, 24, 0)
    struct.pack_into("!H", frame, 24, csum(bytes(frame[14 : 14 + ihl])))
    struct.pack_into("<H", hdr, 4, gso_size)
    return bytes(hdr), frame, ihl, doff


def retarget_v4(frame, ihl, src_mac, dst_mac, src, dst):
    """Rewrites a captured IPv4 TCP frame's addresses and refreshes its checksums (the TCP
    one is left partial: the pseudo-header sum, as a sender with NEEDS_CSUM leaves it)."""
    frame[0:6], frame[6:12] = dst_mac, src_mac
    frame[26:30], frame[30:34] = src, dst
    struct.pack_into("!H", frame, 24, 0)
    struct.pack_into("!H", frame, 24, csum(bytes(frame[14 : 14 + ihl])))
    l4_len = len(frame) - 14 - ihl
    struct.pack_into("!H", frame, 14 + ihl + 16, csum_sum(pseudo4(src, dst, 6, l4_len)))
    return bytes(frame)


def tcp6_tso(src_mac, dst_mac, src, dst, payload_len, mss):
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 1, 5 << 4, 0x18, 502, 0, 0)
    data = bytes((i * 7) & 0xFF for i in range(payload_len))
    seg = tcp + data
    partial = csum_sum(pseudo6(src, dst, 6, len(seg)))
    seg = seg[:16] + struct.pack("!H", partial) + seg[18:]
    frame = eth(dst_mac, src_mac, 0x86DD) + ipv6(src, dst, 6, seg)
    return vnet(1, GSO_TCPV6, 74, mss, 54, 16), frame


def uso(src_mac, dst_mac, src, dst, v6, payload_len, mss):
    data = bytes((i * 3) & 0xFF for i in range(payload_len))
    length = 8 + payload_len
    hdr = struct.pack("!HHHH", 40000, 9000, length, 0)
    if v6:
        partial = csum_sum(pseudo6(src, dst, 17, length))
        ip = ipv6(src, dst, 17, hdr[:6] + struct.pack("!H", partial) + data)
        return vnet(1, GSO_UDP_L4, 62, mss, 54, 6), eth(dst_mac, src_mac, 0x86DD) + ip
    partial = csum_sum(pseudo4(src, dst, 17, length))
    ip = ipv4(src, dst, 17, hdr[:6] + struct.pack("!H", partial) + data)
    return vnet(1, GSO_UDP_L4, 42, mss, 34, 6), eth(dst_mac, src_mac, 0x0800) + ip


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pod_frames():
    """Frames from pod A, as (name, vnet header, Ethernet frame)."""
    udp_ab = udp(pseudo4(IP_A, IP_B, 17, 8 + 32), 40000, 53, b"q" * 32)
    udp_out = udp(pseudo4(IP_A, OUTSIDE, 17, 8 + 32), 40000, 53, b"q" * 32)
    ns_body = struct.pack("!BBHI", 135, 0, 0, 0) + IP6_B + bytes([1, 1]) + MAC_A
    ns_dst = bytes.fromhex("ff0200000000000000000001ff000006")
    udp6 = udp(pseudo6(IP6_A, OUTSIDE6, 17, 8 + 32), 40000, 53, b"6" * 32)
    big = b"B" * 1400
    yield "arp_request", NO_VNET, arp_request(MAC_A, IP_A, GW)
    yield "icmp_echo_gw", NO_VNET, eth(GW_MAC, MAC_A, 0x0800) + ipv4(IP_A, GW, 1, icmp_echo())
    yield "udp_to_pod_b", NO_VNET, eth(GW_MAC, MAC_A, 0x0800) + ipv4(IP_A, IP_B, 17, udp_ab)
    yield "udp_out_ttl1", NO_VNET, eth(GW_MAC, MAC_A, 0x0800) + ipv4(IP_A, OUTSIDE, 17, udp_out, ttl=1)
    yield "df_over_pod_b_mtu", NO_VNET, eth(GW_MAC, MAC_A, 0x0800) + ipv4(
        IP_A, IP_B, 17, udp(pseudo4(IP_A, IP_B, 17, 8 + len(big)), 1, 2, big))
    yield "ipv6_neighbor_solicit", NO_VNET, eth(b"\x33\x33\xff\x00\x00\x06", MAC_A, 0x86DD) + ipv6(
        LL_A, ns_dst, 58, icmp6(LL_A, ns_dst, ns_body), hops=255)
    yield "ipv6_udp_out_hop1", NO_VNET, eth(GW_MAC, MAC_A, 0x86DD) + ipv6(IP6_A, OUTSIDE6, 17, udp6, hops=1)
    hdr, frame, ihl, _ = captured_tso("tso_v4_short_last.bin", 300, 120)
    yield "tso_v4_to_pod_b", hdr, retarget_v4(frame, ihl, MAC_A, GW_MAC, IP_A, IP_B)
    hdr, frame = tcp6_tso(MAC_A, GW_MAC, IP6_A, OUTSIDE6, 300, 120)
    yield "tso_v6_out", hdr, frame
    hdr, frame = uso(MAC_A, GW_MAC, IP_A, OUTSIDE, False, 250, 100)
    yield "uso_v4_out", hdr, frame


def uplink_packets():
    """Packets from the uplink TUN: (name, vnet header, IP packet)."""
    yield "udp_to_pod_a", NO_VNET, ipv4(OUTSIDE, IP_A, 17, udp(pseudo4(OUTSIDE, IP_A, 17, 8 + 16), 53, 40000, b"r" * 16))
    yield "echo_to_pod_b", NO_VNET, ipv4(OUTSIDE, IP_B, 1, icmp_echo())
    yield "ipv6_udp_to_pod_a", NO_VNET, ipv6(OUTSIDE6, IP6_A, 17, udp(pseudo6(OUTSIDE6, IP6_A, 17, 8 + 16), 53, 40000, b"r" * 16))
    # A TSO frame as the uplink TUN hands it: offsets count from the IP header.
    hdr, frame, ihl, _ = captured_tso("tso_v4_timestamps.bin", 300, 120)
    frame = retarget_v4(frame, ihl, GW_MAC, MAC_A, OUTSIDE, IP_A)
    h = bytearray(hdr)
    struct.pack_into("<H", h, 2, struct.unpack_from("<H", h, 2)[0] - 14)
    struct.pack_into("<H", h, 6, struct.unpack_from("<H", h, 6)[0] - 14)
    yield "tso_v4_to_pod_a", bytes(h), frame[14:]


def gso_frames():
    """GSO super-frames: (name, l3 pick byte, vnet header, frame). Pick 1: TAP (l3 at 14)."""
    for name in ("tso_v4_timestamps.bin", "tso_v4_short_last.bin", "tso_v4_ip_options.bin"):
        hdr, frame, _, _ = captured_tso(name, 333, 100)
        yield name.replace(".bin", ""), 1, hdr, bytes(frame)
    # No payload at all: one segment, headers only.
    hdr, frame, _, _ = captured_tso("tso_v4_timestamps.bin", 0, 100)
    yield "tso_v4_no_payload", 1, hdr, bytes(frame)
    hdr, frame = tcp6_tso(MAC_A, GW_MAC, IP6_A, OUTSIDE6, 300, 120)
    yield "tso_v6", 1, hdr, frame
    hdr, frame = uso(MAC_A, GW_MAC, IP_A, OUTSIDE, False, 250, 100)
    yield "uso_v4", 1, hdr, frame
    hdr, frame = uso(MAC_A, GW_MAC, IP6_A, OUTSIDE6, True, 250, 100)
    yield "uso_v6", 1, hdr, frame
    # The uplink's view of a TSO frame: no Ethernet header, offsets from the IP header.
    hdr, frame, _, _ = captured_tso("tso_v4_timestamps.bin", 250, 100)
    h = bytearray(hdr)
    struct.pack_into("<H", h, 2, struct.unpack_from("<H", h, 2)[0] - 14)
    struct.pack_into("<H", h, 6, struct.unpack_from("<H", h, 6)[0] - 14)
    yield "tso_v4_tun", 0, bytes(h), bytes(frame[14:])
    # A non-GSO frame whose checksum is left partial (complete_checksum's input).
    u = uso(MAC_A, GW_MAC, IP_A, OUTSIDE, False, 40, 100)[1]
    yield "partial_csum_udp", 1, vnet(1, 0, 0, 0, 34, 6), u


def framed(body):
    return struct.pack("!I", len(body)) + body


def control_messages():
    attach = {"op": "attach", "container_id": "c1", "ifname": "eth0", "netns": "/run/netns/p1",
              "mac": "0a:58:0a:f4:01:05", "ips": ["10.244.1.5/24", "fd00:10:244:1::5/64"],
              "gateways": ["10.244.1.1"], "mtu": 1500, "queues": 2,
              "labels": {"K8S_POD_NAME": "web-0"},
              "bandwidth": {"egressRate": 1000000, "egressBurst": 100000}}
    veth = dict(attach, mode="veth", peer="nsv0123456789ab", queues=0)
    del veth["bandwidth"]
    counters = {"rx_packets": 3, "rx_bytes": 180, "tx_packets": 2, "tx_bytes": 120,
                "drops": {"spoofed": 1}}
    status = {"reply": "status", "version": "0.1.0", "workers": 2, "uplink": "nsup0",
              "pod_cidr": "10.244.1.0/24", "gateway": "10.244.1.1", "attachments": 1}
    stats = {"reply": "stats", "pods": [{"container_id": "c1", "ifname": "eth0",
             "netns": "/run/netns/p1", "mac": "0a:58:0a:f4:01:05", "ips": ["10.244.1.5/24"],
             "counters": counters}], "uplink": counters}
    msgs = {
        "status": [{"op": "status"}],
        "attach": [attach],
        "attach_veth": [veth],
        "detach_stats_list": [{"op": "detach", "container_id": "c1", "ifname": "eth0"},
                              {"op": "stats"}, {"op": "list"}, {"op": "metrics"}],
        "capture": [{"op": "capture", "container_id": "c1", "ifname": "eth0", "snaplen": 128,
                     "max_packets": 10}],
        "reply_status": [status],
        "reply_stats": [stats],
        "reply_misc": [{"reply": "done"}, {"reply": "error", "message": "no such pod"},
                       {"reply": "metrics", "text": "# HELP x\nx 1\n"}],
    }
    for name, bodies in msgs.items():
        yield name, b"".join(framed(json.dumps(b, separators=(",", ":")).encode()) for b in bodies)


def cni_configs():
    with open(os.path.join(ROOT, "manifests", "10-netstack.conflist")) as f:
        conflist = json.load(f)
    plugin = dict(conflist["plugins"][0], cniVersion="1.0.0", name=conflist["name"])
    yield "manifest", plugin
    yield "add_prev_result", dict(plugin, runtimeConfig={"mac": "0a:58:0a:f4:01:09",
          "ips": ["10.244.1.9/24"], "bandwidth": {"egressRate": 1000000, "egressBurst": 100000}},
          prevResult={"cniVersion": "1.0.0", "interfaces": [], "ips": []})
    yield "veth_status_wait", dict(plugin, mode="veth", mtu=9000, statusWaitMs=500,
                                   cniVersion="0.4.0")
    yield "gc", dict(plugin, cniVersion="1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        "cni.dev/attachments": [{"containerID": "c2", "ifname": "eth0"}]})


def main():
    for name, hdr, frame in pod_frames():
        write("router_from_pod", name, hdr + frame)
    for name, hdr, packet in uplink_packets():
        write("router_from_uplink", name, hdr + packet)
    for name, pick, hdr, frame in gso_frames():
        write("gso", name, bytes([pick]) + hdr + frame)
    for name, data in control_messages():
        write("control", name, data)
    for name, conf in cni_configs():
        write("cni_config", name, json.dumps(conf, indent=1).encode())
    states = os.path.join(ROOT, "hooks", "fixtures", "state")
    for f in sorted(os.listdir(states)):
        if f.endswith(".json"):
            with open(os.path.join(states, f), "rb") as src:
                write("hook_state", f[: -len(".json")], src.read())
    write("hook_state", "mtu_and_rate", json.dumps({
        "ociVersion": "1.0.2", "id": "x1", "status": "creating", "pid": 4242,
        "bundle": "/b", "annotations": {"netstack.io/attach": "true", "netstack.io/mtu": "9000",
                                        "netstack.io/ifname": "net1",
                                        "netstack.io/egress-rate": "10M"}}).encode())


if __name__ == "__main__":
    main()
