#!/usr/bin/env bash
# What PHP, Ruby, JavaScript or Java frames cost the sampler: BPF time per
# sample (run_time_ns / run_cnt of the perf_event programs,
# kernel.bpf_stats_enabled) of the agent with two busy C workloads (native
# frames only), with two busy interpreter workloads
# (tests/workloads/php_chain.php: 4-6 PHP frames a stack; rb_chain.rb: 6-7
# Ruby frames; js_chain.js: ~10 V8 frames, its 3 own in one location of
# optimized code; JChain.java: ~4 JVM frames, jLeaf inlined into jMid once
# C2 compiled them), and with the same workloads under --LANG-unwinding-disable
# (the same native walk, no interpreter frames), beside bpftrace sampling the
# same CPUs in the same run.
# Usage (root): bench/interp.sh php|ruby|node|java [SECONDS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
lang=${1:?usage: bench/interp.sh php|ruby|node|java [SECONDS]}
seconds=${2:-20}
case $lang in
  php) interpreter=php workload=tests/workloads/php_chain.php switch=php ;;
  ruby) interpreter=ruby workload=tests/workloads/rb_chain.rb switch=ruby ;;
  node) interpreter=node workload=tests/workloads/js_chain.js switch=v8 ;;
  java) interpreter=java workload=tests/workloads/JChain.java switch=jvm ;;
  *) echo "php, ruby, node or java, not $lang"; exit 1 ;;
esac
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
for tool in bpftrace clang "$interpreter"; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
echo "kernel $(uname -r), $(nproc) CPUs, 19 Hz, ${seconds}s per phase, $("$interpreter" --version 2>&1 | head -1)"
if [ "$lang" = java ]; then
  # Compiled once; run as a class, as services run.
  classes=$(mktemp -d)
  javac -d "$classes" "$workload"
  busy() { exec java -Xmx64m -cp "$classes" JChain 100000; }
else
  busy() { exec "$interpreter" "$workload" 100000; }
fi
phase "native frames (C)" "$work/busy" 100000
# Each mode on an agent of its own, started the same way.
stop_agent && start_agent
phase "$lang frames" busy
stop_agent && start_agent "--$switch-unwinding-disable"
phase "$lang, disabled" busy
