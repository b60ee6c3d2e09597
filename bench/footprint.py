"""The runs behind bench/footprint.sh (see there). Usage:
footprint.py AGENT BUSY_BINARY WORKDIR QUIET_SECONDS BUSY_SECONDS"""

import os
import signal
import subprocess
import sys
import threading
import time

from measure import CpuAccount, bpf_ms, owned_map_bytes, sampler_loaded, sampler_runs, status_kb

agent_bin, busy_bin, work = sys.argv[1], sys.argv[2], sys.argv[3]
quiet_seconds, busy_seconds = int(sys.argv[4]), int(sys.argv[5])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BPFTRACE = "profile:hz:19 { @[ustack, kstack, comm] = count(); }"
SETTLE = 5  # seconds for both tools to load and attach before a scenario starts
LOAD_TIMEOUT = 120  # seconds bpftrace may take to compile and load its program


class Tool:
    """One profiler under measurement: its peaks sampled every second, its
    CPU from a cgroup of its own, its BPF cost from its programs' stats."""

    def __init__(self, name, argv, scenario):
        self.name = name
        log = open(f"{work}/{scenario}-{name}.log", "w")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.cpu = CpuAccount(self.process.pid, f"footprint-{name}-{self.process.pid}")
        self.peak = dict(hwm=0, anon=0, file=0, maps=0)

    def sample(self):
        if self.process.poll() is not None:
            sys.exit(f"{self.name} exited ({self.process.returncode}); see {work}")
        hwm, anon, file = status_kb(self.process.pid, "VmHWM", "RssAnon", "RssFile")
        now = dict(hwm=hwm * 1024, anon=anon * 1024, file=file * 1024, maps=owned_map_bytes(self.process.pid))
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def mark(self):
        ns, runs = sampler_runs(self.process.pid)
        return dict(clock=time.monotonic(), cpu=self.cpu.ms(), bpf=bpf_ms(self.process.pid), ns=ns, runs=runs)

    def stop(self, sig):
        self.process.send_signal(sig)
        self.process.wait()
        self.cpu.close()


def cost(first, last):
    span = last["clock"] - first["clock"]
    runs = last["runs"] - first["runs"]
    return dict(cpu=(last["cpu"] - first["cpu"] + last["bpf"] - first["bpf"]) / span,
                per_sample=(last["ns"] - first["ns"]) / max(runs, 1) / 1000, samples=runs)


def loaded(tool):
    """Waits until the tool's sampling program is loaded."""
    end = time.monotonic() + LOAD_TIMEOUT
    while not sampler_loaded(tool.process.pid):
        if tool.process.poll() is not None or time.monotonic() > end:
            sys.exit(f"{tool.name} did not load its program; see {work}")
        time.sleep(0.2)
    return tool


def scenario(name, seconds, start_load, stop_load):
    """Both tools side by side during the load; returns their figures.
    bpftrace is started first and the agent once bpftrace's program is
    loaded: the scenario is the load, not bpftrace compiling its program
    with LLVM, which the agent would sample (and compile unwind tables for
    LLVM's libraries) in some runs and not in others."""
    bpftrace = loaded(Tool("bpftrace", ["bpftrace", "-e", BPFTRACE], name))
    agent = Tool("agent", [agent_bin, f"--local-store-directory={work}/{name}-profiles",
                           "--http-address=127.0.0.1:0", "--log-level=warn"], name)
    tools = [agent, bpftrace]
    time.sleep(SETTLE)
    load = start_load()
    first = [t.mark() for t in tools]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for t in tools:
            t.sample()
        time.sleep(1)
    last = [t.mark() for t in tools]
    stop_load(load)
    tools[0].stop(signal.SIGTERM)
    tools[1].stop(signal.SIGINT)
    return {t.name: dict(t.peak, **cost(f, l)) for t, f, l in zip(tools, first, last)}


def quiet_load():
    return [subprocess.Popen([busy_bin, str(quiet_seconds + 60)], stdout=subprocess.DEVNULL) for _ in range(2)]


def busy_load():
    """A release build of a fixed set of crates (the agent's core crate and
    its dependencies, from the local registry) from a clean target directory."""
    env = dict(os.environ, CARGO_TARGET_DIR=f"{work}/cargo-target")
    build = subprocess.Popen(["cargo", "build", "--release", "--offline", "-q", "-p", "agent-core"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    return [build]


def stop(processes):
    for p in processes:
        try:
            os.killpg(p.pid, signal.SIGKILL) if p.pid == os.getpgid(p.pid) else p.kill()
        except ProcessLookupError:
            pass
        p.wait()


def report(title, figures):
    mib = lambda b: b / 2**20
    print(f"\n{title}")
    print(f"  {'':9} {'VmHWM':>9} {'RssAnon':>9} {'RssFile':>9} {'BPF maps':>9} {'CPU ms/s':>9} {'BPF us/sample':>14} {'samples':>8}")
    for name, f in figures.items():
        print(f"  {name:9} {mib(f['hwm']):7.1f}Mi {mib(f['anon']):7.1f}Mi {mib(f['file']):7.1f}Mi "
              f"{mib(f['maps']):7.1f}Mi {f['cpu']:9.2f} {f['per_sample']:14.2f} {f['samples']:8}")
    a, b = figures["agent"], figures["bpftrace"]
    print(f"  agent / bpftrace: CPU {a['cpu'] / max(b['cpu'], 1e-9):.2f}x, "
          f"BPF per sample {a['per_sample'] / max(b['per_sample'], 1e-9):.2f}x")


def main():
    quiet = scenario("quiet", quiet_seconds, quiet_load, stop)
    report(f"(a) quiet: two busy C workloads, {quiet_seconds} s (peaks; CPU = its cgroup + its BPF programs)", quiet)
    busy = scenario("busy", busy_seconds, busy_load, stop)
    report(f"(b) busy: cargo build --release -p agent-core from a clean target directory, {busy_seconds} s", busy)


if __name__ == "__main__":
    main()
