#!/usr/bin/env python3
"""Generates crates/vpngw-crypto/src/bitsliced_des/sboxes.rs: the eight DES S-boxes as boolean
circuits for the bitsliced DES.

Each S-box (FIPS 46-3 appendix 1) is written as a 6-input, 4-output truth table, synthesised by
Berkeley ABC (Debian package `berkeley-abc`) with two scripts, mapped onto the gates that are one
or two word instructions (AND, OR, XOR, AND-NOT, NOT, ...), checked here by simulating the
netlist on all 64 inputs, and the smaller of the two results is emitted as a Rust function.
The Rust unit tests check the emitted code against the tables again, independently.

Run: python3 crates/vpngw-crypto/gen/des_sboxes.py  (from the repository root; ~10 minutes).
Needed only to regenerate the file, never to build.
"""
import os
import re
import subprocess
import sys
import tempfile

# FIPS 46-3 appendix 1: SBOX[n][row][column].
SBOX = [
    [[14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7], [0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8],
     [4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0], [15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13]],
    [[15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10], [3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5],
     [0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15], [13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9]],
    [[10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8], [13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1],
     [13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7], [1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12]],
    [[7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15], [13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9],
     [10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4], [3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14]],
    [[2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9], [14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6],
     [4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14], [11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3]],
    [[12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11], [10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8],
     [9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6], [4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13]],
    [[4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1], [13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6],
     [1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2], [6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12]],
    [[13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7], [1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2],
     [7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8], [2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11]],
]

# Gates and their cost in word instructions; Rust expression for each.
GENLIB = """GATE ZERO 0 Y=CONST0;
GATE ONE 0 Y=CONST1;
GATE BUF 1 Y=A; PIN * NONINV 1 999 1 0 1 0
GATE INV 1 Y=!A; PIN * INV 1 999 1 0 1 0
GATE AND2 1 Y=A*B; PIN * NONINV 1 999 1 0 1 0
GATE OR2 1 Y=A+B; PIN * NONINV 1 999 1 0 1 0
GATE XOR2 1 Y=A*!B+!A*B; PIN * UNKNOWN 1 999 1 0 1 0
GATE ANDN 1 Y=A*!B; PIN * UNKNOWN 1 999 1 0 1 0
GATE XNOR2 2 Y=A*B+!A*!B; PIN * UNKNOWN 1 999 1 0 1 0
GATE NAND2 2 Y=!(A*B); PIN * INV 1 999 1 0 1 0
GATE NOR2 2 Y=!(A+B); PIN * INV 1 999 1 0 1 0
GATE ORN 2 Y=A+!B; PIN * UNKNOWN 1 999 1 0 1 0
"""
RUST = {
    "BUF": "{A}", "INV": "!{A}", "AND2": "{A} & {B}", "OR2": "{A} | {B}", "XOR2": "{A} ^ {B}",
    "ANDN": "{A}.andn({B})", "XNOR2": "!({A} ^ {B})", "NAND2": "!({A} & {B})", "NOR2": "!({A} | {B})",
    "ORN": "{A} | !{B}", "ZERO": "W::ZERO", "ONE": "!W::ZERO",
}
PY = {
    "BUF": lambda a, b: a, "INV": lambda a, b: a ^ M, "AND2": lambda a, b: a & b, "OR2": lambda a, b: a | b,
    "XOR2": lambda a, b: a ^ b, "ANDN": lambda a, b: a & (b ^ M), "XNOR2": lambda a, b: (a ^ b) ^ M,
    "NAND2": lambda a, b: (a & b) ^ M, "NOR2": lambda a, b: (a | b) ^ M, "ORN": lambda a, b: a | (b ^ M),
    "ZERO": lambda a, b: 0, "ONE": lambda a, b: M,
}
M = (1 << 64) - 1
ABC_RC = """alias b balance
alias rw rewrite
alias rwz rewrite -z
alias rf refactor
alias rfz refactor -z
alias rs resub
alias resyn2 "b; rw; rf; b; rw; rwz; b; rfz; rwz; b"
alias compress2rs "b -l; rs -K 6 -l; rw -l; rs -K 6 -N 2 -l; rf -l; rs -K 8 -l; b -l; rs -K 8 -N 2 -l; rw -l; rs -K 10 -l; rwz -l; rs -K 10 -N 2 -l; b -l; rs -K 12 -l; rfz -l; rs -K 12 -N 2 -l; rwz -l; b -l"
"""
SCRIPTS = [
    "strash; &get -n; &deepsyn -T 45; &put; dch -f; map -a",
    "strash; resyn2; compress2rs; resyn2; compress2rs; dch -f; map -a",
]


