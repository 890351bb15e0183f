#!/usr/bin/env bash
# Coverage-guided fuzzing of everything quiesce reads from outside, with
# cargo-fuzz (libFuzzer) on the stable toolchain (fuzz/, docs/fuzzing.md).
#
#   hack/fuzz.sh smoke            each target for a few seconds (CI)
#   hack/fuzz.sh run TARGET RUNS  one target for RUNS executions
#
# The corpus grows in target/fuzz-corpus/TARGET, seeded from fuzz/seeds/;
# a crash is written to fuzz/artifacts/TARGET/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(frame socket metrics load_json openai)
SMOKE_SECONDS="${SMOKE_SECONDS:-11}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz --version 0.13.2
fi
# cargo fuzz passes -Z flags to rustc; a stable rustc takes them so.
export RUSTC_BOOTSTRAP=1

run() {
  local target="$1"
  shift
  local corpus="target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  # No sanitizer: the stable toolchain ships no ASan runtime, and safe Rust
  # needs none. libFuzzer's limits catch unbounded allocation.
  cargo fuzz run --release --debug-assertions --sanitizer none "$target" "$corpus" "fuzz/seeds/$target" -- \
    -rss_limit_mb=1024 -malloc_limit_mb=256 -timeout=10 -print_final_stats=1 "$@"
}

case "${1:-smoke}" in
  smoke)
    cargo fuzz build --release --debug-assertions --sanitizer none
    for target in "${TARGETS[@]}"; do
      echo "==> fuzz $target for ${SMOKE_SECONDS} s"
      run "$target" -max_total_time="$SMOKE_SECONDS"
    done
    ;;
  run)
    run "$2" -runs="$3"
    ;;
  *)
    echo "usage: $0 [smoke | run TARGET RUNS]" >&2
    exit 2
    ;;
esac
