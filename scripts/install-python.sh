#!/usr/bin/env bash
# Creates .venv at the top of the checkout and installs the Python tools the tests use
# (S3 servers, schema validation, Dockerfile lint). Idempotent: a second run only checks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv="$top/.venv"
stamp="$venv/.installed-$(sha256sum "$top/scripts/requirements-test.txt" | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$top/scripts/requirements-test.txt"
rm -f "$venv"/.installed-*
touch "$stamp"
echo "python tools installed in $venv"
