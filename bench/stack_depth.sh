#!/usr/bin/env bash
# BPF time per sample by user stack depth: the agent's table-driven walk
# against bpftrace's frame-pointer walk (the kernel's), sampling the same
# two busy CPUs in the same run. Workloads built with frame pointers, so
# bpftrace walks them whole too: tests/workloads/fp_chain.c (7 frames), then
# bench/recursion.c at 40 and 100 frames. The slope between depths is the
# cost of a frame; the rest is the cost of a sample.
# Usage (root): bench/stack_depth.sh [SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
for tool in bpftrace clang; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
clang -O2 -fno-omit-frame-pointer -fno-optimize-sibling-calls -o "$work/recursion" bench/recursion.c
echo "kernel $(uname -r), $(nproc) CPUs, 19 Hz, ${seconds}s per phase"
phase "7 frames (fp_chain)" "$work/busy" 100000
phase "~46 frames (depth 40)" "$work/recursion" 100000 40
phase "~106 frames (depth 100)" "$work/recursion" 100000 100
