#!/usr/bin/env bash
# The agent profiling busy JVMs for a while, beside bpftrace doing the same
# sampling: one JVM compiling a Java source again and again with javac in
# process (bench/JCompileLoop.java: thousands of classes loaded, a code
# cache of thousands of compiled methods) and one running
# tests/workloads/JChain.java, on the two CPUs; the release agent on the
# embedded pipeline. Prints, per tool, CPU ms per second (user and system),
# BPF µs per sample; the agent's peak VmHWM, RssAnon/RssFile and the names
# it resolved; the javac JVM's loaded classes and code cache.
# Usage (root): bench/jvm_busy.sh [SECONDS=300] [AGENT FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
shift || true
for tool in java javac jcmd; do
  command -v "$tool" >/dev/null || { echo "needs $tool (a JDK)"; exit 1; }
done
classes=$(mktemp -d)
javac -d "$classes" tests/workloads/JChain.java bench/JCompileLoop.java
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
kill -INT $agent_pid && wait $agent_pid 2>/dev/null || true
start_agent "$@"
http=$(ss -ltnpH | awk -v p="pid=$agent_pid," '$0 ~ p {print $4; exit}')
ticks() { awk '{print $14, $15}' /proc/"$1"/stat; }
java -Xmx256m -cp "$classes" JCompileLoop tests/workloads/JChain.java "$seconds" >/dev/null & javac_jvm=$!; pids+=($javac_jvm)
java -Xmx64m -cp "$classes" JChain "$seconds" >/dev/null & pids+=($!)
sleep 3
read -r au0 as0 < <(ticks $agent_pid); read -r bu0 bs0 < <(ticks $bpftrace_pid)
read -r at0 ac0 < <(perf_prog_stats $agent_pid); read -r bt0 bc0 < <(perf_prog_stats $bpftrace_pid)
hwm=0
for _ in $(seq $((seconds - 5))); do
  sleep 1
  h=$(awk '/VmHWM/ {print $2}' /proc/$agent_pid/status); [ "$h" -gt "$hwm" ] && hwm=$h
done
read -r au1 as1 < <(ticks $agent_pid); read -r bu1 bs1 < <(ticks $bpftrace_pid)
read -r at1 ac1 < <(perf_prog_stats $agent_pid); read -r bt1 bc1 < <(perf_prog_stats $bpftrace_pid)
loaded=$(jcmd $javac_jvm PerfCounter.print 2>/dev/null | awk -F= '/java.cls.loadedClasses=/ {print $2}')
codecache=$(jcmd $javac_jvm Compiler.codecache 2>/dev/null | grep -E '^ *(total_blobs|CodeHeap)' | tr -s ' ' | tr '\n' ';')
rss=$(awk '/RssAnon|RssFile/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' /proc/$agent_pid/status)
names=$(curl -s "$http/metrics" | grep -E '^agent_ebpf_(interpreter_names_total|interpreter_frames_unnamed_total|interp_frames_total)' | tr '\n' ' ')
python3 - "$((seconds - 5))" "$(getconf CLK_TCK)" "$au0" "$as0" "$au1" "$as1" "$bu0" "$bs0" "$bu1" "$bs1" \
  "$at0" "$ac0" "$at1" "$ac1" "$bt0" "$bc0" "$bt1" "$bc1" <<'PY'
import sys
s, tck, au0, as0, au1, as1, bu0, bs0, bu1, bs1, at0, ac0, at1, ac1, bt0, bc0, bt1, bc1 = map(int, sys.argv[1:])
ms = lambda a, b: (b - a) * 1000 / tck / s
for name, u, sy, t, c in [("agent", ms(au0, au1), ms(as0, as1), at1 - at0, ac1 - ac0),
                          ("bpftrace", ms(bu0, bu1), ms(bs0, bs1), bt1 - bt0, bc1 - bc0)]:
    print(f"{name:9} user {u:5.2f} ms/s  sys {sy:5.2f} ms/s  BPF {t / max(c, 1) / 1000:5.2f} us/sample ({c} samples)")
PY
echo "agent VmHWM $((hwm / 1024)) MiB  $rss"
echo "$names"
echo "javac JVM: $loaded classes loaded; code cache: $codecache"