def sbox(n, x):
    row = ((x >> 5) & 1) << 1 | (x & 1)
    return SBOX[n][row][(x >> 1) & 0xF]


def parse_blif(text):
    gates, outputs = [], []
    for line in text.splitlines():
        if line.startswith(".outputs"):
            outputs = line.split()[1:]
        elif line.startswith(".gate"):
            parts = line.split()
            pins = dict(p.split("=") for p in parts[2:])
            gates.append((parts[1], pins))
        elif line.startswith(".names"):
            raise ValueError("unmapped logic in netlist: " + line)
    return gates, outputs


def simulate(gates, outputs):
    # Lane x of each input word carries input x (a1 = MSB of x).
    values = {f"a{t + 1}": sum(((x >> (5 - t)) & 1) << x for x in range(64)) for t in range(6)}
    for kind, pins in gates:
        values[pins["Y"]] = PY[kind](values.get(pins.get("A")), values.get(pins.get("B")))
    return [values[o] for o in outputs]


def check(n, gates, outputs):
    out = simulate(gates, outputs)
    for x in range(64):
        got = sum(((out[q] >> x) & 1) << (3 - q) for q in range(4))
        if got != sbox(n, x):
            return False
    return True


def synthesize(n, work):
    pla = os.path.join(work, f"s{n + 1}.pla")
    with open(pla, "w") as f:
        f.write(".i 6\n.o 4\n.ilb a1 a2 a3 a4 a5 a6\n.ob o1 o2 o3 o4\n")
        for x in range(64):
            f.write(f"{x:06b} {sbox(n, x):04b}\n")
        f.write(".e\n")
    best = None
    for k, script in enumerate(SCRIPTS):
        blif = os.path.join(work, f"s{n + 1}_{k}.blif")
        cmd = f"read_library gates.genlib; read_pla {pla}; {script}; write_blif {blif}"
        subprocess.run(["berkeley-abc", "-c", cmd], cwd=work, check=True, capture_output=True)
        gates, outputs = parse_blif(open(blif).read())
        if not check(n, gates, outputs):
            raise SystemExit(f"S{n + 1}: script {k} produced a wrong circuit")
        if best is None or len(gates) < len(best[0]):
            best = (gates, outputs)
    return best


def emit(n, gates, outputs):
    names = {f"a{t + 1}": f"a{t + 1}" for t in range(6)}
    lines = [
        "#[inline(always)]",
        f"pub(super) fn s{n + 1}<W: Word>(a1: W, a2: W, a3: W, a4: W, a5: W, a6: W) -> [W; 4] {{",
    ]
    for i, (kind, pins) in enumerate(gates):
        v = f"t{i}"
        expr = RUST[kind].format(A=names.get(pins.get("A"), ""), B=names.get(pins.get("B"), ""))
        lines.append(f"    let {v} = {expr};")
        names[pins["Y"]] = v
    lines.append("    [" + ", ".join(names[o] for o in outputs) + "]")
    lines.append("}")
    return "\n".join(lines)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.path.join(root, "src", "bitsliced_des", "sboxes.rs")
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "abc.rc"), "w") as f:
            f.write(ABC_RC)
        with open(os.path.join(work, "gates.genlib"), "w") as f:
            f.write(GENLIB)
        parts, counts = [], []
        for n in range(8):
            gates, outputs = synthesize(n, work)
            counts.append(len(gates))
            print(f"S{n + 1}: {len(gates)} gates", file=sys.stderr)
            parts.append(emit(n, gates, outputs))
    header = (
        "//! The eight DES S-boxes as boolean circuits over 64 lanes. GENERATED by\n"
        "//! `crates/vpngw-crypto/gen/des_sboxes.py` (Berkeley ABC); do not edit by hand.\n"
        f"//! Gates per S-box: {', '.join(map(str, counts))} (total {sum(counts)}).\n"
        "//! Inputs a1..a6 and outputs o1..o4 are numbered as in FIPS 46-3 (a1 = the leftmost bit).\n\n"
        "#![allow(clippy::many_single_char_names)]\n\nuse super::Word;\n"
    )
    with open(target, "w") as f:
        f.write(header + "\n" + "\n\n".join(parts) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
