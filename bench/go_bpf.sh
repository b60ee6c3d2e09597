#!/usr/bin/env bash
# What Go stacks and goroutine labels cost the sampler: BPF time per sample
# (run_time_ns / run_cnt of the perf_event programs) of the agent with two
# busy C workloads (frame pointers, 6 frames), then with two busy Go
# workloads (tests/workloads/go_chain, stripped: Go frames unwound with
# .gopclntab rows, one goroutine labelled handler=checkout, one not), beside
# bpftrace sampling the same CPUs in the same run.
# Usage (root): bench/go_bpf.sh [SECONDS=20] [GO=go]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
go=${2:-go}
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
for tool in bpftrace clang "$go"; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
(cd tests/workloads/go_chain && GOCACHE="$work/go-cache" GOTOOLCHAIN=local "$go" build -ldflags="-s -w" -o "$work/go_chain" .)
echo "kernel $(uname -r), $(nproc) CPUs, 19 Hz, ${seconds}s per phase, $("$go" version)"
phase "native frames (C)" "$work/busy" 100000
phase "Go, labelled" "$work/go_chain" 100000
