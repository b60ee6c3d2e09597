# Sourced by the bench scripts that measure BPF time per sample: a work
# directory, the busy C workload ($work/busy), BPF statistics on, bpftrace
# sampling beside the agent ($agent, started by start_agent, stopped by
# stop_agent); phase, which runs a workload twice and prints both programs'
# time per sample over $seconds seconds; and busy_report, for workloads
# already running. Everything started is stopped on exit.
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
stop_agent() { kill -INT $agent_pid; wait $agent_pid 2>/dev/null || true; }
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
print(f"{name:22} agent {agent:6.2f} us/sample ({ac1 - ac0} samples)   "
      f"bpftrace {bpftrace:6.2f} us/sample ({bc1 - bc0})   ratio {agent / bpftrace:4.2f}")
PY
}

# For workloads started already (their first 3 s left out): over the next
# $1 seconds, per tool, CPU ms per second (user and system) and BPF µs per
# sample; the agent's peak VmHWM, its RssAnon/RssFile at the end and the
# interpreter frames it named.
busy_report() {
  local span=$1 hwm=0 h
  ticks() { awk '{print $14, $15}' /proc/"$1"/stat; }
  sleep 3
  read -r au0 as0 < <(ticks $agent_pid); read -r bu0 bs0 < <(ticks $bpftrace_pid)
  read -r at0 ac0 < <(perf_prog_stats $agent_pid); read -r bt0 bc0 < <(perf_prog_stats $bpftrace_pid)
  for _ in $(seq "$span"); do
    sleep 1
    h=$(awk '/VmHWM/ {print $2}' /proc/$agent_pid/status); [ "$h" -gt "$hwm" ] && hwm=$h
  done
  read -r au1 as1 < <(ticks $agent_pid); read -r bu1 bs1 < <(ticks $bpftrace_pid)
  read -r at1 ac1 < <(perf_prog_stats $agent_pid); read -r bt1 bc1 < <(perf_prog_stats $bpftrace_pid)
  python3 - "$span" "$(getconf CLK_TCK)" "$au0" "$as0" "$au1" "$as1" "$bu0" "$bs0" "$bu1" "$bs1" \
    "$at0" "$ac0" "$at1" "$ac1" "$bt0" "$bc0" "$bt1" "$bc1" <<'PY'
import sys
s, tck, au0, as0, au1, as1, bu0, bs0, bu1, bs1, at0, ac0, at1, ac1, bt0, bc0, bt1, bc1 = map(int, sys.argv[1:])
ms = lambda a, b: (b - a) * 1000 / tck / s
for name, u, sy, t, c in [("agent", ms(au0, au1), ms(as0, as1), at1 - at0, ac1 - ac0),
                          ("bpftrace", ms(bu0, bu1), ms(bs0, bs1), bt1 - bt0, bc1 - bc0)]:
    print(f"{name:9} user {u:5.2f} ms/s  sys {sy:5.2f} ms/s  BPF {t / max(c, 1) / 1000:5.2f} us/sample ({c} samples)")
PY
  echo "agent VmHWM $((hwm / 1024)) MiB  $(awk '/RssAnon|RssFile/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' /proc/$agent_pid/status)"
  local http
  http=$(ss -ltnpH | awk -v p="pid=$agent_pid," '$0 ~ p {print $4; exit}')
  curl -s "$http/metrics" | grep -E '^agent_ebpf_(interpreter_names_total|interpreter_frames_unnamed_total|interp_frames_total)' | tr '\n' ' '
  echo
}
