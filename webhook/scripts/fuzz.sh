#!/usr/bin/env bash
# Runs the webhook fuzz target (fuzz/fuzz_targets/admission.rs) for N seconds (default 20),
# seeded with the AdmissionReview fixtures. Fails when the fuzzer finds a crash.
# cargo fuzz needs unstable rustc flags: nightly when installed, else the stable toolchain with
# RUSTC_BOOTSTRAP=1.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-20}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "fuzz-webhook: cargo-fuzz missing; run make setup" >&2; exit 1; }
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
cd "$top/fuzz"
mkdir -p corpus
echo "fuzz-webhook: ${seconds}s of cargo fuzz run admission"
# FUZZ_SANITIZER (default none for the smoke run in `make test`: the address sanitizer rebuilds
# every dependency instrumented, which costs many minutes; the fuzz target itself checks every
# answer, so a wrong answer or a panic is found without it). `make fuzz-webhook-long` uses address.
mkdir -p "$top/target/tmp"
log=$top/target/tmp/fuzz.log
start=$SECONDS
set +e
cargo "${toolchain[@]}" fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" admission corpus "$top/webhook/tests/fixtures" -- \
  -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tee "$log" |
  grep -E '^(stat::|==|INFO: (Running|Loaded)|.*(crash|panick|deadly))'
rc=${PIPESTATUS[0]}
set -e
runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
if [ "$rc" = 0 ]; then
  echo "fuzz: ${runs:-0} executions of the webhook's parser and mutation in $((SECONDS - start)) s, 0 crashes" |
    tee "$top/target/tmp/fuzz-summary.txt"
else
  echo "fuzz: the fuzzer failed (exit $rc); see $log and fuzz/artifacts" >&2
fi
exit "$rc"
