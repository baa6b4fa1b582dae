#!/usr/bin/env bash
# make bench-e2e: end-to-end throughput, host-left -> host-right, in one run through
#   (a) plain routing (no tunnel), (b) the strongSwan 5.9.8 pair (kernel-libipsec: userspace ESP),
#   (c) the vpngw pair, with raw ESP (no NAT between them) through the link path (the default,
#   docs/adr/0011-raw-esp-link-path.md) and through the raw IP socket (esp_output = "ip"), and
#   with ESP in UDP forced (encapsulation = "udp": UDP GSO/GRO apply), for aes-128/sha1 and 3des/md5.
# iperf3 TCP, 10 s, 3 repetitions, medians; plus 64-byte UDP packets per second.
# Everything shares this machine's cores. Prints Mbit/s and the ratios vpngw/strongSwan and
# vpngw/plain. Options (environment): SECONDS_PER_RUN=10 REPS=3 PPS_SECONDS=5, SUITE="aes-128
# sha1 aes128-sha1" (one suite), PLACEMENT=own-core|shared.
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
RUN=/tmp/vpngw-bench-e2e
T=${SECONDS_PER_RUN:-10}
REPS=${REPS:-3}
PPS_T=${PPS_SECONDS:-5}
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

udp_pps() {  # 64-byte UDP, unlimited rate: packets per second that arrived
    nsx be-rhost iperf3 -s -1 -D -p 5202 >/dev/null 2>&1; sleep 0.3
    nsx be-lhost iperf3 -c 10.2.0.10 -p 5202 -u -l 64 -b 0 -t "$PPS_T" -J 2>/dev/null |
        python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum"]; print(int((s["packets"]-s["lost_packets"])/s["seconds"]))'
}

measure() {  # measure LABEL: REPS TCP runs + one pps run
    local label=$1 runs=() r
    nsx be-lhost ping -c 1 -W 2 10.2.0.10 >/dev/null || { echo "$label: no connectivity"; return 1; }
    for _ in $(seq "$REPS"); do r=$(tcp_mbps); runs+=("$r"); done
    local med pps
    med=$(median "${runs[@]}")
    pps=$(udp_pps)
    echo "$label ${med} ${pps} ${runs[*]}" | tee -a "$RUN/results"
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
echo "end-to-end benchmark: iperf3 TCP ${T}s x ${REPS} (median), 64-byte UDP ${PPS_T}s; $(nproc) cores shared by everything; placement: $PLACEMENT"
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
    for path in link ip udp; do
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
    label, mbps, pps, *runs = line.split()
    rows[label] = (float(mbps), int(pps), runs)
plain = rows["plain"][0]
print()
print(f"{'path':<30} {'TCP Mbit/s':>11} {'runs':>24} {'64B UDP pps':>12}")
for label, (mbps, pps, runs) in rows.items():
    print(f"{label:<30} {mbps:>11.1f} {' '.join(runs):>24} {pps:>12}")
print()
for suite in ("aes128-sha1", "3des-md5"):
    # The faster strongSwan placement is the one to beat.
    sws = [rows[k] for k in (f"strongswan-{suite}", f"strongswan-shared-{suite}") if k in rows]
    sw = max(sws, key=lambda r: r[0]) if sws else None
    for kind, name in (("vpngw", "raw ESP"), ("vpngw-ipsock", "raw ESP, IP socket"), ("vpngw-udp", "ESP in UDP")):
        vg = rows.get(f"{kind}-{suite}")
        if sw and vg:
            print(f"{suite} {name}: vpngw/strongSwan = {vg[0] / sw[0]:.2f}x, vpngw/plain = {vg[0] / plain:.3f}, "
                  f"64B pps vpngw/strongSwan = {vg[1] / max(sw[1], 1):.2f}x")
PY
