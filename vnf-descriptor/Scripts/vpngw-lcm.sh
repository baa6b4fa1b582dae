#!/bin/bash
# vpngw VNF lifecycle script: what the VNFD's Vnflcm operations run on each VNFC (VM).
#
#   vpngw-lcm.sh OPERATION [--params FILE] [--node a|b] [--wait-up SECONDS] [--restart] [--dry-run]
#
# OPERATION:
#   instantiate  write the configuration from the parameters (the InstantiateVnfRequest, or its
#                additionalParams), check it with `vpngw check`, install it, start vpngw (and for
#                hot_standby keepalived) and wait until it is ready (below). The parameters are
#                kept for heal and scale.
#   heal         the same from the kept parameters (or --params): a rebuilt or rebooted VNFC comes
#                back with its configuration. A vpngw that runs and answers its liveness probe is
#                told to reload (`vpngw reload`: unchanged tunnels stay up); it is restarted when
#                it does not run or answer, when the reload is refused or names keys that need a
#                restart, or with --restart.
#   scale        on a VNFC added by scale out (hot_standby's gateway B): as instantiate; on a VNFC
#                that is already configured: only checks its configuration.
#   terminate    stop vpngw (SIGTERM: every peer is sent a Delete) and keepalived, disable them and
#                remove the files this script wrote (never the key files).
#   render       only write the configuration into --etc and check it (what --dry-run does).
#   install      only install vpngw from the package's Debian package if it is not installed
#                (what instantiate, heal and scale do first; below).
#
# --node a|b: which gateway of hot_standby this VNFC is (default: $VPNGW_NODE, else the node whose
# sync_address is configured on this host).
# --dry-run (or VPNGW_LCM_DRY_RUN=1): write and check the configuration only; no sysctl, no
# service is touched. Makes the script testable without systemd or root.
#
# Ready: after starting (or reloading) vpngw the operation waits, up to VPNGW_LCM_READY_TIMEOUT
# seconds (default 30), for `vpngw healthcheck --ready` (GET /readyz on [metrics] listen; with no
# metrics listener, for the control socket to answer) and fails (exit 1) with the answer and the
# log's tail if it never comes. hot_standby: liveness (/healthz) before keepalived starts, then
# readiness; a standby that cannot be in sync yet (its partner is not there) is reported, not a
# failure. --wait-up SECONDS (or VPNGW_LCM_WAIT_UP, or additionalParams.lcm.wait_up_seconds):
# also wait until every connection with start = "active" is up (`vpngw up NAME --wait`; on the
# active node of a pair only); a failed negotiation fails the operation (exit 1) with vpngw's
# diagnosis. Default 0: not waited for (a peer may come later).
#
# Environment (defaults): VPNGW_BIN (vpngw on PATH, else /usr/bin/vpngw), VPNGW_ETC (/etc/vpngw),
# VPNGW_LCM_STATE (/var/lib/vpngw/lcm), KEEPALIVED_ETC (/etc/keepalived), VPNGW_RUN (/run/vpngw),
# VPNGW_SERVICE (vpngw.service), VPNGW_SYSCTL_DIR (/etc/sysctl.d), VPNGW_LCM_SYSTEMD (auto; 0:
# never use systemctl), VPNGW_LCM_READY_TIMEOUT (30), VPNGW_LCM_WAIT_UP (0). Without systemd (or
# without the unit), vpngw runs in the background with a PID file and its log in VPNGW_RUN
# (containers, the lab).
#
# vpngw: VPNGW_BIN, else vpngw on PATH, else /usr/bin/vpngw; if none is installed (and VPNGW_BIN
# is not set), the Debian package the VNF package carries (Files/software/vpngw_*_amd64.deb, or
# VPNGW_DEB) is installed first (apt-get install, else dpkg -i).
#
# Exit: 0 done, 1 runtime failure, 2 invalid parameters or configuration (nothing was changed).
# Keys: the parameters name key files only; no key and no parameter value is printed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
render_py="$here/vpngw_render.py"
notify_sh="$here/vpngw-notify.sh"

etc=${VPNGW_ETC:-/etc/vpngw}
state=${VPNGW_LCM_STATE:-/var/lib/vpngw/lcm}
kdir=${KEEPALIVED_ETC:-/etc/keepalived}
run=${VPNGW_RUN:-/run/vpngw}
service=${VPNGW_SERVICE:-vpngw.service}
sysctl_dir=${VPNGW_SYSCTL_DIR:-/etc/sysctl.d}
use_systemd=${VPNGW_LCM_SYSTEMD:-auto}
dry_run=${VPNGW_LCM_DRY_RUN:-0}
node=${VPNGW_NODE:-}
ready_timeout=${VPNGW_LCM_READY_TIMEOUT:-30}
wait_up=${VPNGW_LCM_WAIT_UP:-}
force_restart=0
params=""

