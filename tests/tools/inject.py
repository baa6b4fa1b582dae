#!/usr/bin/env python3
"""Sends hand-made datagrams at a gateway, for hostile-input tests.

  inject.py udp DST PORT HEX...     one UDP datagram per HEX argument (from port 4500)
  inject.py esp DST HEX...          one raw IP protocol 50 packet per HEX argument
  inject.py first-esp PCAP          print the first raw ESP payload of a capture (hex)
"""
import socket
import struct
import sys


def udp(dst, port, payloads):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for p in payloads:
        s.sendto(bytes.fromhex(p), (dst, port))


def esp(dst, payloads):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    for p in payloads:
        s.sendto(bytes.fromhex(p), (dst, 0))


def first_esp(path):
    data = open(path, "rb").read()
    little = data[:4] == b"\xd4\xc3\xb2\xa1"
    end = "<" if little else ">"
    linktype = struct.unpack(end + "I", data[20:24])[0]
    off = 24
    while off < len(data):
        _, _, incl, _ = struct.unpack(end + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[14:] if linktype == 1 else pkt
        if ip and ip[0] >> 4 == 4 and ip[9] == 50:
            ihl = (ip[0] & 15) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            print(ip[ihl:total].hex())
            return
    sys.exit("no ESP packet in capture")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "udp":
        udp(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif cmd == "esp":
        esp(sys.argv[2], sys.argv[3:])
    elif cmd == "first-esp":
        first_esp(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")
