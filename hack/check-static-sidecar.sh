#!/usr/bin/env bash
# Builds quiesce-sidecar as a static executable and proves it is one.
#
# The sidecar copies itself into a volume the engine container runs it from,
# as its preStop hook; engine images have any libc or none at all, so the
# binary must not need a dynamic loader or shared libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the flag off build scripts and proc macros, which cannot be
# linked statically.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p quiesce-sidecar --target "$host"
bin="target/$host/release/quiesce-sidecar"

fail() { echo "check-static-sidecar: $*" >&2; exit 1; }
if readelf --program-headers "$bin" | grep -q 'INTERP'; then
    fail "$bin asks for a program interpreter (dynamic loader)"
fi
if readelf --dynamic "$bin" | grep -q 'NEEDED'; then
    fail "$bin needs shared libraries: $(readelf --dynamic "$bin" | grep NEEDED)"
fi
# It runs with no library search path at all.
env -i "$bin" --version >/dev/null || fail "$bin does not run"
echo "check-static-sidecar: $bin is static ($(du -h "$bin" | cut -f1)) and runs"
