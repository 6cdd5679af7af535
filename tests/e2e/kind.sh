#!/usr/bin/env bash
# The kind end-to-end suite (`make e2e-kind`): a real Kubernetes in Docker, the real images, the
# self-signed overlay, MinIO from deploy/examples, and every check of issue 5.
#
# Needs docker (with a running engine), kind and kubectl on PATH. It creates the cluster
# $S3MOUNT_E2E_CLUSTER (default s3mount-e2e), and deletes it at the end unless S3MOUNT_E2E_KEEP=1.
# On failure it writes logs, events and descriptions to $S3MOUNT_E2E_ARTIFACTS (default: a new
# directory under /tmp, printed at the end). KIND_NODE_IMAGE selects the Kubernetes version.
# It cannot run on a machine without a container engine; static-checks.sh shellchecks it there.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

cluster=${S3MOUNT_E2E_CLUSTER:-s3mount-e2e}
keep=${S3MOUNT_E2E_KEEP:-0}
artifacts=${S3MOUNT_E2E_ARTIFACTS:-$(mktemp -d /tmp/s3mount-e2e.XXXXXX)}
tag=e2e
demo_ns=s3mount-demo
plain_ns=s3mount-e2e-plain
# Must match deploy/examples/secret.yaml; used to prove no credential reaches a log.
secret_value=s3mount-demo-secret
work=$(mktemp -d)
passed=0
failed=0
failures=()

log() { printf '\n== %s\n' "$*"; }
pass() { passed=$((passed + 1)); echo "kind-e2e: ok   $*"; }
fail() { failed=$((failed + 1)); failures+=("$*"); echo "kind-e2e: FAIL $*"; }
k() { kubectl --context "kind-$cluster" "$@"; }
kd() { k -n "$demo_ns" "$@"; }

# retry SECONDS CMD...: runs CMD every 2 s until it succeeds or SECONDS pass.
retry() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is not installed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "kind-e2e: no Docker engine answers (docker info failed)" >&2; exit 1; }

collect() {
  log "collecting logs and events into $artifacts"
  k get all,mutatingwebhookconfiguration,secrets -A -o wide >"$artifacts/objects.txt" 2>&1 || true
  k get events -A --sort-by=.lastTimestamp >"$artifacts/events.txt" 2>&1 || true
  for ns in s3mount "$demo_ns" "$plain_ns"; do
    k -n "$ns" describe pods >"$artifacts/describe-$ns.txt" 2>&1 || true
    for pod in $(k -n "$ns" get pods -o name 2>/dev/null); do
      out="$artifacts/logs-$ns-${pod#pod/}.txt"
      k -n "$ns" logs "$pod" --all-containers --prefix >"$out" 2>&1 || true
      k -n "$ns" logs "$pod" --all-containers --prefix --previous >>"$out" 2>/dev/null || true
    done
  done
}

