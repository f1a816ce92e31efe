"""Prints the GSO and GRO sizes of a link in the calling network namespace, read over
rtnetlink (iproute2 6.1 shows no IPv4 ones): gso_max_size gro_max_size gso_ipv4_max_size
gro_ipv4_max_size, 0 for one the kernel does not report. Usage: link_sizes.py IFNAME"""

import socket
import struct
import sys

RTM_NEWLINK, RTM_GETLINK, NLMSG_ERROR = 16, 18, 2
NLM_F_REQUEST = 1
IFLA_IFNAME = 3
SIZES = (41, 58, 63, 64)  # IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE, IFLA_GSO/GRO_IPV4_MAX_SIZE


def align(n):
    return (n + 3) & ~3


def main():
    name = sys.argv[1].encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(name), IFLA_IFNAME) + name
    attr += b"\0" * (align(len(attr)) - len(attr))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.send(struct.pack("=IHHII", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST, 1, 0) + body)
    data = s.recv(1 << 16)
    _, kind, _, _, _ = struct.unpack_from("=IHHII", data)
    if kind == NLMSG_ERROR:
        err = struct.unpack_from("=i", data, 16)[0]
        sys.exit(f"link_sizes.py: {sys.argv[1]}: errno {-err}")
    if kind != RTM_NEWLINK:
        sys.exit(f"link_sizes.py: unexpected reply type {kind}")
    found = {}
    at = 32
    while at + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, at)
        if alen < 4:
            break
        if atype in SIZES and alen == 8:
            found[atype] = struct.unpack_from("=I", data, at + 4)[0]
        at += align(alen)
    print(" ".join(str(found.get(t, 0)) for t in SIZES))


main()
