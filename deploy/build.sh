#!/usr/bin/env bash
# Builds the agent to ship: target/dist/agent without debug information, and
# target/dist/agent.debug holding it, named by the binary's .gnu_debuglink.
# The agent names its own frames when agent.debug sits next to it (or under
# a debuginfo directory by build id); without it, from its symbol table.
# Usage: deploy/build.sh [cargo build options, e.g. --no-default-features -F ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release "$@"
mkdir -p target/dist
built=target/release/agent
out=target/dist/agent
objcopy --only-keep-debug "$built" "$out.debug"
# The link is written as the debug file's name alone: found next to the binary.
(cd target/dist && objcopy --strip-debug --add-gnu-debuglink=agent.debug "../../$built" agent)
ls -l "$out" "$out.debug" | awk '{printf "%s %.1f MB\n", $NF, $5 / 1e6}'
