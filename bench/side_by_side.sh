# Sourced by the bench scripts that run the agent beside other BPF tools.
# side_by_side_setup TOOL...: fails naming a missing tool; makes $work, kept
# (and named) when the run fails, removed otherwise; turns on BPF run-time
# statistics (kernel.bpf_stats_enabled) for the run, restored at exit.
side_by_side_setup() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool; python3-yaml for soak.sh)"; exit 1; }
  done
  work=$(mktemp -d)
  stats_before=$(sysctl -n kernel.bpf_stats_enabled)
  trap side_by_side_cleanup EXIT
  sysctl -q kernel.bpf_stats_enabled=1
}

side_by_side_cleanup() {
  local code=$?
  sysctl -q kernel.bpf_stats_enabled="$stats_before"
  if [ $code -eq 0 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
