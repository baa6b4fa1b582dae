#!/usr/bin/env python3
"""Builds vpngw's ETSI SOL004 VNF package (a CSAR: a zip with TOSCA-Metadata).

    build_package.py [--out DIR] [--sign-key KEY --sign-cert CERT] [--deb FILE | --no-deb]

Layout of the package (vnf-descriptor/README.md):
    TOSCA-Metadata/TOSCA.meta   Entry-Definitions, ETSI-Entry-Manifest, ETSI-Entry-Change-Log, ...
    Definitions/                the VNFD (vpngw_top.vnfd.yaml and what it imports) + SOL001 types
    Scripts/                    the LCM scripts (and keepalived's notify script, deploy/ha/notify.sh)
    Files/Samples/              sample Instantiate VNF requests
    Files/software/             vpngw's Debian package, when there is one (make deb:
                                target/debian/vpngw_<software_version>-*_amd64.deb, or --deb):
                                the flavours' VNF node then names it as a deployment artifact
                                (vpngw_deb), TOSCA.meta lists it with its SHA-256, and
                                vpngw-lcm.sh installs it on a VNFC without vpngw
    Licenses/, ChangeLog.txt
    vpngw.mf                    the manifest: metadata block, then Source/Algorithm/Hash (SHA-256)
                                for every other file; signed: a CMS signature at its end (SOL004
                                option 2) and Files/Certificates/vpngw.cert

The output is deterministic: files in a fixed order, their time stamps and
vnf_release_date_time from the newest ChangeLog.txt entry, fixed modes, fixed compression (and
the same .deb, if one is packaged). (A signature made with a new test key is not, of course.)
Prints the package's path, and on stderr which .deb it packaged, if any.
"""

import argparse
import datetime
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VNFD = os.path.join(ROOT, "vnf-descriptor")
ENTRY = "Definitions/vpngw_top.vnfd.yaml"
MANIFEST = "vpngw.mf"
CERT = "Files/Certificates/vpngw.cert"
SOFTWARE = "Files/software"
FLAVOURS = ("Definitions/vpngw_df_single.yaml", "Definitions/vpngw_df_hot_standby.yaml")
# Where the artifact goes: first in the VNF node's artifacts, beside the LCM scripts.
ARTIFACTS_ANCHOR = "      artifacts:\n        vpngw_lcm:\n"


def sources():
    """(path in the package, path in the repository), in package order."""
    files = []
    for sub in ("Definitions", "Scripts", "Licenses"):
        for name in sorted(os.listdir(os.path.join(VNFD, sub))):
            if name.startswith(".") or name == "__pycache__":
                continue
            files.append((f"{sub}/{name}", os.path.join(VNFD, sub, name)))
    files.append(("Scripts/vpngw-notify.sh", os.path.join(ROOT, "deploy/ha/notify.sh")))
    for name in sorted(os.listdir(os.path.join(VNFD, "samples"))):
        files.append((f"Files/Samples/{name}", os.path.join(VNFD, "samples", name)))
    files.append(("ChangeLog.txt", os.path.join(VNFD, "ChangeLog.txt")))
    return files


def vnf_properties():
    """descriptor_version, provider and product_name from the top-level VNFD (plain text: the
    packager needs no YAML library)."""
    text = open(os.path.join(VNFD, ENTRY), encoding="utf-8").read()
    props = {}
    for key in ("descriptor_id", "descriptor_version", "provider", "product_name", "software_version"):
        m = re.search(rf"^\s+{key}:\s*'?([^'\n]+?)'?\s*$", text, re.M)
        if not m:
            sys.exit(f"build_package: {ENTRY}: no {key}")
        props[key] = m.group(1)
    return props


def release():
    """(version, date-time) of the newest ChangeLog entry: a line 'VERSION RFC3339'."""
    for line in open(os.path.join(VNFD, "ChangeLog.txt"), encoding="utf-8"):
        m = re.match(r"^(\d+\.\d+\.\d+)\s+(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\s*$", line)
        if m:
            return m.group(1), m.group(2)
    sys.exit("build_package: ChangeLog.txt: no entry 'VERSION YYYY-MM-DDTHH:MM:SSZ'")


def find_deb(props, explicit, none):
    """The Debian package to put in the package: --deb, else make deb's output for the VNFD's
    software_version if it exists; None with --no-deb or when there is none."""
    if none:
        return None
    if explicit:
        path = explicit
    else:
        d = os.path.join(ROOT, "target", "debian")
        want = f"vpngw_{props['software_version']}-"
        found = sorted(n for n in os.listdir(d) if n.startswith(want) and n.endswith("_amd64.deb")) \
            if os.path.isdir(d) else []
        if not found:
            return None
        path = os.path.join(d, found[-1])
    fields = {}
    for field in ("Package", "Version", "Architecture"):
        out = subprocess.run(["dpkg-deb", "-f", path, field], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"build_package: {path}: not a Debian package ({out.stderr.strip()})")
        fields[field] = out.stdout.strip()
    upstream = fields["Version"].rsplit("-", 1)[0]
    if fields["Package"] != "vpngw" or fields["Architecture"] != "amd64" or upstream != props["software_version"]:
        sys.exit(f"build_package: {path}: {fields['Package']} {fields['Version']} {fields['Architecture']} is not "
                 f"vpngw {props['software_version']} amd64 (the VNFD's software_version)")
    name = f"vpngw_{fields['Version']}_amd64.deb"
    return path, f"{SOFTWARE}/{name}"


