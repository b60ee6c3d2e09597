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
stop_agent
start_agent "$@"
java -Xmx256m -cp "$classes" JCompileLoop tests/workloads/JChain.java "$seconds" >/dev/null & javac_jvm=$!; pids+=($javac_jvm)
java -Xmx64m -cp "$classes" JChain "$seconds" >/dev/null & pids+=($!)
busy_report $((seconds - 5))
loaded=$(jcmd $javac_jvm PerfCounter.print 2>/dev/null | awk -F= '/java.cls.loadedClasses=/ {print $2}')
codecache=$(jcmd $javac_jvm Compiler.codecache 2>/dev/null | grep -E '^ *(total_blobs|CodeHeap)' | tr -s ' ' | tr '\n' ';')
echo "javac JVM: $loaded classes loaded; code cache: $codecache"
