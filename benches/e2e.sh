#!/usr/bin/env bash
# make bench-e2e: end-to-end throughput, host-left -> host-right, in one run through
#   (a) plain routing (no tunnel), (b) the strongSwan 5.9.8 pair (kernel-libipsec: userspace ESP),
#   (c) the vpngw pair, with raw ESP (no NAT between them) through the link path (the default,
#   docs/adr/0011-raw-esp-link-path.md) and through the raw IP socket (esp_output = "ip"), and
#   with ESP in UDP forced (encapsulation = "udp": UDP GSO/GRO apply), for aes-128/sha1 and 3des/md5.
# iperf3 TCP, 10 s, 3 repetitions, medians; plus 64-byte UDP packets per second (iperf3) and an
# IMIX UDP stream (vpngw-imix: IP sizes 64/576/1500 in a 7:4:1 packet ratio, interleaved), each
# PPS_REPS times, medians. Everything shares this machine's cores. Prints Mbit/s and the ratios
# vpngw/strongSwan and vpngw/plain. Options (environment): SECONDS_PER_RUN=10 REPS=3
# PPS_SECONDS=5 PPS_REPS=3, SUITE="aes-128 sha1 aes128-sha1" (one suite), PLACEMENT=own-core|shared,
# TCP=0 (no TCP runs: the small-packet figures only), PATHS="link ip udp" (the vpngw paths).
# PLACEMENT=own-core (the default, with 2+ cores): each lab gateway runs on a core of its own,
# the left one on core 0 and the right one on core 1, strongSwan (taskset) and vpngw
# (gateway.worker_cores) alike, as if each had its own machine; the hosts' iperf3 float.
# PLACEMENT=shared: no placement; each vpngw pins one worker per core, and a tunnel's two
# directions land on a core by their SPIs, so the two gateways' busy workers share one core
# in about half of the runs (docs/performance.md, "placement").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lab.sh
. "$ROOT/benches/lab.sh"
BIN=${VPNGW_BIN:-$ROOT/target/release/vpngw}
IMIX=${VPNGW_IMIX:-$ROOT/target/release/vpngw-imix}
RUN=/tmp/vpngw-bench-e2e
T=${SECONDS_PER_RUN:-10}
REPS=${REPS:-3}
PPS_T=${PPS_SECONDS:-5}
PPS_REPS=${PPS_REPS:-3}
TCP=${TCP:-1}
PATHS=${PATHS:-link ip udp}
NS=(be-lhost be-left be-right be-rhost)
PSK=$LAB_PSK
CHARON=/usr/lib/ipsec/charon
PIDS=()
PLACEMENT=${PLACEMENT:-own-core}
[ "$(nproc)" -ge 2 ] || PLACEMENT=shared
core_of() { [ "$1" = left ] && echo 0 || echo 1; }

nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }
stop_all() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    # Until the IKE ports are free again in both gateways.
    for _ in $(seq 50); do
        busy=$( (nsx be-left ss -Huln; nsx be-right ss -Huln) | grep -cE ':(500|4500) ' || true)
        [ "$busy" = 0 ] && break
        sleep 0.1
    done
}
cleanup() { set +e; stop_all; for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }

topology() { lab_topology be; }

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.1f}")' "$@"; }

tcp_mbps() {  # one iperf3 TCP run, Mbit/s received
    nsx be-rhost iperf3 -s -1 -D -p 5201 >/dev/null 2>&1; sleep 0.3
    nsx be-lhost iperf3 -c 10.2.0.10 -p 5201 -t "$T" -J 2>/dev/null |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6,1))'
}

# What reached host-right's UDP layer: datagrams (read by a socket or dropped at a full one) and
# IP bytes, from its namespace's counters.
rhost_udp() {
    nsx be-rhost python3 -c '
def table(path, name):
    rows = [l.split() for l in open(path) if l.startswith(name + ":")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))
u = table("/proc/net/snmp", "Udp")
print(u["InDatagrams"] + u["InErrors"], table("/proc/net/netstat", "IpExt")["InOctets"])'
}

