#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian machine (run as root):
# Debian packages, the Python tools in .venv, and every scripts/install-*.sh step.
# `--demo` installs only what `make demo` needs. Each step is idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
mode=${1:-all}

need_apt=()
for pkg in fuse3 jq curl util-linux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "$mode" != "--demo" ]; then
  for pkg in s3fs fio shellcheck hyperfine wrk bc openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

bash scripts/install-python.sh

if [ "$mode" != "--demo" ]; then
  for step in scripts/install-*.sh; do
    [ "$step" = scripts/install-python.sh ] && continue
    bash "$step"
  done
fi
