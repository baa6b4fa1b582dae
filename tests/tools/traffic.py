#!/usr/bin/env python3
"""Traffic for end-to-end tests, checked at both ends.

  traffic.py tcp-server ADDR PORT        receive one connection until EOF; print JSON {bytes, sha256}
  traffic.py tcp-client ADDR PORT BYTES  send BYTES of data with a marker string every KiB; print JSON
  traffic.py udp-server ADDR PORT SECS   count numbered datagrams for SECS seconds; print JSON
  traffic.py udp-client ADDR PORT COUNT  send COUNT numbered datagrams; print JSON
  traffic.py stream-server ADDR PORT     receive one connection until EOF; print JSON {bytes,
                                         sha256, max_gap}: the longest wait between two arrivals
  traffic.py stream-client ADDR PORT SECS KBPS [STOPFILE]
                                         send a paced stream for SECS seconds (or until STOPFILE
                                         exists); print JSON
  traffic.py udp-stream-server ADDR PORT STOPFILE
                                         count numbered datagrams until STOPFILE exists (and 2 s
                                         more); print JSON {received, bad, duplicates}
  traffic.py udp-stream-client ADDR PORT STOPFILE
                                         send a numbered datagram every 5 ms until STOPFILE exists;
                                         print JSON {sent}

The marker (MARKER below) lets a capture be searched for leaked plaintext.
"""
import hashlib
import os
import json
import socket
import struct
import sys
import time

MARKER = b"VPNGW-PLAINTEXT-MARKER-7f3a"


def payload(n):
    out = bytearray()
    block = 0
    while len(out) < n:
        h = hashlib.sha256(struct.pack("!I", block)).digest()
        out += MARKER + h * 31
        block += 1
    return bytes(out[:n])


def tcp_server(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(60)
    conn, _ = s.accept()
    h = hashlib.sha256()
    total = 0
    while True:
        b = conn.recv(65536)
        if not b:
            break
        h.update(b)
        total += len(b)
    print(json.dumps({"bytes": total, "sha256": h.hexdigest()}))


def tcp_client(addr, port, n):
    data = payload(n)
    s = socket.create_connection((addr, port), timeout=60)
    start = time.time()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "seconds": time.time() - start}))


def datagram_number(b):
    """The number of one of udp_client's datagrams, or None if it is not one (corrupt)."""
    if len(b) < 4 + len(MARKER) or not b[4:].startswith(MARKER):
        return None
    return struct.unpack("!I", b[:4])[0]


def udp_server(addr, port, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(0.2)
    seen = set()
    bad = 0
    end = time.time() + secs
    while time.time() < end:
        try:
            b, _ = s.recvfrom(2048)
        except socket.timeout:
            continue
        n = datagram_number(b)
        if n is None:
            bad += 1
            continue
        seen.add(n)
    print(json.dumps({"received": len(seen), "bad": bad}))


def udp_client(addr, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        s.sendto(struct.pack("!I", i) + MARKER + b"x" * 100, (addr, port))
        time.sleep(0.002)
    print(json.dumps({"sent": count}))


def stream_server(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(60)
    conn, _ = s.accept()
    conn.settimeout(30)
    h = hashlib.sha256()
    total = 0
    last = None
    max_gap = 0.0
    while True:
        b = conn.recv(65536)
        now = time.monotonic()
        if not b:
            break
        if last is not None:
            max_gap = max(max_gap, now - last)
        last = now
        h.update(b)
        total += len(b)
    print(json.dumps({"bytes": total, "sha256": h.hexdigest(), "max_gap": max_gap}))


def stream_client(addr, port, secs, kbps, stopfile=None):
    """Sends 1 KiB every 1/kbps seconds (a steady stream, like a call), for secs seconds or
    until stopfile exists."""
    s = socket.create_connection((addr, port), timeout=30)
    h = hashlib.sha256()
    total = 0
    start = time.monotonic()
    block = 0
    while time.monotonic() - start < secs:
        if stopfile and block % 16 == 0 and os.path.exists(stopfile):
            break
        chunk = payload(1024 * (block % 7 + 1))[:1024]
        s.sendall(chunk)
        h.update(chunk)
        total += len(chunk)
        block += 1
        due = start + block / kbps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(json.dumps({"bytes": total, "sha256": h.hexdigest()}))


def udp_stream_server(addr, port, stopfile):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(0.2)
    seen = set()
    bad = 0
    dup = 0
    end = None
    while end is None or time.time() < end:
        if end is None and os.path.exists(stopfile):
            end = time.time() + 2
        try:
            b, _ = s.recvfrom(2048)
        except socket.timeout:
            continue
        n = datagram_number(b)
        if n is None:
            bad += 1
            continue
        if n in seen:
            dup += 1
        seen.add(n)
    print(json.dumps({"received": len(seen), "bad": bad, "duplicates": dup}))


def udp_stream_client(addr, port, stopfile):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    start = time.monotonic()
    while not (sent % 20 == 0 and os.path.exists(stopfile)):
        try:
            s.sendto(struct.pack("!I", sent) + MARKER + b"u" * 100, (addr, port))
        except OSError:
            pass  # no route for a moment: the datagram counts as sent and lost
        sent += 1
        delay = start + sent * 0.005 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    cmd, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "tcp-server":
        tcp_server(addr, port)
    elif cmd == "tcp-client":
        tcp_client(addr, port, int(sys.argv[4]))
    elif cmd == "udp-server":
        udp_server(addr, port, float(sys.argv[4]))
    elif cmd == "udp-client":
        udp_client(addr, port, int(sys.argv[4]))
    elif cmd == "stream-server":
        stream_server(addr, port)
    elif cmd == "stream-client":
        stream_client(addr, port, float(sys.argv[4]), float(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else None)
    elif cmd == "udp-stream-server":
        udp_stream_server(addr, port, sys.argv[4])
    elif cmd == "udp-stream-client":
        udp_stream_client(addr, port, sys.argv[4])
    else:
        sys.exit(f"unknown command {cmd}")
