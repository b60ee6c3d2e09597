#!/usr/bin/env bash
# BPF time per sample of agent builds side by side: all of them and one
# bpftrace sample the same two busy C workloads (tests/workloads/fp_chain.c,
# 7 frames) at the same time, ROUNDS rounds of SECONDS, the agents started
# fresh each round. Run one after another, builds see different host noise
# (bpftrace's own cost swings 2x between runs on a VM); run at once, they
# see the same, and each one's ratio to bpftrace in the same round is what
# to compare. Prints each round, then each build's mean ratio.
# Usage (root): bench/compare_builds.sh SECONDS ROUNDS AGENT...
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 SECONDS ROUNDS AGENT..."; exit 1; }
seconds=$1 rounds=$2
shift 2
builds=("$@")
agent=${builds[0]}
# shellcheck source=bench/bpf_cost.sh
source bench/bpf_cost.sh
stop_agent
running=()
trap 'kill -INT "${running[@]}" 2>/dev/null || true; cleanup' EXIT
for _ in 1 2; do "$work/busy" 1000000 >/dev/null 2>&1 & pids+=($!); done
results=$work/ratios
for round in $(seq "$rounds"); do
  running=()
  for i in "${!builds[@]}"; do
    "${builds[$i]}" --local-store-directory="$work/profiles-$i" --http-address=127.0.0.1:0 \
      --log-level=warn >/dev/null 2>&1 &
    running+=($!)
  done
  sleep 8 # loaded, attached, past their first reads
  before=()
  for p in "${running[@]}" "$bpftrace_pid"; do before+=("$(perf_prog_stats "$p")"); done
  sleep "$seconds"
  after=()
  for p in "${running[@]}" "$bpftrace_pid"; do after+=("$(perf_prog_stats "$p")"); done
  kill -INT "${running[@]}"
  wait "${running[@]}" 2>/dev/null || true
  python3 - "$round" "$results" "${builds[@]}" -- "${before[@]}" -- "${after[@]}" <<'PY'
import sys
args = sys.argv[1:]
round_, results = args[0], args[1]
first = args.index("--")
second = args.index("--", first + 1)
builds, before, after = args[2:first], args[first + 1:second], args[second + 1:]
def per_sample(b, a):
    (t0, c0), (t1, c1) = map(int, b.split()), map(int, a.split())
    return (t1 - t0) / max(c1 - c0, 1) / 1000
bpftrace = per_sample(before[-1], after[-1])
line = [f"round {round_}: bpftrace {bpftrace:.2f} us"]
with open(results, "a") as out:
    for i, build in enumerate(builds):
        us = per_sample(before[i], after[i])
        line.append(f"{i}:{build} {us:.2f} us ({us / bpftrace:.2f}x)")
        out.write(f"{i} {build} {us / bpftrace}\n")
print("; ".join(line))
PY
done
python3 - "$results" <<'PY'
import sys
ratios = {}
for line in open(sys.argv[1]):
    i, build, ratio = line.split()
    ratios.setdefault((int(i), build), []).append(float(ratio))
for (i, build), r in sorted(ratios.items()):
    print(f"{i}:{build}: mean {sum(r) / len(r):.3f}x bpftrace over {len(r)} rounds "
          f"(min {min(r):.2f}, max {max(r):.2f})")
PY
