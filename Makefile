# vpngw: the commands a user runs (see README.md). Every target installs what it needs.
SHELL := /bin/bash
CARGO ?= cargo
DEPS := tests/tools/install-deps.sh

# Debian packages the test suite drives: tcpdump and Python's cryptography check our ESP.
TEST_PACKAGES := tcpdump python3 python3-cryptography

.DEFAULT_GOAL := help
.PHONY: help test lint unit bench deps-test

help:
	@echo "vpngw make targets:"
	@echo "  make test    all tests: format, lint, unit, property, known-answer and independent checks"
	@echo "  make bench   ESP engine benchmarks (criterion), with ratios to the raw-crypto ceiling"

deps-test:
	@$(DEPS) $(TEST_PACKAGES)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

test: deps-test lint unit

bench:
	$(CARGO) bench -p vpngw-benches --locked
