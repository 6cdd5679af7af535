#!/usr/bin/env bash
# Installs the standard filesystem suites run on the mount: fsx and pjdfstest (crates.io),
# into .tools/bin. Idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
root=$top/.tools
for tool in fsx:0.3.2 pjdfstest:0.2.2; do
  name=${tool%%:*}
  version=${tool#*:}
  if [ -x "$root/bin/$name" ] && [ "$(cat "$root/.$name.version" 2>/dev/null)" = "$version" ]; then
    continue
  fi
  echo "setup: cargo install $name@$version"
  cargo install --quiet --locked --root "$root" "$name@$version" ||
    cargo install --quiet --root "$root" "$name@$version"
  echo "$version" >"$root/.$name.version"
done
