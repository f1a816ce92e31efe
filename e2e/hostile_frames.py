#!/usr/bin/env python3
"""Crafted frames a hostile pod puts on its eth0, for e2e/test_hostile.sh.

Runs inside the pod's netns (`ip netns exec POD python3 hostile_frames.py ...`) and writes
whole Ethernet frames with a raw AF_PACKET socket, so nothing in the pod's own stack fixes
them up. Frames that need a virtio-net header (offload lies) go through a second socket with
PACKET_VNET_HDR, where the 10-byte `struct virtio_net_hdr` is written by hand in front of the
frame. Python 3 standard library only.

    hostile_frames.py [--ifname eth0] --peer-ip B --gateway GW list
    hostile_frames.py [--ifname eth0] --peer-ip B --gateway GW send NAME \
        [--expect-icmp TYPE/CODE[/MTU] | --expect-no-icmp]

`send` exit status: 0 sent (and the ICMP expectation met), 2 the expectation was not met,
3 the pod's own kernel refused the frame (its errno is printed): netstackd never saw it.
`send` and `fuzz` also print "handed to the device: N", the frames a capture socket on the
pod's eth0 saw leave (the kernel passes a frame to captures as it hands it to the driver),
so that a frame the pod's kernel dropped can be told from one netstackd never read.
"""

import argparse
import errno
import os
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33

GATEWAY_MAC = bytes.fromhex("024e53000001")
BROADCAST_MAC = b"\xff" * 6

# struct virtio_net_hdr (AF_PACKET uses the 10-byte form, little-endian on x86).
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5


def vnet_hdr(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip_bytes(addr):
    return socket.inet_aton(addr)


def ipv4(src, dst, payload, proto=17, ttl=64, ident=None, flags_frag=0, ihl=5,
         tot_len=None, good_checksum=True, options=b""):
    """An IPv4 packet; every field may be set wrong on purpose."""
    ident = random.randrange(1, 0xFFFF) if ident is None else ident
    hlen = max(20, ihl * 4) if options else 20
    total = hlen + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, ident, flags_frag,
                      ttl, proto, 0, ip_bytes(src), ip_bytes(dst)) + options
    csum = checksum(hdr[: max(ihl, 5) * 4]) if ihl >= 5 else 0x1234
    if not good_checksum:
        csum ^= 0x5A5A
    hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
    return hdr + payload


def udp(length, sport=40000, dport=9):
    """A UDP header and `length` payload bytes (checksum 0: none, legal in IPv4)."""
    data = bytes(i & 0xFF for i in range(length))
    return struct.pack("!HHHH", sport, dport, 8 + length, 0) + data


def tcp(length, src, dst, sport=40000, dport=9):
    """A TCP ACK segment with `length` payload bytes and a partial checksum (the pseudo-header
    sum, as a kernel leaves it for CHECKSUM_PARTIAL)."""
    data = bytes(i & 0xFF for i in range(length))
    seg_len = 20 + length
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, 6, seg_len)
    partial = (~checksum(pseudo)) & 0xFFFF
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 65535, partial, 0) + data


def icmp_echo(length, ident=0x4e53, seq=1):
    data = bytes(i & 0xFF for i in range(length))
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    c = checksum(hdr + data)
    return struct.pack("!BBHHH", 8, 0, c, ident, seq) + data


def eth(dst_mac, src_mac, ethertype, payload):
    return dst_mac + src_mac + struct.pack("!H", ethertype) + payload


def arp(op, sender_mac, sender_ip, target_mac, target_ip):
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, sender_mac, ip_bytes(sender_ip),
                       target_mac, ip_bytes(target_ip))


