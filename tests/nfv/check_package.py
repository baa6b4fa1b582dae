#!/usr/bin/env python3
"""Checks vpngw's SOL004 VNF package (what `make vnf-check` runs, in target/venv-nfv).

    check_package.py --package CSAR [--signed CSAR --cert PEM] --vpngw BIN

1. tosca-parser (2.15.0) validates every VNFD file of the package, the top-level one with both
   deployment flavours, and refuses broken copies (an unknown property, a missing required
   property, a value outside its valid values).
2. Tacker's own CSAR loader (tacker 16.0.0, tacker.common.csar_utils.load_csar_data) accepts the
   package and reports our descriptor id, provider, product, versions and both flavours; it
   refuses a package with a tampered file, a manifest entry whose file is missing, a broken VNFD,
   no TOSCA.meta.
3. Our own SOL004 checks, which Tacker does not make: TOSCA.meta's and the manifest's fields,
   one manifest entry for every file, the build is deterministic, the CMS signature verifies
   (and fails on a tampered manifest). The software: no SwImage; when the package carries
   vpngw's Debian package, TOSCA.meta and both flavours name it, it is vpngw 0.1.0 amd64, Tacker
   refuses a wrong hash for it, and `vpngw-lcm.sh install` installs it in a clean Debian root.
4. The LCM scripts: shellcheck-clean; with the sample parameters (single, hot_standby a and b)
   they write configurations that `vpngw check` passes (and keepalived -t, in a namespace with
   the interfaces); inline keys and invalid configurations are refused without changing anything
   and without printing a key.

Prints one line per check and "N passed, M failed" at the end; exit 0 only if none failed.
"""

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DESCRIPTOR_ID = "46726e8e-81b9-49d2-b155-c314037e78ce"
MANIFEST = "vpngw.mf"
TOP = "Definitions/vpngw_top.vnfd.yaml"

results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"\n      {detail}" if detail and not ok else ""))
    sys.stdout.flush()
    return ok


def info(text):
    print(f"INFO  {text}")


