#!/usr/bin/env bash
# Part of make bench-scale: a vpngw daemon with one established tunnel, left alone: its resident
# memory and CPU use over IDLE_SECONDS (default 20).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${VPNGW_BIN:-$ROOT/target/release/vpngw}
RUN=/tmp/vpngw-bench-idle
IDLE=${IDLE_SECONDS:-20}
NS=(bi-left bi-right)
PIDS=()
cleanup() { set +e; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done; }
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
rm -rf "$RUN"; mkdir -p "$RUN"
for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add wan0 netns bi-left type veth peer name wan0 netns bi-right
ip -n bi-left addr add 198.51.100.1/24 dev wan0; ip -n bi-left link set wan0 up
ip -n bi-right addr add 198.51.100.2/24 dev wan0; ip -n bi-right link set wan0 up
for side in left right; do
    if [ $side = left ]; then me=198.51.100.1 peer=198.51.100.2 l=10.1.0.0/24 r=10.2.0.0/24 start=active
    else me=198.51.100.2 peer=198.51.100.1 l=10.2.0.0/24 r=10.1.0.0/24 start=passive; fi
    cat >"$RUN/$side.toml" <<EOC
[gateway]
public_address = "$me"
control_socket = "$RUN/$side.sock"
[[connection]]
name = "idle"
remote_address = "$peer"
pre_shared_key = "idle-psk-0123456789"
local_subnets = ["$l"]
remote_subnets = ["$r"]
start = "$start"
EOC
    chmod 600 "$RUN/$side.toml" # inline key: vpngw warns about a file others can read
    ip netns exec "bi-$side" "$BIN" run --config "$RUN/$side.toml" >"$RUN/$side.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do ip netns exec bi-left "$BIN" status --json --socket "$RUN/left.sock" 2>/dev/null | grep -q '"state": "up"' && break; sleep 0.1; done
sleep 2
pid=${PIDS[0]}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks); sleep "$IDLE"; t1=$(ticks)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$pid/status")
python3 -c "
cpu = ($t1 - $t0) / $hz / $IDLE * 100
print(f'idle daemon, one tunnel up: RSS {$rss / 1024:.1f} MiB, CPU {cpu:.2f}% of one core over ${IDLE} s, {$threads} threads')"
