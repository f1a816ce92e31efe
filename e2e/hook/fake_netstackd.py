#!/usr/bin/env python3
"""A netstackd that hangs in the middle of an attach, for test_hook.sh.

It speaks netstackd's control protocol (4-byte big-endian length, then JSON) well enough for
the CNI ADD path to get going: `status`, `stats` and `list` are answered at once, then `attach` (and
`detach`) are read and never answered, as if the daemon froze with the TAP queues in hand.
Usage: fake_netstackd.py SOCKET POD_CIDR. Exits on SIGTERM.
"""
import ipaddress
import json
import os
import socket
import socketserver
import struct
import sys
import threading

SOCKET, POD_CIDR = sys.argv[1], sys.argv[2]
NET = ipaddress.ip_network(POD_CIDR)
COUNTERS = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0, "drops": {}}
REPLIES = {
    "status": {"reply": "status", "version": "fake", "workers": 1, "uplink": "fake0",
               "pod_cidr": POD_CIDR, "gateway": str(NET.network_address + 1), "attachments": 0},
    "stats": {"reply": "stats", "pods": [], "uplink": COUNTERS},
    "list": {"reply": "list", "pods": []},
}


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            head = recv_exact(self.request, 4)
            if head is None:
                return
            body = recv_exact(self.request, struct.unpack(">I", head)[0])
            if body is None:
                return
            reply = REPLIES.get(json.loads(body).get("op"))
            if reply is None:  # attach, detach: freeze until the client gives up
                threading.Event().wait()
            out = json.dumps(reply).encode()
            self.request.sendall(struct.pack(">I", len(out)) + out)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if os.path.exists(SOCKET):
    os.unlink(SOCKET)
with Server(SOCKET, Handler) as server:
    server.serve_forever()