def frames(me_mac, me_ip, peer_ip, gw, port=9):
    """name -> (description, frame, virtio-net header or None). Pod A is `me`; `port` is
    the UDP destination port of the martian rows."""
    other_mac = bytes.fromhex("0a5800000099")
    eth_ip = lambda p, src_mac=me_mac: eth(GATEWAY_MAC, src_mac, ETH_P_IP, p)  # noqa: E731
    udp_to_peer = lambda n=64, **kw: ipv4(me_ip, peer_ip, udp(n), **kw)  # noqa: E731
    tcp_to_peer = lambda n, **kw: ipv4(me_ip, peer_ip, tcp(n, me_ip, peer_ip), proto=6, **kw)  # noqa: E731
    big_tcp = tcp_to_peer(3000)
    big_udp = udp_to_peer(3000)
    t = {
        "good-udp": ("a valid UDP packet to pod B (the control row)", eth_ip(udp_to_peer()), None),
        "wrong-src-mac": ("source MAC not the pod's", eth_ip(udp_to_peer(), other_mac), None),
        "peer-src-ip": ("pod B's source IP", eth_ip(ipv4(peer_ip, peer_ip, udp(64))), None),
        "gateway-src-ip": ("the gateway's source IP", eth_ip(ipv4(gw, peer_ip, udp(64))), None),
        "bad-ip-checksum": ("IPv4 header checksum wrong", eth_ip(udp_to_peer(good_checksum=False)), None),
        "ihl-4": ("IHL 4 (16-byte header)", eth_ip(udp_to_peer(ihl=4)), None),
        "ihl-0": ("IHL 0", eth_ip(udp_to_peer(ihl=0)), None),
        "ihl-past-frame": ("IHL 15 in a 30-byte packet",
                           eth_ip(ipv4(me_ip, peer_ip, b"\0" * 10, ihl=15)), None),
        "tot-len-over-frame": ("tot_len 1000 in a 92-byte packet",
                               eth_ip(udp_to_peer(tot_len=1000)), None),
        "tot-len-under-header": ("tot_len 12", eth_ip(udp_to_peer(tot_len=12)), None),
        "version-5": ("IP version 5", eth_ip(b"\x55" + udp_to_peer()[1:]), None),
        "truncated-ip": ("Ethernet + 12 bytes of IPv4 header", eth_ip(udp_to_peer()[:12]), None),
        "truncated-arp": ("Ethernet + 20 bytes of ARP",
                          eth(BROADCAST_MAC, me_mac, ETH_P_ARP,
                              arp(1, me_mac, me_ip, b"\0" * 6, gw)[:20]), None),
        "truncated-ethernet": ("a 10-byte frame", eth_ip(b"")[:10], None),
        "arp-non-ethernet": ("ARP with hardware type 6",
                             eth(BROADCAST_MAC, me_mac, ETH_P_ARP,
                                 b"\x00\x06" + arp(1, me_mac, me_ip, b"\0" * 6, gw)[2:]), None),
        "ttl-1": ("TTL 1 to pod B", eth_ip(udp_to_peer(ttl=1)), None),
        "ttl-0": ("TTL 0 to pod B", eth_ip(udp_to_peer(ttl=0)), None),
        "ttl-1-to-gateway": ("TTL 1 to the node", eth_ip(ipv4(me_ip, gw, udp(64), ttl=1)), None),
        "arp-reply-gateway": ("ARP reply: the gateway is at my MAC",
                              eth(GATEWAY_MAC, me_mac, ETH_P_ARP,
                                  arp(2, me_mac, gw, GATEWAY_MAC, peer_ip)), None),
        "arp-reply-peer": ("ARP reply: pod B is at my MAC",
                           eth(BROADCAST_MAC, me_mac, ETH_P_ARP,
                               arp(2, me_mac, peer_ip, BROADCAST_MAC, peer_ip)), None),
        "arp-garp-peer": ("gratuitous ARP request for pod B's address",
                          eth(BROADCAST_MAC, me_mac, ETH_P_ARP,
                              arp(1, me_mac, peer_ip, b"\0" * 6, peer_ip)), None),
        "arp-foreign-sender-mac": ("ARP request whose sender MAC is not the pod's",
                                   eth(BROADCAST_MAC, me_mac, ETH_P_ARP,
                                       arp(1, other_mac, me_ip, b"\0" * 6, gw)), None),
        "frag-first-ttl-1": ("first fragment (MF), TTL 1",
                             eth_ip(udp_to_peer(200, flags_frag=0x2000, ttl=1)), None),
        "frag-later-ttl-1": ("later fragment (offset 1480), TTL 1",
                             eth_ip(udp_to_peer(200, flags_frag=185, ttl=1)), None),
        "frag-past-64k": ("fragment at offset 65528 with 200 bytes (ends past 65535)",
                          eth_ip(udp_to_peer(200, flags_frag=8191)), None),
        "frag-over-mtu": ("a 3000-byte first fragment without DF",
                          eth_ip(udp_to_peer(3000, flags_frag=0x2000)), None),
        "jumbo-df": ("9000-byte packet with DF to pod B",
                     eth_ip(ipv4(me_ip, peer_ip, icmp_echo(8972), proto=1, flags_frag=0x4000)), None),
        "jumbo-no-df": ("9000-byte packet without DF to pod B",
                        eth_ip(ipv4(me_ip, peer_ip, icmp_echo(8972), proto=1)), None),
        "jumbo-df-to-node": ("9000-byte packet with DF to the node",
                             eth_ip(ipv4(me_ip, gw, icmp_echo(8972), proto=1, flags_frag=0x4000)), None),
        "lldp": ("ethertype 0x88cc", eth(GATEWAY_MAC, me_mac, 0x88CC, b"\0" * 46), None),
        "broadcast-dst": ("to 255.255.255.255",
                          eth_ip(ipv4(me_ip, "255.255.255.255", udp(64))), None),
        "multicast-dst": ("to 224.0.0.1", eth_ip(ipv4(me_ip, "224.0.0.1", udp(64))), None),
        "own-dst": ("to the pod's own address", eth_ip(ipv4(me_ip, me_ip, udp(64))), None),
        # Martian destinations: no router forwards them from a pod.
        "to-loopback": ("UDP to 127.0.0.1 (the node's loopback)",
                        eth_ip(ipv4(me_ip, "127.0.0.1", udp(64, dport=port))), None),
        "to-zeronet": ("UDP to 0.1.2.3 (0/8)", eth_ip(ipv4(me_ip, "0.1.2.3", udp(64, dport=port))), None),
        "to-class-e": ("UDP to 240.0.0.1 (240/4)",
                       eth_ip(ipv4(me_ip, "240.0.0.1", udp(64, dport=port))), None),
        # Offload headers that lie. The pod's kernel checks some of these itself
        # (virtio_net_hdr_to_skb, packet_snd) and refuses them before netstackd could see them.
        "vnet-csum-in-ip-header": ("NEEDS_CSUM with csum_start inside the IP header",
                                   eth_ip(udp_to_peer()),
                                   vnet_hdr(VNET_F_NEEDS_CSUM, csum_start=20, csum_offset=6)),
        "vnet-csum-past-frame": ("NEEDS_CSUM with the checksum field past the frame",
                                 eth_ip(udp_to_peer()),
                                 vnet_hdr(VNET_F_NEEDS_CSUM, csum_start=34, csum_offset=200)),
        "vnet-tso-on-udp": ("TCPv4 GSO on a 3000-byte UDP packet",
                            eth_ip(big_udp),
                            vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 42, 1000, 34, 16)),
        "vnet-uso-on-tcp": ("UDP_L4 GSO on a 3000-byte TCP packet",
                            eth_ip(big_tcp),
                            vnet_hdr(VNET_F_NEEDS_CSUM, GSO_UDP_L4, 54, 1000, 34, 6)),
        "vnet-tso6-on-ipv4": ("TCPv6 GSO on a 3000-byte IPv4 TCP packet",
                              eth_ip(big_tcp),
                              vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV6, 54, 1000, 34, 16)),
        "vnet-tso-size-0": ("TCPv4 GSO with gso_size 0",
                            eth_ip(big_tcp),
                            vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16)),
        "vnet-tso-honest": ("TCPv4 GSO that tells the truth (3000 bytes in 1000-byte segments)",
                            eth_ip(big_tcp),
                            vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16)),
        "vnet-tso-hdr-len-past-frame": ("TCPv4 GSO with hdr_len 9000 in a 3054-byte frame",
                                        eth_ip(big_tcp),
                                        vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 9000, 1000, 34, 16)),
        "vnet-tso-csum-at-ip": ("TCPv4 GSO with csum_start at the IP header",
                                eth_ip(big_tcp),
                                vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 14, 16)),
        "vnet-tso-segments-over-mtu-df": ("TCPv4 GSO of 6000 bytes with DF in 4000-byte segments "
                                          "(each over the 1500-byte MTU)",
                                          eth_ip(tcp_to_peer(6000, flags_frag=0x4000)),
                                          vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 4000, 34, 16)),
        "vnet-tso-segments-over-mtu": ("TCPv4 GSO of 6000 bytes without DF in 4000-byte segments",
                                       eth_ip(tcp_to_peer(6000)),
                                       vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 4000, 34, 16)),
        "vnet-tso-size-over-payload": ("TCPv4 GSO with gso_size 4000 on a 3000-byte payload",
                                       eth_ip(big_tcp),
                                       vnet_hdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 4000, 34, 16)),
        "vnet-unknown-gso": ("GSO type 9", eth_ip(big_tcp),
                             vnet_hdr(VNET_F_NEEDS_CSUM, 9, 54, 1000, 34, 16)),
    }
    return t


