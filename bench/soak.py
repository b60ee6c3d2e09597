"""The soak run behind bench/soak.sh (see there). Usage:
soak.py AGENT CHURN MINUTES SPAWNS_PER_SECOND WORKDIR"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

from measure import CpuAccount, bpf_maps, bpf_ms, status_kb

agent_bin, churn_bin, minutes, rate, work = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = 10  # seconds between samples
WARM_UP = min(300, minutes * 60 / 3)  # left out of the growth check
BACKEND_CYCLE, BACKEND_DOWN = 300, 60  # the backend is down for the last minute of every 5
SIDE_BY_SIDE = 120  # seconds of CPU measured for the agent (end of the soak) and for bpftrace


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """An OTLP/HTTP profiles endpoint that can go down and come back on its port."""

    def __init__(self):
        self.port = free_port()
        self.server = None
        self.requests = 0

    def up(self):
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                backend.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self):
        self.server.shutdown()
        self.server.server_close()
        self.server = None


def feed_pprof_files(directory, stop):
    """A file every 5 s; files older than 30 s are removed, as a rotating writer would."""
    fixture = os.path.join(REPO, "tests/fixtures/cpu.pb.gz")
    i = 0
    while not stop.wait(5):
        shutil.copy(fixture, os.path.join(directory, f".{i}.tmp"))
        os.rename(os.path.join(directory, f".{i}.tmp"), os.path.join(directory, f"{i:08}.pb.gz"))
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if time.time() - os.path.getmtime(path) > 30:
                os.remove(path)
        i += 1


def pipeline_config(backend_port):
    """The embedded pipeline, plus an OTLP backend and a watched pprof directory."""
    with open(os.path.join(REPO, "pipeline.yaml")) as f:
        config = yaml.safe_load(f)
    os.makedirs(f"{work}/incoming")
    config["receivers"]["pprof"] = {"path": f"{work}/incoming", "watch": True, "window": "10s"}
    config["exporters"]["file"]["directory"] = f"{work}/profiles"
    config["exporters"]["otlp_profiles"] = {"endpoint": f"http://127.0.0.1:{backend_port}", "protocol": "http"}
    main = config["service"]["pipelines"]["profiles"]
    main["exporters"].append("otlp_profiles")
    config["service"]["pipelines"]["profiles/files"] = {"receivers": ["pprof"], "exporters": ["otlp_profiles"]}
    path = f"{work}/pipeline.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def lost(http):
    """Process events and samples the receiver lost so far, from its metrics."""
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    names = ("agent_ebpf_events_lost_total", "agent_ebpf_counts_full_total", "agent_ebpf_user_stacks_full_total")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(names))


def spawned():
    try:
        with open(f"{work}/spawned") as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def main():
    backend = Backend()
    backend.up()
    stop_feed = threading.Event()
    os.makedirs(f"{work}/profiles")
    config = pipeline_config(backend.port)
    threading.Thread(target=feed_pprof_files, args=(f"{work}/incoming", stop_feed), daemon=True).start()
    churn = subprocess.Popen([churn_bin, str(rate), f"{work}/spawned"])
    maps_before = set(bpf_maps())
    http = f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        [agent_bin, "--config", config, f"--http-address={http}", "--log-level=warn"],
        stderr=open(f"{work}/agent.log", "w"),
    )
    agent_cpu = CpuAccount(agent.pid, f"soak-agent-{agent.pid}")
    start = time.monotonic()
    rows = []
    previous = None
    end = minutes * 60
    print(f"soak: {minutes:g} min, {rate} spawns/s asked, backend down {BACKEND_DOWN} s of every {BACKEND_CYCLE} s, "
          f"a pprof file every 5 s; one row a minute (values at that minute; CPU over its last {TICK} s)")
    print(f"{'t':>5} {'RSS MiB':>8} {'anon':>6} {'file':>6} {'HWM':>6} {'fds':>4} {'maps':>5} {'map MiB':>8} "
          f"{'cpu ms/s':>9} {'bpf ms/s':>9} {'lost/s':>7} {'spawns/s':>8} backend")
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= end:
            break
        time.sleep(TICK - elapsed % TICK)
        t = round(time.monotonic() - start)
        # The backend's state for the next tick (always up for the side-by-side measure at the end).
        in_cycle = t % BACKEND_CYCLE
        want_up = in_cycle < BACKEND_CYCLE - BACKEND_DOWN or t >= end - SIDE_BY_SIDE - TICK
        if want_up and backend.server is None:
            backend.up()
        elif not want_up and backend.server is not None:
            backend.down()
        if agent.poll() is not None:
            sys.exit(f"the agent exited ({agent.returncode}) at {t} s; see {work}/agent.log")
        rss, anon, file, hwm = status_kb(agent.pid, "VmRSS", "RssAnon", "RssFile", "VmHWM")
        maps = {i: b for i, b in bpf_maps().items() if i not in maps_before}
        now = dict(t=t, clock=time.monotonic(), rss=rss, anon=anon, file=file, hwm=hwm,
                   fds=len(os.listdir(f"/proc/{agent.pid}/fd")), maps=len(maps), map_bytes=sum(maps.values()),
                   cpu=agent_cpu.ms(), bpf=bpf_ms(agent.pid), lost=lost(http), spawned=spawned(),
                   backend="up" if backend.server else "down")
        if previous:
            span = now["clock"] - previous["clock"]
            for k in ("cpu", "bpf", "lost", "spawned"):
                now[k + "_rate"] = (now[k] - previous[k]) / span
            rows.append(now)
            if t % 60 == 0:
                print(f"{t:>5} {rss / 1024:8.1f} {anon / 1024:6.1f} {file / 1024:6.1f} {hwm / 1024:6.1f} {now['fds']:>4} "
                      f"{now['maps']:>5} {now['map_bytes'] / 2**20:8.1f} {now['cpu_rate']:9.2f} {now['bpf_rate']:9.3f} "
                      f"{now['lost_rate']:7.1f} {now['spawned_rate']:8.0f} {now['backend']}", flush=True)
        previous = now
    with open(f"{work}/soak.json", "w") as f:
        json.dump(rows, f)

    # The agent's cost over the soak's last SIDE_BY_SIDE seconds, then bpftrace's under the same churn.
    tail = [r for r in rows if r["t"] > end - SIDE_BY_SIDE]
    agent_cost = cost(tail[0], tail[-1])
    stopped = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    code = agent.wait()
    exit_seconds = time.monotonic() - stopped
    agent_cpu.close()
    bpftrace = subprocess.Popen(["bpftrace", "-e", "profile:hz:19 { @[ustack, kstack, comm] = count(); }"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bpftrace_cpu = CpuAccount(bpftrace.pid, f"soak-bpftrace-{bpftrace.pid}")
    time.sleep(5)  # loaded and attached
    first = dict(clock=time.monotonic(), cpu=bpftrace_cpu.ms(), bpf=bpf_ms(bpftrace.pid), spawned=spawned())
    time.sleep(SIDE_BY_SIDE)
    last = dict(clock=time.monotonic(), cpu=bpftrace_cpu.ms(), bpf=bpf_ms(bpftrace.pid), spawned=spawned())
    bpftrace.send_signal(signal.SIGINT)
    bpftrace.wait()
    bpftrace_cpu.close()
    churn.kill()
    stop_feed.set()
    peer_cost = cost(first, last)

    print(f"\nCPU under churn, {SIDE_BY_SIDE} s each (its cgroup's CPU time, plus its BPF programs' run time):")
    for name, c in (("agent", agent_cost), ("bpftrace", peer_cost)):
        print(f"  {name:9} {c['total']:7.2f} ms/s = {c['total'] / 10:5.2f}% of one core "
              f"(cpu {c['cpu']:.2f}, bpf {c['bpf']:.3f}) at {c['spawns']:.0f} spawns/s")
    print(f"  agent / bpftrace: {agent_cost['total'] / max(peer_cost['total'], 1e-9):.2f}x")
    print(f"agent stopped in {exit_seconds:.1f} s with exit code {code}; backend took {backend.requests} requests")
    return verdict(rows) and code == 0


def cost(first, last):
    span = last["clock"] - first["clock"]
    c = {k: (last[k] - first[k]) / span for k in ("cpu", "bpf", "spawned")}
    return dict(cpu=c["cpu"], bpf=c["bpf"], total=c["cpu"] + c["bpf"], spawns=c["spawned"])


def verdict(rows):
    """Nothing may keep growing after warm-up: the mean of the last third of
    the run after warm-up is held against the mean of its first third."""
    after = [r for r in rows if r["t"] > WARM_UP]
    third = max(1, len(after) // 3)
    early, late = after[:third], after[-third:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    # (what, key, allowed growth: fraction, plus an absolute slack); maps
    # gain an unwind table per new object met, within the tables' byte budget
    # (checked by map bytes)
    limits = [("RSS", "rss", 0.10, 8 * 1024), ("descriptors", "fds", 0.10, 8), ("BPF maps", "maps", 0.25, 4),
              ("BPF map bytes", "map_bytes", 0.10, 1 << 20), ("CPU", "cpu_rate", 0.50, 5.0),
              ("BPF time", "bpf_rate", 0.50, 2.0), ("lost events", "lost_rate", 1.0, 5.0)]
    ok = True
    print(f"\ngrowth after warm-up ({WARM_UP:.0f} s), mean of t {early[0]['t']}-{early[-1]['t']} s vs {late[0]['t']}-{late[-1]['t']} s:")
    for what, key, fraction, slack in limits:
        a, b = mean(early, key), mean(late, key)
        bounded = b <= a * (1 + fraction) + slack
        ok &= bounded
        print(f"  {what:14} {a:14.2f} -> {b:14.2f}  {'flat' if bounded else 'GROWS'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