# delivered SECONDS BEFORE AFTER: "packets/s Mbit/s" that reached host-right (rhost_udp's deltas).
delivered() {
    python3 -c 'import sys; t=float(sys.argv[1]); a=sys.argv[2].split(); b=sys.argv[3].split()
print(int((int(b[0])-int(a[0]))/t), round((int(b[1])-int(a[1]))*8/t/1e6, 1))' "$@"
}

# 64-byte UDP payloads, unlimited rate: "read delivered", packets per second that iperf3's
# receiver read and that reached host-right's UDP (the gateway's rate: beyond what one iperf3
# receiver reads, the rest overflows its socket, docs/performance.md "Small packets").
udp_pps() {
    local before after
    nsx be-rhost iperf3 -s -1 -D -p 5202 >/dev/null 2>&1; sleep 0.3
    before=$(rhost_udp)
    nsx be-lhost iperf3 -c 10.2.0.10 -p 5202 -u -l 64 -b 0 -t "$PPS_T" -J >"$RUN/pps.json" 2>/dev/null
    after=$(rhost_udp)
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["end"]["sum"]; print(int((s["packets"]-s["lost_packets"])/s["seconds"]), s["seconds"])' "$RUN/pps.json" |
        { read -r read secs; echo "$read $(delivered "$secs" "$before" "$after" | cut -d' ' -f1)"; }
}

# The IMIX stream for PPS_T s: "read-pps read-Mbit/s delivered-pps delivered-Mbit/s" (IP bytes),
# both over the receiver's span (first to last datagram read), with what the gateway still had
# queued when the sender stopped counted on both sides.
imix() {
    local before after
    nsx be-rhost "$IMIX" recv --bind 10.2.0.10:5203 --seconds $((PPS_T + 10)) >"$RUN/imix.json" &
    local recv=$!
    sleep 0.3
    before=$(rhost_udp)
    nsx be-lhost "$IMIX" send --to 10.2.0.10:5203 --seconds "$PPS_T" >"$RUN/imix-send.json"
    wait "$recv"
    after=$(rhost_udp)
    echo "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r["pps"]), r["ip_mbps"])' "$RUN/imix.json")" \
        "$(delivered "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$RUN/imix.json")" "$before" "$after")"
}

measure() {  # measure LABEL: REPS TCP runs, then PPS_REPS runs of 64-byte UDP and of IMIX
    local label=$1 runs=(0) r pr=() pd=() ir=() imr=() id=() imd=() a b c d
    nsx be-lhost ping -c 1 -W 2 10.2.0.10 >/dev/null || { echo "$label: no connectivity"; return 1; }
    if [ "$TCP" = 1 ]; then runs=(); for _ in $(seq "$REPS"); do r=$(tcp_mbps); runs+=("$r"); done; fi
    for _ in $(seq "$PPS_REPS"); do
        read -r a b < <(udp_pps); pr+=("$a"); pd+=("$b")
        read -r a b c d < <(imix); ir+=("$a"); imr+=("$b"); id+=("$c"); imd+=("$d")
    done
    # One field per figure: label, TCP median, then medians of 64B read/delivered pps, IMIX
    # read/delivered pps and Mbit/s, then the single runs (comma-separated) of TCP, 64B read,
    # 64B delivered, IMIX read pps, IMIX delivered pps.
    echo "$label $(median "${runs[@]}") $(median "${pr[@]}") $(median "${pd[@]}")" \
        "$(median "${ir[@]}") $(median "${id[@]}") $(median "${imr[@]}") $(median "${imd[@]}")" \
        "$(IFS=,; echo "${runs[*]} ${pr[*]} ${pd[*]} ${ir[*]} ${id[*]}")" | tee -a "$RUN/results"
}

