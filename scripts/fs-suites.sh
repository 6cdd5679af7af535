#!/usr/bin/env bash
# Runs the standard filesystem suites on a real s3mount mount over `rclone serve s3`:
#   fsx (FSX_OPS operations, default 10000, on one file: random reads, writes, truncates, mmap)
#   pjdfstest (the POSIX suite; every failure is given its documented reason, see
#   scripts/pjdfstest-report.py; PJDFSTEST_MIN_PASSED is the last accepted run's passes plus
#   its failures on timestamps, which move between the two with second boundaries: 135 + 9,
#   less a little slack).
# Prints the figures; exits non-zero on an fsx mismatch, an unexplained pjdfstest failure or fewer
# passes than before. Needs root, /dev/fuse, .venv and .tools (scripts/setup.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bin-dir.sh
. "$top/scripts/bin-dir.sh"
ops=${FSX_OPS:-10000}
min_passed=${PJDFSTEST_MIN_PASSED:-140}
work=$(mktemp -d /tmp/s3mount-fs-suites.XXXXXX)
mkdir -p "$top/target/tmp"
summary=$top/target/tmp/fs-suites-summary.txt
rm -f "$summary"
export AWS_ACCESS_KEY_ID=fs-suites-access-key
export AWS_SECRET_ACCESS_KEY=fs-suites-secret-$RANDOM$RANDOM
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount -l "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

read -r endpoint s3pid < <(bash "$top/scripts/s3-server.sh" "$work/s3" "$work/s3.log")
pids+=("$s3pid")
"$top/.venv/bin/python" "$top/scripts/s3tool.py" "$endpoint" suites mb
mkdir -p "$work/mnt"
"$bin/s3mount-sidecar" --bucket=suites --mountpoint="$work/mnt" --endpoint="$endpoint" --path-style \
  --cache-dir="$work/cache" --health-listen=127.0.0.1:0 --metadata-ttl=0s >"$work/sidecar.log" 2>&1 &
side=$!
pids+=("$side")
"$bin/s3mount-sidecar" probe --mountpoint="$work/mnt" --wait=30s

status=0
start=$SECONDS
if (cd "$work" && "$top/.tools/bin/fsx" -N "$ops" -S 20261204 -P "$work" "$work/mnt/fsx.bin") >"$work/fsx.out" 2>&1; then
  echo "fsx: $ops operations, 0 mismatches ($((SECONDS - start)) s)" | tee -a "$summary"
else
  echo "fsx: FAILED after $((SECONDS - start)) s; last lines:"
  tail -n 20 "$work/fsx.out"
  status=1
fi

mkdir -p "$work/mnt/pjdfstest"
start=$SECONDS
"$top/.tools/bin/pjdfstest" -c "$top/tests/fs-suites/pjdfstest.toml" -p "$work/mnt/pjdfstest" \
  >"$work/pjdfstest.out" 2>&1 || true
echo "pjdfstest took $((SECONDS - start)) s; skipped tests need features this mount lacks (file flags, posix_fallocate, remounting read-only)"
python3 "$top/scripts/pjdfstest-report.py" "$work/pjdfstest.out" "$min_passed" >"$work/pjd-report.txt" || status=1
cat "$work/pjd-report.txt"
head -n 1 "$work/pjd-report.txt" >>"$summary"

kill -TERM "$side"
if ! wait "$side"; then
  echo "the sidecar did not stop cleanly; log tail:"
  tail -n 20 "$work/sidecar.log"
  status=1
fi
exit $status
