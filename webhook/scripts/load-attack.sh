#!/usr/bin/env bash
# The webhook under load and attack (issue 6), on loopback only:
#   a burst of 10,000 AdmissionReviews on 256 concurrent TLS connections: 0 errors;
#   the certificate files rotated 4 times during a load run: 0 failed requests;
#   an oversized body gets 413; a client that never finishes its headers, and one that never
#   finishes the TLS handshake, are disconnected within the configured timeouts.
# Prints one `webhook-load:` line per check; exits non-zero when any check fails.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
bin=${S3MOUNT_BIN_DIR:-$top/target/debug}
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || { echo "webhook-load: oha missing; run make setup" >&2; exit 1; }
work=$(mktemp -d /tmp/s3mount-webhook-load.XXXXXX)
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
failures=0
check() { # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then echo "webhook-load: ok   $name"; else echo "webhook-load: FAIL $name"; failures=$((failures + 1)); fi
}

for pair in a b; do
  "$bin/s3mount-certs" --out-dir "$work/$pair" --san 127.0.0.1 --san localhost >/dev/null 2>&1
done
mkdir -p "$work/live"
cp "$work/a/tls.crt" "$work/a/tls.key" "$work/live/"
port=$(free_port)
hport=$(free_port)
"$bin/s3mount-webhook" --listen="127.0.0.1:$port" --health-listen="127.0.0.1:$hport" \
  --tls-cert="$work/live/tls.crt" --tls-key="$work/live/tls.key" --tls-reload-interval=500ms \
  --kube-api=off --sidecar-mode=native --sidecar-image=s3mount/sidecar:load --log-level=warn \
  >"$work/webhook.log" 2>&1 &
hook=$!
pids+=("$hook")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hport/readyz" >/dev/null && break; sleep 0.1; done
url="https://127.0.0.1:$port/mutate"
body=webhook/tests/fixtures/deployment-generatename.json
# --insecure: the rotation swaps in a certificate of another CA on purpose; trust is tested elsewhere.
load() { oha --no-tui --insecure -m POST -T application/json -D "$body" --output-format json "$@" "$url"; }

burst=$(load -n 10000 -c 256)
ok200=$(jq '.statusCodeDistribution["200"] // 0' <<<"$burst")
errors=$(jq '[.errorDistribution[]?] | add // 0' <<<"$burst")
rps=$(jq '.summary.requestsPerSec | floor' <<<"$burst")
echo "webhook-load: burst of 10000 on 256 connections: $ok200 answered 200, $errors errors, $rps req/s"
check "burst: 10000 x 200, 0 errors" test "$ok200" = 10000 -a "$errors" = 0

load -z 6s -c 32 >"$work/rotation.json" &
loader=$!
for i in 1 2 3 4; do
  sleep 1.2
  pair=$([ $((i % 2)) = 1 ] && echo b || echo a)
  cp "$work/$pair/tls.crt" "$work/live/tls.crt.new" && cp "$work/$pair/tls.key" "$work/live/tls.key.new"
  mv "$work/live/tls.key.new" "$work/live/tls.key" && mv "$work/live/tls.crt.new" "$work/live/tls.crt"
done
wait "$loader"
total=$(jq '.summary.successRate' "$work/rotation.json")
rot200=$(jq '.statusCodeDistribution["200"] // 0' "$work/rotation.json")
# oha cancels the requests still in flight when -z ends ("aborted due to deadline"): not failures.
roterr=$(jq '[.errorDistribution | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0' "$work/rotation.json")
jq -r '.errorDistribution | to_entries[] | "webhook-load:   oha error: \(.key): \(.value)"' "$work/rotation.json"
other=$(jq '[.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0' "$work/rotation.json")
reloads=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '/tls_reloads_total\{result="ok"\}/ {print $2}')
echo "webhook-load: 6 s under load with 4 certificate rotations: $rot200 answered 200, $other other, $roterr errors, success rate $total, TLS reloads ok: ${reloads:-0}"
check "rotation: 0 failed requests" test "$roterr" = 0 -a "$other" = 0 -a "$rot200" -gt 0
check "rotation: the new certificates were loaded" test "${reloads%.*}" -ge 3

head -c $((5 * 1024 * 1024)) /dev/zero | tr '\0' 'x' >"$work/big.json"
code=$(curl -sk -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$work/big.json" "$url" || true)
after=$(curl -sk -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$body" "$url" || true)
echo "webhook-load: a 5 MiB body gets HTTP $code (000: refused before it was all sent); the next request gets $after"
check "oversized body: refused (413 or cut off), the webhook keeps answering" \
  test \( "$code" = 413 -o "$code" = 000 \) -a "$after" = 200

# How long the server keeps a connection that stalls: MODE tls = TLS done, half the headers sent;
# MODE tcp = no TLS handshake at all. Prints the seconds until the server closed it.
stall() {
  timeout 60 python3 - "$port" "$1" <<'PY2'
import socket, ssl, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
start = time.monotonic()
raw = socket.create_connection(("127.0.0.1", port))
raw.settimeout(50)
conn = raw
if mode == "tls":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = ctx.wrap_socket(raw, server_hostname="localhost")
    conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
try:
    while conn.recv(4096):
        pass
except (OSError, ssl.SSLError):
    pass
print(int(time.monotonic() - start))
PY2
}
slow=$(stall tls)
echo "webhook-load: a client that never finishes its headers was cut off after ${slow} s"
check "slow client: cut off within 15 s" test "$slow" -lt 15
idle=$(stall tcp)
echo "webhook-load: a connection that never starts TLS was closed after ${idle} s"
check "idle connection: closed within 15 s" test "$idle" -lt 15

kill -0 "$hook" 2>/dev/null
check "the webhook is still running" kill -0 "$hook"
[ "$failures" = 0 ]
