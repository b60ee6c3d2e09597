#!/usr/bin/env bash
# What PHP frames cost the sampler: BPF time per sample (run_time_ns /
# run_cnt of the perf_event programs, kernel.bpf_stats_enabled) of the
# agent with two busy C workloads (native frames only), with two busy PHP
# workloads (four to six PHP frames per stack), and with the same PHP
# workloads under --php-unwinding-disable (the same native walk, no PHP
# frames), beside bpftrace sampling the same CPUs in the same run.
# Usage (root): bench/php.sh [SECONDS=20] [PHP=php]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
php=${2:-php}
agent=./target/release/agent
[ -x "$agent" ] || cargo build --release
for tool in bpftrace clang "$php"; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
echo "kernel $(uname -r), $(nproc) CPUs, 19 Hz, ${seconds}s per phase, $("$php" --version | head -1)"
busy_php() { exec "$php" tests/workloads/php_chain.php 100000; }
stop_agent() { kill -INT $agent_pid; wait $agent_pid 2>/dev/null || true; }
phase "native frames (C)" "$work/busy" 100000
# Each mode on an agent of its own, started the same way.
stop_agent && start_agent
phase "PHP frames" busy_php
stop_agent && start_agent --php-unwinding-disable
phase "PHP, disabled" busy_php
