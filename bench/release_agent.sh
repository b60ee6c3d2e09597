# Sourced by the bench scripts: $agent, the release agent built from this
# tree (cargo's incremental build: a no-op when it is current, never a
# stale binary measured), or $AGENT when set (a binary to measure as it is).
if [ -n "${AGENT:-}" ]; then
  agent=$AGENT
else
  cargo build --release -q -p agent
  agent=./target/release/agent
fi