log() { echo "vpngw-lcm: $*" >&2; }
die() {
    local code=$1
    shift
    log "$*"
    exit "$code"
}

usage() {
    sed -n '2,51p' "$0" >&2
    exit 2
}

(($# >= 1)) || usage
op=$1
shift
[[ $op == -h || $op == --help ]] && usage
while (($#)); do
    case $1 in
    --params) params=${2:?--params FILE} && shift 2 ;;
    --node) node=${2:?--node a|b} && shift 2 ;;
    --wait-up) wait_up=${2:?--wait-up SECONDS} && shift 2 ;;
    --restart) force_restart=1 && shift ;;
    --dry-run) dry_run=1 && shift ;;
    -h | --help) usage ;;
    *) die 2 "unknown argument: $1" ;;
    esac
done
[[ $op == render ]] && dry_run=1
case $dry_run in 1 | true | yes) dry_run=1 ;; *) dry_run=0 ;; esac
[[ $ready_timeout =~ ^[0-9]+$ ]] || die 2 "VPNGW_LCM_READY_TIMEOUT: a number of seconds"
[[ -z $wait_up || $wait_up =~ ^[0-9]+$ ]] || die 2 "--wait-up: a number of seconds"

if [[ -n ${VPNGW_BIN:-} ]]; then
    vpngw=$VPNGW_BIN
elif command -v vpngw >/dev/null; then
    vpngw=$(command -v vpngw)
else
    vpngw=/usr/bin/vpngw
fi

# vpngw itself: on a VNFC whose image lacks it, the Debian package the VNF package carries
# (Files/software/, next to Scripts/; VPNGW_DEB to name another) is installed first.
ensure_vpngw() {
    [[ -x $vpngw ]] && return 0
    [[ -z ${VPNGW_BIN:-} ]] || die 1 "VPNGW_BIN=$VPNGW_BIN: no such program"
    local deb
    local -a debs=("$here"/../Files/software/vpngw_*_amd64.deb)
    deb=${VPNGW_DEB:-${debs[-1]}}
    [[ -f $deb ]] || die 1 "vpngw is not installed and the VNF package carries no Debian package (Files/software/): use a VM image with vpngw installed, or a package built after make deb"
    ((dry_run == 0)) || die 1 "vpngw is not installed; a dry run installs nothing ($deb would be installed)"
    deb=$(realpath "$deb")
    log "vpngw is not installed: installing $deb"
    if command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >&2 ||
            die 1 "apt-get could not install $deb"
    else
        dpkg -i "$deb" >&2 || die 1 "dpkg could not install $deb"
    fi
    vpngw=/usr/bin/vpngw
    [[ -x $vpngw ]] || die 1 "$deb is installed but $vpngw is not there"
}

