#!/usr/bin/env bash
# The agent profiling busy Node.js processes for a while, beside bpftrace
# doing the same sampling: two node processes (tests/workloads/js_builtins.js,
# an async function sorting with a JavaScript comparator, and js_chain.js,
# a loop of inlined calls) on the two CPUs; the release agent on the
# embedded pipeline. Prints, per tool, CPU ms per second (user and system),
# BPF µs per sample, and the agent's peak VmHWM, RssAnon/RssFile and the
# names it resolved.
# Usage (root): bench/node_busy.sh [SECONDS=300] [AGENT FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
shift || true
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
stop_agent
start_agent "$@"
node tests/workloads/js_builtins.js "$seconds" >/dev/null & pids+=($!)
node tests/workloads/js_chain.js "$seconds" >/dev/null & pids+=($!)
busy_report $((seconds - 5))
