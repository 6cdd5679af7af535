#!/usr/bin/env bash
# The main job, locally, with real parts and no cluster:
#   a real S3 server (rclone serve s3) on loopback with sample objects,
#   the webhook over TLS with a certificate from s3mount-certs,
#   a real AdmissionReview for deploy/examples/pod.yaml and the returned JSON patch applied,
#   the mutated pod run by s3mount-podrun the way a kubelet would (mount namespaces, propagation,
#   native-sidecar startup probe, SIGTERM and grace period),
#   and checks: exact bytes read by the app, exact bytes of its write in S3 (direct request),
#   recovery after SIGKILL of the sidecar, no mount left behind, and a negative control.
# Exits non-zero on the first failed check. Set KEEP=1 to keep the work directory.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# shellcheck source=scripts/bin-dir.sh
. "$top/scripts/bin-dir.sh"
py=$top/.venv/bin/python
podrun=$bin/s3mount-podrun
for b in s3mount-webhook s3mount-sidecar s3mount-certs s3mount-podrun; do
  [ -x "$bin/$b" ] || {
    echo "DEMO FAILED: $bin/$b is missing: build with cargo build --workspace --bins, or point" \
      "S3MOUNT_BIN_DIR at the directory holding the four binaries" >&2
    exit 1
  }
done
[ -x "$py" ] || { echo "DEMO FAILED: .venv is missing: run bash scripts/setup.sh --demo" >&2; exit 1; }
work=$(mktemp -d /tmp/s3mount-demo.XXXXXX)
export AWS_ACCESS_KEY_ID=demo-access-key
export AWS_SECRET_ACCESS_KEY=demo-secret-key-$$-$RANDOM
pids=()
step=0