cleanup() {
  local rc=$?
  if [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; then
    collect
  fi
  if [ "$keep" = 1 ]; then
    echo "kind-e2e: keeping cluster $cluster (S3MOUNT_E2E_KEEP=1)"
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  echo "kind-e2e: artifacts in $artifacts"
}
trap cleanup EXIT

log "create kind cluster $cluster (1 control plane, 2 workers)"
cat >"$work/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
YAML
kind_args=(--name "$cluster" --config "$work/kind.yaml" --wait 120s)
[ -n "${KIND_NODE_IMAGE:-}" ] && kind_args+=(--image "$KIND_NODE_IMAGE")
kind create cluster "${kind_args[@]}"

log "build and load the images"
docker build -f Dockerfile.webhook -t "s3mount/webhook:$tag" .
docker build -f Dockerfile.sidecar -t "s3mount/sidecar:$tag" .
kind load docker-image --name "$cluster" "s3mount/webhook:$tag" "s3mount/sidecar:$tag"

log "install the self-signed overlay"
kubectl kustomize deploy/overlays/self-signed >"$work/install.yaml"
sed -i -e "s|s3mount/webhook:0.1.0|s3mount/webhook:$tag|" -e "s|s3mount/sidecar:0.1.0|s3mount/sidecar:$tag|" \
  "$work/install.yaml"
grep -q "image: s3mount/webhook:$tag" "$work/install.yaml" || {
  echo "kind-e2e: webhook image not retagged" >&2
  exit 1
}
grep -q -- "--sidecar-image=s3mount/sidecar:$tag" "$work/install.yaml" || {
  echo "kind-e2e: sidecar image not retagged" >&2
  exit 1
}
k apply -f "$work/install.yaml"
k -n s3mount rollout status deploy/s3mount-webhook --timeout=180s
ca_bundle_set() {
  [ -n "$(k get mutatingwebhookconfiguration s3mount -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]
}
if retry 60 ca_bundle_set; then
  pass "self-signed: the webhook patched its caBundle"
else
  fail "caBundle never set"
fi
nodes=$(k -n s3mount get pods -l app.kubernetes.io/component=webhook -o jsonpath='{.items[*].spec.nodeName}')
if [ "$(tr ' ' '\n' <<<"$nodes" | sort -u | wc -l)" -ge 2 ]; then
  pass "webhook replicas run on different nodes ($nodes)"
else
  fail "webhook replicas are not spread across nodes ($nodes)"
fi

log "MinIO and the seeded bucket"
k apply -f deploy/examples/namespace.yaml
k apply -f deploy/examples/secret.yaml -f deploy/examples/minio.yaml
kd rollout status deploy/minio --timeout=180s
kd wait --for=condition=complete job/minio-seed --timeout=180s
# mc_cat KEY: the object's bytes as MinIO has them (not through s3mount).
mc_cat() {
  # shellcheck disable=SC2016 # expanded by the shell inside the MinIO container
  kd exec deploy/minio -- sh -c 'export HOME=/tmp
    mc alias set local http://127.0.0.1:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null &&
    mc cat "local/demo/$1"' \
    sh "$1"
}
if [ "$(mc_cat hello.txt)" = "hello from s3mount" ]; then
  pass "bucket demo seeded"
else
  fail "seed missing"
fi

has_sidecar() { # has_sidecar NS POD: the pod spec carries the injected native sidecar
  k -n "$1" get pod "$2" -o jsonpath='{.spec.initContainers[*].name}' | tr ' ' '\n' | grep -qx s3mount-sidecar
}

log "check: an annotated Pod reads seeded objects and writes a new one"
kd apply -f deploy/examples/pod.yaml
app_done() { kd logs s3mount-example -c app | grep -q 'app: done'; }
if has_sidecar "$demo_ns" s3mount-example && retry 180 app_done; then
  if kd logs s3mount-example -c app | grep -q 'hello.txt says: hello from s3mount' &&
    [ "$(mc_cat written-by-app.txt)" = "hello from the app" ]; then
    pass "pod read hello.txt and wrote written-by-app.txt (checked in MinIO)"
  else
    fail "pod did not read the seed or its write is not in MinIO"
  fi
else
  fail "annotated pod has no sidecar or never finished its work"
fi

log "check: killing the sidecar process recovers the mount"
sidecar_status='{.status.initContainerStatuses[?(@.name=="s3mount-sidecar")]'
cid=$(kd get pod s3mount-example -o jsonpath="$sidecar_status.containerID}")
node=$(kd get pod s3mount-example -o jsonpath='{.spec.nodeName}')
restarts_before=$(kd get pod s3mount-example -o jsonpath="$sidecar_status.restartCount}")
pid=$(docker exec "$node" crictl inspect --output go-template --template '{{.info.pid}}' "${cid#*://}" \
  2>/dev/null || true)
restarted() {
  local now
  now=$(kd get pod s3mount-example -o jsonpath="$sidecar_status.restartCount}")
  [ "$now" -gt "$restarts_before" ]
}
app_reads() { kd exec s3mount-example -c app -- cat /mnt/s3/hello.txt | grep -q 'hello from s3mount'; }
if [ -n "$pid" ] && docker exec "$node" kill -9 "$pid" && retry 90 restarted && retry 90 app_reads; then
  pass "sidecar SIGKILLed (pid $pid on $node): restarted and the app reads the mount again"
else
  fail "the app did not see the mount again after the sidecar was killed (pid '${pid}')"
fi

log "check: deleting a pod finishes within its grace period and leaves no mount"
uid=$(kd get pod s3mount-example -o jsonpath='{.metadata.uid}')
grace=$(kd get pod s3mount-example -o jsonpath='{.spec.terminationGracePeriodSeconds}')
start=$SECONDS
kd delete pod s3mount-example --wait=true --timeout="$((grace + 30))s"
took=$((SECONDS - start))
left=$(docker exec "$node" grep -c "$uid" /proc/self/mountinfo || true)
if [ "$took" -le "$((grace + 5))" ] && [ "${left:-0}" -eq 0 ]; then
  pass "pod deleted in ${took}s (grace ${grace}s), no mount of pod $uid left on $node"
else
  fail "pod deletion took ${took}s (grace ${grace}s) or left ${left} mounts of pod $uid on $node"
fi

log "check: a Deployment's pods (generateName) get the sidecar"
kd apply -f deploy/examples/deployment.yaml
if kd rollout status deploy/s3mount-example-web --timeout=180s; then
  all=1
  for pod in $(kd get pods -l app=s3mount-example-web -o jsonpath='{.items[*].metadata.name}'); do
    has_sidecar "$demo_ns" "$pod" || all=0
  done
  if [ "$all" = 1 ]; then
    pass "every Deployment pod has the sidecar and serves hello.txt from S3 (ready)"
  else
    fail "a Deployment pod has no sidecar"
  fi
else
  fail "the example Deployment never became ready"
fi

log "check: a Job completes"
kd apply -f deploy/examples/job.yaml
if kd wait --for=condition=complete job/s3mount-example-job --timeout=240s &&
  [ "$(mc_cat jobs/report.txt | wc -l)" -eq 1000 ]; then
  pass "the Job completed and its report (1000 lines) is in MinIO"
else
  fail "the Job did not complete or its report is not in MinIO"
fi

log "check: a pod in an unlabelled namespace is left untouched"
k create namespace "$plain_ns" --dry-run=client -o yaml | k apply -f -
cat >"$work/plain-pod.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: untouched
  namespace: $plain_ns
  annotations: {s3.mount/bucket: demo}
spec:
  restartPolicy: Never
  containers: [{name: app, image: busybox:1.36, command: [sleep, "1"]}]
YAML
k apply -f "$work/plain-pod.yaml"
names='{.spec.initContainers[*].name} {.spec.containers[*].name} {.spec.volumes[*].name}'
containers=$(k -n "$plain_ns" get pod untouched -o jsonpath="$names")
if grep -q s3mount <<<"$containers"; then
  fail "pod in an unlabelled namespace was mutated ($containers)"
else
  pass "pod in an unlabelled namespace has no s3mount container or volume"
fi

log "check: a pod with a bad annotation is rejected with the webhook's message"
cat >"$work/bad-pod.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: bad-annotation
  namespace: $demo_ns
  annotations: {s3.mount/bucket: demo, s3.mount/read-only: "yes"}
spec:
  containers: [{name: app, image: busybox:1.36, command: [sleep, "1"]}]
YAML
if k apply -f "$work/bad-pod.yaml" >"$work/bad.out" 2>&1; then
  fail "a pod with s3.mount/read-only: yes was admitted"
elif grep -q 'denied the request' "$work/bad.out" && grep -q 's3.mount/read-only' "$work/bad.out"; then
  pass "bad annotation refused: $(grep -o 'denied the request.*' "$work/bad.out" | head -c 160)"
else
  fail "bad annotation refused, but not with the webhook's message: $(cat "$work/bad.out")"
fi

log "check: the webhook keeps answering while one replica is deleted"
# Server-side dry runs go through the mutating webhook (sideEffects None) without creating pods.
probe_loop() {
  local end=$((SECONDS + 40)) n=0 bad=0 out
  while [ "$SECONDS" -lt "$end" ]; do
    n=$((n + 1))
    if out=$(kd create --dry-run=server -f deploy/examples/pod.yaml \
      -o jsonpath='{.spec.initContainers[*].name}' 2>&1) &&
      grep -qw s3mount-sidecar <<<"$out"; then :; else
      bad=$((bad + 1))
      echo "request $n: $out" >>"$work/loop-errors.txt"
    fi
  done
  echo "$n $bad" >"$work/loop.txt"
}
probe_loop &
loop_pid=$!
sleep 8
victim=$(k -n s3mount get pods -l app.kubernetes.io/component=webhook -o jsonpath='{.items[0].metadata.name}')
k -n s3mount delete pod "$victim" --wait=false
wait "$loop_pid"
read -r total errors <"$work/loop.txt"
if [ "$errors" -eq 0 ] && [ "$total" -gt 10 ]; then
  pass "$total admission requests while $victim was deleted: 0 errors"
else
  fail "$errors of $total admission requests failed while $victim was deleted:" \
    "$(head -3 "$work/loop-errors.txt" 2>/dev/null)"
fi

log "check: no credential in logs or events"
collect
if grep -rl -- "$secret_value" "$artifacts" >"$work/leaks.txt"; then
  fail "the secret access key appears in: $(tr '\n' ' ' <"$work/leaks.txt")"
else
  pass "the secret access key appears in no log, event or description"
fi

echo
echo "kind-e2e: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  printf 'kind-e2e: failed: %s\n' "${failures[@]}"
  exit 1
fi
