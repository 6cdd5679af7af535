#!/usr/bin/env bash
# Static checks of everything the kind suite installs, runnable without a cluster or a container
# engine (`make static-checks`, part of `make test`):
#   - `kubectl kustomize` builds every overlay, the base and the examples;
#   - the output validates with kubernetes-validate --strict for the oldest and newest supported
#     Kubernetes versions (cert-manager's CRD kinds have no schema there and are checked by
#     check_manifests.py instead);
#   - hadolint passes on both Dockerfiles; shellcheck on every shell script and .ci/run;
#   - check_manifests.py: the manifests agree with the webhook binary (flags, ports, path, opt-in
#     label) and keep the hardening issue 5 and 6 ask for, with a self-test that breaks them;
#   - check_e2e_refs.py: tests/e2e/kind.sh uses only names and outputs deploy/ really has.
# Every check runs; the script fails at the end if any failed.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
export PATH="$top/.venv/bin:$top/.tools/bin:$PATH"

# Oldest: first release with native sidecars on by default; newest: kubernetes-validate's newest.
K8S_VERSIONS=(1.29.0 1.37.0)
# Kinds without a schema in kubernetes-validate that may appear (and are checked by check_manifests.py).
CRD_KINDS_RE='kind (Certificate|Issuer) with api version cert-manager\.io/v1 '

passed=0
failed=0
failures=()
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ok() { passed=$((passed + 1)); echo "static-checks: ok   $*"; }
bad() {
  failed=$((failed + 1))
  failures+=("$1")
  echo "static-checks: FAIL $1"
  if [ -n "${2:-}" ]; then sed 's/^/    /' "$2"; fi
}

for tool in kubectl kubernetes-validate hadolint shellcheck python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "static-checks: $tool is missing; run 'make setup' (scripts/setup.sh installs it)" >&2
    exit 1
  fi
done

# 1. kustomize builds and schema validation.
targets=(deploy/base deploy/examples)
for d in deploy/overlays/*/; do targets+=("${d%/}"); done
rendered=()
for dir in "${targets[@]}"; do
  name=${dir#deploy/}
  out="$work/${name//\//_}.yaml"
  if ! kubectl kustomize "$dir" >"$out" 2>"$work/err"; then
    bad "kustomize build $dir" "$work/err"
    continue
  fi
  ok "kustomize build $dir ($(grep -c '^kind:' "$out") objects)"
  case $dir in deploy/overlays/*) rendered+=("$name=$out") ;; esac
  for v in "${K8S_VERSIONS[@]}"; do
    if ! kubernetes-validate --strict --quiet -k "$v" "$out" >"$work/val" 2>&1; then
      bad "kubernetes-validate --strict $v $dir" "$work/val"
    elif grep -v -E "$CRD_KINDS_RE" "$work/val" | grep -q .; then
      bad "kubernetes-validate --strict $v $dir: unexpected output" "$work/val"
    else
      ok "kubernetes-validate --strict -k $v $dir"
    fi
  done
done

# The validator must refuse what it should: an unknown field under --strict.
cat >"$work/negative.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: negative}
spec:
  containers: [{name: c, image: busybox, notAField: true}]
YAML
if kubernetes-validate --strict --quiet -k "${K8S_VERSIONS[0]}" "$work/negative.yaml" >/dev/null 2>&1; then
  bad "kubernetes-validate --strict accepted an unknown field (the validation above proves nothing)"
else
  ok "kubernetes-validate --strict refuses an unknown field"
fi

# 2. Dockerfiles.
for f in Dockerfile.webhook Dockerfile.sidecar; do
  if hadolint "$f" >"$work/hl" 2>&1; then ok "hadolint $f"; else bad "hadolint $f" "$work/hl"; fi
done

# 3. Shell scripts: every *.sh outside build output and tool directories, and .ci/run.
mapfile -t scripts < <(find . \( -path ./.git -o -path ./.venv -o -path ./.tools -o -path ./target \
  -o -path '*/node_modules' -o -path ./fuzz/target \) -prune -o -type f -name '*.sh' -print | sort)
scripts+=(.ci/run)
if shellcheck -x "${scripts[@]}" >"$work/sc" 2>&1; then
  ok "shellcheck ${#scripts[@]} scripts"
else
  bad "shellcheck" "$work/sc"
fi

# 4. Manifests against the webhook binary.
# Always (re)build: a stale binary would check the manifests against old flags. The whole workspace,
# as `make test` builds it: one package alone unifies features differently and rebuilds its deps.
# shellcheck source=scripts/bin-dir.sh
. "$top/scripts/bin-dir.sh"
bin=$bin/s3mount-webhook
if ! cargo build -q --workspace --bins >"$work/build" 2>&1; then
  bad "cargo build --workspace --bins" "$work/build"
  bin=
fi
if [ -n "$bin" ]; then
  if python3 tests/e2e/check_manifests.py --webhook-bin "$bin" --webhook-src webhook/src --self-test \
    "${rendered[@]}" >"$work/cm" 2>&1; then
    summary=$(tail -n1 "$work/cm" | sed 's/^check_manifests: //')
    ok "check_manifests.py ($summary; self-test caught every break)"
  else
    bad "check_manifests.py" "$work/cm"
  fi
fi

# 5. The kind suite (which cannot run here) still names what deploy/ defines.
if python3 tests/e2e/check_e2e_refs.py tests/e2e/kind.sh "$work/examples.yaml" "$work/overlays_self-signed.yaml" \
  >"$work/refs" 2>&1; then
  ok "check_e2e_refs.py: kind.sh agrees with deploy/examples and the self-signed overlay"
else
  bad "check_e2e_refs.py" "$work/refs"
fi

echo "static-checks: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  printf 'static-checks: failed: %s\n' "${failures[@]}"
  exit 1
fi
