#!/usr/bin/env bash
# Memory and CPU of the agent (embedded default pipeline) against bpftrace
# (profile:hz:19 with user and kernel stacks), both running at once, in two
# scenarios:
#   (a) quiet: two busy C workloads (tests/workloads/fp_chain.c), QUIET_SECONDS;
#   (b) busy node: `cargo build --release -p agent-core` (a fixed set of
#       crates from the local registry) from a clean target directory,
#       BUSY_SECONDS.
# Each tool is started fresh for each scenario, bpftrace first and the agent
# once bpftrace's program is loaded (its LLVM compile is not the scenario's
# load). It prints per tool: peak
# VmHWM, peak RssAnon and RssFile, peak BPF map memory (locked bytes of the
# maps it holds), CPU ms per second (its own cgroup's user+sys, plus its BPF
# programs' run time) and BPF µs per sample (run time / runs of its
# perf-event programs).
# Without AGENT it measures the binary users ship (deploy/build.sh's
# target/dist/agent), copied alone as it is deployed: its debug file is not
# beside it, so the agent names its own frames from its symbol table.
# Usage (root): bench/footprint.sh [AGENT=shipped binary] [QUIET_SECONDS=120] [BUSY_SECONDS=300]
set -euo pipefail
cd "$(dirname "$0")/.."
agent=${1:-}
quiet=${2:-120}
busy=${3:-300}
. bench/side_by_side.sh
side_by_side_setup bpftrace clang python3 cargo
if [ -z "$agent" ]; then
  deploy/build.sh >/dev/null
  cp target/dist/agent "$work/agent"
  agent=$work/agent
fi
clang -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -o "$work/busy" tests/workloads/fp_chain.c
python3 bench/footprint.py "$agent" "$work/busy" "$work" "$quiet" "$busy"