def reason(text):
    """The telling line of a parser's report: the first that names an error, else the first."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if ("Error:" in line or "rror: " in line) and "failed validation" not in line:
            return line[:300]
    return lines[0][:300] if lines else ""


# ---------------------------------------------------------------------------------------------
# Packages and their mutations

def read_zip(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def write_zip(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def rehash(files, path):
    """The manifest entry of `path` updated to its current content (so that only the content's
    validity is tested, not the hash)."""
    digest = hashlib.sha256(files[path]).hexdigest().encode()
    files[MANIFEST] = re.sub(rb"(Source: " + re.escape(path.encode()) + rb"\nAlgorithm: SHA-256\nHash: )[0-9a-f]+",
                             rb"\g<1>" + digest, files[MANIFEST])


def mutated(src, workdir, name, change):
    files = read_zip(src)
    change(files)
    out = os.path.join(workdir, name + ".csar")
    write_zip(out, files)
    return out


# ---------------------------------------------------------------------------------------------
# 1. tosca-parser

def tosca_validate(path):
    """None if tosca-parser accepts the file, else its complaint (first lines)."""
    from toscaparser.tosca_template import ToscaTemplate
    try:
        # tosca-parser prints warnings about inputs without values on stdout.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ToscaTemplate(path, None, True)
        return None
    except Exception as e:  # a wrong-typed value can raise a raw exception, not a report
        return f"{type(e).__name__}: {str(e).strip()[:600]}"


def flavours_of(path):
    from toscaparser.tosca_template import ToscaTemplate
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t = ToscaTemplate(path, None, True)
    return sorted(tp.substitution_mappings.properties.get("flavour_id")
                  for tp in t.nested_tosca_templates_with_topology)


def check_tosca(package, work):
    d = os.path.join(work, "defs")
    with zipfile.ZipFile(package) as z:
        z.extractall(d)
    defs = os.path.join(d, "Definitions")
    for name in sorted(os.listdir(defs)):
        err = tosca_validate(os.path.join(defs, name))
        check(f"tosca-parser accepts Definitions/{name}", err is None, err or "")
    try:
        fl = flavours_of(os.path.join(d, TOP))
        check("tosca-parser: the top-level VNFD has the flavours hot_standby and single", fl == ["hot_standby", "single"],
              f"flavours: {fl}")
    except Exception as e:
        check("tosca-parser: the top-level VNFD has both flavours", False, repr(e))

    def broken(name, path, old, new):
        copy = os.path.join(work, "broken-" + name)
        shutil.copytree(d, copy)
        p = os.path.join(copy, path)
        text = open(p, encoding="utf-8").read()
        assert old in text, f"{path}: {old!r} not found (the test is out of date)"
        open(p, "w", encoding="utf-8").write(text.replace(old, new, 1))
        return os.path.join(copy, path), os.path.join(copy, TOP)

    cases = [
        ("unknown-property", "Definitions/vpngw_df_single.yaml", "        name: vpngw\n",
         "        name: vpngw\n        colour: blue\n"),
        ("missing-required-property", "Definitions/vpngw_df_hot_standby.yaml",
         "        vip_function: high_availability\n", ""),
        ("bad-valid-value", "Definitions/vpngw_df_hot_standby.yaml", "scope: nfvi_node", "scope: same_rack"),
        ("another-descriptor-id", TOP, "        descriptor_id: " + DESCRIPTOR_ID + "\n",
         "        descriptor_id: 00000000-0000-4000-8000-000000000000\n"),
        ("unknown-vnf-property", TOP, "        provider: vpngw\n", "        provider: vpngw\n        colour: blue\n"),
    ]
    for name, path, old, new in cases:
        flavour, top = broken(name, path, old, new)
        err = tosca_validate(flavour)
        check(f"tosca-parser refuses {path} with {name.replace('-', ' ')}", err is not None, "accepted")
        if flavour != top:
            err = tosca_validate(top)
            check(f"tosca-parser refuses the top-level VNFD importing it ({name.replace('-', ' ')})", err is not None,
                  "accepted")
        else:
            info(f"  {reason(err or '')}")


# ---------------------------------------------------------------------------------------------
# 2. Tacker's CSAR loader

def tacker_loader(work):
    logging.disable(logging.CRITICAL)
    import warnings
    warnings.simplefilter("ignore")
    import tacker.conf
    from tacker.common import csar_utils
    conf = tacker.conf.CONF
    conf([], project="tacker")
    conf.set_override("vnf_package_csar_path", os.path.join(work, "tacker-csar"), group="vnf_package")
    os.makedirs(os.path.join(work, "tacker-csar"), exist_ok=True)
    n = [0]

    def load(path):
        n[0] += 1
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return csar_utils.load_csar_data(None, f"pkg-{n[0]}", path)
    return load


def tacker_refuses(load, path):
    try:
        load(path)
        return None
    except Exception as e:
        return f"{type(e).__name__}: {reason(str(e))}"


def check_tacker(package, signed, work):
    load = tacker_loader(work)
    try:
        vnf, flavours, artifacts = load(package)
    except Exception as e:
        check("Tacker's load_csar_data accepts the package", False, f"{type(e).__name__}: {e}")
        return
    check("Tacker's load_csar_data accepts the package", True)
    want = {"descriptor_id": DESCRIPTOR_ID, "provider": "vpngw", "product_name": "vpngw",
            "software_version": "0.1.0", "descriptor_version": "1.0.0"}
    got = {k: vnf.get(k) for k in want}
    check("Tacker reports descriptor_id, provider, product_name, software_version, descriptor_version", got == want,
          f"got {got}")
    ids = sorted(f["flavour_id"] for f in flavours)
    check("Tacker reports the flavours hot_standby and single", ids == ["hot_standby", "single"], f"got {ids}")
    levels = {f["flavour_id"]: sorted(f.get("instantiation_levels", {}).get("levels", {})) for f in flavours}
    check("Tacker reports the instantiation levels (single: default; hot_standby: active_only, pair)",
          levels == {"single": ["default"], "hot_standby": ["active_only", "pair"]}, f"got {levels}")
    names = set(read_zip(package)) - {MANIFEST}
    sources = {a["Source"] for a in artifacts}
    check(f"Tacker verified a manifest hash for each of the {len(names)} files", sources == names,
          f"not verified: {sorted(names - sources)}; extra: {sorted(sources - names)}")
    if signed:
        err = tacker_refuses(load, signed)
        check("Tacker's load_csar_data accepts the signed package", err is None, err or "")

    def tamper(files):
        files["Scripts/vpngw-lcm.sh"] = files["Scripts/vpngw-lcm.sh"].replace(b"set -euo pipefail", b"set -eu", 1)

    def drop_file(files):
        del files["Scripts/vpngw_render.py"]

    def broken_vnfd(files):
        p = "Definitions/vpngw_df_single.yaml"
        files[p] = files[p].replace(b"        name: vpngw\n", b"        name: vpngw\n        colour: blue\n", 1)
        rehash(files, p)

    def broken_top(files):
        files[TOP] = files[TOP].replace(b"        provider: vpngw\n", b"        provider: vpngw\n        colour: blue\n", 1)
        rehash(files, TOP)

    def no_meta(files):
        del files["TOSCA-Metadata/TOSCA.meta"]

    def bad_entry(files):
        files["TOSCA-Metadata/TOSCA.meta"] = files["TOSCA-Metadata/TOSCA.meta"].replace(
            b"Entry-Definitions: Definitions/vpngw_top.vnfd.yaml", b"Entry-Definitions: Definitions/nothing.yaml")
        rehash(files, "TOSCA-Metadata/TOSCA.meta")

    for name, what, change in [
        ("tampered", "one tampered file (Scripts/vpngw-lcm.sh, manifest unchanged)", tamper),
        ("missing-file", "a manifest entry whose file is missing (Scripts/vpngw_render.py)", drop_file),
        ("broken-vnfd", "a broken VNFD (unknown property in a flavour, manifest rehashed)", broken_vnfd),
        ("broken-top", "a top-level VNFD with an unknown VNF property (manifest rehashed)", broken_top),
        ("no-tosca-meta", "no TOSCA-Metadata/TOSCA.meta", no_meta),
        ("bad-entry-definitions", "an Entry-Definitions that names no file", bad_entry),
    ]:
        err = tacker_refuses(load, mutated(package, work, name, change))
        check(f"Tacker refuses a package with {what}", err is not None, "accepted")
        if err:
            info(f"  {err}")

    # A file without a manifest entry: SOL004 wants an entry for every file; Tacker 16.0.0
    # verifies only the entries that are there.
    def drop_entry(files):
        files[MANIFEST] = re.sub(rb"Source: Scripts/vpngw-lcm\.sh\nAlgorithm: SHA-256\nHash: [0-9a-f]+\n\n", b"",
                                 files[MANIFEST])
    path = mutated(package, work, "missing-entry", drop_entry)
    err = tacker_refuses(load, path)
    info("Tacker 16.0.0 " + ("refuses" if err else "accepts") + " a package with a file that has no manifest "
         "entry (it checks only the entries present); our SOL004 check below refuses it")
    problems = sol004_problems(path)
    check("our SOL004 check refuses a package with a file without a manifest entry",
          any("no manifest entry" in p for p in problems), f"problems: {problems}")


# ---------------------------------------------------------------------------------------------
# 3. Our SOL004 checks

def sol004_problems(path):
    files = read_zip(path)
    problems = []
    meta = files.get("TOSCA-Metadata/TOSCA.meta", b"").decode()
    fields = dict(line.split(": ", 1) for line in meta.splitlines() if ": " in line)
    for key in ("TOSCA-Meta-File-Version", "CSAR-Version", "Created-By", "Entry-Definitions",
                "ETSI-Entry-Manifest", "ETSI-Entry-Change-Log"):
        if key not in fields:
            problems.append(f"TOSCA.meta: no {key}")
    for key in ("Entry-Definitions", "ETSI-Entry-Manifest", "ETSI-Entry-Change-Log", "ETSI-Entry-Certificate"):
        if key in fields and fields[key] not in files:
            problems.append(f"TOSCA.meta: {key} names a missing file {fields[key]}")
    mf = files.get(fields.get("ETSI-Entry-Manifest", MANIFEST))
    if mf is None:
        return problems + ["no manifest"]
    text = mf.decode()
    body, _, _sig = text.partition("-----BEGIN CMS-----")
    blocks = [b for b in re.split(r"\n\n+", body.strip()) if b.strip()]
    meta_block = dict(line.split(": ", 1) for line in blocks[0].splitlines()[1:] if ": " in line) \
        if blocks and blocks[0].startswith("metadata:") else {}
    for key in ("vnf_provider_id", "vnf_product_name", "vnf_release_date_time", "vnf_package_version"):
        if key not in meta_block:
            problems.append(f"manifest metadata: no {key}")
    if "vnf_release_date_time" in meta_block and not re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", meta_block["vnf_release_date_time"]):
        problems.append("manifest metadata: vnf_release_date_time is not RFC 3339")
    entries = {}
    for block in blocks[1:]:
        e = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if set(e) != {"Source", "Algorithm", "Hash"}:
            problems.append(f"manifest: a block is not Source/Algorithm/Hash: {sorted(e)}")
            continue
        if e["Source"] in entries:
            problems.append(f"manifest: {e['Source']} listed twice")
        entries[e["Source"]] = e
    for name, data in files.items():
        if name == fields.get("ETSI-Entry-Manifest", MANIFEST):
            continue
        e = entries.get(name)
        if e is None:
            problems.append(f"{name}: no manifest entry")
        elif e["Algorithm"] != "SHA-256" or hashlib.sha256(data).hexdigest() != e["Hash"]:
            problems.append(f"{name}: hash does not match")
    for name in set(entries) - set(files):
        problems.append(f"manifest: {name} is not in the package")
    return problems


def verify_signature(path, cert, work):
    mf = read_zip(path)[MANIFEST]
    body, sep, sig = mf.partition(b"-----BEGIN CMS-----")
    if not sep:
        return "no CMS signature in the manifest"
    b, s = os.path.join(work, "mf-body"), os.path.join(work, "mf.cms")
    open(b, "wb").write(body)
    open(s, "wb").write(sep + sig)
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "PEM", "-in", s, "-content", b,
                        "-CAfile", cert, "-purpose", "any", "-out", os.devnull], capture_output=True, text=True)
    return None if r.returncode == 0 else r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"


def check_sol004(package, signed, cert, work):
    problems = sol004_problems(package)
    check("SOL004: TOSCA.meta fields, manifest metadata, one matching SHA-256 entry per file", not problems,
          "; ".join(problems))
    files = read_zip(package)
    for d in ("Definitions/", "Scripts/", "Licenses/", "ChangeLog.txt"):
        check(f"SOL004: the package has {d}", any(n.startswith(d) for n in files))
    out = os.path.join(work, "rebuild")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "vnf-descriptor/tools/build_package.py"), "--out", out],
                       capture_output=True, text=True)
    same = r.returncode == 0 and open(r.stdout.strip(), "rb").read() == open(package, "rb").read()
    check("the build is deterministic (a rebuild gives the same bytes)", same, r.stderr)
    if signed:
        problems = sol004_problems(signed)
        check("SOL004: the signed package's manifest and entries", not problems, "; ".join(problems))
        err = verify_signature(signed, cert, work)
        check("the CMS signature of the manifest verifies with the test certificate", err is None, err or "")

        def tamper(files):
            files[MANIFEST] = files[MANIFEST].replace(b"vnf_product_name: vpngw", b"vnf_product_name: vpngx", 1)
        err = verify_signature(mutated(signed, work, "tampered-signed", tamper), cert, work)
        check("the CMS signature fails on a tampered manifest", err is not None, "verified")


# ---------------------------------------------------------------------------------------------
# 4. The LCM scripts

def run(cmd, env=None, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def check_scripts(package, vpngw, work):
    d = os.path.join(work, "pkg")
    with zipfile.ZipFile(package) as z:
        z.extractall(d)
    scripts = os.path.join(d, "Scripts")
    for f in ("vpngw-lcm.sh", "vpngw-notify.sh"):
        os.chmod(os.path.join(scripts, f), 0o755)
    sh = [os.path.join(scripts, f) for f in sorted(os.listdir(scripts)) if f.endswith(".sh")]
    r = run(["shellcheck", *sh])
    check(f"shellcheck: {', '.join(os.path.basename(s) for s in sh)} clean", r.returncode == 0, r.stdout[-2000:])
    lcm = os.path.join(scripts, "vpngw-lcm.sh")

    # The operator's files on the VNFC: keys (mode 0600), referenced by path in the parameters.
    keys = os.path.join(work, "keys")
    os.makedirs(os.path.join(keys, "psk"), mode=0o700)
    secret = "psk-value-that-must-never-be-printed"
    for name in ("branch-1", "legacy-site"):
        with open(os.open(os.path.join(keys, "psk", name + ".psk"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(secret + "\n")
    with open(os.open(os.path.join(keys, "ha.key"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex() + "\n")

    def sample(name, edit=None):
        text = open(os.path.join(d, "Files/Samples", name), encoding="utf-8").read().replace("/etc/vpngw", keys)
        p = json.loads(text)
        if edit:
            edit(p["additionalParams"]["vpngw"])
        path = os.path.join(work, f"params-{len(os.listdir(work))}.json")
        open(path, "w").write(json.dumps(p))
        return path

    def sample_request(name, edit):
        """A sample with `edit` applied to the whole request (sample() edits additionalParams.vpngw)."""
        p = json.loads(open(sample(name)).read())
        edit(p)
        path = os.path.join(work, f"params-{len(os.listdir(work))}.json")
        open(path, "w").write(json.dumps(p))
        return path

    def lcm_run(op, params, tag, node=None, extra=()):
        etc, state = os.path.join(work, "etc-" + tag), os.path.join(work, "state-" + tag)
        cmd = [lcm, op, "--dry-run", *extra] + (["--params", params] if params else []) + (["--node", node] if node else [])
        r = run(cmd, env={"VPNGW_BIN": vpngw, "VPNGW_ETC": etc, "VPNGW_LCM_STATE": state})
        return r, etc, state

    outputs = {}
    for tag, name, node in (("single", "instantiate-single.json", None),
                            ("ha-a", "instantiate-hot-standby.json", "a"),
                            ("ha-b", "instantiate-hot-standby.json", "b")):
        r, etc, state = lcm_run("instantiate", sample(name), tag, node)
        check(f"LCM instantiate --dry-run ({tag}) writes a configuration that vpngw check passes", r.returncode == 0,
              r.stderr[-1500:])
        conf = os.path.join(etc, "vpngw.toml")
        if r.returncode == 0:
            c = run([vpngw, "check", "--config", conf])
            check(f"vpngw check --config {tag}/vpngw.toml (run again by the test): exit 0", c.returncode == 0,
                  c.stdout + c.stderr)
            mode = os.stat(conf).st_mode & 0o777
            check(f"{tag}: vpngw.toml is mode 0600 and the kept parameters too",
                  mode == 0o600 and os.stat(os.path.join(state, "params.json")).st_mode & 0o777 == 0o600, oct(mode))
            check(f"{tag}: no key in the output or the written files",
                  secret not in r.stdout + r.stderr + open(conf).read()
                  + open(os.path.join(state, "params.json")).read())
            outputs[tag] = (etc, state, open(conf).read())

    if "ha-a" in outputs and "ha-b" in outputs:
        a, b = outputs["ha-a"][2], outputs["ha-b"][2]
        check("hot_standby: A and B mirror each other ([ha] names and sync addresses swapped) and both use the public VIP",
              'node_name = "vpn-a"' in a and 'partner_name = "vpn-b"' in a and 'listen = "192.0.2.1:9722"' in a
              and 'node_name = "vpn-b"' in b and 'partner = "192.0.2.1:9722"' in b
              and a.count('public_address = "198.51.100.1"') == 1 and b.count('public_address = "198.51.100.1"') == 1)
        check_keepalived(outputs, work)

    if "single" in outputs:
        etc, state, before = outputs["single"]
        r, _, _ = lcm_run("heal", None, "single")
        check("LCM heal --dry-run rewrites the configuration from the kept parameters", r.returncode == 0
              and open(os.path.join(etc, "vpngw.toml")).read() == before, r.stderr[-800:])
        r, _, _ = lcm_run("scale", None, "single")
        check("LCM scale --dry-run on a configured VNFC: checks it, changes nothing", r.returncode == 0, r.stderr[-800:])
        r, _, _ = lcm_run("terminate", None, "single")
        check("LCM terminate --dry-run: exit 0", r.returncode == 0, r.stderr[-800:])

        def inline(v):
            v["connections"][0]["pre_shared_key"] = secret
        r, etc2, _ = lcm_run("instantiate", sample("instantiate-single.json", inline), "single")
        check("LCM refuses an inline pre_shared_key (exit 2), without printing it, and keeps the installed file",
              r.returncode == 2 and secret not in r.stdout + r.stderr
              and open(os.path.join(etc2, "vpngw.toml")).read() == before, f"exit {r.returncode}: {r.stderr[-600:]}")

        def overlap(v):
            v["connections"][1]["remote_subnets"] = ["10.2.0.0/16"]
        r, etc2, _ = lcm_run("instantiate", sample("instantiate-single.json", overlap), "single")
        check("LCM refuses a configuration vpngw check refuses (overlapping selectors): exit 2, installed file kept",
              r.returncode == 2 and "vpngw check refused" in r.stderr
              and open(os.path.join(etc2, "vpngw.toml")).read() == before, f"exit {r.returncode}: {r.stderr[-600:]}")

        def unknown(v):
            v["gateway"]["colour"] = "blue"
        r, _, _ = lcm_run("instantiate", sample("instantiate-single.json", unknown), "single")
        check("LCM refuses an unknown parameter, naming it", r.returncode == 2 and "vpngw.gateway.colour" in r.stderr,
              r.stderr[-600:])

        def lcm_unknown(p):
            p["additionalParams"]["lcm"] = {"wait_up_seconds": 5, "colour": "blue"}
        r, _, _ = lcm_run("instantiate", sample_request("instantiate-single.json", lcm_unknown), "single")
        check("LCM refuses an unknown lcm parameter, naming it", r.returncode == 2 and "lcm.colour" in r.stderr,
              r.stderr[-600:])

        def relative(v):
            v["connections"][0]["pre_shared_key_file"] = "psk/branch-1.psk"
        r, _, _ = lcm_run("instantiate", sample("instantiate-single.json", relative), "single")
        check("LCM refuses a relative key file path", r.returncode == 2 and "absolute path" in r.stderr, r.stderr[-600:])

    # Without --node the script looks for a sync address on the host: in a namespace of its own
    # (only lo) it finds neither, and must ask rather than guess.
    if os.geteuid() == 0:
        ns = f"vnfnode{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            params = sample("instantiate-hot-standby.json")
            etc, state = os.path.join(work, "etc-nonode"), os.path.join(work, "state-nonode")
            r = run(["ip", "netns", "exec", ns, lcm, "instantiate", "--dry-run", "--params", params],
                    env={"VPNGW_BIN": vpngw, "VPNGW_ETC": etc, "VPNGW_LCM_STATE": state})
            check("LCM hot_standby without --node on a host with neither sync address: exit 2 (which gateway?)",
                  r.returncode == 2 and "--node" in r.stderr, r.stderr[-600:])
            subprocess.run(["ip", "-n", ns, "link", "add", "sync0", "type", "veth", "peer", "name", "sync0p"], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.2/29", "dev", "sync0"], check=True)
            r = run(["ip", "netns", "exec", ns, lcm, "instantiate", "--dry-run", "--params", params],
                    env={"VPNGW_BIN": vpngw, "VPNGW_ETC": etc, "VPNGW_LCM_STATE": state})
            check("LCM hot_standby without --node on the host with B's sync address configures B",
                  r.returncode == 0 and 'node_name = "vpn-b"' in open(os.path.join(etc, "vpngw.toml")).read(),
                  r.stderr[-600:])
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    else:
        info("the node guess (no --node) is checked only as root (it needs a namespace)")


def check_tunnel(package, vpngw, work):
    """Two gateways configured by the LCM script itself (instantiate, not a dry run: it starts
    vpngw, without systemd) in network namespaces of their own, the topology of tests/src/netns.rs
    Lab::gateways; a ping must cross the tunnel; terminate must stop both."""
    if os.geteuid() != 0:
        info("tunnel check skipped (needs root for network namespaces)")
        return
    d = os.path.join(work, "pkg")
    lcm = os.path.join(d, "Scripts", "vpngw-lcm.sh")
    tag = f"vnft{os.getpid() % 100000}"
    ns = {k: f"{tag}-{k}" for k in ("l", "r", "lh", "rh")}
    lab = os.path.join(work, "lab")
    os.makedirs(lab, mode=0o700)

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "link", "add", "wan0", "netns", ns["l"], "type", "veth", "peer", "name", "wan0", "netns", ns["r"])
        for side, host, wan, lan, host_addr in (("l", "lh", "198.51.100.1", "10.1.0.1", "10.1.0.10"),
                                                 ("r", "rh", "198.51.100.2", "10.2.0.1", "10.2.0.10")):
            sh("ip", "link", "add", "eth0", "netns", ns[host], "type", "veth", "peer", "name", "lan0", "netns", ns[side])
            sh("ip", "-n", ns[side], "addr", "add", wan + "/24", "dev", "wan0")
            sh("ip", "-n", ns[side], "addr", "add", lan + "/24", "dev", "lan0")
            sh("ip", "-n", ns[host], "addr", "add", host_addr + "/24", "dev", "eth0")
            for n, dev in ((ns[side], "wan0"), (ns[side], "lan0"), (ns[host], "eth0")):
                sh("ip", "-n", n, "link", "set", dev, "up")
            sh("ip", "-n", ns[host], "route", "add", "default", "via", lan)
        psk = os.path.join(lab, "branch.psk")
        with open(os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(16).hex() + "\n")
        envs = {}
        for side, me, peer, local, remote in (("l", "198.51.100.1", "198.51.100.2", "10.1.0.0/24", "10.2.0.0/24"),
                                              ("r", "198.51.100.2", "198.51.100.1", "10.2.0.0/24", "10.1.0.0/24")):
            base = os.path.join(lab, side)
            params = {"additionalParams": {"vpngw": {
                "gateway": {"name": f"gw-{side}", "public_address": me, "control_socket": base + "/vpngw.sock"},
                "connections": [{"name": "site", "remote_address": peer, "pre_shared_key_file": psk,
                                 "local_subnets": [local], "remote_subnets": [remote], "suite": "aes128-sha1-dh14",
                                 "start": "active" if side == "l" else "passive"}],
                "metrics": {"listen": "127.0.0.1:9720"}}}}
            pfile = os.path.join(lab, f"params-{side}.json")
            open(pfile, "w").write(json.dumps(params))
            envs[side] = {"VPNGW_BIN": vpngw, "VPNGW_ETC": base + "/etc", "VPNGW_LCM_STATE": base + "/state",
                          "VPNGW_RUN": base + "/run", "VPNGW_SYSCTL_DIR": base + "/sysctl.d", "VPNGW_LCM_SYSTEMD": "0"}
        # The right side (passive) first: the left one's --wait-up then finds its peer.
        for side in ("r", "l"):
            pfile = os.path.join(lab, f"params-{side}.json")
            extra = ["--wait-up", "20"] if side == "l" else []
            r = run(["ip", "netns", "exec", ns[side], lcm, "instantiate", "--params", pfile, *extra], env=envs[side])
            check(f"LCM instantiate (not a dry run) starts vpngw in the lab's {'left' if side == 'l' else 'right'} "
                  f"gateway and returns once it is ready{' and the tunnel up (--wait-up)' if extra else ''}",
                  r.returncode == 0 and "ready: 1 connection(s)" in r.stderr
                  and (not extra or "site is up" in r.stdout + r.stderr), r.stderr[-800:])
        deadline, ok = time.monotonic() + 40, False
        while time.monotonic() < deadline and not ok:
            ok = run(["ip", "netns", "exec", ns["lh"], "ping", "-c", "1", "-W", "1", "10.2.0.10"]).returncode == 0
        waited = 40 - max(0.0, deadline - time.monotonic())
        check(f"a ping crosses the tunnel between the two script-configured gateways (after {waited:.1f} s)", ok,
              open(os.path.join(lab, "l", "run", "vpngw.log")).read()[-1500:] if not ok else "")
        pid = open(os.path.join(lab, "l", "run", "vpngw.pid")).read().strip()
        r = run(["ip", "netns", "exec", ns["l"], lcm, "heal"], env=envs["l"])
        check("LCM heal on a running gateway reloads it (same PID, no restart) and it is ready again",
              r.returncode == 0 and "reloaded its configuration (no restart)" in r.stderr
              and open(os.path.join(lab, "l", "run", "vpngw.pid")).read().strip() == pid and running(int(pid)),
              r.stderr[-800:])
        for side in ("l", "r"):
            pid = open(os.path.join(lab, side, "run", "vpngw.pid")).read().strip()
            r = run(["ip", "netns", "exec", ns[side], lcm, "terminate"], env=envs[side])
            gone = not running(pid)
            check(f"LCM terminate stops vpngw ({'left' if side == 'l' else 'right'}, PID {pid}) and removes vpngw.toml",
                  r.returncode == 0 and gone and not os.path.exists(os.path.join(lab, side, "etc", "vpngw.toml")),
                  r.stderr[-600:])
    finally:
        for side in ("l", "r"):  # whatever is left of what this test started, by PID
            try:
                pid = int(open(os.path.join(lab, side, "run", "vpngw.pid")).read())
                os.kill(pid, 9)
            except (OSError, ValueError):
                pass
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def running(pid):
    """Whether process `pid` runs: a zombie does not (the script's daemon is an orphan once the
    script exits, and whether anyone reaps it at once depends on the init)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return not stat.rpartition(") ")[2].startswith("Z")


