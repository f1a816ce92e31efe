#!/usr/bin/env python3
"""Captures genuine TSO super-frames from the Linux kernel for netstackd's GSO tests.

Run as root from the repository root:  python3 core/tests/data/capture_tso.py

It creates a throwaway netns, opens a TAP there with IFF_VNET_HDR (10-byte header) and
TUNSETOFFLOAD (CSUM, TSO4, TSO6, TSO_ECN), gives it 10.99.0.1/24 and fd99::1/64, and pins
static neighbours for the peers 10.99.0.2 and fd99::2 (a fake MAC) so the kernel routes to
them through the TAP. A tiny TCP responder on the TAP fd plays the peer: it answers the SYN
(MSS 1460, window scale, timestamps only when asked), acknowledges every byte it reads so the
congestion window grows, and keeps the GSO frames the kernel hands it. Kernel TCP sockets in
the netns write a few hundred KB to each peer and close (so the last frame carries FIN).

It writes, next to itself, each fixture as the 10-byte virtio-net header followed by the
Ethernet frame, exactly as read from the TAP fd:
  tso_v4_timestamps.bin  the largest IPv4 TSO frame of a connection with TCP timestamps
  tso_v4_short_last.bin  an IPv4 TSO frame whose payload is not a multiple of gso_size, with
                         FIN (the connection's last frame)
  tso_v4_ip_options.bin  an IPv4 TSO frame with IP options (IP_OPTIONS: record route)
  tso_v6.bin             the largest IPv6 TSO frame (no TCP timestamps)
  uso_v4.bin, uso_v6.bin a UDP_SEGMENT send of 10 000 bytes in 1200-byte datagrams (USO,
                         needs TUN_F_USO4/6: Linux >= 6.2)

Then, in a second netns, it writes each fixture into a TAP as a pod would and lets the kernel
route it out of a second TAP without offloads, so Linux segments it in software; those
segments are stored as <fixture>.linux (each a 4-byte little-endian length + the frame) for
the byte-for-byte comparison in tests/gso_linux.rs.
"""

import fcntl
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 1, 2, 4, 8
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40
UDP_SEGMENT = 103
VNET_LEN = 10  # struct virtio_net_hdr, what netstack sets (TUNSETVNETHDRSZ)
PEER_MAC = bytes.fromhex("020000000002")
HERE = os.path.dirname(os.path.abspath(__file__))
DEV = "gsocap0"


def csum(data, initial=0):
    if len(data) % 2:
        data += b"\0"
    s = initial + sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def pseudo_sum(src, dst, proto, length):
    if len(src) == 4:
        p = src + dst + struct.pack("!BBH", 0, proto, length)
    else:
        p = src + dst + struct.pack("!IxxxB", length, proto)
    return sum(struct.unpack("!%dH" % (len(p) // 2), p))


def tcp_segment(src, dst, sport, dport, seq, ack, flags, window, options=b""):
    while len(options) % 4:
        options += b"\0"
    doff = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0)
    seg = hdr + options
    c = csum(seg, pseudo_sum(src, dst, 6, len(seg)))
    return seg[:16] + struct.pack("!H", c) + seg[18:]


class Responder:
    """The fake peer: answers SYNs, acknowledges data, keeps GSO frames."""

    def __init__(self, fd, tap_mac):
        self.fd = fd
        self.tap_mac = tap_mac
        self.frames = []  # (vnet, frame) of every GSO frame read
        self.done = set()  # (family, port) of connections that sent FIN

    def send(self, ip_version, src, dst, tcp):
        if ip_version == 4:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
            eth = self.tap_mac + PEER_MAC + b"\x08\x00"
        else:
            ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst)
            eth = self.tap_mac + PEER_MAC + b"\x86\xdd"
        os.write(self.fd, bytes(VNET_LEN) + eth + ip + tcp)

    def handle(self, buf):
        if os.environ.get("CAPTURE_DEBUG"):
            print("read", len(buf), buf[:VNET_LEN].hex(), buf[VNET_LEN + 12 : VNET_LEN + 80].hex(), file=sys.stderr)
        vnet, frame = buf[:VNET_LEN], buf[VNET_LEN:]
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0800:
            ihl = (frame[14] & 15) * 4
            if frame[23] != 6:
                return
            src, dst, l4 = frame[26:30], frame[30:34], 14 + ihl
            end = 14 + struct.unpack("!H", frame[16:18])[0]
            version = 4
        elif ethertype == 0x86DD:
            if frame[20] != 6:
                return
            src, dst, l4 = frame[22:38], frame[38:54], 54
            end = 54 + struct.unpack("!H", frame[18:20])[0]
            version = 6
        else:
            return
        sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", frame[l4 : l4 + 14])
        thlen = (off >> 4) * 4
        opts = frame[l4 + 20 : l4 + thlen]
        payload = end - l4 - thlen
        if vnet[1] != 0:
            self.frames.append((bytes(vnet), bytes(frame)))
        tsval = None
        i = 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= len(opts):
                break
            if kind == 8 and opts[i + 1] == 10:
                tsval = struct.unpack("!I", opts[i + 2 : i + 6])[0]
            i += max(opts[i + 1], 2)
        ts = b""
        if tsval is not None:
            ts = b"\x01\x01\x08\x0a" + struct.pack("!II", int(time.monotonic() * 1000) & 0xFFFFFFFF, tsval)
        if flags & 0x02:  # SYN
            options = b"\x02\x04\x05\xb4" + b"\x01\x03\x03\x07" + ts
            tcp = tcp_segment(dst, src, dport, sport, 1000, seq + 1, 0x12, 65535, options)
            self.send(version, dst, src, tcp)
            return
        if payload > 0 or flags & 0x01:
            acked = seq + payload + (1 if flags & 0x01 else 0)
            tcp = tcp_segment(dst, src, dport, sport, 1001, acked & 0xFFFFFFFF, 0x10, 65535, ts)
            self.send(version, dst, src, tcp)
        if flags & 0x01:
            self.done.add((version, dport))


def open_tap():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", DEV.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_LEN))
    tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, tso | TUN_F_USO4 | TUN_F_USO6)
    except OSError:  # a kernel before 6.2: no USO
        fcntl.ioctl(fd, TUNSETOFFLOAD, tso)
    return fd


