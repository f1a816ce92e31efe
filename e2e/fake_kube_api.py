#!/usr/bin/env python3
"""A stand-in Kubernetes API server with just the Nodes API, for netstackd --kube in
e2e/test_multinode.sh: GET /api/v1/nodes/NAME, list and watch on /api/v1/nodes (chunked JSON
lines, resourceVersion-ordered, ERROR 410 for a version it no longer has), PATCH
/api/v1/nodes/NAME/status (recorded as sent, answered with the Node), plain HTTP.

The test drives it:
  PUT  /test/nodes   body: {"items": [Node, ...]}: the whole cluster; the differences become
                     ADDED / MODIFIED / DELETED events
  POST /test/expire  forgets past events and ends every watch: the clients' next watch gets
                     410 Expired and must relist
  GET  /test/stats   {"lists": n, "watches": n, "gets": n, "patches": n}
  GET  /test/patches [{"path", "content_type", "body"}, ...]: every status patch received

  fake_kube_api.py PORT_FILE   (listens on 127.0.0.1, an ephemeral port written to PORT_FILE)
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Condition()
STATE = {"rv": 1, "nodes": {}, "events": [], "oldest": 1, "epoch": 0}
STATS = {"lists": 0, "watches": 0, "gets": 0, "patches": 0}
PATCHES = []


def with_rv(node, rv):
    node = json.loads(json.dumps(node))
    node.setdefault("apiVersion", "v1")
    node.setdefault("kind", "Node")
    node.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return node


def set_nodes(items):
    with LOCK:
        new = {n["metadata"]["name"]: n for n in items}
        for name, node in new.items():
            old = STATE["nodes"].get(name)
            if old is not None and old["spec"] == node.get("spec") and old.get("status") == node.get("status"):
                continue
            STATE["rv"] += 1
            kind = "ADDED" if old is None else "MODIFIED"
            STATE["nodes"][name] = with_rv(node, STATE["rv"])
            STATE["events"].append((STATE["rv"], kind, STATE["nodes"][name]))
        for name in list(STATE["nodes"]):
            if name not in new:
                STATE["rv"] += 1
                gone = with_rv(STATE["nodes"].pop(name), STATE["rv"])
                STATE["events"].append((STATE["rv"], "DELETED", gone))
        LOCK.notify_all()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-kube-api: " + fmt % args + "\n")

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path == "/test/nodes":
            set_nodes(body["items"])
            return self.reply(200, {"rv": STATE["rv"]})
        self.reply(404, {})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/test/expire":
            with LOCK:
                STATE["rv"] += 1
                STATE["oldest"] = STATE["rv"]
                STATE["events"].clear()
                STATE["epoch"] += 1
                LOCK.notify_all()
            return self.reply(200, {})
        self.reply(404, {})

    def do_PATCH(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = urlparse(self.path)
        parts = url.path.split("/")
        if len(parts) != 6 or parts[1:4] != ["api", "v1", "nodes"] or parts[5] != "status":
            return self.reply(404, {"kind": "Status", "code": 404, "message": url.path})
        with LOCK:
            STATS["patches"] += 1
            PATCHES.append({"path": url.path, "content_type": self.headers.get("Content-Type"),
                            "body": json.loads(body or b"null")})
            node = STATE["nodes"].get(parts[4])
        if node is None:
            return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404,
                                    "message": f'nodes "{parts[4]}" not found'})
        self.reply(200, node)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/test/stats":
            return self.reply(200, STATS)
        if url.path == "/test/patches":
            with LOCK:
                return self.reply(200, PATCHES)
        if url.path.startswith("/api/v1/nodes/"):
            name = url.path.rsplit("/", 1)[1]
            with LOCK:
                STATS["gets"] += 1
                node = STATE["nodes"].get(name)
            if node is None:
                return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "NotFound", "code": 404,
                                        "message": f'nodes "{name}" not found'})
            return self.reply(200, node)
        if url.path != "/api/v1/nodes":
            return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": url.path})
        if query.get("watch", ["false"])[0] not in ("true", "1"):
            with LOCK:
                STATS["lists"] += 1
                body = {"apiVersion": "v1", "kind": "NodeList",
                        "metadata": {"resourceVersion": str(STATE["rv"])},
                        "items": list(STATE["nodes"].values())}
            return self.reply(200, body)
        self.watch(int(query.get("resourceVersion", ["0"])[0] or 0))

    def watch(self, since):
        with LOCK:
            STATS["watches"] += 1
            epoch = STATE["epoch"]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            with LOCK:
                if since < STATE["oldest"]:
                    self.chunk({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Expired", "code": 410,
                        "message": f"too old resource version: {since} ({STATE['oldest']})"}})
                    self.wfile.write(b"0\r\n\r\n")
                    return
            while True:
                with LOCK:
                    LOCK.wait_for(lambda: STATE["epoch"] != epoch
                                  or any(rv > since for rv, _, _ in STATE["events"]), timeout=30)
                    if STATE["epoch"] != epoch:
                        break
                    pending = [e for e in STATE["events"] if e[0] > since]
                for rv, kind, node in pending:
                    self.chunk({"type": kind, "object": node})
                    since = rv
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
