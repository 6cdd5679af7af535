#!/usr/bin/env bash
# Starts `rclone serve s3` on a free loopback port, serving a fresh directory, and prints
# `ENDPOINT PID` once it answers. Credentials: $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY.
# Usage: s3-server.sh DATA_DIR LOG_FILE
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
data=$1
log=$2
mkdir -p "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$top/.venv/bin/rclone" serve s3 --addr "127.0.0.1:$port" \
  --auth-key "$AWS_ACCESS_KEY_ID,$AWS_SECRET_ACCESS_KEY" --no-cleanup "$data" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "http://127.0.0.1:$port $pid"
    exit 0
  fi
  sleep 0.1
done
echo "rclone serve s3 did not start; see $log" >&2
kill "$pid" 2>/dev/null || true
exit 1
