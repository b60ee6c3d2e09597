#!/usr/bin/env bash
# The agent's resident memory after profiling a busy machine for a while.
# Usage (root): bench/rss.sh [SECONDS=300] [PROCESSES=200]
# Starts PROCESSES small shell loops (each wakes every 100 ms and burns a
# little CPU, so all of them are sampled), runs the release agent on the
# embedded pipeline, and prints its VmRSS and VmHWM at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
processes=${2:-200}
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
work=$(mktemp -d)
pids=()
agent_pid=
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  if [ -n "$agent_pid" ]; then kill -INT "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq "$processes"); do
  sh -c 'while :; do i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; sleep 0.1; done' &
  pids+=($!)
done
"$agent" --local-store-directory="$work/profiles" --http-address=127.0.0.1:0 --log-level=warn &
agent_pid=$!
sleep "$seconds"
rss=$(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$agent_pid/status)
files=$(ls "$work/profiles" | wc -l)
echo "after ${seconds}s with ${processes} busy processes: agent VmRSS ${rss} kB (${hwm} kB peak), ${files} profiles written"