systemd_runs() {
    [[ $use_systemd != 0 && -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

have_systemd() {
    [[ $use_systemd != 0 && -d /run/systemd/system ]] && command -v systemctl >/dev/null &&
        systemctl cat "$service" >/dev/null 2>&1
}

# The node of hot_standby this host is: the one whose sync address is configured here.
guess_node() {
    local n addr
    command -v ip >/dev/null || return 0
    for n in a b; do
        addr=$(python3 -c 'import json,sys
p=json.load(open(sys.argv[1])); p=p.get("additionalParams",p)
print(p["vpngw"]["ha"]["nodes"][sys.argv[2]]["sync_address"])' "$1" "$n" 2>/dev/null) || continue
        if ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1 | grep -qxF "$addr"; then
            echo "$n"
            return 0
        fi
    done
}

is_ha() {
    python3 -c 'import json,sys
p=json.load(open(sys.argv[1])); p=p.get("additionalParams",p)
sys.exit(0 if isinstance(p.get("vpngw"),dict) and "ha" in p["vpngw"] else 1)' "$1" 2>/dev/null
}

# Writes the configuration into a staging directory and checks it; prints the directory.
stage() {
    local p=$1 dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/vpngw-lcm.XXXXXX")
    if ! python3 "$render_py" --params "$p" --out "$dir" --node "$node" --vpngw-bin "$vpngw" \
        --notify "$kdir/vpngw-notify.sh" >&2; then
        rm -rf "$dir"
        die 2 "the parameters were refused (above); nothing was changed"
    fi
    if ! "$vpngw" check --config "$dir/vpngw.toml" >&2; then
        rm -rf "$dir"
        die 2 "vpngw check refused the configuration (above); nothing was changed"
    fi
    if [[ -f $dir/keepalived.conf ]] && command -v keepalived >/dev/null && ((dry_run == 0)); then
        # keepalived -t exits non-zero on an error, and 5 when it would disable the track script.
        if ! keepalived -t -f "$dir/keepalived.conf" >&2; then
            rm -rf "$dir"
            die 2 "keepalived -t refused keepalived.conf; nothing was changed"
        fi
    fi
    echo "$dir"
}

# Installs a staged file atomically with mode 0600 (0644 for keepalived.conf is not needed).
install_file() {
    local src=$1 dst=$2 mode=$3
    install -d -m 0755 "$(dirname "$dst")"
    install -m "$mode" "$src" "$dst.lcm-new"
    mv -f "$dst.lcm-new" "$dst"
}

# Whether process $1 runs: a zombie does not (without systemd the daemon is nobody's child once
# this script exits, and an init that does not reap leaves it a zombie after it stopped).
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${st%% *} != Z ]]
}

start_vpngw() {
    if have_systemd; then
        systemctl enable "$service" >/dev/null 2>&1 || true
        systemctl restart "$service"
        return
    fi
    stop_vpngw
    install -d -m 0700 "$run"
    # setsid: the daemon outlives this script (and the VNFM's session that ran it).
    setsid "$vpngw" run --config "$etc/vpngw.toml" >>"$run/vpngw.log" 2>&1 </dev/null &
    echo $! >"$run/vpngw.pid"
    log "vpngw started without systemd (PID $(cat "$run/vpngw.pid"), log $run/vpngw.log)"
}

# SIGTERM to PID, then up to 10 s for it to exit; dies naming WHAT (and NOTE) if it outlives
# that. A PID that is already gone is fine.
terminate_and_wait() {
    local pid=$1 what=$2 note=$3
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        alive "$pid" || return 0
        sleep 0.1
    done
    die 1 "$what (PID $pid) still running 10 s after SIGTERM${note:+; $note}"
}

stop_vpngw() {
    if have_systemd; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
        return
    fi
    local pid
    [[ -f $run/vpngw.pid ]] || return 0
    pid=$(cat "$run/vpngw.pid")
    # SIGTERM: Deletes to every peer (or a handover to an in-sync standby), then exit.
    terminate_and_wait "$pid" vpngw "its PID file $run/vpngw.pid is kept"
    rm -f "$run/vpngw.pid"
}

start_keepalived() {
    if systemd_runs; then
        systemctl enable keepalived >/dev/null 2>&1 || true
        systemctl restart keepalived
        return
    fi
    stop_keepalived
    keepalived -f "$kdir/keepalived.conf" -p "$run/keepalived.pid" -r "$run/keepalived-vrrp.pid" \
        -c "$run/keepalived-checkers.pid"
}

stop_keepalived() {
    if systemd_runs; then
        systemctl disable --now keepalived >/dev/null 2>&1 || true
        return
    fi
    local pid
    [[ -f $run/keepalived.pid ]] || return 0
    pid=$(cat "$run/keepalived.pid")
    # It releases the addresses (a priority-0 advert: the partner takes over at once), then
    # takes about a second to exit. A keepalived started meanwhile would run beside it.
    terminate_and_wait "$pid" keepalived ""
    rm -f "$run/keepalived.pid"
}

keepalived_running() {
    if systemd_runs; then
        systemctl is-active --quiet keepalived
        return
    fi
    [[ -f $run/keepalived.pid ]] && alive "$(cat "$run/keepalived.pid")"
}

vpngw_running() {
    if have_systemd; then
        systemctl is-active --quiet "$service"
        return
    fi
    [[ -f $run/vpngw.pid ]] && alive "$(cat "$run/vpngw.pid")"
}

# The last lines of vpngw's log, for a failed operation's report.
log_tail() {
    if have_systemd; then
        journalctl -u "$service" -n 20 --no-pager 2>/dev/null || true
    elif [[ -f $run/vpngw.log ]]; then
        tail -n 20 "$run/vpngw.log"
    fi
}

# What the installed vpngw.toml says: "probe", where vpngw healthcheck asks ([metrics] listen;
# a wildcard address is asked on loopback; nothing when metrics are off); "active", the names
# of the connections that negotiate at start.
conf_query() {
    python3 - "$etc/vpngw.toml" "$1" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
if sys.argv[2] == "probe":
    m = c.get("metrics", {})
    if m.get("enabled", True):
        host, _, port = m.get("listen", "127.0.0.1:9720").rpartition(":")
        print({"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host) + ":" + port)
else:
    for conn in c.get("connection", []):
        if conn.get("start", "active") == "active":
            print(conn["name"])
PY
}

# Waits up to ready_timeout seconds for vpngw to be live (/healthz) or ready (/readyz); with no
# metrics listener, for its control socket to answer. Fails at once if vpngw stopped. The last
# answer is left in probe_answer.
probe_answer=""
wait_probe() {
    local kind=$1 addr deadline
    local -a flag=()
    [[ $kind == ready ]] && flag=(--ready)
    addr=$(conf_query probe)
    deadline=$((SECONDS + ready_timeout))
    while :; do
        if [[ -n $addr ]]; then
            probe_answer=$("$vpngw" healthcheck --address "$addr" "${flag[@]}" 2>&1) && return 0
        else
            probe_answer=$("$vpngw" status --config "$etc/vpngw.toml" 2>&1 >/dev/null) && return 0
        fi
        if ! vpngw_running; then
            probe_answer="it exited (last answer: ${probe_answer:-none})"
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

not_ready() {
    if vpngw_running; then
        log "$op: vpngw not $1 within $ready_timeout s: $probe_answer"
    else
        log "$op: vpngw not $1: $probe_answer"
    fi
    log "the end of vpngw's log:"
    log_tail >&2
    exit 1
}

# heal with a running vpngw: `vpngw reload` (unchanged tunnels stay up). Fails when the reload
# is refused or names keys that only a restart applies.
reload_vpngw() {
    local out rc=0
    out=$("$vpngw" reload --config "$etc/vpngw.toml" 2>&1) || rc=$?
    printf '%s\n' "$out" >&2
    if ((rc == 0)) && [[ $out != *"need a restart"* ]]; then
        log "$op: vpngw reloaded its configuration (no restart)"
        return 0
    fi
    log "$op: a reload is not enough (exit $rc); restarting vpngw"
    return 1
}

# --wait-up: every active connection up (`vpngw up NAME --wait`); on a pair's active node only.
wait_connections_up() {
    local p=$1 ha=$2 name rc role
    if [[ -z $wait_up ]]; then
        wait_up=$(python3 -c 'import json,sys
p=json.load(open(sys.argv[1])); p=p.get("additionalParams",p)
print(int((p.get("lcm") or {}).get("wait_up_seconds", 0)))' "$p")
    fi
    ((wait_up > 0)) || return 0
    if ((ha)); then
        role=$("$vpngw" status --json --config "$etc/vpngw.toml" |
            python3 -c 'import json,sys; print((json.load(sys.stdin).get("ha") or {}).get("role",""))') || true
        if [[ $role != active ]]; then
            log "$op: hot-backup ${role:-role unknown}: bringing the tunnels up is the active node's"
            return 0
        fi
    fi
    for name in $(conf_query active); do
        rc=0
        "$vpngw" up "$name" --wait --timeout "$wait_up" --config "$etc/vpngw.toml" >&2 || rc=$?
        case $rc in
        0) ;;
        124) die 1 "$op: connection $name not up after $wait_up s (vpngw's diagnosis above)" ;;
        *) die 1 "$op: connection $name did not come up (exit $rc; vpngw's diagnosis above)" ;;
        esac
    done
}

configure() {
    local p=$1 dir ha=0 same_ka=0
    [[ -r $p ]] || die 2 "no parameters: --params FILE (or kept ones in $state/params.json)"
    ensure_vpngw
    if is_ha "$p"; then
        ha=1
        [[ -n $node ]] || node=$(guess_node "$p")
        [[ $node == a || $node == b ]] || die 2 "hot_standby: say which gateway this is (--node a|b or VPNGW_NODE)"
    fi
    dir=$(stage "$p")
    if ((ha)) && [[ -f $kdir/keepalived.conf ]] && cmp -s "$dir/keepalived.conf" "$kdir/keepalived.conf"; then
        same_ka=1
    fi
    install_file "$dir/vpngw.toml" "$etc/vpngw.toml" 0600
    if ((ha)); then
        install_file "$dir/keepalived.conf" "$etc/keepalived.conf" 0600
    fi
    # Kept for heal and scale: the parameters hold no key (the renderer refuses inline keys).
    if [[ $p != "$state/params.json" ]]; then
        install_file "$p" "$state/params.json" 0600
    fi
    [[ -n $node ]] && echo "$node" >"$state/node"
    rm -rf "$dir"
    if ((dry_run)); then
        log "dry run: wrote and checked $etc/vpngw.toml$( ((ha)) && echo " and $etc/keepalived.conf (node $node)"); no service touched"
        return
    fi
    if ((ha)); then
        command -v keepalived >/dev/null || die 1 "hot_standby needs keepalived (apt-get install keepalived)"
        install -d -m 0755 "$kdir"
        # deploy/ha/README.md: the standby binds the virtual addresses before it holds them.
        install -d "$sysctl_dir"
        printf 'net.ipv4.ip_nonlocal_bind = 1\nnet.ipv4.ip_forward = 1\n' >"$sysctl_dir/60-vpngw-ha.conf"
        sysctl -q -p "$sysctl_dir/60-vpngw-ha.conf"
        install -m 0600 "$etc/keepalived.conf" "$kdir/keepalived.conf"
        install -m 0755 "$notify_sh" "$kdir/vpngw-notify.sh"
    else
        install -d "$sysctl_dir"
        printf 'net.ipv4.ip_forward = 1\n' >"$sysctl_dir/60-vpngw.conf"
        sysctl -q -p "$sysctl_dir/60-vpngw.conf"
    fi
    # heal: a live vpngw reloads (its unchanged tunnels stay up); otherwise (re)start it.
    if [[ $op == heal ]] && ((force_restart == 0)) && vpngw_running && wait_probe live && reload_vpngw; then
        :
    else
        start_vpngw
    fi
    if ((ha)); then
        # keepalived's check asks vpngw: live first. A standby is ready once in sync with its
        # partner, which may not be there yet: reported, not a failure.
        wait_probe live || not_ready live
        if ((same_ka)) && keepalived_running; then
            log "$op: keepalived already runs with this keepalived.conf; left running"
        else
            start_keepalived
        fi
        if ! wait_probe ready; then
            [[ $probe_answer == *standby* ]] || not_ready ready
            log "$op: $probe_answer (ready once its partner is active and the bulk sync is done)"
        fi
    else
        wait_probe ready || not_ready ready
    fi
    log "$op: vpngw running with $etc/vpngw.toml: ${probe_answer:-ready}"
    wait_connections_up "$p" "$ha"
}

case $op in
instantiate | render)
    [[ -n $params ]] || die 2 "$op needs --params FILE"
    install -d -m 0700 "$state"
    configure "$params"
    ;;
heal)
    install -d -m 0700 "$state"
    [[ -n $node ]] || node=$(cat "$state/node" 2>/dev/null || true)
    configure "${params:-$state/params.json}"
    ;;
