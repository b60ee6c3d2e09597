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
agent=./target/release/agent
[ -x "$agent" ] || cargo build --release
for tool in bpftrace clang "$python"; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
work=$(mktemp -d)
pids=()
stop_all() { [ ${#pids[@]} -gt 0 ] || return 0; kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
agent_pid= bpftrace_pid=
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  stop_all
  kill -INT $agent_pid $bpftrace_pid 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
  sysctl -q kernel.bpf_stats_enabled="$stats_before"
}
trap cleanup EXIT
clang -O2 -fno-omit-frame-pointer -fno-optimize-sibling-calls -o "$work/busy" tests/workloads/fp_chain.c
sysctl -q kernel.bpf_stats_enabled=1

# "run_time_ns run_cnt" of the perf_event programs (prog_type 7) a process holds.
perf_prog_stats() {
  { grep -hE '^(prog_type|prog_id|run_time_ns|run_cnt):' /proc/"$1"/fdinfo/* 2>/dev/null || true; } |
    awk '/prog_type/ {type = $2} /prog_id/ {id = $2} /run_time_ns/ {t[id] = $2; ty[id] = type}
         /run_cnt/ {c[id] = $2} END {for (i in t) if (ty[i] == 7) {s += t[i]; n += c[i]} print s + 0, n + 0}'
}
# User + system CPU of a process, threads that exited included, in ms.
cpu_ms() { awk -v tck="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / tck}' /proc/"$1"/stat; }

start_agent() { # extra agent flags
  "$agent" --local-store-directory="$work/profiles" --http-address=127.0.0.1:0 --log-level=warn "$@" &
  agent_pid=$!
  sleep 5 # loaded and attached
}
bpftrace -e 'profile:hz:19 { @[ustack, kstack, comm] = count(); }' >/dev/null 2>&1 &
bpftrace_pid=$!
start_agent

phase() { # name, then the workload command (run twice)
  local name=$1; shift
  for _ in 1 2; do "$@" >/dev/null 2>&1 & pids+=($!); done
  sleep 3 # their start-up (and the agent reading them) is not steady state
  read -r at0 ac0 < <(perf_prog_stats $agent_pid)
  read -r bt0 bc0 < <(perf_prog_stats $bpftrace_pid)
  sleep "$seconds"
  read -r at1 ac1 < <(perf_prog_stats $agent_pid)
  read -r bt1 bc1 < <(perf_prog_stats $bpftrace_pid)
  stop_all
  python3 - "$name" "$at0" "$ac0" "$at1" "$ac1" "$bt0" "$bc0" "$bt1" "$bc1" <<'PY'
import sys
name, at0, ac0, at1, ac1, bt0, bc0, bt1, bc1 = sys.argv[1], *map(int, sys.argv[2:])
agent = (at1 - at0) / max(ac1 - ac0, 1) / 1000
bpftrace = (bt1 - bt0) / max(bc1 - bc0, 1) / 1000
print(f"{name:22} agent {agent:6.1f} us/sample ({ac1 - ac0} samples)   "
      f"bpftrace {bpftrace:6.1f} us/sample ({bc1 - bc0})   ratio {agent / bpftrace:4.2f}")
PY
}
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
stop_agent() { kill -INT $agent_pid; wait $agent_pid 2>/dev/null || true; }
phase "native frames (C)" "$work/busy" 100000
# Each mode on an agent of its own, started the same way.
stop_agent && start_agent
phase "Python frames" busy_python
many_python "Python unwinding"
stop_agent && start_agent --python-unwinding-disable
phase "Python, disabled" busy_python
many_python "--python-unwinding-disable"
