#!/usr/bin/env bash
# Tools the webhook's suites need, installed with cargo from crates.io (idempotent: an installed
# tool is kept):
# - oha: HTTP load generator for `make bench-webhook` only (with --bench; `make test` uses wrk from
#   Debian, so CI does not spend minutes building oha);
# - cargo-fuzz: runs the fuzz target of `make fuzz-webhook`. It needs unstable rustc flags: the
#   nightly toolchain when there is one, else mk/webhook.mk sets RUSTC_BOOTSTRAP=1 on the stable one.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
if [ "${1:-}" = --bench ] && ! command -v oha >/dev/null 2>&1; then
  echo "install-webhook-tools: cargo install oha"
  cargo install --locked --quiet oha
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "install-webhook-tools: cargo install cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
