#!/usr/bin/env bash
# Worker cost per packet of one vpngw pair, for comparing two builds on a busy machine where
# throughput alone is too noisy (docs/performance.md, "Renovation check"):
#   benches/worker-cost.sh BIN LABEL [link|ip|udp]
# The topology and placement of benches/e2e.sh (own-core: the left gateway's worker on core 0,
# the right one's on core 1), in namespaces of its own (ri-*), aes-128/sha1; REPS iperf3 TCP
# runs of T s and one 64-byte UDP run of PPS_T s. For each run it prints the iperf3 result and,
# for each gateway's worker thread over the middle of the run: packets out/in (the status
# counters), CPU time per packet (schedstat; user/sys in clock ticks) and system calls per
# packet (perf stat on the syscall tracepoints), each call named. Lines are appended to
# RESULTS (default /tmp/vpngw-worker-cost/results.txt). Needs root, iperf3 and perf.
set -euo pipefail
# shellcheck source=benches/lab.sh
. "$(dirname "$0")/lab.sh"
BIN=$1 LABEL=$2 OUTPUT=${3:-ip}
T=${T:-10} REPS=${REPS:-3} PPS_T=${PPS_T:-8}
BASE=/tmp/vpngw-worker-cost
RESULTS=${RESULTS:-$BASE/results.txt}
RUN=$BASE/run-$LABEL-$OUTPUT; rm -rf "$RUN"; mkdir -p "$RUN"
NS=(ri-lhost ri-left ri-right ri-rhost)
PIDS=()
nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }
cleanup() { set +e; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done; for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done; }
trap cleanup EXIT
lab_topology ri
encap=auto output=link
[ "$OUTPUT" = udp ] && encap=udp
[ "$OUTPUT" = ip ] && output=ip
for side in right left; do
    core=1; [ "$side" = left ] && core=0
    lab_vpngw_toml "$side" aes-128 sha1 "$encap" "$output" "$core" "$RUN/vg-$side.sock" >"$RUN/vg-$side.toml"
    chmod 600 "$RUN/vg-$side.toml" # inline key: vpngw warns about a file others can read
    ip netns exec "ri-$side" "$BIN" run --config "$RUN/vg-$side.toml" >"$RUN/vg-$side.log" 2>&1 &
    PIDS+=($!)
