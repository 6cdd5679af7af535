#!/usr/bin/env bash
# The webhook under load and attack (issue 6), on loopback only:
#   a burst of 10,000 AdmissionReviews on 256 concurrent TLS connections (wrk): 0 errors;
#   the certificate files rotated 4 times during a load run: 0 failed requests;
#   an oversized body gets 413; a client that never finishes its headers, and one that never
#   finishes the TLS handshake, are disconnected within the configured timeouts.
# Prints one `webhook-load:` line per check; exits non-zero when any check fails.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
# shellcheck source=scripts/bin-dir.sh
. "$top/scripts/bin-dir.sh"
export PATH="$HOME/.cargo/bin:$PATH"
command -v wrk >/dev/null || { echo "webhook-load: wrk missing; run make setup" >&2; exit 1; }
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
ready=
for _ in $(seq 300); do
  if curl -sf "http://127.0.0.1:$hport/readyz" >/dev/null; then ready=1; break; fi
  kill -0 "$hook" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  state=$(kill -0 "$hook" 2>/dev/null && echo "is running but did not answer within 30 s" || echo "exited")
  echo "webhook-load: FAIL the webhook (https 127.0.0.1:$port, health 127.0.0.1:$hport) $state;" \
    "/readyz never answered 200. Its log:" >&2
  tail -n 40 "$work/webhook.log" >&2
  exit 1
fi
url="https://127.0.0.1:$port/mutate"
body=webhook/tests/fixtures/deployment-generatename.json
# wrk (Debian) with webhook/scripts/wrk-review.lua, which counts answers by status. wrk does not
# check certificates: the rotation swaps in a certificate of another CA on purpose, and trust is
# tested elsewhere (webhook/tests/tls.rs).
export WRK_BODY=$top/$body WRK_THREADS=2
# load OUT [wrk options]: runs wrk; with WRK_REQUESTS set, ends it once every thread has its share;
# with WRK_STOP set (a path), ends it once that file exists. The wrk timeout is generous: a debug
# build on a loaded machine may queue a request for seconds; the server's own 10 s request timeout
# still turns a slow answer into a non-200, which the checks count.
load() {
  local out=$1; shift
  local done_dir=$work/wrk-done
  rm -rf "$done_dir" && mkdir -p "$done_dir"
  WRK_DONE_DIR=$done_dir wrk -t"$WRK_THREADS" --timeout 30s -s webhook/scripts/wrk-review.lua "$@" "$url" >"$out" 2>&1 &
  local wrk_pid=$!
  if [ -n "${WRK_REQUESTS:-}${WRK_STOP:-}" ]; then
    while kill -0 "$wrk_pid" 2>/dev/null && ! load_done "$done_dir"; do sleep 0.1; done
    kill -INT "$wrk_pid" 2>/dev/null || true
  fi
  wait "$wrk_pid"
}
load_done() { # load_done DONE_DIR
  if [ -n "${WRK_STOP:-}" ]; then
    [ -e "$WRK_STOP" ]
  else
    [ "$(find "$1" -type f | wc -l)" -ge "$WRK_THREADS" ]
  fi
}
field() { sed -n "s/.*wrk-review: .*\b$2=\([0-9]*\).*/\1/p" "$1"; }

started=$SECONDS
WRK_REQUESTS=10000 load "$work/burst.txt" -c 256 -d 120s
ok200=$(field "$work/burst.txt" status200)
other_burst=$(field "$work/burst.txt" other)
sock_burst=$(field "$work/burst.txt" socket_errors)
errors=$((${other_burst:-1} + ${sock_burst:-1})) # a missing figure counts as an error
echo "webhook-load: burst of 10000 on 256 connections: ${ok200:-0} answered 200, $errors errors (status or socket)," \
  "$((SECONDS - started)) s"
check "burst: 10000 x 200, 0 errors" test "${ok200:-0}" -ge 10000 -a "$errors" = 0

# Successful certificate reloads so far (0 when the metric is missing or unreadable).
reloads() {
  local n
  n=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '/tls_reloads_total\{result="ok"\}/ {print $2}')
  n=${n%.*}
  echo "${n:-0}"
}
# Four rotations under load, alternating pairs. Each one is waited for (up to 30 s) until the
# 500 ms watcher has loaded it: on a loaded machine a late tick could otherwise see two swaps at
# once, and a swap back to the pair it still serves looks like no change at all.
rotation_started=$SECONDS
WRK_STOP=$work/rotation-stop load "$work/rotation.txt" -c 32 -d 300s &
loader=$!
for i in 1 2 3 4; do
  sleep 1.2
  pair=$([ $((i % 2)) = 1 ] && echo b || echo a)
  cp "$work/$pair/tls.crt" "$work/live/tls.crt.new" && cp "$work/$pair/tls.key" "$work/live/tls.key.new"
  mv "$work/live/tls.key.new" "$work/live/tls.key" && mv "$work/live/tls.crt.new" "$work/live/tls.crt"
  for _ in $(seq 300); do [ "$(reloads)" -ge "$i" ] && break; sleep 0.1; done
done
sleep 1.2 # load on the last certificate too
touch "$work/rotation-stop"
wait "$loader"
rot200=$(field "$work/rotation.txt" status200)
other=$(field "$work/rotation.txt" other)
roterr=$(field "$work/rotation.txt" socket_errors)
reloaded=$(reloads)
echo "webhook-load: $((SECONDS - rotation_started)) s under load with 4 certificate rotations: ${rot200:-0} answered" \
  "200, ${other:-?} other, ${roterr:-?} socket errors, TLS reloads ok: $reloaded"
check "rotation: 0 failed requests" test "${roterr:-1}" = 0 -a "${other:-1}" = 0 -a "${rot200:-0}" -gt 0
check "rotation: each of the 4 new certificates was loaded" test "$reloaded" -ge 4

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
