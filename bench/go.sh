#!/usr/bin/env bash
# Go binaries without DWARF: time to read .gopclntab and build unwind rows,
# and symbolization speed against `go tool addr2line` on the same distinct
# addresses in the same run.
# Usage: bench/go.sh [FILE=the current Go toolchain's compile] [COUNT=100000]
# FILE needs a symbol table to pick addresses from (nm); neither side uses
# it: `go tool addr2line` and ours both read .gopclntab.
set -euo pipefail
cd "$(dirname "$0")/.."
goroot=$(/opt/agent-test-go/venv/bin/go env GOROOT)
file=${1:-$goroot/pkg/tool/linux_amd64/compile}
count=${2:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p agent-processor-symbolize --example symbolize_file
bench/pick_addresses.py "$file" "$count" > "$work/addresses"
now() { date +%s.%N; }
echo "file: $file ($(du -h "$file" | cut -f1)), $(wc -l < "$work/addresses") distinct addresses"
AGENT_UNWIND_BENCH_FILE=$file cargo bench -q -p agent-unwind-table --bench compile 2>&1 |
  grep -E "functions|time:" | sed 's/^/rows: /'
ours=$(./target/release/examples/symbolize_file "$file" < "$work/addresses" 2>&1 >/dev/null)
echo "ours: $ours"
cold=$(sed -E 's/.*cold ([0-9.]+) s.*/\1/' <<<"$ours")
warm=$(sed -E 's/.*warm ([0-9.]+) s.*/\1/' <<<"$ours")
t0=$(now); /opt/agent-test-go/venv/bin/go tool addr2line "$file" < "$work/addresses" > /dev/null; t1=$(now)
go=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
echo "go tool addr2line: $go s"
python3 -c "print(f'go tool addr2line / ours: {$go / $cold:.1f}x cold, {$go / $warm:.1f}x warm')"
