#!/usr/bin/env bash
# A Docker engine for `make image` and tests/tests/container.rs. If a daemon already answers,
# it is used and left alone. Otherwise Debian's dockerd (docker.io) is started here, detached,
# without a default bridge and without iptables rules (nothing here needs either: the images
# are built with --network none and the test's containers run with --network none), logging to
# target/container/dockerd.log; its PID goes to target/container/dockerd.pid, and `stop` stops
# that process and no other.
#   usage: dockerd.sh start   prints "running" (a daemon answered: not ours) or "started PID"
#          dockerd.sh stop    stops the dockerd `start` started, if it still runs
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=target/container
pidfile=$dir/dockerd.pid
log=$dir/dockerd.log

answers() {
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# Whether PID is a dockerd (a stale PID file may name a recycled PID).
is_dockerd() {
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == dockerd ]]
}

case "${1:-}" in
start)
    if answers; then
        echo running
        exit 0
    fi
    tests/tools/install-deps.sh docker.io >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "no Docker daemon answers, and starting dockerd needs root" >&2
        exit 1
    fi
    mkdir -p "$dir"
    # Not a process group leader (no job control here), so setsid execs dockerd itself: $! is
    # dockerd's PID, in a session of its own (a test's or make's signals do not reach it).
    setsid dockerd --bridge=none --iptables=false >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 1 150); do
        if answers; then
            echo "started $pid"
            exit 0
        fi
        is_dockerd "$pid" || break
        sleep 0.2
    done
    echo "dockerd (PID $pid) did not answer within 30 s; the end of $log:" >&2
    tail -20 "$log" >&2
    is_dockerd "$pid" && kill -TERM "$pid"
    rm -f "$pidfile"
    exit 1
    ;;
stop)
    [[ -f "$pidfile" ]] || exit 0
    pid=$(cat "$pidfile")
    if is_dockerd "$pid"; then
        kill -TERM "$pid"
        # dockerd stops its containerd and any container still running (10 s each at most).
        for _ in $(seq 1 300); do
            is_dockerd "$pid" || break
            sleep 0.1
        done
        if is_dockerd "$pid"; then
            echo "dockerd (PID $pid) still runs 30 s after SIGTERM" >&2
            exit 1
        fi
        echo "stopped $pid"
    fi
    rm -f "$pidfile"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
