#!/usr/bin/env python3
"""Turns the VNF's additional parameters (JSON) into vpngw's configuration files.

Used by vpngw-lcm.sh (the VNF's LCM script); standard library only (python3 is on every Debian
cloud image). Writes into OUTDIR:
  vpngw.toml        always (docs/configuration.md)
  keepalived.conf   when the parameters have an "ha" section (deploy/ha/, unicast or multicast VRRP)
and prints nothing else than problems. Pre-shared keys are never taken inline: only the paths of
key files on the VNFC ("pre_shared_key_file"); a parameter named like a key is refused, and no
value of the parameters is ever printed (only key names).

usage: vpngw_render.py --params FILE --out OUTDIR [--node a|b] [--vpngw-bin PATH] [--notify PATH]
exit: 0 written, 2 invalid parameters (each problem on stderr)
"""

import argparse
import ipaddress
import json
import os
import sys

GATEWAY_KEYS = {"name", "public_address", "tun", "path_mtu", "tun_mtu", "workers", "worker_cores",
                "esp_output", "control_socket"}
CONNECTION_KEYS = {"name", "remote_address", "pre_shared_key_file", "local_subnets", "remote_subnets",
                   "start", "encapsulation"}
# Sub-tables of a connection, passed through key by key (vpngw check validates the values).
CONNECTION_TABLES = {
    "ike": {"version", "authentication_method", "encryption", "authentication", "mode", "local_id",
            "remote_id", "dh_group", "lifetime_seconds"},
    "ipsec": {"encryption", "authentication", "pfs", "lifetime_seconds", "lifetime_kilobytes"},
    "dpd": {"enabled", "timeout_seconds", "action"},
    "health_check": {"enabled", "local_address", "remote_address", "interval_seconds", "unhealthy_after"},
}
# Named suites: shorthand for the ike and ipsec tables (explicit tables override them key by key).
SUITES = {
    # The seed's defaults (what the cloud gateway negotiates out of the box).
    "default": ({}, {}),
    "aes128-sha1-dh14": ({"encryption": "aes-128", "authentication": "sha1", "dh_group": "dh14"},
                         {"encryption": "aes-128", "authentication": "sha1", "pfs": "dh14"}),
    "aes256-sha1-dh14": ({"encryption": "aes-256", "authentication": "sha1", "dh_group": "dh14"},
                         {"encryption": "aes-256", "authentication": "sha1", "pfs": "dh14"}),
    "aes256-sha1-dh24": ({"encryption": "aes-256", "authentication": "sha1", "dh_group": "dh24"},
                         {"encryption": "aes-256", "authentication": "sha1", "pfs": "dh24"}),
}
METRICS_KEYS = {"enabled", "listen"}
API_KEYS = {"enabled", "listen", "token_file", "state_file", "tls_cert_file", "tls_key_file",
            "insecure_plaintext"}
HA_KEYS = {"key_file", "sync_port", "public_vip", "lan_vip", "interfaces", "unicast", "virtual_router_ids",
           "nodes", "sync_interval_ms", "partner_timeout_ms", "sequence_jump", "track_file"}
# additionalParams.lcm: options of the LCM script itself (wait_up_seconds: vpngw-lcm.sh --wait-up).
LCM_KEYS = {"wait_up_seconds"}
HA_NODE_KEYS = {"name", "sync_address", "untrusted_address", "trusted_address", "priority"}
# Parameters that hold a file path: must be absolute (the scripts check the configuration in a
# staging directory; a relative path would be resolved against it).
PATH_KEYS = {"pre_shared_key_file", "token_file", "state_file", "tls_cert_file", "tls_key_file", "key_file",
             "track_file", "control_socket"}


class Problems(Exception):
    pass


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def check_keys(where, obj, allowed, problems, nested=()):
    """Problems for inline keys, unknown keys and values of the wrong kind; the allowed entries.
    Keys in `nested` may hold objects (their caller checks them)."""
    if not isinstance(obj, dict):
        problems.append(f"{where}: must be an object")
        return {}
    for key in obj:
        if "pre_shared_key" == key or key in ("psk", "key", "secret", "password"):
            problems.append(f"{where}.{key}: keys are not taken inline; give pre_shared_key_file, "
                            "the path of a file (mode 0600) on the VNFC")
        elif key not in allowed:
            problems.append(f"{where}.{key}: unknown parameter (allowed: {', '.join(sorted(allowed))})")
    out = {}
    for key, value in obj.items():
        if key not in allowed:
            continue
        if key in nested:
            out[key] = value
            continue
        if not isinstance(value, (bool, int, str, list)) or (
                isinstance(value, list) and not all(isinstance(v, (bool, int, str)) for v in value)):
            problems.append(f"{where}.{key}: must be a string, number, boolean or list of them")
            continue
        if key in PATH_KEYS and not (isinstance(value, str) and os.path.isabs(value)):
            problems.append(f"{where}.{key}: must be an absolute path")
            continue
        out[key] = value
    return out


def table(lines, header, values):
    lines.append(f"[{header}]")
    for key, value in values.items():
        lines.append(f"{key} = {toml_value(value)}")
    lines.append("")