done
PID_RIGHT=${PIDS[0]} PID_LEFT=${PIDS[1]}
for _ in $(seq 100); do nsx ri-left "$BIN" status --json --socket "$RUN/vg-left.sock" 2>/dev/null | grep -q '"state": "up"' && break; sleep 0.1; done
nsx ri-lhost ping -c 1 -W 2 10.2.0.10 >/dev/null || { echo "$LABEL: no connectivity"; exit 1; }
tid_of() { for t in /proc/$1/task/*; do [ "$(cat $t/comm)" = vpngw-worker-0 ] && basename $t; done; }
TL=$(tid_of $PID_LEFT) TR=$(tid_of $PID_RIGHT)
snap() {  # snap SIDE PID TID -> "ns utime stime out in"
    local side=$1 pid=$2 tid=$3 st
    st=$(cat /proc/$pid/task/$tid/stat); st=${st##*) }
    read -r -a f <<<"$st"
    local ns; ns=$(cut -d' ' -f1 /proc/$pid/task/$tid/schedstat)
    local pk; pk=$(nsx ri-$side "$BIN" status --json --socket "$RUN/vg-$side.sock" | python3 -c '
import json,sys
d=json.load(sys.stdin)
o=i=0
def walk(x):
    global o,i
    if isinstance(x,dict):
        if "packets_out" in x and "busy_seconds" in x: o+=x["packets_out"]; i+=x["packets_in"]
        for v in x.values(): walk(v)
    elif isinstance(x,list):
        for v in x: walk(v)
walk(d); print(o,i)')
    echo "$ns ${f[11]} ${f[12]} $pk"
}
EV=raw_syscalls:sys_enter,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_read,syscalls:sys_enter_readv,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_poll,syscalls:sys_enter_ppoll,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg
one() {  # one KIND(tcp|udp) -> result line
    local kind=$1 dur
    if [ $kind = tcp ]; then dur=$T; nsx ri-rhost iperf3 -s -1 -D -p 5201 >/dev/null 2>&1; else dur=$PPS_T; nsx ri-rhost iperf3 -s -1 -D -p 5202 >/dev/null 2>&1; fi
    sleep 0.3
    local a_l a_r b_l b_r res
    if [ $kind = tcp ]; then
        nsx ri-lhost iperf3 -c 10.2.0.10 -p 5201 -t "$dur" -J >"$RUN/iperf-$kind.json" 2>/dev/null &
    else
        nsx ri-lhost iperf3 -c 10.2.0.10 -p 5202 -u -l 64 -b 0 -t "$dur" -J >"$RUN/iperf-$kind.json" 2>/dev/null &
    fi
    local ip=$!
    sleep 1
    a_l=$(snap left $PID_LEFT $TL); a_r=$(snap right $PID_RIGHT $TR)
    perf stat -x, -e $EV -t $TL -o "$RUN/perf-l-$kind" -- sleep $((dur-2)) & local p1=$!
    perf stat -x, -e $EV -t $TR -o "$RUN/perf-r-$kind" -- sleep $((dur-2)) & local p2=$!
    wait $p1 $p2 || true
    b_l=$(snap left $PID_LEFT $TL); b_r=$(snap right $PID_RIGHT $TR)
    wait $ip || true
    if [ $kind = tcp ]; then res=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e6,1))' "$RUN/iperf-$kind.json")
    else res=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["end"]["sum"]; print(int((s["packets"]-s["lost_packets"])/s["seconds"]))' "$RUN/iperf-$kind.json"); fi
    python3 - "$LABEL" "$OUTPUT" "$kind" "$res" "$a_l" "$b_l" "$RUN/perf-l-$kind" "$a_r" "$b_r" "$RUN/perf-r-$kind" "$RESULTS" <<'PY'
import sys
label, output, kind, res = sys.argv[1:5]
def side(a, b, perf):
    a = list(map(int, a.split())); b = list(map(int, b.split()))
    ns, ut, st, out, inn = [y - x for x, y in zip(a, b)]
    ev = {}
    for line in open(perf):
        p = line.strip().split(",")
        if len(p) > 2 and p[0].replace(".", "").isdigit():
            ev[p[2].split(":")[-1]] = int(float(p[0]))
    return ns, ut, st, out, inn, ev
l = side(sys.argv[5], sys.argv[6], sys.argv[7])
r = side(sys.argv[8], sys.argv[9], sys.argv[10])
def fmt(name, s):
    ns, ut, st, out, inn, ev = s
    pk = max(out + inn, 1)
    sc = ev.get("sys_enter", 0)
    parts = [f"{name}: out {out} in {inn} cpu {ns/1e9:.2f}s ({ns/pk:.0f} ns/pkt, user {ut} sys {st} ticks) sys/pkt {sc/pk:.3f}"]
    for k in ("sys_enter_sendmmsg", "sys_enter_recvmmsg", "sys_enter_read", "sys_enter_readv", "sys_enter_write", "sys_enter_writev", "sys_enter_poll", "sys_enter_ppoll", "sys_enter_sendto", "sys_enter_sendmsg"):
        if ev.get(k):
            parts.append(f"{k[10:]} {ev[k]}")
    return " ".join(parts)
line = f"{label} {output} {kind} {res} | {fmt('L', l)} | {fmt('R', r)}"
print(line)
open(sys.argv[11], "a").write(line + "\n")
PY
}
for _ in $(seq "$REPS"); do one tcp; done
one udp