scale)
    install -d -m 0700 "$state"
    if [[ -f $etc/vpngw.toml && -z $params ]]; then
        ensure_vpngw
        "$vpngw" check --config "$etc/vpngw.toml" >&2 || die 2 "vpngw check refused $etc/vpngw.toml"
        log "scale: this VNFC is already configured; nothing to do"
    else
        configure "${params:-$state/params.json}"
    fi
    ;;
install)
    if [[ -x $vpngw ]]; then
        log "install: vpngw is installed ($vpngw); nothing to do"
    else
        ensure_vpngw
        log "install: $("$vpngw" --version) installed"
    fi
    ;;
terminate)
    if ((dry_run)); then
        log "dry run: would stop keepalived and vpngw and remove $etc/vpngw.toml"
        exit 0
    fi
    stop_vpngw
    stop_keepalived
    # keepalived.conf only if it is the one this script installed (single leaves keepalived alone).
    if [[ -f $etc/keepalived.conf ]] && cmp -s "$etc/keepalived.conf" "$kdir/keepalived.conf"; then
        rm -f "$kdir/keepalived.conf"
    fi
    rm -f "$etc/vpngw.toml" "$etc/keepalived.conf" "$kdir/vpngw-notify.sh" \
        "$sysctl_dir/60-vpngw-ha.conf" "$sysctl_dir/60-vpngw.conf"
    log "terminate: vpngw stopped and disabled; key files left in place"
    ;;
*) die 2 "unknown operation: $op (instantiate, heal, scale, terminate, render, install)" ;;
esac