def check_software(package, work):
    """The Debian package in Files/software/ (when make package found make deb's output): listed
    in TOSCA.meta with its SHA-256, named by both flavours' VNF node as a deployment artifact,
    vpngw at the VNFD's software version; Tacker refuses a wrong hash in TOSCA.meta; and
    `vpngw-lcm.sh install` installs it in a clean Debian 12 root. No SwImage anywhere: the package
    names no VM image, so no made-up checksum."""
    files = read_zip(package)
    debs = sorted(n for n in files if n.startswith("Files/software/") and n.endswith(".deb"))
    flavours = {p: files[p].decode() for p in ("Definitions/vpngw_df_single.yaml",
                                               "Definitions/vpngw_df_hot_standby.yaml")}
    swimage = [n for n in files if n.startswith("Definitions/vpngw") and b"tosca.artifacts.nfv.SwImage" in files[n]]
    check("no VDU names a software image (no SwImage artifact, no invented checksum)", not swimage, f"{swimage}")
    if not debs:
        info("the package carries no Debian package (make deb before make package to include it)")
        check("without a Debian package no flavour names one", all("vpngw_deb:" not in t for t in flavours.values()))
        return
    check("one Debian package in Files/software/", len(debs) == 1, f"{debs}")
    deb = debs[0]
    digest = hashlib.sha256(files[deb]).hexdigest()
    meta = files["TOSCA-Metadata/TOSCA.meta"].decode()
    check(f"TOSCA.meta lists {deb} with its SHA-256 (Name, Content-Type, Algorithm, Hash)",
          f"\nName: {deb}\nContent-Type: application/vnd.debian.binary-package\nAlgorithm: SHA-256\nHash: {digest}\n"
          in meta, meta)
    for path, text in flavours.items():
        check(f"{path}: the VNF node names it as a deployment artifact (vpngw_deb, tosca.artifacts.Deployment)",
              re.search(r"        vpngw_deb:\n(?:          .*\n)+?          type: tosca\.artifacts\.Deployment\n"
                        rf"          file: \.\./{re.escape(deb)}\n", text) is not None)
    path = os.path.join(work, os.path.basename(deb))
    open(path, "wb").write(files[deb])
    fields = {f: subprocess.run(["dpkg-deb", "-f", path, f], capture_output=True, text=True).stdout.strip()
              for f in ("Package", "Version", "Architecture")}
    check("it is vpngw 0.1.0 for amd64 (the VNFD's software_version)",
          fields["Package"] == "vpngw" and fields["Version"].rsplit("-", 1)[0] == "0.1.0"
          and fields["Architecture"] == "amd64", f"{fields}")

    def wrong_hash(f):
        f["TOSCA-Metadata/TOSCA.meta"] = f["TOSCA-Metadata/TOSCA.meta"].replace(digest.encode(), b"ab" * 32)
        rehash(f, "TOSCA-Metadata/TOSCA.meta")
    err = tacker_refuses(tacker_loader(work), mutated(package, work, "deb-wrong-hash", wrong_hash))
    check("Tacker refuses a package whose TOSCA.meta gives the Debian package another hash", err is not None,
          "accepted")
    if err:
        info(f"  {err}")

    # vpngw-lcm.sh install in a clean Debian 12 minbase root (tests/tools/debian-root.sh's).
    base = os.path.join(ROOT, "target/debian-root/bookworm-minbase.tar")
    if os.geteuid() != 0 or not os.path.exists(base):
        info("the install in a clean Debian root is checked only as root with target/debian-root/bookworm-minbase.tar "
             "(tests/tools/debian-root.sh makes it)")
        return
    root = os.path.join(work, "minbase")
    os.makedirs(os.path.join(root, "opt/vnf"))
    subprocess.run(["tar", "--numeric-owner", "-C", root, "-xf", base], check=True)
    with zipfile.ZipFile(package) as z:
        z.extractall(os.path.join(root, "opt/vnf"))
    env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    lcm = ["bash", "/opt/vnf/Scripts/vpngw-lcm.sh", "install"]
    r = run(["chroot", root, *env, *lcm])
    v = run(["chroot", root, "/usr/bin/vpngw", "--version"])
    check("vpngw-lcm.sh install in a clean Debian 12 root without vpngw installs the packaged .deb "
          "(vpngw --version: 0.1.0 and its revision)", r.returncode == 0 and "installing /opt/vnf/Files/software/" in r.stderr
          and v.stdout.strip().split(" (")[0] == "vpngw 0.1.0", f"exit {r.returncode}: {r.stderr[-800:]}{v.stdout}{v.stderr}")
    r = run(["chroot", root, *env, *lcm])
    check("vpngw-lcm.sh install again: already installed, nothing to do", r.returncode == 0
          and "nothing to do" in r.stderr, r.stderr[-400:])
    shutil.rmtree(root, ignore_errors=True)