def sh(*args):
    subprocess.run(args, check=True)


def client(family, addr, port, total, timestamps, ip_options=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    if ip_options:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
    s.connect((addr, port))
    data = bytes((i * 7 + port) & 0xFF for i in range(total))
    s.sendall(data)
    s.close()


def in_netns():
    fd = open_tap()
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "set", DEV, "up")
    sh("ip", "addr", "add", "10.99.0.1/24", "dev", DEV)
    sh("ip", "addr", "add", "fd99::1/64", "dev", DEV, "nodad")
    sh("ip", "neigh", "replace", "10.99.0.2", "lladdr", "02:00:00:00:00:02", "dev", DEV, "nud", "permanent")
    sh("ip", "neigh", "replace", "fd99::2", "lladdr", "02:00:00:00:00:02", "dev", DEV, "nud", "permanent")
    with open("/sys/class/net/%s/address" % DEV) as f:
        tap_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    r = Responder(fd, tap_mac)
    # Record route with room for one address (7, len 7, ptr 4) padded with EOL to 8 bytes.
    rr = bytes([7, 7, 4, 0, 0, 0, 0, 0])
    runs = [
        (socket.AF_INET, "10.99.0.1", "10.99.0.2", 5001, 300_001, True, None),
        (socket.AF_INET, "10.99.0.1", "10.99.0.2", 5002, 200_003, True, rr),
        (socket.AF_INET6, "fd99::1", "fd99::2", 5003, 300_007, False, None),
    ]
    for family, _, peer, port, total, ts, opts in runs:
        # Timestamps are offered by the kernel's SYN; the responder echoes them only when the
        # SYN carries them, so turn the sysctl off for the connection that must go without.
        sh("sysctl", "-qw", "net.ipv4.tcp_timestamps=%d" % (1 if ts else 0))
        t = threading.Thread(target=client, args=(family, peer, port, total, ts, opts))
        t.start()
        version = 4 if family == socket.AF_INET else 6
        deadline = time.time() + 20
        while (version, port) not in {(v, p) for v, p in r.done}:
            if time.time() > deadline:
                sys.exit("capture: timed out on port %d" % port)
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                r.handle(os.read(fd, 65536 + VNET_LEN + 14))
        t.join()
    # USO: one sendmsg of 10 000 bytes cut into 1200-byte datagrams (the last one short).
    for family, peer in ((socket.AF_INET, "10.99.0.2"), (socket.AF_INET6, "fd99::2")):
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1200)
        u.sendto(bytes((i * 13) & 0xFF for i in range(10_000)), (peer, 6000))
        u.close()
        deadline = time.time() + 5
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            buf = os.read(fd, 65536 + VNET_LEN + 14)
            if buf[1] == 5:
                r.frames.append((bytes(buf[:VNET_LEN]), bytes(buf[VNET_LEN:])))
                break
    return r.frames


FIXTURES = [
    "tso_v4_timestamps.bin",
    "tso_v4_short_last.bin",
    "tso_v4_ip_options.bin",
    "tso_v6.bin",
    "uso_v4.bin",
    "uso_v6.bin",
]


def open_plain_tap(name, offloads):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_LEN))
    fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
    return fd


