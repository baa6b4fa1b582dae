#!/usr/bin/env bash
# make demo: two vpngw gateways in network namespaces with the seed's default configuration,
# a tunnel between them, and traffic through it. Cleans up on exit and on Ctrl-C.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${VPNGW_BIN:-$ROOT/target/release/vpngw}
RUN=/tmp/vpngw-demo
NS=(demo-lhost demo-left demo-right demo-rhost)
PIDS=()

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n'; bold "== $*"; }
nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }

cleanup() {
    set +e
    if [ ${#PIDS[@]} -gt 0 ]; then
        step "Stopping the gateways (each sends Deletes to its peer first)"
        for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
        for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
        PIDS=()
    fi
    for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
    echo "namespaces removed; logs kept in $RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces)"; exit 1; }
[ -x "$BIN" ] || { echo "no vpngw binary at $BIN (make demo builds it)"; exit 1; }
for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
rm -rf "$RUN"; mkdir -p "$RUN"
# The configurations hold their key inline: vpngw warns about such a file others can read, so the
# gateways run from private copies.
install -m 600 "$HERE/gw-left.toml" "$HERE/gw-right.toml" "$RUN/"

step "1. The lab: two sites joined by an 'internet' link, each gateway protecting a subnet"
cat <<'TOPO'
   demo-lhost              demo-left                  demo-right              demo-rhost
   10.1.0.10 --- 10.1.0.1 [vpngw] 198.51.100.1 ==== 198.51.100.2 [vpngw] 10.2.0.1 --- 10.2.0.10
              site A LAN                 "internet"                  site B LAN
   The gateways have no route between the two LANs: only the tunnel can carry that traffic.
TOPO
for n in "${NS[@]}"; do ip netns add "$n"; nsx "$n" ip link set lo up; done
ip link add eth0 netns demo-lhost type veth peer name lan0 netns demo-left
ip link add wan0 netns demo-left type veth peer name wan0 netns demo-right
ip link add lan0 netns demo-right type veth peer name eth0 netns demo-rhost
nsx demo-lhost ip addr add 10.1.0.10/24 dev eth0
nsx demo-left ip addr add 10.1.0.1/24 dev lan0
nsx demo-left ip addr add 198.51.100.1/24 dev wan0
nsx demo-right ip addr add 198.51.100.2/24 dev wan0
nsx demo-right ip addr add 10.2.0.1/24 dev lan0
nsx demo-rhost ip addr add 10.2.0.10/24 dev eth0
for n in "${NS[@]}"; do for d in $(nsx "$n" ls /sys/class/net); do nsx "$n" ip link set "$d" up; done; done
nsx demo-lhost ip route add default via 10.1.0.1
nsx demo-rhost ip route add default via 10.2.0.1
nsx demo-left sysctl -qw net.ipv4.ip_forward=1
nsx demo-right sysctl -qw net.ipv4.ip_forward=1
echo "Before the tunnel, site A cannot reach site B:"
nsx demo-lhost ping -c 1 -W 1 10.2.0.10 >/dev/null 2>&1 && echo "  (unexpected: reachable)" || echo "  ping 10.1.0.10 -> 10.2.0.10: no answer"

step "2. The configuration of each gateway (only addresses, key and subnets; the rest are defaults)"
for f in gw-left gw-right; do bold "--- deploy/demo/$f.toml"; grep -v '^\s*$' "$HERE/$f.toml"; done

step "3. vpngw check: the configuration is valid; the seed's defaults use weak algorithms, so it warns"
"$BIN" check --config "$RUN/gw-left.toml"

step "4. Starting both gateways (logs: $RUN/left.log, $RUN/right.log)"
# ip netns exec directly (not through a shell function), so that $! is vpngw itself.
ip netns exec demo-right "$BIN" run --config "$RUN/gw-right.toml" >"$RUN/right.log" 2>&1 & PIDS+=($!)
ip netns exec demo-left "$BIN" run --config "$RUN/gw-left.toml" >"$RUN/left.log" 2>&1 & PIDS+=($!)

step "5. The tunnel comes up: IKEv1 main mode (6 messages), then quick mode (3 messages)"
up=no
for _ in $(seq 100); do
    if nsx demo-left "$BIN" status --json --socket "$RUN/left.sock" 2>/dev/null | grep -q '"state": "up"'; then up=yes; break; fi
    sleep 0.1
done
[ "$up" = yes ] || { echo "the tunnel did not come up; see $RUN/*.log"; exit 1; }
sed -e 's/\x1b\[[0-9;]*m//g' "$RUN/left.log" | grep -E "IKE SA established|child SA established" | sed -E 's/^[^ ]+ +INFO [^ ]+ //; s/^/  left:  /'
sed -e 's/\x1b\[[0-9;]*m//g' "$RUN/right.log" | grep -E "IKE SA established|child SA established" | sed -E 's/^[^ ]+ +INFO [^ ]+ //; s/^/  right: /'

step "6. Ping from site A to site B through the tunnel, while watching the internet link"
ip netns exec demo-left tcpdump -i wan0 -n -c 6 -l esp >"$RUN/wire.txt" 2>/dev/null &
TCPDUMP=$!
sleep 0.5
nsx demo-lhost ping -c 4 -i 0.3 10.2.0.10
wait "$TCPDUMP" 2>/dev/null || true
echo
echo "On the internet link the pings travel as ESP (encrypted; the inner addresses are invisible):"
sed 's/^/  /' "$RUN/wire.txt"

step "7. vpngw status on both gateways"
nsx demo-left "$BIN" status --socket "$RUN/left.sock"
echo
nsx demo-right "$BIN" status --socket "$RUN/right.sock"

step "8. What Prometheus scrapes from site A's gateway (http://127.0.0.1:9720/metrics, an excerpt)"
# bash's /dev/tcp: no curl needed.
nsx demo-left bash -c 'exec 3<>/dev/tcp/127.0.0.1/9720 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' \
    | grep -E '^vpngw_(tunnel_up|ike_sa_state\{.*established|child_sas\{.*active|esp_packets_total)' | sed 's/^/  /' || true

step "Done. Next: docs/configuration.md to connect your own peer, docs/troubleshooting.md when a tunnel does not come up; make test runs every check."
