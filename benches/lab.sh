# Sourced by the end-to-end benchmarks (e2e.sh, worker-cost.sh): the four-namespace lab.
#   lab_topology PREFIX   creates PREFIX-lhost, PREFIX-left, PREFIX-right, PREFIX-rhost:
#   host-left 10.1.0.10 -- 10.1.0.1 gw-left 198.51.100.1 -- 198.51.100.2 gw-right 10.2.0.1 -- 10.2.0.10 host-right
# with veth links, the hosts routing through their gateway and the gateways forwarding.
# Needs nsx (ip netns exec) from the caller.

# The pre-shared key of the benchmarks' tunnels (vpngw and strongSwan alike).
LAB_PSK=bench-psk-0123456789abcdef

lab_topology() {
    local p=$1 n d
    for n in "$p-lhost" "$p-left" "$p-right" "$p-rhost"; do
        ip netns del "$n" 2>/dev/null || true
        ip netns add "$n"
        nsx "$n" ip link set lo up
    done
    ip link add eth0 netns "$p-lhost" type veth peer name lan0 netns "$p-left"
    ip link add wan0 netns "$p-left" type veth peer name wan0 netns "$p-right"
    ip link add lan0 netns "$p-right" type veth peer name eth0 netns "$p-rhost"
    nsx "$p-lhost" ip addr add 10.1.0.10/24 dev eth0
    nsx "$p-left" ip addr add 10.1.0.1/24 dev lan0
    nsx "$p-left" ip addr add 198.51.100.1/24 dev wan0
    nsx "$p-right" ip addr add 198.51.100.2/24 dev wan0
    nsx "$p-right" ip addr add 10.2.0.1/24 dev lan0
    nsx "$p-rhost" ip addr add 10.2.0.10/24 dev eth0
    for n in "$p-lhost" "$p-left" "$p-right" "$p-rhost"; do
        for d in $(nsx "$n" ls /sys/class/net); do nsx "$n" ip link set "$d" up; done
    done
    nsx "$p-lhost" ip route add default via 10.1.0.1
    nsx "$p-rhost" ip route add default via 10.2.0.1
    nsx "$p-left" sysctl -qw net.ipv4.ip_forward=1
    nsx "$p-right" sysctl -qw net.ipv4.ip_forward=1
}

# lab_vpngw_toml SIDE ENC HASH ENCAPSULATION ESP_OUTPUT CORE SOCKET: the vpngw configuration of
# one lab gateway on stdout (left: active, right: passive; one connection "bench", DH group 14,
# LAB_PSK). CORE empty: no worker placement.
lab_vpngw_toml() {
    local side=$1 enc=$2 hash=$3 encap=$4 output=$5 core=$6 socket=$7 me peer mynet peernet start
    if [ "$side" = left ]; then me=198.51.100.1 peer=198.51.100.2 mynet=10.1.0.0/24 peernet=10.2.0.0/24 start=active
    else me=198.51.100.2 peer=198.51.100.1 mynet=10.2.0.0/24 peernet=10.1.0.0/24 start=passive; fi
    cat <<EOC
[gateway]
public_address = "$me"
control_socket = "$socket"
esp_output = "$output"
$([ -n "$core" ] && echo "worker_cores = [$core]")
[[connection]]
name = "bench"
remote_address = "$peer"
pre_shared_key = "$LAB_PSK"
local_subnets = ["$mynet"]
remote_subnets = ["$peernet"]
start = "$start"
encapsulation = "$encap"
[connection.ike]
encryption = "$enc"
authentication = "$hash"
dh_group = "dh14"
[connection.ipsec]
encryption = "$enc"
authentication = "$hash"
EOC
}
