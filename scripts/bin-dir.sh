# Sourced by the project's scripts, with $top set to the top of the repository: sets $target to
# cargo's target directory (CARGO_TARGET_DIR, a relative one taken from $top, else target/) and
# $bin to where `cargo build --workspace --bins` puts the debug binaries (S3MOUNT_BIN_DIR
# overrides it).
# shellcheck shell=bash disable=SC2034,SC2154 # $top comes from, and $bin goes to, the sourcing script
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$top/$target ;; esac
bin=${S3MOUNT_BIN_DIR:-$target/debug}