sw_conf() {  # sw_conf SIDE IKE ESP
    local side=$1 ike=$2 esp=$3 d=$RUN/sw-$1 me peer mynet peernet
    if [ "$side" = left ]; then me=198.51.100.1 peer=198.51.100.2 mynet=10.1.0.0/24 peernet=10.2.0.0/24
    else me=198.51.100.2 peer=198.51.100.1 mynet=10.2.0.0/24 peernet=10.1.0.0/24; fi
    mkdir -p "$d"
    cat >"$d/strongswan.conf" <<EOC
charon {
  load = random nonce openssl aes sha1 sha2 md5 hmac gmp kdf pem pkcs1 pubkey x509 kernel-libipsec kernel-netlink socket-default vici
  install_routes = yes
  plugins {
    vici {
      socket = unix://$d/charon.vici
    }
    openssl {
      load_legacy = yes
    }
  }
  filelog {
    lab {
      path = $d/charon.log
      default = 1
    }
  }
  syslog {
    daemon {
      default = -1
    }
  }
}
EOC
    cat >"$d/swanctl.conf" <<EOC
connections {
  lab {
    version = 1
    local_addrs = $me
    remote_addrs = $peer
    proposals = $ike
    local {
      auth = psk
      id = $me
    }
    remote {
      auth = psk
      id = $peer
    }
    children {
      net {
        mode = tunnel
        local_ts = $mynet
        remote_ts = $peernet
        esp_proposals = $esp
        start_action = none
      }
    }
  }
}
secrets {
  ike-lab {
    id-l = $me
    id-r = $peer
    secret = "$PSK"
  }
}
EOC
    # A socket file left by the previous suite's charon would be found before the new one
    # listens ("Connection refused"): remove it, then wait until the new one answers.
    rm -f "$d/charon.vici"
    local pin=()
    [ "$PLACEMENT" = own-core ] && pin=(taskset -c "$(core_of "$side")")
    STRONGSWAN_CONF=$d/strongswan.conf ip netns exec "be-$side" "${pin[@]}" sh -c 'mount --bind "$1" /run && exec "$2"' sh "$d" "$CHARON" >"$d/out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do
        [ -S "$d/charon.vici" ] && swanctl --stats --uri "unix://$d/charon.vici" >/dev/null 2>&1 && break
        sleep 0.1
    done
    swanctl --load-all --noprompt --file "$d/swanctl.conf" --uri "unix://$d/charon.vici" >"$d/load.out" 2>&1 || { cat "$d/load.out"; return 1; }
}

vg_conf() {  # vg_conf SIDE ENC HASH ENCAPSULATION [ESP_OUTPUT]
    local side=$1 core=""
    [ "$PLACEMENT" = own-core ] && core=$(core_of "$side")
    lab_vpngw_toml "$side" "$2" "$3" "$4" "${5:-link}" "$core" "$RUN/vg-$side.sock" >"$RUN/vg-$side.toml"
    chmod 600 "$RUN/vg-$side.toml" # inline key: vpngw warns about a file others can read
    # ip netns exec directly (not through a shell function): $! must be vpngw itself.
    ip netns exec "be-$side" "$BIN" run --config "$RUN/vg-$side.toml" >"$RUN/vg-$side.log" 2>&1 &
    PIDS+=($!)
}

rm -rf "$RUN"; mkdir -p "$RUN"; : >"$RUN/results"
echo "end-to-end benchmark: iperf3 TCP ${T}s x ${REPS} (median), 64-byte UDP and IMIX ${PPS_T}s x ${PPS_REPS} (median); $(nproc) cores shared by everything; placement: $PLACEMENT; load: $(uptime)"
[ -x "$IMIX" ] || { echo "no $IMIX: cargo build --release -p vpngw-tests --bin vpngw-imix"; exit 1; }
topology
nsx be-left ip route add 10.2.0.0/24 via 198.51.100.2
nsx be-right ip route add 10.1.0.0/24 via 198.51.100.1
measure plain
nsx be-left ip route del 10.2.0.0/24
nsx be-right ip route del 10.1.0.0/24