def host(address, where, problems):
    """'198.51.100.1/24' -> ('198.51.100.1', 24); a bare address gets /32."""
    try:
        iface = ipaddress.IPv4Interface(address)
        return str(iface.ip), iface.network.prefixlen
    except (ValueError, TypeError):
        problems.append(f"{where}: not an IPv4 address (ADDRESS or ADDRESS/PREFIX)")
        return None, None


def render(params, node, vpngw_bin, notify="/etc/keepalived/vpngw-notify.sh"):
    problems = []
    if not isinstance(params, dict) or not isinstance(params.get("vpngw"), dict):
        raise Problems(['the parameters must be an object with a "vpngw" object (additionalParams.vpngw)'])
    lcm = params.get("lcm")
    if lcm is not None:
        # The LCM script's own options (vpngw-lcm.sh reads them): not part of vpngw.toml.
        if not isinstance(lcm, dict):
            problems.append("lcm: must be an object")
        else:
            for key, value in lcm.items():
                if key not in LCM_KEYS:
                    problems.append(f"lcm.{key}: unknown parameter (allowed: {', '.join(sorted(LCM_KEYS))})")
                elif not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 3600:
                    problems.append(f"lcm.{key}: a number of seconds, 0-3600")
    p = params["vpngw"]
    sections = {"gateway", "connections", "metrics", "api", "ha"}
    check_keys("vpngw", p, sections, problems, nested=sections)
    gateway = check_keys("vpngw.gateway", p.get("gateway", {}), GATEWAY_KEYS, problems)
    ha = p.get("ha")
    if isinstance(ha, dict) and "public_address" not in gateway and isinstance(ha.get("public_vip"), str):
        # A pair's peers address both gateways at the public virtual address.
        gateway["public_address"] = ha["public_vip"].split("/")[0]
    lines = ["# Written by the vpngw VNF's LCM script (vpngw-lcm.sh) from the instantiation's",
             "# additional parameters. Changes here are lost at the next heal: change the parameters.", ""]
    table(lines, "gateway", gateway)

    connections = p.get("connections", [])
    if not isinstance(connections, list):
        problems.append("vpngw.connections: must be a list")
        connections = []
    for i, conn in enumerate(connections):
        where = f"vpngw.connections[{i}]"
        if not isinstance(conn, dict):
            problems.append(f"{where}: must be an object")
            continue
        allowed = CONNECTION_KEYS | set(CONNECTION_TABLES) | {"suite"}
        values = check_keys(where, {k: v for k, v in conn.items() if k not in CONNECTION_TABLES and k != "suite"},
                            allowed, problems)
        if "pre_shared_key_file" not in conn and "pre_shared_key" not in conn:
            problems.append(f"{where}.pre_shared_key_file: required (the path of the key file on the VNFC)")
        lines.append("[[connection]]")
        for key, value in values.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
        suite = conn.get("suite", "default")
        if suite not in SUITES:
            problems.append(f"{where}.suite: unknown suite (known: {', '.join(sorted(SUITES))})")
            suite = "default"
        ike, ipsec = SUITES[suite]
        for name, allowed_keys in CONNECTION_TABLES.items():
            base = dict(ike if name == "ike" else ipsec if name == "ipsec" else {})
            if name in conn:
                base.update(check_keys(f"{where}.{name}", conn[name], allowed_keys, problems))
            if base:
                table(lines, f"connection.{name}", base)

    for name, allowed_keys in (("metrics", METRICS_KEYS), ("api", API_KEYS)):
        if name in p:
            table(lines, name, check_keys(f"vpngw.{name}", p[name], allowed_keys, problems))

    keepalived = None
    if ha is not None:
        keepalived = render_ha(ha, node, gateway, vpngw_bin, notify, lines, problems)
    if problems:
        raise Problems(problems)
    return "\n".join(lines), keepalived


