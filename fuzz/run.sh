#!/usr/bin/env bash
# Runs the fuzz targets (cargo fuzz, nightly), each for SECONDS on its
# committed seeds (fuzz/seeds/TARGET, read only) plus a work corpus
# (fuzz/corpus/TARGET, not committed); a crash stops the script with the
# input under fuzz/artifacts/TARGET — fix it, and commit the input under
# fuzz/regressions/TARGET: the stable test suite replays seeds and
# regressions through the same code (fuzz-harness/tests/seeds.rs).
# Usage: fuzz/run.sh [SECONDS=60] [TARGET...]   (default: every target)
# Figures (executions, coverage) are printed as each target ends.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
  [ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets listed"; exit 1; }
fi
# Safe Rust: panics, overflow (debug assertions), timeouts and memory are
# what is looked for; no sanitizer, so a build is minutes, not tens.
flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  log=$(mktemp)
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    grep -m5 -A3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || tail -40 "$log"
    echo "fuzz target $t failed; the input is under fuzz/artifacts/$t"
    exit 1
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  printf '%-14s %5ss  %10s runs  %s\n' "$t" "$seconds" "$runs" "$cov"
  rm -f "$log"
done
