#!/usr/bin/env python3
"""Delays frames: what nftables hands it, sent out again later, so that later packets overtake
them (reordering without netem, which this kernel lacks).

  delay.py IN OUT MS MARK

Reads the IPv4 frames that arrive on interface IN (one end of a veth pair; an nftables rule in
the netdev egress hook of OUT puts a copy of the frames to delay there with `dup to "<other
end>"` and drops the original) and sends each, unchanged, on interface OUT MS milliseconds later,
with socket mark MARK so that the egress rule lets it pass this time.
"""
import collections
import select
import socket
import sys
import time

SO_MARK = 36
ETH_P_ALL = 3


def no_udp_checksum(frame):
    """A locally sent UDP datagram is copied before its checksum is filled in (checksum
    offload): send it with none (0, allowed over IPv4) rather than a wrong one."""
    ihl = (frame[14] & 15) * 4
    if frame[23] == 17 and len(frame) >= 14 + ihl + 8:
        at = 14 + ihl + 6
        return frame[:at] + b"\0\0" + frame[at + 2:]
    return frame


def main():
    inp, out, ms, mark = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4], 0)
    r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    r.bind((inp, 0))
    w = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    w.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    w.bind((out, 0))
    held = collections.deque()
    delay = ms / 1000.0
    sent = failed = 0
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        ready, _, _ = select.select([r], [], [], timeout)
        if ready:
            frame, addr = r.recvfrom(65535)
            # Only frames that arrived on IN (not ones sent there), and only IPv4.
            if addr[2] != socket.PACKET_OUTGOING and frame[12:14] == b"\x08\x00":
                held.append((time.monotonic() + delay, no_udp_checksum(frame)))
        now = time.monotonic()
        while held and held[0][0] <= now:
            try:
                w.send(held.popleft()[1])
                sent += 1
            except OSError:
                failed += 1


if __name__ == "__main__":
    main()
