#!/bin/bash
# keepalived's notify script for vpngw hot backup; install as /etc/keepalived/vpngw-notify.sh
# (root-owned, mode 0755: keepalived's script security skips scripts others could change).
#
# keepalived runs it as:  vpngw-notify.sh COMMAND... TYPE NAME STATE PRIORITY
# where COMMAND... is what keepalived.conf's notify line configures (vpngw ha notify --socket SOCK)
# and the last four arguments are keepalived's. COMMAND gets STATE as its last argument.
set -u

if (($# < 5)); then
    echo "usage: $0 COMMAND... TYPE NAME STATE PRIORITY (called by keepalived)" >&2
    exit 2
fi
args=("$@")
n=${#args[@]}
type=${args[n - 4]} name=${args[n - 3]} state=${args[n - 2]}
command=("${args[@]:0:n-4}")

# Only the states vpngw knows: DELETED (an instance removed by a reload) tells it nothing new.
case $state in
MASTER | BACKUP | FAULT | STOP) ;;
*) exit 0 ;;
esac

# The daemon may be restarting right now: a few quick tries (keepalived does not wait for this
# script), then a loud failure in the journal, since a lost MASTER leaves the new active node
# thinking it is the backup.
for try in 1 2 3 4 5; do
    if out=$("${command[@]}" "$state" 2>&1); then
        exit 0
    fi
    sleep 0.2
done
logger -t vpngw-ha -p daemon.err "notify $type $name $state: ${command[*]} failed after $try tries: $out" 2>/dev/null
echo "vpngw-ha: notify $type $name $state: ${command[*]} failed: $out" >&2
exit 1
