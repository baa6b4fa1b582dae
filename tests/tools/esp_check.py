#!/usr/bin/env python3
"""Independent check of vpngw's ESP packets with the Python `cryptography` package.

Reads a pcap of raw IPv4 packets (ESP as IP protocol 50, or ESP-in-UDP on port 4500) and a JSON
file of SAs: {"<spi hex>": {"encryption": "aes-128"|..., "encryption_key": hex,
"integrity": "md5"|"sha1", "integrity_key": hex, "expected_inner": [hex, ...]}}.
For every packet: verifies the HMAC-96 ICV, decrypts with CBC, checks the RFC 4303 padding
(1, 2, 3, ...) and next header, and compares the inner packet with the expected one.
Prints a JSON summary; exits 1 on the first mismatch, with the reason.
"""
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers import algorithms

try:  # cryptography >= 43 keeps 3DES here
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # Debian 12's cryptography 38
    TripleDES = algorithms.TripleDES


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def cipher_for(name, key):
    if name == "des":
        return TripleDES(key * 3), 8  # K1 = K2 = K3 is single DES
    if name == "3des":
        return TripleDES(key), 8
    if name in ("aes-128", "aes-192", "aes-256"):
        return algorithms.AES(key), 16
    fail(f"unknown cipher {name}")


def read_pcap(path):
    data = open(path, "rb").read()
    magic, = struct.unpack("<I", data[:4])
    if magic != 0xA1B2C3D4:
        fail("not a little-endian pcap")
    linktype, = struct.unpack("<I", data[20:24])
    if linktype != 101:
        fail(f"linktype {linktype}, expected 101 (raw IP)")
    off = 24
    while off < len(data):
        _, _, incl, _ = struct.unpack("<IIII", data[off:off + 16])
        off += 16
        yield data[off:off + incl]
        off += incl


def main():
    pcap, sa_file = sys.argv[1], sys.argv[2]
    sas = json.load(open(sa_file))
    seen = {spi: 0 for spi in sas}
    checked = 0
    for pkt in read_pcap(pcap):
        if pkt[0] >> 4 != 4:
            fail("outer packet is not IPv4")
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        body = pkt[ihl:]
        if proto == 17:
            sport, dport, ulen = struct.unpack("!HHH", body[:6])
            if dport != 4500 or ulen != len(body):
                fail(f"UDP {sport}->{dport} length {ulen}: not ESP-in-UDP")
            body = body[8:]
            if body[:4] == b"\0\0\0\0":
                fail("non-ESP marker in front of an ESP packet")
        elif proto != 50:
            fail(f"outer protocol {proto}")
        spi = body[:4].hex()
        if spi not in sas:
            fail(f"unknown SPI {spi}")
        sa = sas[spi]
        algo, block = cipher_for(sa["encryption"], bytes.fromhex(sa["encryption_key"]))
        hash_alg = hashes.MD5() if sa["integrity"] == "md5" else hashes.SHA1()
        auth, icv = body[:-12], body[-12:]
        h = hmac.HMAC(bytes.fromhex(sa["integrity_key"]), hash_alg)
        h.update(auth)
        if h.finalize()[:12] != icv:
            fail(f"SPI {spi}: ICV mismatch")
        seq, = struct.unpack("!I", body[4:8])
        iv = body[8:8 + block]
        ct = auth[8 + block:]
        if len(ct) % block:
            fail(f"SPI {spi}: ciphertext not block-aligned")
        dec = Cipher(algo, modes.CBC(iv)).decryptor()
        plain = dec.update(ct) + dec.finalize()
        pad_len, next_header = plain[-2], plain[-1]
        padding = plain[-2 - pad_len:-2]
        if padding != bytes(range(1, pad_len + 1)):
            fail(f"SPI {spi}: padding {padding.hex()} is not 1, 2, 3, ...")
        if pad_len >= block:
            fail(f"SPI {spi}: {pad_len} pad bytes, more than needed for a {block}-byte block")
        inner = plain[:-2 - pad_len]
        expected_nh = 4 if inner[0] >> 4 == 4 else 41
        if next_header != expected_nh:
            fail(f"SPI {spi}: next header {next_header}, inner version {inner[0] >> 4}")
        index = seen[spi]
        if seq != index + 1:
            fail(f"SPI {spi}: sequence {seq}, expected {index + 1}")
        if inner.hex() != sa["expected_inner"][index]:
            fail(f"SPI {spi} packet {index}: inner packet differs")
        seen[spi] += 1
        checked += 1
    for spi, count in seen.items():
        if count != len(sas[spi]["expected_inner"]):
            fail(f"SPI {spi}: {count} packets seen, {len(sas[spi]['expected_inner'])} expected")
    print(json.dumps({"ok": True, "packets": checked, "sas": len(sas)}))


if __name__ == "__main__":
    main()
