#!/usr/bin/env python3
# TPACKET_V3 receive ring with PACKET_VNET_HDR on device IFNAME: do GSO frames arrive whole,
# with their virtio-net header, how many share a block, and how long does the first frame of a
# block wait before a reader sees it? Reads blocks for SECONDS (bounded), then prints one line.
# For e2e/bench/evals.sh tpacket-v3; the ring is 4 blocks of 4 MiB.
#
#   tpacket_v3.py IFNAME SECONDS [RETIRE_TIMEOUT_MS]
import socket, struct, mmap, select, sys, time
SOL_PACKET=263; PACKET_VERSION=10; PACKET_RX_RING=5; PACKET_VNET_HDR=15; TPACKET_V3=2
ifname, seconds = sys.argv[1], float(sys.argv[2])
BS, BN, FS, TOV = 4 << 20, 4, 2048, int(sys.argv[3]) if len(sys.argv) > 3 else 8
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIIIIII", BS, BN, FS, BS // FS * BN, TOV, 0, 0))
s.bind((ifname, 0))
m = mmap.mmap(s.fileno(), BS * BN, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
blk = 0; blocks = frames = gso = big = 0; maxlen = 0; per_block = []; spans = []; delays = []
end = time.time() + seconds
while time.time() < end:
    base = blk * BS
    status, num, first = struct.unpack_from("III", m, base + 8)
    if not status & 1:
        select.select([s], [], [], 0.2); continue
    off = base + first
    t_first = t_last = None
    for _ in range(num):
        nxt, sec, nsec, snap, length, st, mac = struct.unpack_from("IIIIIIH", m, off)
        flags, gso_type, hdr_len, gso_size = struct.unpack_from("<BBHH", m, off + mac - 10)
        frames += 1; maxlen = max(maxlen, length)
        if gso_type: gso += 1
        if length > 1514: big += 1
        t = sec + nsec / 1e9
        t_first = t if t_first is None else t_first; t_last = t
        off += nxt
    delays.append((time.time() - t_first) * 1e6 if t_first else 0)
    blocks += 1; per_block.append(num); spans.append((t_last - t_first) * 1e6 if num else 0)
    struct.pack_into("I", m, base + 8, 0)
    blk = (blk + 1) % BN
per_block.sort(); spans.sort(); delays.sort()
print(f"blocks {blocks}, frames {frames}, with a GSO type in the vnet header {gso}, longer than 1514 B {big}, longest {maxlen} B; "
      f"frames per block median {per_block[len(per_block)//2] if per_block else 0}, max {per_block[-1] if per_block else 0}; "
      f"first-to-last frame of a block median {spans[len(spans)//2] if spans else 0:.0f} us (retire timeout {TOV} ms); first frame to the reader seeing its block median {delays[len(delays)//2] if delays else 0:.0f} us")