say() { printf '\n\033[1m==> [%d] %s\033[0m\n' "$((++step))" "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\n\033[31mDEMO FAILED: %s\033[0m\n    logs: %s\n' "$*" "$work" >&2; KEEP=1; exit 1; }
ok() { printf '    \033[32mok\033[0m %s\n' "$*"; }

cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "work directory kept: $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3() { "$py" "$top/scripts/s3tool.py" "$endpoint" "$bucket" "$@"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}

pod_src=deploy/examples/pod.yaml
"$podrun" review --pod "$pod_src" >/dev/null # validates the manifest parses
bucket=$("$py" -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["annotations"]["s3.mount/bucket"])' "$pod_src")
secret_name=$("$py" -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["annotations"]["s3.mount/secret"])' "$pod_src")

say "Start a real S3 server on loopback (rclone serve s3) and seed bucket '$bucket'"
read -r endpoint s3pid < <(bash scripts/s3-server.sh "$work/s3-data" "$work/s3-server.log")
pids+=("$s3pid")
info "endpoint $endpoint"
s3 mb
mkdir -p "$work/seed/docs/with spaces"
printf 'hello from S3\n' >"$work/seed/hello.txt"
head -c 3145728 /dev/urandom >"$work/seed/docs/blob.bin"
printf 'a,b\n1,2\n' >"$work/seed/docs/with spaces/table #1.csv"
(cd "$work/seed" && find . -type f | sed 's|^\./||' | sort) | while read -r key; do
  s3 put "$key" "$work/seed/$key"
done
s3 ls | sed 's/^/    /'

say "Generate the webhook's serving certificate with s3mount-certs"
ca_bundle=$("$bin/s3mount-certs" --service s3mount-webhook --namespace s3mount --out-dir "$work/certs" \
  --san 127.0.0.1 --san localhost)
info "wrote $work/certs/{ca.crt,tls.crt,tls.key}; caBundle is ${#ca_bundle} base64 characters"

say "Start the webhook over TLS (no Kubernetes API here)"
wport=$(free_port)
hport=$(free_port)
"$bin/s3mount-webhook" --listen "127.0.0.1:$wport" --health-listen "127.0.0.1:$hport" \
  --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --sidecar-image s3mount/sidecar:dev --sidecar-mode native >"$work/webhook.log" 2>&1 &
pids+=("$!")
wait_for 30 "the webhook's /readyz" curl -sf "http://127.0.0.1:$hport/readyz"
info "https://127.0.0.1:$wport/mutate answering; health on http://127.0.0.1:$hport"

say "Send the webhook a real AdmissionReview for $pod_src"
# The example pod points at the MinIO of deploy/examples; here the S3 server is on loopback.
"$py" - "$pod_src" "$endpoint" >"$work/pod.json" <<'PY'
import json, sys, yaml
pod = yaml.safe_load(open(sys.argv[1]))
pod["metadata"]["annotations"]["s3.mount/endpoint"] = sys.argv[2]
print(json.dumps(pod))
PY
"$podrun" review --pod "$work/pod.json" --namespace demo >"$work/review.json"
curl -sS --fail-with-body --cacert "$work/certs/ca.crt" -H 'Content-Type: application/json' \
  --data-binary @"$work/review.json" "https://127.0.0.1:$wport/mutate" >"$work/response.json" ||
  fail "the webhook did not answer the review"
allowed=$(jq -r .response.allowed "$work/response.json")
[ "$allowed" = true ] || fail "the webhook denied the example pod: $(jq -r .response.status.message "$work/response.json")"
jq -r .response.patch "$work/response.json" | base64 -d | jq -r '.[] | "    \(.op) \(.path)"'
ok "allowed, with a JSON patch"

say "Apply the patch: the mutated pod"
"$podrun" apply-review --pod "$work/pod.json" --review "$work/response.json" >"$work/mutated.json"
jq -r '.spec.initContainers[]? | "    init container \(.name) image=\(.image) restartPolicy=\(.restartPolicy // "-")"' "$work/mutated.json"
jq -r '.spec.containers[] | .name as $n | .volumeMounts[]? | "    \($n): \(.name) at \(.mountPath) propagation=\(.mountPropagation // "None")"' "$work/mutated.json"
jq -r '.spec.initContainers[]? | .name as $n | .volumeMounts[]? | "    \($n): \(.name) at \(.mountPath) propagation=\(.mountPropagation // "None")"' "$work/mutated.json"
"$podrun" review --pod "$work/mutated.json" --namespace demo >"$work/review2.json"
curl -sS --fail-with-body --cacert "$work/certs/ca.crt" -H 'Content-Type: application/json' \
  --data-binary @"$work/review2.json" "https://127.0.0.1:$wport/mutate" >"$work/response2.json"
[ "$(jq -r '.response.patch // ""' "$work/response2.json")" = "" ] || fail "a second pass produced a patch"
ok "sending the mutated pod again yields no patch"

cat >"$work/secret.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: $secret_name, namespace: demo}
stringData: {AWS_ACCESS_KEY_ID: $AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: $AWS_SECRET_ACCESS_KEY}
EOF

run_pod() { # run_pod MANIFEST NODE_DIR LOG  (in the background; its pid is $!)
  "$podrun" run --pod "$1" --state-dir "$2" --namespace demo --secret "$work/secret.yaml" \
    --image "s3mount/sidecar:dev=$bin/s3mount-sidecar" \
    --path-map "/usr/local/bin/s3mount-sidecar=$bin/s3mount-sidecar" >"$3" 2>&1 &
}

say "Run the mutated pod like a kubelet: sidecar first (startup probe), then the app"
node=$work/node
run_pod "$work/mutated.json" "$node" "$work/pod.log"
prpid=$!
pids+=("$prpid")
wait_for 60 "the app to finish its work" grep -q 'app: done' "$work/pod.log"
grep -E '^\[(podrun|app)\]' "$work/pod.log" | sed 's/^/    /'

say "Check what the app read: exact bytes of every seeded object"
(cd "$work/seed" && find . -type f | sed 's|^\./||') | while read -r key; do
  want=$(sha256sum "$work/seed/$key" | cut -d' ' -f1)
  grep -qF "$want  /mnt/s3/$key" "$work/pod.log" || fail "the app did not read $key with its exact bytes"
  ok "$key sha256 $want"
done
grep -q 'app: hello.txt says: hello from S3' "$work/pod.log" || fail "the app did not print hello.txt"

say "Check the app's write with a direct S3 request (not through the mount)"
got=$(s3 get written-by-app.txt | od -An -c | tr -s ' ')
want=$(printf 'hello from the app\n' | od -An -c | tr -s ' ')
[ "$got" = "$want" ] || fail "written-by-app.txt in S3 is '$got', expected '$want'"
ok "written-by-app.txt is in the bucket with exact bytes"

# Kept for the security test, which greps every *.log here for the secret key: the metrics of
# both binaries and the annotations of the mutated pod.
curl -s "http://127.0.0.1:9810/metrics" >"$work/sidecar-metrics.log" || true
curl -s "http://127.0.0.1:$hport/metrics" >"$work/webhook-metrics.log" || true
jq '.metadata.annotations' "$work/mutated.json" >"$work/pod-annotations.log"

say "kubectl-exec into the app: read the file back through the mount"
out=$("$podrun" exec --state-dir "$node" --container app -- cat /mnt/s3/written-by-app.txt)
[ "$out" = "hello from the app" ] || fail "exec read '$out'"
ok "app reads back '$out'"

say "SIGKILL the sidecar: the restarted sidecar mounts over the dead mount and the app sees the bucket again"
spid=$("$podrun" pid --state-dir "$node" --container s3mount-sidecar)
kill -KILL "$spid"
info "killed sidecar pid $spid"
wait_for 30 "the sidecar to be restarted" grep -q 'restarting container s3mount-sidecar' "$work/pod.log"
wait_for 30 "the app to see the bucket again" "$podrun" exec --state-dir "$node" --container app -- cat /mnt/s3/hello.txt
ok "app reads hello.txt again: $("$podrun" exec --state-dir "$node" --container app -- cat /mnt/s3/hello.txt)"

say "Delete the pod: SIGTERM, grace period, clean unmount"
kill -TERM "$prpid"
rc=0
wait "$prpid" || rc=$?
grep -E '^\[podrun\]' "$work/pod.log" | tail -n 8 | sed 's/^/    /'
[ $rc -eq 0 ] || fail "the pod did not stop cleanly (podrun exit $rc)"
status=$(find "$node/pods" -name status.json | head -n1)
[ "$(jq -r '.mountsLeft | length' "$status")" = 0 ] || fail "mounts left: $(jq -c .mountsLeft "$status")"
[ "$(jq -r '.containers["s3mount-sidecar"].exitCode' "$status")" = 0 ] || fail "the sidecar did not exit 0"
if findmnt -rn -o TARGET | grep -qF "$work"; then fail "a mount leaked into the machine's namespace"; fi
ok "sidecar exited 0; no mount left under the node directory or on the machine"

say "Negative control: the same pod without HostToContainer on the app's mount"
jq '(.spec.containers[] | select(.name == "app") | .volumeMounts[]? | select(.mountPropagation == "HostToContainer")) |= del(.mountPropagation)' \
  "$work/mutated.json" >"$work/no-propagation.json"
node2=$work/node2
run_pod "$work/no-propagation.json" "$node2" "$work/pod2.log"
prpid2=$!
pids+=("$prpid2")
wait_for 60 "the app to finish its work" grep -q 'app: done' "$work/pod2.log"
info "at start the app's recursive bind copied the mount that already existed; now restart the sidecar"
spid=$("$podrun" pid --state-dir "$node2" --container s3mount-sidecar)
kill -KILL "$spid"
wait_for 30 "the sidecar to be restarted" grep -q 'restarting container s3mount-sidecar' "$work/pod2.log"
wait_for 30 "the restarted sidecar to serve" "$podrun" exec --state-dir "$node2" --container s3mount-sidecar -- \
  "$bin/s3mount-sidecar" probe --mountpoint=/s3mount/mnt/default
if "$podrun" exec --state-dir "$node2" --container app -- cat /mnt/s3/hello.txt >"$work/neg.out" 2>&1; then
  fail "without propagation the app still sees the new mount: the check above would prove nothing"
fi
info "app: $(head -c 200 "$work/neg.out")"
ok "without HostToContainer the app does not see the remounted bucket"
kill -TERM "$prpid2"
wait "$prpid2" || true

printf '\n\033[1;32mDEMO PASSED\033[0m: the app read and wrote bucket %s through the s3mount sidecar.\n' "$bucket"
