#!/usr/bin/env bash
# Complete user stacks of code without frame pointers: the agent's
# .eh_frame unwinder against `perf record --call-graph dwarf`, on the same
# workloads (tests/workloads: C with a shared library, Rust, C++), sampled by
# both at the same time at 97 Hz.
# Usage: bench/unwind.sh [SECONDS=10]   (root; needs gcc, g++, rustc, perf)
# Complete = the walk reached the outermost frame (agent: unwind_status
# complete; perf: the last frame is _start) and the workload's functions on
# the stack are, in order, the tail of its hot chain down to main. Samples
# taken while the kernel exec'd or tore down the process, and whole walks
# with none of the workload's functions (the dynamic loader), are left out
# of both counts.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
work=$(mktemp -d)
agent_pid=
trap '[ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release -q --bin agent --example unwind_report
src=$PWD/tests/workloads
cflags=(-O2 -fomit-frame-pointer -fno-optimize-sibling-calls)
(cd "$work" &&
    gcc "${cflags[@]}" -shared -fPIC -o libnofp.so "$src/nofp_lib.c" &&
    gcc "${cflags[@]}" -o nofp_chain "$src/nofp_chain.c" -L. -lnofp -Wl,-rpath,'$ORIGIN' &&
    rustc -C opt-level=2 -o rust_chain "$src/rust_chain.rs" &&
    g++ -O2 -o cpp_chain "$src/cpp_chain.cpp")
declare -A chains=(
    [nofp_chain]=leaf,spin,lib_f,lib_e,lib_d,c,b,a,main
    [rust_chain]=rust_chain::leaf,rust_chain::e,rust_chain::d,rust_chain::c,rust_chain::b,rust_chain::a,rust_chain::main,main
    [cpp_chain]=work::leaf,work::d,work::c,work::b,work::a,main
)

./target/release/agent --http-address 127.0.0.1:0 --profiling-duration=2s \
    --profiling-cpu-sampling-frequency=97 \
    --local-store-directory="$work/out" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do grep -q "pipelines started" "$work/agent.log" && break; sleep 0.1; done
for w in nofp_chain rust_chain cpp_chain; do
    perf record -q -F 97 --call-graph dwarf -o "$work/$w.perf" -- "$work/$w" "$seconds" >/dev/null 2>&1 &
    sleep 0.5
done
wait $(jobs -p | grep -v "^$agent_pid$") 2>/dev/null || true
sleep 0.5
kill -TERM "$agent_pid"
wait "$agent_pid" || true
agent_pid=

args=()
for w in nofp_chain rust_chain cpp_chain; do
    args+=("$w=${chains[$w]}")
    perf script -i "$work/$w.perf" -F comm,ip,sym 2>/dev/null | python3 -c '
import sys
chain = sys.argv[2].split(",")
total = complete = 0
def judge(frames):
    names = [f.split("(")[0] for f in frames if f.split("(")[0] in chain]
    return (bool(frames) and frames[-1] == "_start" and names and names[-1] == "main"
            and chain[len(chain) - len(names):] == names)
def outside(frames):
    # Exec, exit, or a whole walk with none of the workload on it (the loader): left out.
    names = [f.split("(")[0] for f in frames]
    return ("bprm_execve" in names or "do_exit" in names
            or any(n.startswith("do_execveat_common") for n in names)
            or (bool(frames) and frames[-1] == "_start" and not any(n in chain for n in names)))
frames, in_sample = [], False
for line in sys.stdin:
    if not line.strip():
        if in_sample and not outside(frames):
            total += 1
            complete += judge(frames)
        frames, in_sample = [], False
    elif line.startswith("\t"):
        frames.append(line.strip().split(None, 1)[-1].replace(" (inlined)", ""))
    else:
        in_sample = line.split()[0] == sys.argv[1]
if in_sample and not outside(frames):
    total += 1
    complete += judge(frames)
print(f"{sys.argv[1]}: perf --call-graph dwarf complete {100 * complete / max(total, 1):.1f}% of {total} samples")
' "$w" "${chains[$w]}"
done
./target/release/examples/unwind_report "$work/out" "${args[@]}"
