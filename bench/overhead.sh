#!/usr/bin/env bash
# CPU cost of the agent against bpftrace and perf doing the same job:
# sampling every CPU 19 times a second with user and kernel stacks.
# Usage (root): bench/overhead.sh [SECONDS=30]
#
# Two CPUs are kept busy by a frame-pointer workload (main->a->b->c) during
# every run. For each profiler it measures, per second of wall time:
#   cpu  = CPU time of all the profiler's threads (/proc/PID/task/*/schedstat)
#   bpf  = run time of the BPF programs it holds (kernel.bpf_stats_enabled, fdinfo run_time_ns)
# perf has no BPF programs; the kernel's cost of writing its samples is spent
# in the sampled tasks' interrupt context and shows in neither column.
# Steady state only: start-up (3 s) and the final flush at exit are excluded.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
for tool in bpftrace perf bpftool clang; do
  command -v $tool >/dev/null || { echo "needs $tool (apt-get install bpftrace linux-perf bpftool clang)"; exit 1; }
done
work=$(mktemp -d)
workload_pids=()
cleanup() { kill "${workload_pids[@]}" 2>/dev/null || true; rm -rf "$work"; sysctl -q kernel.bpf_stats_enabled=0; }
trap cleanup EXIT
clang -O2 -fno-omit-frame-pointer -fno-optimize-sibling-calls -o "$work/busy" tests/workloads/fp_chain.c
sysctl -q kernel.bpf_stats_enabled=1

# CPU time of all threads of a process, in ns (schedstat: exact, unlike ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
# Run time of the BPF programs a process holds open, in ns (fdinfo, per program once).
bpf_ns() {
  { grep -hE '^(prog_id|run_time_ns):' /proc/"$1"/fdinfo/* 2>/dev/null || true; } |
    awk '/prog_id/ {id = $2} /run_time_ns/ {t[id] = $2} END {for (i in t) s += t[i]; print s + 0}'
}

measure() { # name, command...
  local name=$1; shift
  "$@" >"$work/$name.out" 2>&1 &
  local pid=$!
  sleep 3 # start-up (loading BPF, attaching) is not steady-state cost
  local c0 b0 c1 b1
  c0=$(cpu_ns $pid); b0=$(bpf_ns $pid)
  sleep "$seconds"
  c1=$(cpu_ns $pid); b1=$(bpf_ns $pid)
  kill -INT $pid; wait $pid 2>/dev/null || true
  python3 - "$name" "$c0" "$c1" "$b0" "$b1" "$seconds" <<'PY'
import sys
name, c0, c1, b0, b1, s = sys.argv[1], *map(float, sys.argv[2:])
cpu = (c1 - c0) / 1e6 / s
bpf = (b1 - b0) / 1e6 / s
print(f"{name:9} cpu {cpu:7.2f} ms/s   bpf {bpf:7.3f} ms/s   total {cpu + bpf:7.2f} ms/s")
PY
}

for _ in 1 2; do "$work/busy" 100000 >/dev/null & workload_pids+=($!); done
echo "kernel $(uname -r), $(nproc) CPUs, 2 busy; ${seconds}s per profiler, 19 Hz, user+kernel stacks"
{
  measure agent "$agent" --local-store-directory="$work/profiles" --http-address=127.0.0.1:0 --log-level=warn
  measure bpftrace bpftrace -e 'profile:hz:19 { @[ustack, kstack, comm] = count(); }'
  measure perf perf record -F 19 -a -g -o "$work/perf.data"
} | tee "$work/results"
python3 - "$work/results" <<'PY'
import sys
total = {l.split()[0]: float(l.split()[-2]) for l in open(sys.argv[1])}
a = total["agent"]
for other in ("bpftrace", "perf"):
    print(f"agent / {other}: {a / total[other]:.2f}x" if total[other] else f"{other}: 0")
PY
