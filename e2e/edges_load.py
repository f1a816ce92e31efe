#!/usr/bin/env python3
"""Load for e2e/test_daemon_edges.sh; every loop is bounded in time.

http ADDR PID: 50 clients trickle a request one byte every 1.5 s and one client streams up to
1 GiB without a newline at the metrics listener, while GET /metrics and GET /healthz are timed
beside them and the supervisor's RSS is sampled. Prints one JSON object.

idle SOCK N SECONDS: holds N idle connections to the control socket for SECONDS.

trickle SOCK: announces a 64-byte control message, then sends one byte a second (at most 20);
prints how long until netstackd cut the connection (or "not cut").
"""
import json
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

TRICKLERS = 50
TRICKLE_EVERY = 1.5
STREAM_TOTAL = 1 << 30
STREAM_LIMIT_S = 20.0
LOAD_S = 12.0


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def closed(sock):
    """Has the server answered (an error: the request never completed), closed or reset this
    connection?"""
    sock.setblocking(False)
    try:
        sock.recv(4096)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def http_load(addr, pid):
    host, port = addr.rsplit(":", 1)
    port = int(port)
    out = {"rss_max_kb": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            out["rss_max_kb"] = max(out["rss_max_kb"], rss_kb(pid))
            stop.wait(0.2)

    def stream():
        s = socket.create_connection((host, port), timeout=5)
        s.settimeout(1.0)
        chunk = b"A" * 65536
        sent, start, cut = 0, time.monotonic(), False
        while sent < STREAM_TOTAL and time.monotonic() - start < STREAM_LIMIT_S:
            try:
                sent += s.send(chunk)
            except socket.timeout:
                continue  # the server is not reading: keep trying until the limit
            except OSError:
                cut = True
                break
        out["streamer"] = {"bytes": sent, "cut": cut, "seconds": round(time.monotonic() - start, 2)}
        s.close()

    def trickle():
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        socks = []
        for _ in range(TRICKLERS):
            socks.append(socket.create_connection((host, port), timeout=5))
        start = time.monotonic()
        cut_at = [None] * TRICKLERS
        i = 0
        while time.monotonic() - start < LOAD_S and None in cut_at:
            for k, s in enumerate(socks):
                if cut_at[k] is not None:
                    continue
                if closed(s):
                    cut_at[k] = time.monotonic() - start
                    continue
                try:
                    s.send(request[i % len(request):i % len(request) + 1])
                except OSError:
                    cut_at[k] = time.monotonic() - start
            i += 1
            time.sleep(TRICKLE_EVERY)
        cuts = [c for c in cut_at if c is not None]
        out["tricklers"] = {"cut": len(cuts), "last_cut_s": round(max(cuts), 1) if cuts else None}
        for s in socks:
            s.close()

    threads = [threading.Thread(target=f) for f in (sample, stream, trickle)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # every trickler connected and mid-request, the streamer going
    for path in ("metrics", "healthz"):
        start = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://{addr}/{path}", timeout=30) as r:
                body = r.read().decode()
                out[path] = {"status": r.status, "seconds": round(time.monotonic() - start, 3),
                             "body": body if path == "healthz" else len(body),
                             "families": body.count("# TYPE ")}
        except (OSError, urllib.error.URLError) as e:
            out[path] = {"status": None, "seconds": round(time.monotonic() - start, 3), "error": str(e)}
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    print(json.dumps(out))


def idle(path, n, seconds):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        socks.append(s)
    print("connected", flush=True)
    time.sleep(seconds)
    for s in socks:
        s.close()


def trickle_control(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(struct.pack(">I", 64))
    start = time.monotonic()
    for _ in range(20):
        time.sleep(1.0)
        try:
            if closed(s):
                break
            s.sendall(b" ")
        except OSError:
            break
    else:
        print("not cut")
        return
    print(f"cut after {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    if sys.argv[1] == "http":
        http_load(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "idle":
        idle(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif sys.argv[1] == "trickle":
        trickle_control(sys.argv[2])
