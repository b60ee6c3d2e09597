"""What the bench scripts measure of a process: its exact CPU time (a cgroup
of its own), its BPF programs' run time, its BPF maps, its memory."""

import json
import os
import subprocess


def bpf_maps():
    """Every BPF map on the machine: id -> locked bytes."""
    return {m["id"]: m.get("bytes_memlock", 0) for m in json.loads(subprocess.check_output(["bpftool", "-j", "map", "show"]))}


class CpuAccount:
    """Exact CPU time of a process and of every thread it ever had, from a
    cgroup of its own (per-thread schedstat loses threads that exit between
    reads; /proc/PID/stat's clock ticks charge whole ticks to whoever runs at
    one, and the churn's 10 ms pacing wakes the agent right at ticks)."""

    def __init__(self, pid, name):
        v1 = "/sys/fs/cgroup/cpuacct"
        if os.path.isdir(v1):
            self.dir, self.file, self.to_ms = f"{v1}/{name}", "cpuacct.usage", 1e-6
        else:
            self.dir, self.file, self.to_ms = f"/sys/fs/cgroup/{name}", "cpu.stat", 1e-3
        os.makedirs(self.dir, exist_ok=True)
        with open(f"{self.dir}/cgroup.procs", "w") as f:
            f.write(str(pid))

    def ms(self):
        with open(f"{self.dir}/{self.file}") as f:
            text = f.read()
        if self.file == "cpu.stat":
            text = dict(line.split() for line in text.splitlines())["usage_usec"]
        return int(text) * self.to_ms

    def close(self):
        """Once the process has exited."""
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def bpf_ms(pid):
    """Run time of the BPF programs a process holds (kernel.bpf_stats_enabled)."""
    runtime = {i["prog_id"]: int(i["run_time_ns"]) for i in fdinfo(pid) if "prog_id" in i and "run_time_ns" in i}
    return sum(runtime.values()) / 1e6


def status_kb(pid, *keys):
    with open(f"/proc/{pid}/status") as f:
        values = dict(line.split(":", 1) for line in f)
    return [int(values[k].split()[0]) for k in keys]




def fdinfo(pid):
    """The fdinfo of each descriptor of a process, as dicts (gone ones skipped)."""
    infos = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                infos.append({k.strip(): v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)})
        except OSError:
            continue
    return infos


def owned_map_bytes(pid):
    """Locked bytes of the BPF maps a process holds open (each map once)."""
    maps = {i["map_id"]: int(i.get("memlock", 0)) for i in fdinfo(pid) if "map_id" in i}
    return sum(maps.values())


# BPF_PROG_TYPE_PERF_EVENT: the programs a sampling perf event runs.
PERF_EVENT_PROGRAM = "7"


def sampler_runs(pid):
    """(run time ns, runs) of the perf-event programs a process holds
    (kernel.bpf_stats_enabled): its cost per sample."""
    progs = {i["prog_id"]: (int(i.get("run_time_ns", 0)), int(i.get("run_cnt", 0)))
             for i in fdinfo(pid) if i.get("prog_type") == PERF_EVENT_PROGRAM and "prog_id" in i}
    return tuple(map(sum, zip(*progs.values()))) if progs else (0, 0)


def sampler_loaded(pid):
    """Whether a process holds a perf-event program (its compile is over)."""
    return any(i.get("prog_type") == PERF_EVENT_PROGRAM for i in fdinfo(pid))