def with_deb_artifact(text, path, deb):
    """A flavour with the .deb named in its VNF node's artifacts."""
    if text.count(ARTIFACTS_ANCHOR) != 1:
        sys.exit(f"build_package: {path}: the VNF node's artifacts (vpngw_lcm first) not found once")
    artifact = (
        "      artifacts:\n"
        "        # Added by build_package.py: the package carries vpngw's Debian package.\n"
        "        vpngw_deb:\n"
        "          description: >\n"
        "            vpngw's Debian package (make deb; its SHA-256 in the manifest and TOSCA.meta). Not a\n"
        "            software image: vpngw-lcm.sh installs it (apt-get or dpkg) on a VNFC whose image has\n"
        "            no vpngw\n"
        "          type: tosca.artifacts.Deployment\n"
        f"          file: ../{deb}\n"
        "        vpngw_lcm:\n")
    return text.replace(ARTIFACTS_ANCHOR, artifact)


def tosca_meta(signed, software=None):
    lines = [
        "TOSCA-Meta-File-Version: 1.0",
        "CSAR-Version: 1.1",
        "Created-By: vpngw (vnf-descriptor/tools/build_package.py)",
        f"Entry-Definitions: {ENTRY}",
        f"ETSI-Entry-Manifest: {MANIFEST}",
        "ETSI-Entry-Change-Log: ChangeLog.txt",
        "ETSI-Entry-Licenses: Licenses",
    ]
    if signed:
        lines.append(f"ETSI-Entry-Certificate: {CERT}")
    if software:
        # A block per non-MANO file (TOSCA CSAR 1.1): Tacker verifies Algorithm/Hash here too.
        name, data = software
        lines += ["", f"Name: {name}", "Content-Type: application/vnd.debian.binary-package",
                  "Algorithm: SHA-256", f"Hash: {hashlib.sha256(data).hexdigest()}"]
    return ("\n".join(lines) + "\n").encode()


def manifest(props, version, when, contents):
    lines = [
        "metadata:",
        f"vnf_provider_id: {props['provider']}",
        f"vnf_product_name: {props['product_name']}",
        f"vnf_release_date_time: {when}",
        f"vnf_package_version: {version}",
        "",
    ]
    for path in sorted(contents):
        lines += [f"Source: {path}", "Algorithm: SHA-256", f"Hash: {hashlib.sha256(contents[path]).hexdigest()}", ""]
    return "\n".join(lines).encode()


def sign(body, key, cert):
    """A detached CMS signature (PEM) of the manifest's body, made by openssl."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            ["openssl", "cms", "-sign", "-binary", "-noattr", "-outform", "PEM", "-in", f.name,
             "-signer", cert, "-inkey", key, "-md", "sha256"],
            check=True, capture_output=True)
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "package"))
    ap.add_argument("--sign-key")
    ap.add_argument("--sign-cert")
    ap.add_argument("--deb", help="the Debian package to carry (default: make deb's, if there is one)")
    ap.add_argument("--no-deb", action="store_true", help="carry no Debian package")
    args = ap.parse_args()
    if bool(args.sign_key) != bool(args.sign_cert):
        sys.exit("build_package: --sign-key and --sign-cert go together")
    signed = bool(args.sign_key)

    props = vnf_properties()
    version, when = release()
    if version != props["descriptor_version"]:
        sys.exit(f"build_package: ChangeLog.txt's newest version {version} is not the VNFD's "
                 f"descriptor_version {props['descriptor_version']}")
    stamp = datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").timetuple()[:6]

    contents, modes = {}, {}
    for path, src in sources():
        with open(src, "rb") as f:
            contents[path] = f.read()
        modes[path] = 0o755 if os.access(src, os.X_OK) and path.startswith("Scripts/") else 0o644
    deb = find_deb(props, args.deb, args.no_deb)
    software = None
    if deb:
        src, name = deb
        with open(src, "rb") as f:
            contents[name] = f.read()
        modes[name] = 0o644
        software = (name, contents[name])
        for flavour in FLAVOURS:
            contents[flavour] = with_deb_artifact(contents[flavour].decode(), flavour, name).encode()
        print(f"build_package: packaged {os.path.relpath(src, ROOT)} as {name}", file=sys.stderr)
    contents["TOSCA-Metadata/TOSCA.meta"] = tosca_meta(signed, software)
    modes["TOSCA-Metadata/TOSCA.meta"] = 0o644
    if signed:
        with open(args.sign_cert, "rb") as f:
            contents[CERT] = f.read()
        modes[CERT] = 0o644
    body = manifest(props, version, when, contents)
    if signed:
        # A blank line first: readers (Tacker) split the manifest into blocks at blank lines.
        body += b"\n"
        body += sign(body, args.sign_key, args.sign_cert)
    contents[MANIFEST] = body
    modes[MANIFEST] = 0o644

    os.makedirs(args.out, exist_ok=True)
    name = f"vpngw-vnf-{version}{'-signed' if signed else ''}.csar"
    path = os.path.join(args.out, name)
    tmp = path + ".tmp"
    # TOSCA.meta first (SOL004 does not require it; some readers look there first), then the rest.
    order = ["TOSCA-Metadata/TOSCA.meta"] + sorted(p for p in contents if p != "TOSCA-Metadata/TOSCA.meta")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for p in order:
            info = zipfile.ZipInfo(p, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | modes[p]) << 16
            info.create_system = 3  # Unix: the modes above are meant
            z.writestr(info, contents[p])
    os.replace(tmp, path)
    print(path)


if __name__ == "__main__":
    main()