SUITE_LIST=("aes-128 sha1 aes128-sha1" "3des md5 3des-md5")
[ -n "${SUITE:-}" ] && SUITE_LIST=("$SUITE")
for suite in "${SUITE_LIST[@]}"; do
    set -- $suite
    enc=$1 hash=$2 sw=$3
    # strongSwan in the bench's placement and, when that is own-core, also unplaced: the
    # ratios take the faster of the two (its kernel-libipsec threads may gain from two cores).
    sw_placements=("$PLACEMENT"); [ "$PLACEMENT" = own-core ] && sw_placements+=(shared)
    for sw_placement in "${sw_placements[@]}"; do
        PLACEMENT_NOW=$PLACEMENT; PLACEMENT=$sw_placement
        sw_conf right "$sw-modp2048" "$sw"
        sw_conf left "$sw-modp2048" "$sw"
        PLACEMENT=$PLACEMENT_NOW
        swanctl --initiate --ike lab --child net --timeout 20 --uri "unix://$RUN/sw-left/charon.vici" >/dev/null
        label="strongswan-$sw"; [ "$sw_placement" != "$PLACEMENT" ] && label="strongswan-$sw_placement-$sw"
        measure "$label"
        stop_all
    done
    # Raw ESP through the link path (the default), raw ESP through the raw IP socket
    # (esp_output = "ip"), ESP in UDP.
    for path in $PATHS; do
        encap=auto output=link
        [ "$path" = udp ] && encap=udp
        [ "$path" = ip ] && output=ip
        vg_conf right "$enc" "$hash" "$encap" "$output"
        vg_conf left "$enc" "$hash" "$encap" "$output"
        for _ in $(seq 100); do nsx be-left "$BIN" status --json --socket "$RUN/vg-left.sock" 2>/dev/null | grep -q '"state": "up"' && break; sleep 0.1; done
        label="vpngw-$sw"; [ "$path" = udp ] && label="vpngw-udp-$sw"; [ "$path" = ip ] && label="vpngw-ipsock-$sw"
        measure "$label"
        for side in left right; do
            nsx "be-$side" "$BIN" status --json --socket "$RUN/vg-$side.sock" | python3 -c 'import json,sys; d=json.load(sys.stdin)["dropped"]; print("  drops at '"$side"':", d or "none")'
        done
        stop_all
        # Each path's logs stay for a look afterwards (the next path reuses the file names).
        for side in left right; do cp "$RUN/vg-$side.log" "$RUN/$label-$side.log"; done
    done
done

python3 - "$RUN/results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, *f = line.split()
    rows[label] = [float(x) for x in f[:7]] + f[7:]
plain = rows["plain"][0]
print()
print("64B and IMIX packets per second: read by the receiving application / delivered to host-right's UDP")
print(f"{'path':<30} {'TCP Mbit/s':>10} {'64B read':>9} {'deliv.':>8} {'IMIX read':>9} {'deliv.':>8} {'Mbit/s r':>8} {'d':>7}  runs: TCP | 64B r | 64B d | IMIX r | IMIX d")
for label, r in rows.items():
    print(f"{label:<30} {r[0]:>10.1f} {r[1]:>9.0f} {r[2]:>8.0f} {r[3]:>9.0f} {r[4]:>8.0f} {r[5]:>8.1f} {r[6]:>7.1f}  {' | '.join(r[7:])}")
print()
for suite in ("aes128-sha1", "3des-md5"):
    # The faster strongSwan placement is the one to beat.
    sws = [rows[k] for k in (f"strongswan-{suite}", f"strongswan-shared-{suite}") if k in rows]
    # Without TCP runs (TCP=0), the one that read more 64-byte packets.
    sw = max(sws, key=lambda r: r[0] if plain else r[1]) if sws else None
    for kind, name in (("vpngw", "raw ESP"), ("vpngw-ipsock", "raw ESP, IP socket"), ("vpngw-udp", "ESP in UDP")):
        vg = rows.get(f"{kind}-{suite}")
        if sw and vg:
            tcp = f"vpngw/strongSwan = {vg[0] / sw[0]:.2f}x, vpngw/plain = {vg[0] / plain:.3f}, " if plain and sw[0] else ""
            print(f"{suite} {name}: {tcp}64B pps vpngw/strongSwan = {vg[1] / max(sw[1], 1):.2f}x "
                  f"(delivered {vg[2] / max(sw[2], 1):.2f}x)")
    raw, udp = rows.get(f"vpngw-{suite}"), rows.get(f"vpngw-udp-{suite}")
    if raw and udp:
        print(f"{suite} ESP in UDP / raw ESP (link path): 64B pps read {udp[1] / max(raw[1], 1):.2f}, delivered {udp[2] / max(raw[2], 1):.2f}; "
              f"IMIX pps read {udp[3] / max(raw[3], 1):.2f}, delivered {udp[4] / max(raw[4], 1):.2f}")
PY
