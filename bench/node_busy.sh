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
kill -INT $agent_pid && wait $agent_pid 2>/dev/null || true
start_agent "$@"
http=$(ss -ltnpH | awk -v p="pid=$agent_pid," '$0 ~ p {print $4; exit}')
ticks() { awk '{print $14, $15}' /proc/"$1"/stat; }
node tests/workloads/js_builtins.js "$seconds" >/dev/null & pids+=($!)
node tests/workloads/js_chain.js "$seconds" >/dev/null & pids+=($!)
sleep 3
read -r au0 as0 < <(ticks $agent_pid); read -r bu0 bs0 < <(ticks $bpftrace_pid)
read -r at0 ac0 < <(perf_prog_stats $agent_pid); read -r bt0 bc0 < <(perf_prog_stats $bpftrace_pid)
hwm=0
for _ in $(seq "$seconds"); do
  sleep 1
  h=$(awk '/VmHWM/ {print $2}' /proc/$agent_pid/status); [ "$h" -gt "$hwm" ] && hwm=$h
done
read -r au1 as1 < <(ticks $agent_pid); read -r bu1 bs1 < <(ticks $bpftrace_pid)
read -r at1 ac1 < <(perf_prog_stats $agent_pid); read -r bt1 bc1 < <(perf_prog_stats $bpftrace_pid)
rss=$(awk '/RssAnon|RssFile/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' /proc/$agent_pid/status)
names=$(curl -s "$http/metrics" | grep -E '^agent_ebpf_(interpreter_names_total|interpreter_frames_unnamed_total|interp_frames_total)' | tr '\n' ' ')
python3 - "$seconds" "$(getconf CLK_TCK)" "$au0" "$as0" "$au1" "$as1" "$bu0" "$bs0" "$bu1" "$bs1" \
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
