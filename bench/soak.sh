#!/usr/bin/env bash
# Soak: the release agent on the embedded pipeline (plus an OTLP/HTTP backend
# and a watched pprof directory) for MINUTES under process churn.
# Usage (root): bench/soak.sh [MINUTES=30] [SPAWNS_PER_SECOND=800]
#
# Beside the agent: SPAWNS_PER_SECOND short processes a second (bench/churn.c),
# a backend that is down for the last minute of every five, and a pprof file
# written every 5 s into a directory the agent watches (files older than 30 s
# removed). Every 10 s it records the agent's RSS (anonymous, file-backed,
# peak), open descriptors, the BPF maps created since it started (count and
# locked bytes), CPU per second (from a cgroup of its own: every thread,
# exactly; plus its BPF programs' run time) and the events and samples its
# receiver lost; it prints one row a minute.
# The agent's CPU over the last 2 minutes is then held against bpftrace's
# (19 Hz user+kernel stacks) for 2 minutes under the same churn.
# It fails if any recorded figure grows after the first 5 minutes (the mean of
# the last third of the rest against its first third), or if the agent does
# not exit 0. Run it on a machine with no other BPF tool running.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
spawns=${2:-800}
# shellcheck source=bench/release_agent.sh
source bench/release_agent.sh
. bench/side_by_side.sh
# The work directory (agent.log, soak.json with every 10 s row) stays when the run fails.
side_by_side_setup bpftrace bpftool clang python3
clang -O2 -o "$work/churn" bench/churn.c
python3 bench/soak.py "$agent" "$work/churn" "$minutes" "$spawns" "$work"
