#!/usr/bin/env bash
# What Python frames cost the sampler: BPF time per sample (run_time_ns /
# run_cnt of the perf_event programs, kernel.bpf_stats_enabled) of the
# agent with two busy C workloads (native frames only), with two busy
# Python workloads (six Python frames among ~30 native ones per stack),
# and with the same Python workloads under --python-unwinding-disable
# (the same native walk, no Python frames), beside bpftrace sampling the
# same CPUs in the same run; then the agent's CPU time and RSS with 20
# Python processes running, with and without Python unwinding.
# Usage (root): bench/python.sh [SECONDS=20] [PYTHON=python3]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
python=${2:-python3}
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
for tool in bpftrace clang "$python"; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
echo "kernel $(uname -r), $(nproc) CPUs, 19 Hz, ${seconds}s per phase, $("$python" --version)"
busy_python() { exec "$python" tests/workloads/py_chain.py 100000; }
many_python() { # 20 Python processes, each busy a quarter of the time
  for _ in $(seq 20); do
    "$python" -c "
import sys, time
sys.path.insert(0, 'tests/workloads')
from py_chain import Worker
while True:
    Worker().run(0.05)
    time.sleep(0.15)
" & pids+=($!)
  done
  sleep 15 # their start-up, and the agent symbolizing what it met first
  local c0 c1
  c0=$(cpu_ms $agent_pid)
  sleep "$seconds"
  c1=$(cpu_ms $agent_pid)
  echo "20 Python processes, $1: agent cpu $(awk "BEGIN {printf \"%.1f\", ($c1 - $c0) / $seconds}") ms/s," \
    "RSS $(awk '/VmRSS/ {print int($2 / 1024)}' /proc/$agent_pid/status) MiB," \
    "peak $(awk '/VmHWM/ {print int($2 / 1024)}' /proc/$agent_pid/status) MiB"
  stop_all
}
phase "native frames (C)" "$work/busy" 100000
# Each mode on an agent of its own, started the same way.
stop_agent && start_agent
phase "Python frames" busy_python
many_python "Python unwinding"
stop_agent && start_agent --python-unwinding-disable
phase "Python, disabled" busy_python
many_python "--python-unwinding-disable"