def check_keepalived(outputs, work):
    """keepalived -t on both generated files, in a namespace that has wan0 and lan0."""
    if os.geteuid() != 0 or not shutil.which("keepalived"):
        info("keepalived -t skipped (needs root and keepalived)")
        return
    ns = f"vnfchk{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for dev in ("wan0", "lan0"):
            # veth rather than dummy: not every kernel here has the dummy module.
            subprocess.run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev + "p"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        for tag in ("ha-a", "ha-b"):
            conf = os.path.join(outputs[tag][0], "keepalived.conf")
            r = run(["ip", "netns", "exec", ns, "keepalived", "-t", "-f", conf])
            check(f"keepalived -t -f {tag}/keepalived.conf: exit 0", r.returncode == 0,
                  f"exit {r.returncode}: {(r.stdout + r.stderr)[-800:]}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--signed")
    ap.add_argument("--cert")
    ap.add_argument("--vpngw", required=True)
    args = ap.parse_args()
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="vpngw-vnf-check-")
    try:
        for title, fn in (("tosca-parser", lambda: check_tosca(args.package, work)),
                          ("Tacker's CSAR loader", lambda: check_tacker(args.package, args.signed, work)),
                          ("SOL004 structure and signature", lambda: check_sol004(args.package, args.signed, args.cert, work)),
                          ("The software: vpngw's Debian package", lambda: check_software(args.package, work)),
                          ("LCM scripts", lambda: check_scripts(args.package, os.path.abspath(args.vpngw), work)),
                          ("LCM scripts in the namespace lab: a tunnel",
                           lambda: check_tunnel(args.package, os.path.abspath(args.vpngw), work))):
            print(f"== {title}")
            try:
                fn()
            except Exception as e:  # a crash of one section is a failure, not the end of the run
                check(f"{title}: ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"vnf-check: {time.monotonic() - started:.1f} s")
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
