#!/usr/bin/env python3
"""Sends spoofed IPv4/UDP datagrams with a raw socket (IP_HDRINCL): any source address and port,
no reply needed. For hostile-input tests and flood benchmarks; run it in the peer's namespace.

  spoof.py SRC DST     reads one job a line from stdin and sends it, then prints JSON
                       {"sent": N, "errors": N, "seconds": S}

A job line:  SPORT DPORT COUNT PPS FRESH HEX
  COUNT datagrams with payload HEX from SRC:SPORT to DST:DPORT, PPS a second (0: as fast as
  possible); FRESH=1 puts a fresh random 8-byte ISAKMP initiator cookie in each datagram (at the
  payload's offset 0, or 4 after a non-ESP marker when DPORT is 4500).
"""
import json
import os
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def datagram(src, dst, sport, dport, payload, ident):
    udp_len = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    c = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    total = 20 + udp_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def main():
    src, dst = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = errors = 0
    t0 = time.monotonic()
    ident = 1
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        sport, dport, count, pps, fresh = (int(x) for x in parts[:5])
        payload = bytes.fromhex(parts[5]) if len(parts) > 5 else b""
        at = 4 if dport == 4500 and payload[:4] == b"\0\0\0\0" else 0
        start = time.monotonic()
        for i in range(count):
            p = payload
            if fresh:
                p = payload[:at] + os.urandom(8) + payload[at + 8:]
            try:
                s.sendto(datagram(src, dst, sport, dport, p, ident), (dst, 0))
                sent += 1
            except OSError:
                errors += 1
            ident += 1
            if pps > 0:
                wait = start + (i + 1) / pps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(time.monotonic() - t0, 3)}))


if __name__ == "__main__":
    main()
