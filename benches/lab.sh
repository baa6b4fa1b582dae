# Sourced by the end-to-end benchmarks (e2e.sh, worker-cost.sh): the four-namespace lab.
#   lab_topology PREFIX   creates PREFIX-lhost, PREFIX-left, PREFIX-right, PREFIX-rhost:
#   host-left 10.1.0.10 -- 10.1.0.1 gw-left 198.51.100.1 -- 198.51.100.2 gw-right 10.2.0.1 -- 10.2.0.10 host-right
# with veth links, the hosts routing through their gateway and the gateways forwarding.
# Needs nsx (ip netns exec) from the caller.

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
