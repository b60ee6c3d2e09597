#!/usr/bin/env bash
# Off-CPU profiling's BPF cost per sched_switch, side by side with bpftrace
# doing the same work in the same run: time a task going off CPU, keep its
# kernel and user stacks, add the time to them when it runs again. The
# machine is kept busy meanwhile (`perf bench sched messaging` in a loop,
# which switches tasks tens of thousands of times a second, and a busy loop
# per CPU). Reported: ns per run of each program (run_time_ns / run_cnt,
# kernel.bpf_stats_enabled) at off-CPU thresholds 1.0 and 0.1.
# Usage: sudo bench/offcpu.sh [SECONDS]   (AGENT=path/to/agent to pick a build)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
agent=${AGENT:-target/release/agent}
[ -x "$agent" ] || { echo "no agent at $agent: cargo build --release -p agent (or set AGENT)"; exit 1; }
command -v bpftrace >/dev/null || { echo "bpftrace is needed (apt install bpftrace)"; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; sysctl -qw kernel.bpf_stats_enabled=0; rm -rf "$work"; }
trap cleanup EXIT
sysctl -qw kernel.bpf_stats_enabled=1
# bpftrace finds tracepoints through tracefs.
[ -d /sys/kernel/tracing/events/sched ] || mount -t tracefs nodev /sys/kernel/tracing

# run_time_ns and run_cnt summed over the BPF programs process $1 holds
# whose name starts with $2.
runs() {
  local time=0 count=0 id name
  for info in /proc/"$1"/fdinfo/*; do
    # Programs (links name a program too, without its counts).
    grep -q '^run_time_ns:' "$info" 2>/dev/null || continue
    id=$(awk '/^prog_id:/ {print $2}' "$info")
    name=$(bpftool prog show id "$id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
    [[ $name == "$2"* ]] || continue
    time=$((time + $(awk '/^run_time_ns:/ {print $2}' "$info")))
    count=$((count + $(awk '/^run_cnt:/ {print $2}' "$info")))
  done
  echo "$time $count"
}

# The same algorithm as the agent's, frame-pointer stacks only.
peer_script() {
  cat <<BT
tracepoint:sched:sched_switch {
  \$back = @since[args->next_pid];
  if (\$back) {
    @off[@kernel[args->next_pid], @user[args->next_pid]] = sum(nsecs - \$back);
    delete(@since[args->next_pid]);
  }
  if (pid != 0 && rand % 1000 < $1) {
    @kernel[tid] = kstack;
    @user[tid] = ustack;
    @since[tid] = nsecs;
  }
}
BT
}

for cpu in $(seq "$(nproc)"); do (while :; do :; done) & pids+=($!); done
(while :; do perf bench sched messaging -g 4 -l 200 >/dev/null 2>&1; done) & pids+=($!)

printf '%-10s %-26s %12s %12s\n' threshold program "ns/switch" switches
for threshold in 1.0 0.1; do
  "$agent" --local-store-directory="$work/out-$threshold" --off-cpu-threshold="$threshold" \
    --http-address 127.0.0.1:0 >"$work/agent.log" 2>&1 & agent_pid=$!
  peer_script "$(python3 -c "print(int($threshold * 1000))")" >"$work/peer.bt"
  bpftrace "$work/peer.bt" >/dev/null 2>&1 & peer_pid=$!
  # Both attached (the agent logs when its pipelines run).
  for _ in $(seq 100); do grep -q "pipelines started" "$work/agent.log" && break; sleep 0.2; done
  sleep 3
  read -r a0 ac0 < <(runs "$agent_pid" off_cpu_switch)
  read -r p0 pc0 < <(runs "$peer_pid" "")
  sleep "$secs"
  read -r a1 ac1 < <(runs "$agent_pid" off_cpu_switch)
  read -r p1 pc1 < <(runs "$peer_pid" "")
  kill -INT "$peer_pid"; kill -TERM "$agent_pid"; wait "$peer_pid" "$agent_pid" 2>/dev/null || true
  printf '%-10s %-26s %12d %12d\n' "$threshold" "agent off_cpu_switch" $(((a1 - a0) / (ac1 - ac0))) $((ac1 - ac0))
  printf '%-10s %-26s %12d %12d\n' "$threshold" "bpftrace (fp stacks)" $(((p1 - p0) / (pc1 - pc0))) $((pc1 - pc0))
done
