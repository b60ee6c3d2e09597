#!/usr/bin/env bash
# Symbolization speed against llvm-symbolizer and binutils addr2line, on the
# same distinct addresses in the same run.
# Usage: bench/symbolize.sh [FILE=the toolchain's librustc_driver] [COUNT=100000]
# Picks COUNT distinct addresses inside the file's functions (fixed seed),
# then times: ours cold (open, parse, look up) and warm (look up again, parsed
# file kept, per-address memo cleared), memo (again, as a running agent sees
# addresses it named before), `llvm-symbolizer --obj=FILE` and
# `addr2line -f -i -C -e FILE` (each one process, cold), and llvm-symbolizer's
# warm pass (one process fed the list twice, minus the single run).
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-$(ls "$(rustc --print sysroot)"/lib/librustc_driver-*.so | head -1)}
count=${2:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p agent-processor-symbolize --example symbolize_file
bench/pick_addresses.py "$file" "$count" > "$work/addresses"
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

echo "file: $file ($(du -h "$file" | cut -f1)), $(wc -l < "$work/addresses") distinct addresses"
ours=$(./target/release/examples/symbolize_file "$file" < "$work/addresses" 2>&1 >/dev/null)
echo "ours: $ours"
cold=$(sed -E 's/.*cold ([0-9.]+) s.*/\1/' <<<"$ours")
warm=$(sed -E 's/.*warm ([0-9.]+) s.*/\1/' <<<"$ours")
memo=$(sed -E 's/.*memo ([0-9.]+) s.*/\1/' <<<"$ours")
t0=$(now); llvm-symbolizer --obj="$file" < "$work/addresses" > /dev/null; t1=$(now)
llvm=$(elapsed "$t0" "$t1")
# llvm-symbolizer warm: the second pass of one process fed the list twice.
cat "$work/addresses" "$work/addresses" > "$work/twice"
t0=$(now); llvm-symbolizer --obj="$file" < "$work/twice" > /dev/null; t1=$(now)
llvm_warm=$(python3 -c "print(f'{max($(elapsed "$t0" "$t1") - $llvm, 0.001):.3f}')")
t0=$(now); addr2line -f -i -C -e "$file" < "$work/addresses" > /dev/null; t1=$(now)
binutils=$(elapsed "$t0" "$t1")
echo "llvm-symbolizer: $llvm s (warm pass $llvm_warm s)   binutils addr2line: $binutils s"
python3 -c "
c, w, m, l, lw, b = $cold, $warm, $memo, $llvm, $llvm_warm, $binutils
print(f'llvm-symbolizer / ours: {l / c:.1f}x cold, {lw / w:.1f}x warm (its warm pass / ours), {lw / m:.1f}x memo')
print(f'addr2line / ours:       {b / c:.1f}x cold, {b / w:.1f}x warm, {b / m:.1f}x memo')"