def forward_in_netns():
    """Writes each fixture into a TAP as a pod would; the kernel routes it out of a second TAP
    without offloads, so Linux segments it in software (validate_xmit_skb -> skb_gso_segment).
    Stores those segments as <fixture>.linux: each a 4-byte little-endian length + the frame."""
    first = open(os.path.join(HERE, FIXTURES[0]), "rb").read()[VNET_LEN:]
    in_mac = ":".join("%02x" % b for b in first[:6])
    fin = open_plain_tap("gsoin0", TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    fout = open_plain_tap("gsoout0", 0)
    for cmd in [
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv6.conf.all.forwarding=1",
        "sysctl -qw net.ipv4.conf.all.rp_filter=0",
        "sysctl -qw net.ipv4.conf.default.rp_filter=0",
        "ip link set gsoin0 address " + in_mac,
        "ip link set gsoin0 up",
        "ip link set gsoout0 up",
        "ip addr add 10.97.0.1/24 dev gsoin0",
        "ip addr add 10.96.0.1/24 dev gsoout0",
        "ip addr add fd97::1/64 dev gsoin0 nodad",
        "ip addr add fd96::1/64 dev gsoout0 nodad",
        "ip route add 10.99.0.1/32 dev gsoin0",
        "ip route add 10.99.0.2/32 dev gsoout0",
        "ip -6 route add fd99::1/128 dev gsoin0",
        "ip -6 route add fd99::2/128 dev gsoout0",
        "ip neigh replace 10.99.0.2 lladdr 02:00:00:00:00:02 dev gsoout0 nud permanent",
        "ip neigh replace fd99::2 lladdr 02:00:00:00:00:02 dev gsoout0 nud permanent",
    ]:
        sh(*cmd.split())
    time.sleep(0.5)
    for name in FIXTURES:
        raw = open(os.path.join(HERE, name), "rb").read()
        gso_type, gso_size, ethertype, ihl, _, payload, _ = parse(raw[:VNET_LEN], raw[VNET_LEN:])
        while select.select([fout], [], [], 0.05)[0]:
            os.read(fout, 70000)  # drop router solicitations and the like
        os.write(fin, raw)
        segs, got = [], 0
        deadline = time.time() + 3
        while got < payload and time.time() < deadline:
            if not select.select([fout], [], [], 0.2)[0]:
                continue
            frame = os.read(fout, 70000)[VNET_LEN:]
            if struct.unpack("!H", frame[12:14])[0] != ethertype:
                continue
            proto = frame[23] if ethertype == 0x0800 else frame[20]
            if proto not in (6, 17):
                continue
            _, _, _, _, _, seg_payload, _ = parse(bytes([0, gso_type]) + bytes(VNET_LEN - 2), frame)
            segs.append(frame)
            got += seg_payload
        if got != payload:
            sys.exit("forward: %s: the kernel forwarded %d of %d payload bytes" % (name, got, payload))
        out = name.replace(".bin", ".linux")
        with open(os.path.join(HERE, out), "wb") as f:
            for frame in segs:
                f.write(struct.pack("<I", len(frame)) + frame)
        print("wrote %s (%d segments)" % (out, len(segs)))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        frames = in_netns()
        write_fixtures(frames)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--forward":
        forward_in_netns()
        return
    for mode in ["--inside", "--forward"]:
        ns = "gsocap-%d" % os.getpid()
        sh("ip", "netns", "add", ns)
        try:
            sh("ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), mode)
        finally:
            subprocess.run(["ip", "netns", "del", ns])


def parse(vnet, frame):
    gso_type, gso_size = vnet[1], struct.unpack("<H", vnet[4:6])[0]
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0800:
        ihl = (frame[14] & 15) * 4
        l4 = 14 + ihl
        end = 14 + struct.unpack("!H", frame[16:18])[0]
    else:
        ihl = 40
        l4 = 54
        end = 54 + struct.unpack("!H", frame[18:20])[0]
    if gso_type == 5:
        return gso_type, gso_size, ethertype, ihl, 6000, end - l4 - 8, 0
    dport = struct.unpack("!H", frame[l4 + 2 : l4 + 4])[0]
    thlen = (frame[l4 + 12] >> 4) * 4
    payload = end - l4 - thlen
    return gso_type, gso_size, ethertype, ihl, dport, payload, frame[l4 + 13]


def write_fixtures(frames):
    info = [(parse(v, f), v, f) for v, f in frames]
    for (t, size, et, ihl, port, pl, fl), v, f in info:
        print("gso_type %d gso_size %d ethertype %04x ihl %d port %d payload %d flags %02x" % (t, size, et, ihl, port, pl, fl))

    def pick(name, cond, key):
        cands = [(key(p), v, f) for p, v, f in info if cond(p)]
        if not cands:
            sys.exit("capture: no frame for %s" % name)
        _, v, f = max(cands, key=lambda c: c[0])
        with open(os.path.join(HERE, name), "wb") as out:
            out.write(v + f)
        print("wrote %s (%d bytes)" % (name, len(v) + len(f)))

    pick("tso_v4_timestamps.bin", lambda p: p[4] == 5001 and p[5] % p[1] == 0, lambda p: p[5])
    pick(
        "tso_v4_short_last.bin",
        lambda p: p[4] in (5001, 5002) and p[5] % p[1] != 0 and p[5] > 2 * p[1] and p[6] & 0x01,
        lambda p: p[5],
    )
    pick("tso_v4_ip_options.bin", lambda p: p[4] == 5002 and p[3] > 20, lambda p: p[5])
    pick("tso_v6.bin", lambda p: p[2] == 0x86DD and p[0] == 4, lambda p: p[5])
    pick("uso_v4.bin", lambda p: p[0] == 5 and p[2] == 0x0800, lambda p: p[5])
    pick("uso_v6.bin", lambda p: p[0] == 5 and p[2] == 0x86DD, lambda p: p[5])


if __name__ == "__main__":
    main()