def render_ha(ha, node, gateway, vpngw_bin, notify, lines, problems):
    values = check_keys("vpngw.ha", ha, HA_KEYS, problems, nested={"interfaces", "nodes"})
    if node not in ("a", "b"):
        problems.append("--node: hot_standby needs the node this VNFC is (a or b)")
        return None
    nodes = ha.get("nodes")
    if not isinstance(nodes, dict) or set(nodes) != {"a", "b"}:
        problems.append("vpngw.ha.nodes: must be an object with exactly the nodes a and b")
        return None
    me = check_keys(f"vpngw.ha.nodes.{node}", nodes[node], HA_NODE_KEYS, problems)
    other_id = "b" if node == "a" else "a"
    other = check_keys(f"vpngw.ha.nodes.{other_id}", nodes[other_id], HA_NODE_KEYS, problems)
    for key in ("key_file", "public_vip", "lan_vip"):
        if key not in values:
            problems.append(f"vpngw.ha.{key}: required")
    for n, d in ((node, me), (other_id, other)):
        for key in ("name", "sync_address", "untrusted_address", "trusted_address"):
            if key not in d:
                problems.append(f"vpngw.ha.nodes.{n}.{key}: required")
    if problems:
        return None
    port = values.get("sync_port", 9722)
    pub, pub_len = host(values["public_vip"], "vpngw.ha.public_vip", problems)
    lan, lan_len = host(values["lan_vip"], "vpngw.ha.lan_vip", problems)
    if pub and gateway.get("public_address") != pub:
        problems.append("vpngw.gateway.public_address: must be the public virtual address (vpngw.ha.public_vip)")
    section = {"node_name": me["name"], "partner_name": other["name"],
               "listen": f"{me['sync_address']}:{port}", "partner": f"{other['sync_address']}:{port}",
               "key_file": values["key_file"]}
    for key in ("sync_interval_ms", "partner_timeout_ms", "sequence_jump", "track_file"):
        if key in values:
            section[key] = values[key]
    table(lines, "ha", section)

    ifaces = ha.get("interfaces", {})
    if not isinstance(ifaces, dict):
        problems.append("vpngw.ha.interfaces: must be an object")
        ifaces = {}
    wan = ifaces.get("untrusted", "wan0")
    lan_if = ifaces.get("trusted", "lan0")
    ids = values.get("virtual_router_ids", [51, 52])
    if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, int) and 1 <= i <= 255 for i in ids)):
        problems.append("vpngw.ha.virtual_router_ids: two numbers 1-255 (the WAN and LAN VRRP instances)")
        ids = [51, 52]
    unicast = values.get("unicast", True)
    # As deploy/ha: high priorities keep the backup's skew time (a crash, a handover) near 3 ms.
    priority = me.get("priority", 250 if node == "a" else 249)
    control = gateway.get("control_socket", "/run/vpngw/vpngw.sock")
    track = values.get("track_file", "/run/vpngw/ha-track")
    if problems:
        return None

    def instance(name, iface, vrid, own, peer, vip, plen):
        out = [f"vrrp_instance {name} {{", "  state BACKUP", f"  interface {iface}",
               f"  virtual_router_id {vrid}", f"  priority {priority}", "  advert_int 0.1"]
        if unicast:
            out += [f"  unicast_src_ip {own}", "  unicast_peer {", f"    {peer}", "  }"]
        out += ["  nopreempt", "  virtual_ipaddress {", f"    {vip}/{plen} dev {iface}", "  }", "}", ""]
        return out

    conf = [
        f"# keepalived for vpngw hot backup, node {node} ({me['name']}): written by the vpngw VNF's LCM",
        "# script from deploy/ha/keepalived-*.conf (deploy/ha/README.md explains every choice).",
        "global_defs {", f"  router_id {me['name']}", "  vrrp_version 3", "  script_user root",
        "  enable_script_security", "  vrrp_garp_master_repeat 3", "  vrrp_garp_master_refresh 10", "}", "",
        "vrrp_script vpngw_check {", f'  script "{vpngw_bin} ha check --socket {control}"',
        "  interval 1", "  timeout 1", "  fall 2", "  rise 2", "}", "",
        "track_file vpngw_track {", f'  file "{track}"', "  init_file 0", "}", "",
        "vrrp_sync_group VPNGW {", "  group {", "    VPNGW_WAN", "    VPNGW_LAN", "  }",
        "  track_script {", "    vpngw_check", "  }", "  track_file {", "    vpngw_track weight 0", "  }",
        f'  notify "{notify} {vpngw_bin} ha notify --socket {control}"', "}", "",
    ]
    conf += instance("VPNGW_WAN", wan, ids[0], me["untrusted_address"], other["untrusted_address"], pub, pub_len)
    conf += instance("VPNGW_LAN", lan_if, ids[1], me["trusted_address"], other["trusted_address"], lan, lan_len)
    return "\n".join(conf)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--node", default="")
    ap.add_argument("--vpngw-bin", default="/usr/bin/vpngw")
    ap.add_argument("--notify", default="/etc/keepalived/vpngw-notify.sh", help="where keepalived's notify script is")
    args = ap.parse_args()
    try:
        with open(args.params, encoding="utf-8") as f:
            params = json.load(f)
    except (OSError, ValueError) as e:
        # ValueError's text can quote the document: print only where it failed.
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        print(f"vpngw_render: {args.params}: cannot read the parameters{where}: "
              f"{e.strerror if isinstance(e, OSError) else 'invalid JSON'}", file=sys.stderr)
        return 2
    # Instantiate requests carry additionalParams; accept the whole request too.
    if isinstance(params, dict) and "additionalParams" in params:
        params = params["additionalParams"]
    try:
        toml, keepalived = render(params, args.node, args.vpngw_bin, args.notify)
    except Problems as e:
        for problem in e.args[0]:
            print(f"vpngw_render: {problem}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    old = os.umask(0o077)
    try:
        with open(os.path.join(args.out, "vpngw.toml"), "w", encoding="utf-8") as f:
            f.write(toml)
        if keepalived is not None:
            with open(os.path.join(args.out, "keepalived.conf"), "w", encoding="utf-8") as f:
                f.write(keepalived)
    finally:
        os.umask(old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
