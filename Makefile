# s3mount: the two commands are `make demo` and `make test`; see README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(CURDIR)/.venv/bin:$(CURDIR)/.tools/bin:$(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

# Extra test suites run by `make test` after the cargo tests; each mk/*.mk file appends to it.
TEST_SUITES :=

include $(sort $(wildcard mk/*.mk))

.PHONY: help setup build demo test lint cargo-test test-summary
help:
	@echo "make demo   - run the main job locally: S3 server, webhook over TLS, mutated pod, FUSE mount"
	@echo "make test   - install what the tests need and run every test"
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t- /' | sort

setup: ## install every tool the tests need (apt-get, .venv, cargo install)
	@bash scripts/setup.sh

build: ## build all binaries (debug)
	$(CARGO) build --workspace --bins

demo: ## the main job, locally, printing each step
	@bash scripts/setup.sh --demo
	$(CARGO) build --workspace --bins
	@bash scripts/demo.sh

lint: ## rustfmt and clippy, warnings denied
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

SUMMARY_DIR := $(CURDIR)/target/tmp

cargo-test: ## every cargo test in the workspace
	@mkdir -p $(SUMMARY_DIR) && rm -f $(SUMMARY_DIR)/*-summary.txt
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

test: setup lint cargo-test $(TEST_SUITES) ## everything CI runs
	@$(MAKE) --no-print-directory test-summary
	@echo "make test: all suites passed"

test-summary: ## the figures of the last make test: faults survived, bytes verified, fsx ops, fuzz runs
	@echo "== summary =="
	@if [ -f $(SUMMARY_DIR)/reliability-summary.txt ]; then \
		awk '{for (i = 3; i <= NF; i++) { split($$i, kv, "="); if (kv[1] == "faults_injected") f += kv[2]; \
			if (kv[1] == "bytes_verified") b += kv[2] } n++ } \
			END { printf "reliability: %d tests, %d S3 faults injected and survived or reported, %.1f MiB verified byte for byte\n", n, f, b / 1048576 }' \
			$(SUMMARY_DIR)/reliability-summary.txt; fi
	@cat $(SUMMARY_DIR)/fs-suites-summary.txt $(SUMMARY_DIR)/fuzz-summary.txt 2>/dev/null || true