def recv_icmp(sock, gw, me_ip, ident, deadline):
    """The first ICMP error from the gateway to us that quotes IP ident `ident`, or None."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            return None
        data, addr = sock.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING or len(data) < 14 + 20 + 8 + 20:
            continue
        ip = data[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 1 or ip[12:16] != ip_bytes(gw) or ip[16:20] != ip_bytes(me_ip):
            continue
        icmp = ip[ihl:]
        quoted = icmp[8:]
        if len(quoted) >= 6 and struct.unpack("!H", quoted[4:6])[0] == ident:
            return icmp[0], icmp[1], struct.unpack("!H", icmp[6:8])[0]


def capture(ifname):
    """A socket that sees every frame handed to `ifname`'s driver, with a buffer for thousands."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    s.bind((ifname, 0))
    return s


def handed_to_device(cap, me_mac, settle=0.3):
    """How many frames from `me_mac` left through `cap`'s device (read until `settle` s pass
    without one)."""
    n = 0
    while select.select([cap], [], [], settle)[0]:
        data, addr = cap.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING and data[6:12] == me_mac:
            n += 1
    return n


def fuzz(args, me_mac, me_ip):
    """Random IPv4 frames: the pod's own MAC and ethertype, then random bytes, a third of them
    with a header checksum made right and the pod's own source address (so the checks behind
    the first ones are reached), all with something else random. Each one netstackd sees must
    be dropped and counted."""
    rng = random.Random(args.seed)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if args.vnet:
        tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    tx.bind((args.ifname, 0))
    cap = capture(args.ifname)
    sent = refused = 0
    for i in range(args.count):
        body = bytearray(rng.randbytes(rng.randrange(0, 1400)))
        if len(body) >= 20 and i % 3 == 0:
            body[0] = 0x40 | rng.choice([5, 5, 6, 15])
            body[12:16] = ip_bytes(me_ip)
            # Never a plausible destination: a pod, the node, or anywhere outside.
            body[16:20] = ip_bytes("0.0.0.0") if i % 2 else ip_bytes("255.255.255.255")
            hl = (body[0] & 0xF) * 4
            if hl <= len(body):
                body[10:12] = b"\0\0"
                body[10:12] = struct.pack("!H", checksum(bytes(body[:hl])))
        frame = eth(GATEWAY_MAC, me_mac, ETH_P_IP, bytes(body))
        vh = b""
        if args.vnet:
            vh = vnet_hdr(rng.choice([0, 1]), rng.choice([0, 0, 1, 3, 4, 5, 0x81, rng.randrange(256)]),
                          rng.randrange(0, 200), rng.randrange(0, 2000), rng.randrange(0, 100),
                          rng.randrange(0, 40))
        try:
            tx.send(vh + frame)
            sent += 1
        except OSError:
            refused += 1
    print("fuzz: %d sent, %d refused by the pod kernel" % (sent, refused))
    print("handed to the device: %d" % handed_to_device(cap, me_mac))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ifname", default="eth0")
    ap.add_argument("--peer-ip", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--port", type=int, default=9, help="UDP port of the martian rows")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    s = sub.add_parser("send")
    s.add_argument("name")
    s.add_argument("--expect-icmp", help="TYPE/CODE[/MTU] that must come back from the gateway")
    s.add_argument("--expect-no-icmp", action="store_true")
    z = sub.add_parser("fuzz", help="COUNT random IPv4 frames from the pod's MAC; prints how "
                       "many the pod kernel took")
    z.add_argument("count", type=int)
    z.add_argument("--seed", type=int, default=1)
    z.add_argument("--vnet", action="store_true", help="with random virtio-net headers too")
    args = ap.parse_args()

    with open("/sys/class/net/%s/address" % args.ifname) as f:
        me_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    me_ip = None
    for line in os.popen("ip -4 -o addr show dev %s" % args.ifname):
        me_ip = line.split()[3].split("/")[0]
    table = frames(me_mac, me_ip, args.peer_ip, args.gateway, args.port)
    if args.cmd == "list":
        for name, (what, frame, vh) in table.items():
            print("%-28s %5d B %s %s" % (name, len(frame), "vnet" if vh else "    ", what))
        return 0

    if args.cmd == "fuzz":
        return fuzz(args, me_mac, me_ip)

    what, frame, vh = table[args.name]
    ident = struct.unpack("!H", frame[18:20])[0] if len(frame) >= 20 else 0
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    rx.bind((args.ifname, 0))
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if vh is not None:
        tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    tx.bind((args.ifname, 0))
    cap = capture(args.ifname)
    try:
        tx.send((vh or b"") + frame)
    except OSError as e:
        print("%s: refused by the pod kernel: %s" % (args.name, errno.errorcode.get(e.errno, e.errno)))
        print("handed to the device: %d" % handed_to_device(cap, me_mac))
        return 3
    print("%s: sent %d bytes (%s)" % (args.name, len(frame), what))
    print("handed to the device: %d" % handed_to_device(cap, me_mac))
    if args.expect_icmp or args.expect_no_icmp:
        wait = 0.5 if args.expect_no_icmp else 2
        got = recv_icmp(rx, args.gateway, me_ip, ident, time.monotonic() + wait)
        if args.expect_no_icmp:
            if got:
                print("%s: unexpected ICMP type %d code %d" % (args.name, got[0], got[1]))
                return 2
            return 0
        want = [int(x) for x in args.expect_icmp.split("/")]
        if not got:
            print("%s: no ICMP came back" % args.name)
            return 2
        print("%s: ICMP type %d code %d mtu %d from %s" % (args.name, got[0], got[1], got[2], args.gateway))
        if list(got[: len(want)]) != want:
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
