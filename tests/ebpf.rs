//! End-to-end tests of the `ebpf_cpu` receiver: the `agent` binary on its
//! embedded default pipeline, profiling real workloads with real BPF.
//!
//! They need root (or CAP_BPF + CAP_PERFMON) and clang. Outside CI they are
//! skipped, loudly, when those are missing; with `CI=true` they fail instead.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_core::pprof::from_pprof;
use agent_core::{ProfileBatch, ResolvedSample};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

#[path = "support/stack_chain.rs"]
mod stack_chain;
use stack_chain::{complete_down_to, complete_down_to_main, outside_the_workload};
#[path = "support/go_workload.rs"]
mod go_workload;
#[path = "support/sinks.rs"]
mod sinks;

/// The tests measure CPU shares: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let clang = Command::new("clang")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && clang {
        return true;
    }
    let why = format!("root: {root}, clang: {clang}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("eBPF tests cannot run in CI ({why}); CI must run them as root with clang");
    }
    eprintln!("SKIPPED: eBPF end-to-end tests need root and clang ({why})");
    false
}

fn compile(source: &str, out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(source);
    let bin = out.join(source.trim_end_matches(".c"));
    let status = Command::new("clang")
        .args([
            "-O2",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "clang failed on {source}");
    bin
}

struct Agent {
    child: Child,
    out: PathBuf,
    /// Its HTTP view (`/metrics`).
    http: String,
    /// The last lines it logged, shown when it exits badly.
    log_tail: std::sync::Arc<Mutex<std::collections::VecDeque<String>>>,
}

/// A test that fails with its agent running stops it (its BPF programs
/// would sample on through the next tests).
impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of the agent's log kept for a failure's report.
const LOG_TAIL_LINES: usize = 200;

impl Agent {
    /// Starts the agent on the embedded pipeline; returns once it is warm.
    fn start(out: &Path) -> Agent {
        Self::start_with(out, &[])
    }

    /// [`Agent::start`] with extra flags.
    fn start_with(out: &Path, flags: &[&str]) -> Agent {
        let store = format!("--local-store-directory={}", out.display());
        let mut args = vec![store.as_str()];
        args.extend(flags);
        Self::launch(out, &args)
    }

    /// Starts the agent with `args`; returns once it is warm, with `out`
    /// the directory its (first) file exporter writes to.
    fn launch(out: &Path, args: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args([
                "--http-address",
                "127.0.0.1:0",
                "--profiling-duration=1s",
                "--log-format=json",
            ])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut line = String::new();
        let mut http = String::new();
        loop {
            line.clear();
            let n = log.read_line(&mut line).unwrap();
            assert!(n > 0, "agent exited before sampling: {:?}", child.wait());
            if line.contains("HTTP server listening") {
                let at = line.find("\"address\":\"").expect("address logged") + 11;
                http = line[at..].split('"').next().unwrap().to_owned();
            }
            if line.contains("pipelines started") {
                break;
            }
            assert!(Instant::now() < deadline, "agent did not start");
        }
        // Keep draining stderr so the agent never blocks on a full pipe.
        let log_tail = std::sync::Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let tail = log_tail.clone();
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let agent = Agent {
            child,
            out: out.to_owned(),
            http,
            log_tail,
        };
        agent.wait_until_warm(deadline);
        agent
    }

    /// Waits until the agent is warm, as a node's agent is: its first
    /// window written, and caught up with reading the processes that were
    /// running when it started (a whole window in which every walk that
    /// reached code without a table yet found room to be deferred).
    fn wait_until_warm(&self, deadline: Instant) {
        while profiles_in(&self.out).is_empty() {
            assert!(Instant::now() < deadline, "agent wrote no window");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut walks_left_to_bpf = self.metrics("defer_ring_full");
        loop {
            std::thread::sleep(Duration::from_millis(1100));
            let now = self.metrics("defer_ring_full");
            if now == walks_left_to_bpf {
                break;
            }
            assert!(Instant::now() < deadline, "agent did not catch up: {now:?}");
            walks_left_to_bpf = now;
        }
    }

    /// The receiver's metrics whose names contain `part`, as `/metrics` shows them.
    fn metrics(&self, part: &str) -> Vec<String> {
        self.get("/metrics")
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(part))
            .map(str::to_owned)
            .collect()
    }

    /// The HTTP view's answer to `GET path`, head and body.
    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.http).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.http).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Stops the agent (SIGTERM), checks it exits 0, returns every batch it wrote.
    fn stop(self) -> Vec<ProfileBatch> {
        self.stop_measuring(|| ()).0
    }

    /// [`Agent::stop`], taking `measure` right before the signal.
    fn stop_measuring<T>(mut self, measure: impl FnOnce() -> T) -> (Vec<ProfileBatch>, T) {
        let pid = self.child.id().to_string();
        let measured = measure();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let signalled = Instant::now();
        let status = self.child.wait().unwrap();
        let took = signalled.elapsed();
        eprintln!("the agent stopped {took:?} after SIGTERM");
        if took > Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            let tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
            let last: Vec<&str> = tail.iter().rev().take(20).map(String::as_str).collect();
            eprintln!(
                "a slow stop; the agent's last log lines, newest first:\n{}",
                last.join("\n")
            );
        }
        if status.code() != Some(0) {
            // The reader thread ends with the pipe; give it a moment.
            std::thread::sleep(Duration::from_millis(200));
            let tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
            let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
            panic!(
                "the agent exited with {status} at SIGTERM; its log ended:\n{}",
                tail.join("\n")
            );
        }
        (batches_in(&self.out), measured)
    }
}

impl Agent {
    /// Waits (up to a minute) until a window that began at `since` or
    /// later has been written: every sample before it has gone through the
    /// pipeline (which lags on a loaded machine).
    fn wait_for_window_from(&self, since: std::time::SystemTime) {
        let since = since
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let newest = profiles_in(&self.out).pop();
            let reached = newest.is_some_and(|f| {
                std::fs::read(f)
                    .ok()
                    .and_then(|data| from_pprof(&data).ok())
                    .is_some_and(|b| b.iter().any(|b| b.start_unix_nanos >= since))
            });
            if reached {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pipeline lags by over a minute"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Every batch of the pprof files in `dir`.
fn batches_in(dir: &Path) -> Vec<ProfileBatch> {
    profiles_in(dir)
        .iter()
        .flat_map(|f| from_pprof(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

/// The pprof files in `dir`, in the order they were written.
fn profiles_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.to_string_lossy().ends_with(".pb.gz"));
    files.sort();
    files
}

/// Non-idle CPU time of the machine so far, in clock ticks.
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = stat.lines().next().unwrap();
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal
    v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
}

fn ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Samples of process `pid`.
fn samples_of(batches: &[ProfileBatch], pid: u32) -> Vec<ResolvedSample> {
    batches
        .iter()
        .flat_map(|b| b.resolved_samples())
        .filter(|s| s.series.get("pid") == Some(pid.to_string().as_str()))
        .collect()
}

/// Names of a binary's functions by address, through its load segments.
struct Symbols {
    segments: Vec<(u64, u64, u64)>, // file offset, size, vaddr
    functions: Vec<(u64, u64, String)>,
}

impl Symbols {
    fn read(path: &Path) -> Self {
        let data = std::fs::read(path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let segments = elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect();
        let mut functions: Vec<(u64, u64, String)> = elf
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .map(|s| (s.address(), s.size(), s.name().unwrap().to_owned()))
            .collect();
        functions.sort();
        Symbols {
            segments,
            functions,
        }
    }

    /// The ELF virtual address of a runtime address of a mapping (start,
    /// file offset).
    fn vaddr(&self, address: u64, map_start: u64, map_offset: u64) -> Option<u64> {
        let file_offset = address - map_start + map_offset;
        let &(offset, _, vaddr) = self
            .segments
            .iter()
            .find(|(o, size, _)| (*o..o + size).contains(&file_offset))?;
        Some(file_offset - offset + vaddr)
    }

    /// The function at a runtime address of a mapping (start, file offset).
    fn name(&self, address: u64, map_start: u64, map_offset: u64) -> Option<&str> {
        let vaddr = self.vaddr(address, map_start, map_offset)?;
        self.functions
            .iter()
            .find(|(start, size, _)| (*start..start + size).contains(&vaddr))
            .map(|(_, _, name)| name.as_str())
    }
}

/// Every function name the agent gave a sample's frames, leaf first,
/// inlined functions included.
fn agent_names(sample: &ResolvedSample) -> Vec<&str> {
    sample
        .frames
        .iter()
        .flat_map(|f| f.lines.iter().map(|l| l.function.as_str()))
        .collect()
}

/// Share of `samples`' value for which `pred` holds.
fn share(samples: &[ResolvedSample], pred: impl Fn(&ResolvedSample) -> bool) -> f64 {
    let total: i64 = samples.iter().map(|s| s.value).sum();
    let matching: i64 = samples.iter().filter(|s| pred(s)).map(|s| s.value).sum();
    matching as f64 / total.max(1) as f64
}

/// User frames of a sample named through `symbols`, leaf first; return
/// addresses (all but the first user frame) step back into their call.
fn user_function_names(sample: &ResolvedSample, binary: &str, symbols: &Symbols) -> Vec<String> {
    let mut names = Vec::new();
    let mut first_user = true;
    for frame in &sample.frames {
        let Some(m) = &frame.mapping else { continue };
        if m.filename == agent_core::pprof::KERNEL_MAPPING_NAME {
            continue;
        }
        let address = if first_user {
            frame.address
        } else {
            frame.address - 1
        };
        first_user = false;
        let name = if m.filename == binary {
            symbols
                .name(address, m.memory_start, m.file_offset)
                .unwrap_or("?")
                .to_owned()
        } else {
            format!("[{}]", m.filename)
        };
        names.push(name);
    }
    names
}

#[test]
fn frame_pointer_chain_and_cpu_share() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = compile("fp_chain.c", dir.path());
    let symbols = Symbols::read(&binary);
    // Busy time and samples both over the agent's whole run.
    let busy_before = busy_ticks();
    let agent = Agent::start(&dir.path().join("out"));
    let workload = Command::new(&binary)
        .arg("6")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = workload.id();
    let output = workload.wait_with_output().unwrap();
    let workload_cpu_ns: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (batches, busy_after) = agent.stop_measuring(busy_ticks);
    let busy = busy_after - busy_before;
    // Off-CPU profiling is off by default: CPU samples only.
    for b in &batches {
        assert_eq!(b.profile_type, agent_core::ProfileType::cpu_samples(19));
    }

    let mine = samples_of(&batches, pid);
    let my_count: i64 = mine.iter().map(|s| s.value).sum();
    assert!(my_count > 50, "only {my_count} samples of the workload");
    // The default pipeline's labels: from the receiver, metadata and relabel.
    let series = &mine[0].series;
    assert_eq!(series.get("comm"), Some("fp_chain"), "{series:?}");
    assert_eq!(series.get("executable"), Some("fp_chain"), "{series:?}");
    assert!(series.get("node").is_some(), "{series:?}");
    assert!(
        series.pairs().iter().all(|(k, _)| !k.starts_with("__")),
        "{series:?}"
    );
    // Thread and CPU are sample labels (pprof has one label list per sample).
    assert!(
        series.get("thread_id").is_some() && series.get("cpu").is_some(),
        "{series:?}"
    );
    let chain = ["c", "b", "a", "main"];
    let binary_name = binary.to_string_lossy().to_string();
    let full: i64 = mine
        .iter()
        .filter(|s| {
            let names = user_function_names(s, &binary_name, &symbols);
            names.windows(4).any(|w| w == chain)
        })
        .map(|s| s.value)
        .sum();
    let ratio = full as f64 / my_count as f64;
    eprintln!(
        "full main->a->b->c chain in {full} of {my_count} samples ({:.1}%)",
        ratio * 100.0
    );
    assert!(
        ratio >= 0.95,
        "only {:.1}% of samples carry the full chain",
        ratio * 100.0
    );

    // The embedded pipeline's symbolize processor names the same chain.
    let named = share(&mine, |s| agent_names(s).windows(4).any(|w| w == chain));
    eprintln!(
        "agent-named main->a->b->c in {:.1}% of samples",
        named * 100.0
    );
    assert!(
        named >= 0.95,
        "the agent named the chain in only {:.1}% of samples",
        named * 100.0
    );

    // Its share of (non-idle) samples matches its share of busy CPU time.
    // Both over the agent's whole run: every sample it wrote, and the
    // machine's busy time from its start to its stop.
    let all_samples: i64 = batches.iter().map(|b| b.total_value()).sum();
    let sample_share = my_count as f64 / all_samples as f64;
    let busy_seconds = busy as f64 / ticks_per_second() as f64;
    let cpu_share = (workload_cpu_ns as f64 / 1e9) / busy_seconds;
    eprintln!(
        "workload: {:.1}% of samples, {:.1}% of busy CPU ({:.2}s of {:.2}s)",
        sample_share * 100.0,
        cpu_share * 100.0,
        workload_cpu_ns as f64 / 1e9,
        busy_seconds
    );
    assert!(
        (sample_share - cpu_share).abs() <= 0.10,
        "sample share {sample_share:.3} vs CPU share {cpu_share:.3}"
    );
}

/// /proc/kallsyms, sorted: (address, name).
fn kallsyms() -> Vec<(u64, String)> {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let mut v: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            Some((addr, f.next()?.to_owned()))
        })
        .filter(|(a, _)| *a != 0)
        .collect();
    v.sort();
    v
}

#[test]
fn kernel_frames_of_a_syscall_heavy_workload() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = compile("syscalls.c", dir.path());
    // A Parca Agent config whose rule reads a thread label: relabel then
    // runs per (series, thread, CPU) on real samples.
    let parca_config = dir.path().join("parca-agent.yaml");
    std::fs::write(
        &parca_config,
        "relabel_configs:\n- {source_labels: [__meta_thread_comm], target_label: thread}\n",
    )
    .unwrap();
    // 97 Hz: enough samples even when a loaded machine gives the workload
    // a fraction of a CPU (samples follow CPU time, not wall time).
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &[
            &format!("--config-path={}", parca_config.display()),
            "--profiling-cpu-sampling-frequency=97",
        ],
    );
    let workload = Command::new(&binary).arg("4").spawn().unwrap();
    let pid = workload.id();
    assert!(workload.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_millis(300));
    let batches = agent.stop();

    let mine = samples_of(&batches, pid);
    let total: i64 = mine.iter().map(|s| s.value).sum();
    assert!(total > 20, "only {total} samples of the workload");
    // pprof has one label list per sample: the decoded series holds both.
    for s in &mine {
        let thread = s.series.get("thread");
        assert!(thread.is_some(), "{:?}", s.series);
        assert_eq!(thread, s.series.get("thread_comm"), "{:?}", s.series);
    }
    let is_kernel = |f: &agent_core::ResolvedFrame| {
        f.mapping
            .as_ref()
            .is_some_and(|m| m.filename == agent_core::pprof::KERNEL_MAPPING_NAME)
    };
    let with_kernel: Vec<&ResolvedSample> = mine
        .iter()
        .filter(|s| s.frames.iter().any(is_kernel))
        .collect();
    let kernel_total: i64 = with_kernel.iter().map(|s| s.value).sum();
    eprintln!("{kernel_total} of {total} samples have kernel frames");
    assert!(
        kernel_total * 2 >= total,
        "kernel frames in only {kernel_total} of {total} samples"
    );
    // Kernel frames come first (leaf first), then the user frames.
    for s in &with_kernel {
        let first_user = s
            .frames
            .iter()
            .position(|f| !is_kernel(f))
            .unwrap_or(s.frames.len());
        assert!(s.frames[first_user..].iter().all(|f| !is_kernel(f)));
    }
    // The addresses are real kernel code: the read path resolves in kallsyms.
    let symbols = kallsyms();
    let mut names: HashMap<String, i64> = HashMap::new();
    for s in &with_kernel {
        for f in s.frames.iter().filter(|f| is_kernel(f)) {
            let i = symbols.partition_point(|(a, _)| *a <= f.address);
            if let Some((_, name)) = i.checked_sub(1).map(|i| &symbols[i]) {
                *names.entry(name.clone()).or_default() += s.value;
            }
        }
    }
    assert!(
        names.keys().any(|n| n.contains("read")),
        "no read-path kernel function among {names:?}"
    );
    // The agent named its kernel frames itself, the same way.
    let named = share(&with_kernel.into_iter().cloned().collect::<Vec<_>>(), |s| {
        s.frames
            .iter()
            .filter(|f| is_kernel(f))
            .all(|f| f.lines.len() == 1 && !f.lines[0].function.is_empty())
    });
    assert!(
        named >= 0.99,
        "kernel frames named in only {named:.3} of samples"
    );
}

fn node_available() -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("node is missing; CI must install nodejs");
    }
    if !ok {
        eprintln!("SKIPPED: node is not installed");
    }
    ok
}

/// A Node.js process started with --perf-basic-prof, profiled with V8
/// unwinding off: its JIT-compiled JavaScript function is named from the
/// perf map V8 writes.
#[test]
fn jit_frames_of_node_are_named_from_its_perf_map() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() || !node_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 97 Hz, as above: samples follow CPU time, which a loaded machine shares.
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &[
            "--profiling-cpu-sampling-frequency=97",
            "--v8-unwinding-disable",
        ],
    );
    // Hot for 4 s, then idle until stdin closes: its perf map is read
    // through the live process, so it lives until the (possibly lagging)
    // pipeline has symbolized its windows.
    let script = "function hotJsFunction(n) { let s = 0; \
        for (let i = 0; i < n; i++) { s += Math.sqrt(i) * Math.sin(i); } return s; } \
        const end = Date.now() + 4000; let t = 0; \
        while (Date.now() < end) { t += hotJsFunction(100000); } \
        console.log(t !== 0); process.stdin.resume();";
    // V8 also writes isolate logs into its working directory.
    let mut node = Command::new("node")
        .current_dir(dir.path())
        .args(["--perf-basic-prof", "-e", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = node.id();
    let mut hot_done = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut hot_done)
        .unwrap();
    assert_eq!(hot_done.trim(), "true");
    agent.wait_for_window_from(std::time::SystemTime::now());
    drop(node.stdin.take());
    assert!(node.wait().unwrap().success());
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let batches = agent.stop();

    let mine = samples_of(&batches, pid);
    let total: i64 = mine.iter().map(|s| s.value).sum();
    assert!(total > 20, "only {total} samples of node");
    let named = share(&mine, |s| {
        agent_names(s).iter().any(|n| n.contains("hotJsFunction"))
    });
    eprintln!(
        "hotJsFunction named in {:.1}% of {total} node samples",
        named * 100.0
    );
    assert!(
        named >= 0.5,
        "hotJsFunction named in only {:.1}% of node samples",
        named * 100.0
    );
}

#[test]
fn without_privileges_the_error_says_what_to_do() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged agent must be able to write its output directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_agent"))
        .args(["--http-address", "127.0.0.1:0"])
        .arg(format!(
            "--local-store-directory={}",
            dir.path().join("out").display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("loading BPF programs is not permitted")
            && stderr.contains("run as root, or grant CAP_BPF"),
        "{stderr}"
    );
}

/// A workload built without frame pointers and the call chain its hot path
/// must show, outermost last.
struct NoFramePointerWorkload {
    binary: PathBuf,
    chain: &'static [&'static str],
}

fn run_tool(program: &str, args: &[&str], dir: &Path) {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// tests/workloads/`name`.
fn workload_source(name: &str) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    src.join(name).to_string_lossy().into_owned()
}

/// The C workload of tests/workloads: an executable and a shared library.
fn c_workload(dir: &Path) -> NoFramePointerWorkload {
    let c_flags = ["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"];
    let mut lib = c_flags.to_vec();
    lib.extend(["-shared", "-fPIC", "-o", "libnofp.so"]);
    let lib_src = workload_source("nofp_lib.c");
    lib.push(&lib_src);
    run_tool("gcc", &lib, dir);
    let mut exe = c_flags.to_vec();
    let exe_src = workload_source("nofp_chain.c");
    exe.extend([
        "-o",
        "nofp_chain",
        &exe_src,
        "-L.",
        "-lnofp",
        "-Wl,-rpath,$ORIGIN",
    ]);
    run_tool("gcc", &exe, dir);
    NoFramePointerWorkload {
        binary: dir.join("nofp_chain"),
        chain: &[
            "leaf", "spin", "lib_f", "lib_e", "lib_d", "c", "b", "a", "main",
        ],
    }
}

/// The C (executable + shared library), Rust and C++ workloads of tests/workloads.
fn no_frame_pointer_workloads(dir: &Path) -> Vec<NoFramePointerWorkload> {
    let rust_src = workload_source("rust_chain.rs");
    run_tool(
        "rustc",
        &["-C", "opt-level=2", "-o", "rust_chain", &rust_src],
        dir,
    );
    let cpp_src = workload_source("cpp_chain.cpp");
    run_tool("g++", &["-O2", "-o", "cpp_chain", &cpp_src], dir);
    vec![
        c_workload(dir),
        NoFramePointerWorkload {
            binary: dir.join("rust_chain"),
            chain: &[
                "rust_chain::leaf",
                "rust_chain::e",
                "rust_chain::d",
                "rust_chain::c",
                "rust_chain::b",
                "rust_chain::a",
                "rust_chain::main",
                "main",
            ],
        },
        NoFramePointerWorkload {
            binary: dir.join("cpp_chain"),
            chain: &[
                "work::leaf",
                "work::d",
                "work::c",
                "work::b",
                "work::a",
                "main",
            ],
        },
    ]
}

/// Prints the share of `samples` (of `workload`, named `name`) whose whole
/// chain reaches main, shows a few that do not, and returns the share and
/// the sample count.
fn report_completeness(name: &str, samples: &[ResolvedSample], chain: &[&str]) -> (f64, i64) {
    let total: i64 = samples.iter().map(|s| s.value).sum();
    let complete = share(samples, |s| complete_down_to_main(s, chain));
    eprintln!(
        "{name}: complete chain down to main in {:.1}% of {total} samples",
        complete * 100.0
    );
    for s in samples
        .iter()
        .filter(|s| !complete_down_to_main(s, chain))
        .take(5)
    {
        eprintln!(
            "  incomplete ({:?}): {:?}",
            s.series.get("unwind_status"),
            agent_names(s)
        );
    }
    (complete, total)
}

/// Code without frame pointers is unwound with .eh_frame tables: C with a
/// shared library, Rust and C++ each keep their whole chain down to main in
/// at least 99 % of their samples, their first milliseconds included (walks
/// that reach code whose table is not loaded yet are finished in user space).
#[test]
fn code_without_frame_pointers_is_unwound_with_eh_frame_tables() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workloads = no_frame_pointer_workloads(dir.path());
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &["--profiling-cpu-sampling-frequency=97"],
    );
    // Started together: their start-ups (exec, the loader mapping libraries,
    // tables compiled) overlap, as on a busy node.
    let children: Vec<(u32, Child)> = workloads
        .iter()
        .map(|w| {
            let child = Command::new(&w.binary)
                .arg("8")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            (child.id(), child)
        })
        .collect();
    let pids: Vec<u32> = children
        .into_iter()
        .map(|(pid, mut child)| {
            assert!(child.wait().unwrap().success());
            pid
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let batches = agent.stop();
    for (w, pid) in workloads.iter().zip(pids) {
        let mine: Vec<_> = samples_of(&batches, pid)
            .into_iter()
            .filter(|s| !outside_the_workload(s, w.chain))
            .collect();
        let name = w.binary.file_name().unwrap().to_string_lossy();
        let (complete, total) = report_completeness(&name, &mine, w.chain);
        assert!(total > 100, "only {total} samples of {name}");
        assert!(
            complete >= 0.99,
            "{name}: complete in only {:.1}% of samples",
            complete * 100.0
        );
    }
}

/// The library a process maps whose path contains `name`.
fn mapped_library(pid: u32, name: &str) -> Option<PathBuf> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.contains(name))
        .map(PathBuf::from)
}

/// The largest tables have more than one block of fences (over 2^19 rows:
/// clang 14's libLLVM has 948,864); the walker searches the fence blocks
/// first. clang optimizing a large file, most of its time in libLLVM,
/// keeps whole stacks down to `main` in at least 99 % of those samples,
/// and at least 5 % of their libLLVM frames lie in code whose rows only
/// the second fence block finds.
#[test]
fn the_largest_unwind_tables_are_searched_through_every_fence_block() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Enough functions for a few seconds of optimization.
    let source: String = (0..3000u32)
        .map(|i| {
            format!(
                "int f{i}(int *a, int n) {{ int s = {i}; for (int k = 0; k < n; k++) \
                 {{ s += a[k] * (k ^ {i}); if (s > 1000) s -= a[(k + {i}) % n]; }} \
                 return s + (n > 1 ? f{}(a + 1, n - 1) : 0); }}\n",
                i.saturating_sub(1)
            )
        })
        .collect();
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &["--profiling-cpu-sampling-frequency=97"],
    );
    // clang waits for its source on stdin while the agent reads its
    // mappings and compiles its tables: its samples are then walked in BPF
    // from the first (a walk deferred to user space ends where its copy of
    // clang's deep stack does).
    let mut clang = Command::new("clang")
        .args(["-x", "c", "-O2", "-c", "-", "-o", "large.o"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = clang.id();
    std::thread::sleep(Duration::from_secs(3));
    let mut stdin = clang.stdin.take().unwrap();
    stdin.write_all(source.as_bytes()).unwrap();
    drop(stdin);
    let llvm = mapped_library(pid, "libLLVM").expect("clang maps libLLVM");
    assert!(clang.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let batches = agent.stop();

    let table = agent_unwind_table::compile_file(&llvm).unwrap();
    let rows = table.rows.len();
    assert!(
        rows > 1 << 19,
        "{}: {rows} rows, one fence block",
        llvm.display()
    );
    // Code past the first fence block's rows (512 x 1024): its frames were
    // found through the second.
    let second_fence_block = u64::from(table.rows[1 << 19].pc);
    let symbols = Symbols::read(&llvm);
    let in_llvm: Vec<_> = samples_of(&batches, pid)
        .into_iter()
        .filter(|s| {
            s.frames
                .first()
                .and_then(|f| f.mapping.as_ref())
                .is_some_and(|m| m.filename.contains("libLLVM"))
        })
        .collect();
    let total: i64 = in_llvm.iter().map(|s| s.value).sum();
    let (mut frames, mut past_first_block) = (0, 0);
    for frame in in_llvm.iter().flat_map(|s| &s.frames) {
        let Some(m) = frame
            .mapping
            .as_ref()
            .filter(|m| m.filename.contains("libLLVM"))
        else {
            continue;
        };
        frames += 1;
        let vaddr = symbols.vaddr(frame.address, m.memory_start, m.file_offset);
        past_first_block += usize::from(vaddr.is_some_and(|v| v >= second_fence_block));
    }
    eprintln!("{past_first_block} of {frames} libLLVM frames lie past the first fence block");
    assert!(
        past_first_block * 20 >= frames,
        "only {past_first_block} of {frames} libLLVM frames need the second fence block"
    );
    let whole = share(&in_llvm, |s| {
        s.series.get("unwind_status") == Some("complete") && agent_names(s).contains(&"main")
    });
    eprintln!(
        "clang: {total} samples in {} ({rows} rows), {:.1}% whole",
        llvm.display(),
        whole * 100.0
    );
    for s in in_llvm
        .iter()
        .filter(|s| s.series.get("unwind_status") != Some("complete"))
        .take(3)
    {
        eprintln!(
            "  {:?}: {:?}",
            s.series.get("unwind_status"),
            agent_names(s)
        );
    }
    assert!(total > 100, "only {total} samples in libLLVM");
    assert!(
        whole >= 0.99,
        "whole in only {:.1}% of samples",
        whole * 100.0
    );
}

/// Go code has no frame pointer in its leaf functions' prologues and no
/// .eh_frame: stripped (`-s -w`) and unstripped builds by Go 1.19 and a
/// current Go keep their whole chain down to `runtime.goexit`, unwound with
/// rows from `.gopclntab` and named from it (the inlined helper included)
/// in at least 98 % of their samples. The chain runs under the goroutine
/// labels handler=checkout (a map in Go 1.19, a slice in Go 1.24+): its
/// samples carry them, those of the unlabelled goroutine beside it do not.
#[test]
fn go_binaries_stripped_or_not_are_unwound_named_and_labelled() {
    const CHAIN: [&str; 7] = [
        "main.goLeaf",
        "main.inlinedHelper",
        "main.goMid",
        "main.goOuter",
        "main.main",
        "runtime.main",
        "runtime.goexit",
    ];
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binaries: Vec<PathBuf> = go_workload::go_toolchains()
        .iter()
        .enumerate()
        .flat_map(|(i, go)| {
            [
                go_workload::build_go_chain(go, dir.path(), &format!("go_chain_{i}"), ""),
                go_workload::build_go_chain(go, dir.path(), &format!("go_stripped_{i}"), "-s -w"),
            ]
        })
        .collect();
    if binaries.is_empty() {
        return;
    }
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &["--profiling-cpu-sampling-frequency=97"],
    );
    let children: Vec<Child> = binaries
        .iter()
        // A second's pause first: labels are read once the agent has read
        // the new binary (its first samples go without).
        .map(|b| Command::new(b).args(["6", "1"]).spawn().unwrap())
        .collect();
    let pids: Vec<u32> = children
        .into_iter()
        .map(|mut child| {
            let pid = child.id();
            assert!(child.wait().unwrap().success());
            pid
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let batches = agent.stop();
    let mut failures = Vec::new();
    for (binary, pid) in binaries.iter().zip(pids) {
        // The runtime's own threads (GC, sysmon) are whole walks without
        // the chain: left out like the loader's.
        let mine: Vec<_> = samples_of(&batches, pid)
            .into_iter()
            .filter(|s| !outside_the_workload(s, &CHAIN))
            .collect();
        let name = binary.file_name().unwrap().to_string_lossy();
        let total: i64 = mine.iter().map(|s| s.value).sum();
        let complete = share(&mine, |s| complete_down_to(s, &CHAIN, "runtime.goexit"));
        let inlined = share(&mine, |s| agent_names(s).contains(&"main.inlinedHelper"));
        let running = |leaf: &str| -> Vec<_> {
            mine.iter()
                .filter(|s| agent_names(s).contains(&leaf))
                .cloned()
                .collect()
        };
        let (chain, other) = (running("main.goLeaf"), running("main.otherLeaf"));
        let count = |samples: &[ResolvedSample]| samples.iter().map(|s| s.value).sum::<i64>();
        let checkout = |s: &ResolvedSample| s.series.get("handler") == Some("checkout");
        let labelled = share(&chain, checkout);
        let unlabelled_with_labels = share(&other, checkout);
        eprintln!(
            "{name}: whole and named in {:.1}% of {total} samples, inlined helper in {:.1}%, \
             handler=checkout on {:.1}% of {} chain samples and {:.1}% of {} unlabelled ones",
            complete * 100.0,
            inlined * 100.0,
            labelled * 100.0,
            count(&chain),
            unlabelled_with_labels * 100.0,
            count(&other)
        );
        if count(&chain) < 50
            || count(&other) < 50
            || labelled < 0.98
            || unlabelled_with_labels > 0.0
        {
            failures.push(format!("{name}: labels"));
        }
        for s in mine
            .iter()
            .filter(|s| !complete_down_to(s, &CHAIN, "runtime.goexit"))
            .take(3)
        {
            eprintln!(
                "  incomplete ({:?}): {:?}",
                s.series.get("unwind_status"),
                agent_names(s)
            );
        }
        if total < 100 || complete < 0.98 || inlined < 0.3 {
            failures.push(format!("{name}: {:.1}% of {total}", complete * 100.0));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Short-lived processes are mostly start-up: 50 runs of ~100 ms of the C
/// workload (executable + shared library, no frame pointers), one after
/// another, sampled at 997 Hz, keep their whole chain down to main in at
/// least 99 % of their samples. Their tables are known from the first run
/// on, but each run's mappings reach the unwinder only after its exec and
/// the loader's mmaps: those first milliseconds' walks are finished in user
/// space from a copy of the stack. Meanwhile clang starts: libLLVM's table
/// (~950,000 rows) takes the agent half a second to compile, during which
/// the runs must still be read while they live.
#[test]
fn short_lived_processes_are_unwound_from_their_first_millisecond() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = c_workload(dir.path());
    let source = dir.path().join("large.c");
    let functions: String = (0..400)
        .map(|i| format!("int f{i}(int x) {{ return x * {i} + 1; }}\n"))
        .collect();
    std::fs::write(&source, functions).unwrap();
    // At 997 Hz the debug build's pipeline lags, and its stop drains for
    // ~20 s: more time to stop than the default 30 s bound leaves on a
    // loaded machine.
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        include_str!("../pipeline.yaml")
            .replace("service:\n", "service:\n  shutdown_timeout: 2m\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let agent = Agent::start_with(
        &out,
        &[
            "--config",
            config.to_str().unwrap(),
            "--profiling-cpu-sampling-frequency=997",
        ],
    );
    let mut clang = None;
    let pids: Vec<u32> = (0..50)
        .map(|run| {
            if run == 10 {
                let compile = Command::new("clang")
                    .args(["-O2", "-c", "-o", "/dev/null"])
                    .arg(&source)
                    .spawn()
                    .unwrap();
                clang = Some(compile);
            }
            let mut child = Command::new(&workload.binary)
                .arg("0.1")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            assert!(child.wait().unwrap().success());
            child.id()
        })
        .collect();
    assert!(clang.unwrap().wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    // How the walks that reached code without a table yet went.
    for metric in ["deferred", "defer_ring_full"] {
        for line in agent.metrics(metric) {
            eprintln!("  {line}");
        }
    }
    let batches = agent.stop();
    let mine: Vec<_> = pids
        .iter()
        .flat_map(|&pid| samples_of(&batches, pid))
        .filter(|s| !outside_the_workload(s, workload.chain))
        .collect();
    let (complete, total) = report_completeness("50 short-lived nofp_chain", &mine, workload.chain);
    // 50 × 100 ms at 997 Hz: ~5000 samples when the machine is not busy.
    assert!(total > 1000, "only {total} samples");
    assert!(
        complete >= 0.99,
        "complete in only {:.1}% of samples",
        complete * 100.0
    );
}

/// The pids in the newest BPF map named `name` (the agent under test's:
/// these tests run one agent at a time).
fn bpf_map_pids(name: &str) -> HashSet<u32> {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool {args:?} failed");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let id = json(&["map", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == name)
        .filter_map(|m| m["id"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("no BPF map {name}"));
    json(&["map", "dump", "id", &id.to_string()])
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["formatted"]["key"].as_u64().unwrap() as u32)
        .collect()
}

/// Under process churn most processes are gone before the agent reads
/// them: each must still leave nothing behind in the BPF process table
/// (which BPF keeps for an exited process until told).
#[test]
fn exited_processes_leave_nothing_in_the_bpf_process_table() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("out"));
    let pids: Vec<u32> = (0..500)
        .map(|_| {
            let mut child = Command::new("/bin/true").spawn().unwrap();
            assert!(child.wait().unwrap().success());
            child.id()
        })
        .collect();
    // Those read while they lived are forgotten after the window (1 s) they
    // exited in; the others as soon as their exit is read.
    std::thread::sleep(Duration::from_millis(2500));
    let table = bpf_map_pids("known_processes");
    agent.stop();
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| table.contains(pid) && !Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(
        left.is_empty(),
        "{} of {} exited processes are still in known_processes: {left:?}",
        left.len(),
        pids.len()
    );
}

/// `--dwarf-unwinding-disable` walks frame pointers only, which cannot get
/// through code built without them; `--dwarf-unwinding-mixed` uses the
/// tables where they cover the address and keeps whole stacks.
#[test]
fn unwinding_modes_are_honoured() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = c_workload(dir.path());
    for (flag, expect_complete) in [
        ("--dwarf-unwinding-disable", false),
        ("--dwarf-unwinding-mixed", true),
    ] {
        let out = dir.path().join(flag.trim_start_matches('-'));
        let agent = Agent::start_with(&out, &[flag, "--profiling-cpu-sampling-frequency=97"]);
        let mut child = Command::new(&workload.binary)
            .arg("4")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        std::thread::sleep(Duration::from_millis(300));
        let mine: Vec<_> = samples_of(&agent.stop(), pid)
            .into_iter()
            .filter(|s| !outside_the_workload(s, workload.chain))
            .collect();
        let complete = share(&mine, |s| complete_down_to_main(s, workload.chain));
        let frame_pointer_failed = share(&mine, |s| {
            s.series.get("unwind_status") == Some("frame_pointer_failed")
        });
        let total: i64 = mine.iter().map(|s| s.value).sum();
        eprintln!(
            "{flag}: complete {:.1}%, frame_pointer_failed {:.1}% of {total} samples",
            complete * 100.0,
            frame_pointer_failed * 100.0,
        );
        assert!(total > 100, "{flag}: only {total} samples");
        if expect_complete {
            assert!(complete >= 0.99, "{flag}: complete in {complete:.3}");
        } else {
            assert!(complete < 0.2, "{flag}: complete in {complete:.3}");
            assert!(
                frame_pointer_failed > 0.5,
                "{flag}: {frame_pointer_failed:.3}"
            );
        }
    }
}

#[test]
fn probabilistic_profiling_samples_only_in_the_intervals_it_draws() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = c_workload(dir.path());
    let out = dir.path().join("out");
    // Windows and intervals both last a second, so each window is one draw's.
    let agent = Agent::start_with(
        &out,
        &[
            "--profiling-probabilistic-threshold=50",
            "--profiling-probabilistic-interval=1s",
        ],
    );
    let drawn = |profiled: &str| -> u64 {
        let needle = format!("profiled=\"{profiled}\"");
        agent
            .metrics("agent_ebpf_probabilistic_intervals_total")
            .iter()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = (drawn("true"), drawn("false"));
    let mut spinner = Command::new(&workload.binary)
        .arg("120")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = spinner.id();
    std::thread::sleep(Duration::from_secs(60));
    let (profiled, paused) = (drawn("true") - before.0, drawn("false") - before.1);
    let batches = agent.stop();
    spinner.kill().unwrap();
    spinner.wait().unwrap();

    // The spinner ran on one CPU throughout: a window has its samples
    // exactly when its interval was drawn.
    let windows_sampled = batches
        .iter()
        .filter(|b| !samples_of(std::slice::from_ref(b), pid).is_empty())
        .count() as u64;
    let samples: i64 = samples_of(&batches, pid).iter().map(|s| s.value).sum();
    let draws = profiled + paused;
    eprintln!(
        "{draws} draws: {profiled} profiled, {paused} paused; {windows_sampled} windows with {samples} samples of the spinner"
    );
    assert!(
        (58..=62).contains(&draws),
        "a draw a second for 60 s: {draws}"
    );
    // Binomial(n, 0.5): within 4 standard deviations of n/2.
    let sd = (draws as f64 * 0.25).sqrt();
    assert!(
        (profiled as f64 - draws as f64 / 2.0).abs() <= 4.0 * sd,
        "{profiled} of {draws} profiled"
    );
    // Draws and windows are a few milliseconds apart: the spinner's first
    // and last windows may count with the interval before or after.
    assert!(
        windows_sampled.abs_diff(profiled) <= 2,
        "{windows_sampled} windows sampled, {profiled} intervals profiled"
    );
    // 19 Hz in the profiled seconds only (sampling all 60 s would be ~1,140).
    assert!(
        samples <= 19 * (profiled as i64 + 2) * 11 / 10,
        "{samples} samples in {profiled} profiled seconds"
    );
    assert!(
        samples >= 19 * (profiled as i64 - 3) * 7 / 10,
        "{samples} samples in {profiled} profiled seconds"
    );
}

/// BPF run time (ns) and runs of the perf_event programs `pid` holds
/// (kernel.bpf_stats_enabled must be on).
fn sampler_runs(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        };
        // 7: BPF_PROG_TYPE_PERF_EVENT.
        if field("prog_type:") == Some(7) {
            total.0 += field("run_time_ns:").unwrap_or(0);
            total.1 += field("run_cnt:").unwrap_or(0);
        }
    }
    total
}

/// BPF run time (ns) and runs of the program called `name` that `pid`
/// holds (kernel.bpf_stats_enabled must be on).
fn program_runs(pid: u32, name: &str) -> (u64, u64) {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")) else {
            continue;
        };
        let shown = Command::new("bpftool")
            .args(["prog", "show", "id", id.trim(), "--json"])
            .output()
            .unwrap();
        let program: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        if program["name"] == name {
            let field = |f: &str| program[f].as_u64().unwrap_or(0);
            return (field("run_time_ns"), field("run_cnt"));
        }
    }
    panic!("agent {pid} holds no BPF program {name}");
}

/// Turns kernel.bpf_stats_enabled on while it lives.
struct BpfStats(String);

impl BpfStats {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Self {
        let before = std::fs::read_to_string(Self::KNOB).unwrap();
        std::fs::write(Self::KNOB, "1").unwrap();
        Self(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KNOB, self.0.trim());
    }
}

/// Targets: with a target on the name `target_*`, only the processes it
/// matches are sampled — one running before the agent (found at start),
/// one started later (judged at its exec), and one a target forked
/// without exec (added by BPF) — while an untargeted spinner beside them
/// costs the sampler one map lookup per sample: its BPF time per run stays
/// under four fifths of a targeted spinner's, in the same run. (Not a third
/// any more: since the walk reads the stack 1 KiB at a time, a run's fixed
/// cost, its cache and TLB misses, is most of a sample on this VM: 1.1 µs
/// against 1.9 for the targeted spinner's 7 frames.)
#[test]
fn targets_limit_sampling_to_the_processes_they_match() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = c_workload(dir.path());
    let copy = |name: &str| {
        let path = dir.path().join(name);
        std::fs::copy(&workload.binary, &path).unwrap();
        path
    };
    let (early, spin, other) = (
        copy("target_early"),
        copy("target_spin"),
        copy("other_spin"),
    );
    let forker = dir.path().join("target_forker");
    std::fs::write(
        &forker,
        // No command but builtins: nothing is exec'd, so every process
        // it makes is a fork of a target.
        // It forks once told to (after its own exec was judged), so the
        // fork is BPF's to follow.
        "#!/bin/sh\nread go\n( while :; do :; done ) &\necho $!\nwait\n",
    )
    .unwrap();
    std::fs::set_permissions(&forker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{ebpf_cpu: {{targets: [{{comm: '^target_'}}]}}}}\n\
             exporters: {{file: {{directory: {}}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [ebpf_cpu], exporters: [file]}}}}}}\n",
            out.display()
        ),
    )
    .unwrap();
    let spawn = |binary: &Path, seconds: &str| {
        Command::new(binary)
            .arg(seconds)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut early_run = spawn(&early, "60");
    let _stats = BpfStats::enable();
    let agent = Agent::launch(&out, &["--config", config.to_str().unwrap()]);
    let agent_pid = agent.child.id();
    let untargeted = || -> u64 {
        agent
            .metrics("agent_ebpf_untargeted_samples_total")
            .iter()
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };

    // Three targets and an untargeted spinner, for 6 s.
    let mut other_run = spawn(&other, "13");
    let untargeted_before = untargeted();
    let mut spin_run = spawn(&spin, "6");
    let mut forker_run = Command::new(&forker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    writeln!(forker_run.stdin.take().unwrap(), "go").unwrap();
    let mut line = String::new();
    BufReader::new(forker_run.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let forked: u32 = line.trim().parse().unwrap();
    spin_run.wait().unwrap();
    // SAFETY: kill has no memory preconditions; the pid is the forker's child.
    unsafe { libc::kill(forked as i32, libc::SIGKILL) };
    forker_run.wait().unwrap();
    early_run.kill().unwrap();
    early_run.wait().unwrap();

    // The untargeted spinner alone, then a targeted one alone: BPF time per run.
    let before = sampler_runs(agent_pid);
    std::thread::sleep(Duration::from_secs(5));
    let alone = sampler_runs(agent_pid);
    other_run.wait().unwrap();
    let untargeted_samples = untargeted() - untargeted_before;
    let mut targeted_run = spawn(&spin, "60");
    let targeted_pid = targeted_run.id();
    std::thread::sleep(Duration::from_millis(500));
    let reference = sampler_runs(agent_pid);
    std::thread::sleep(Duration::from_secs(5));
    let after = sampler_runs(agent_pid);
    // Still running: the windows the stop waits for have samples.
    let batches = agent.stop();
    targeted_run.kill().unwrap();
    targeted_run.wait().unwrap();

    let per_run =
        |(t0, n0): (u64, u64), (t1, n1): (u64, u64)| (t1 - t0) as f64 / (n1 - n0).max(1) as f64;
    let untargeted_ns = per_run(before, alone);
    let targeted_ns = per_run(reference, after);
    let mut by_pid: HashMap<u32, i64> = HashMap::new();
    for b in &batches {
        for s in b.resolved_samples() {
            let pid = s.series.get("pid").and_then(|p| p.parse().ok()).unwrap();
            *by_pid.entry(pid).or_default() += s.value;
        }
    }
    eprintln!(
        "samples by pid {by_pid:?} (early {}, spin {}, forked {forked}, other {}, targeted {targeted_pid}); \
         {untargeted_samples} untargeted; BPF per run: {untargeted_ns:.0} ns untargeted spinner, {targeted_ns:.0} ns targeted",
        early_run.id(),
        spin_run.id(),
        other_run.id()
    );
    let targets = [
        early_run.id(),
        spin_run.id(),
        forked,
        forker_run.id(),
        targeted_pid,
    ];
    for (pid, samples) in &by_pid {
        assert!(
            targets.contains(pid),
            "pid {pid} sampled ({samples} samples): no target matches it"
        );
    }
    for (what, pid) in [
        ("running before the agent", early_run.id()),
        ("exec'd", spin_run.id()),
        ("forked", forked),
        ("alone", targeted_pid),
    ] {
        let samples = by_pid.get(&pid).copied().unwrap_or(0);
        // 19 Hz for 6 s, sharing 2 CPUs with 3 other spinners (5 s alone).
        assert!(samples >= 20, "the target {what} has {samples} samples");
    }
    assert!(
        untargeted_samples >= 19 * 5 / 2,
        "{untargeted_samples} samples of the untargeted spinner counted"
    );
    assert!(
        untargeted_ns * 1.25 < targeted_ns,
        "BPF per run: {untargeted_ns:.0} ns with an untargeted spinner, {targeted_ns:.0} ns with a targeted one"
    );
}

/// A CPython interpreter to test against.
struct Python {
    minor: u8,
    path: PathBuf,
}

/// Where .ci/run installs interpreters and py-spy on a machine without pyenv.
const TEST_PYTHON_ROOT: &str = "/opt/agent-test-python";

/// CPython 3.6–3.13 interpreters of this machine, one per minor version:
/// Debian's builds .ci/run installs under [`TEST_PYTHON_ROOT`] (3.9, 3.11,
/// 3.13: static, stripped), then pyenv's (shared libpython). CI must have
/// at least three of 3.8–3.13.
fn python_interpreters() -> Vec<Python> {
    let pyenv = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let mut found: std::collections::BTreeMap<u8, PathBuf> = Default::default();
    for root in [TEST_PYTHON_ROOT.into(), Path::new(&pyenv).join("versions")] {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(minor) = name
                .strip_prefix("3.")
                .and_then(|r| r.split('.').next())
                .and_then(|m| m.parse::<u8>().ok())
            else {
                continue;
            };
            let executable = format!("python3.{minor}");
            let path = ["bin", "usr/bin"]
                .iter()
                .map(|dir| entry.path().join(dir).join(&executable))
                .find(|p| p.exists());
            if let Some(path) = path.filter(|_| (6..=13).contains(&minor)) {
                found.entry(minor).or_insert(path);
            }
        }
    }
    let found: Vec<Python> = found
        .into_iter()
        .map(|(minor, path)| Python { minor, path })
        .collect();
    let recent = found.iter().filter(|p| p.minor >= 8).count();
    if recent < 3 && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must install at least three CPython versions 3.8–3.13 (see .ci/run)");
    }
    if found.is_empty() {
        eprintln!("SKIPPED: no CPython 3.6–3.13 found (pyenv or {TEST_PYTHON_ROOT})");
    }
    found
}

/// py-spy, the reference Python stacks are compared with.
fn py_spy() -> Option<PathBuf> {
    let installed = Path::new(TEST_PYTHON_ROOT).join("py-spy/bin/py-spy");
    let found = if installed.exists() {
        Some(installed)
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("py-spy"))
                .find(|p| p.exists())
        })
    };
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must install py-spy (see .ci/run)");
        }
        eprintln!("SKIPPED: py-spy is not installed");
    }
    found
}

/// A Python frame: (function, file, line).
type InterpFrameName = (String, String, i64);

/// The named interpreter frames (Python, PHP, Ruby) of an agent sample, leaf first.
fn agent_interp_frames(sample: &ResolvedSample) -> Vec<InterpFrameName> {
    sample
        .frames
        .iter()
        .filter(|f| f.mapping.is_none())
        .flat_map(|f| &f.lines)
        .map(|l| (l.function.clone(), l.filename.clone(), l.line))
        .collect()
}

/// The Python chain of tests/workloads/py_chain.py, callee first.
const PY_CHAIN: [&str; 6] = [
    "leaf",
    "<genexpr>",
    "by_weight",
    "helper",
    "run",
    "<module>",
];

/// The lines of py_chain.py's leaf loop (the `for` line and its body).
fn py_chain_leaf_lines() -> std::ops::RangeInclusive<i64> {
    leaf_loop_lines(
        &std::fs::read_to_string(workload_source("py_chain.py")).unwrap(),
        1,
    )
}

/// The frames (leaf first) hold py_chain.py's whole chain in order, in
/// that file, the leaf at a line of its loop. Names may be qualified
/// (`Worker.run` on 3.11+, `run` before).
fn carries_py_chain(
    frames: &[InterpFrameName],
    leaf_lines: &std::ops::RangeInclusive<i64>,
) -> bool {
    let mut want = PY_CHAIN.iter().peekable();
    for (function, file, line) in frames {
        let Some(&&next) = want.peek() else { break };
        let simple = function.rsplit('.').next().unwrap_or(function);
        if simple == next && file.ends_with("py_chain.py") {
            if next == "leaf" && !leaf_lines.contains(line) {
                return false;
            }
            want.next();
        }
    }
    want.peek().is_none()
}

/// An agent sample carries py_chain.py's chain (see [`carries_py_chain`])
/// with the C code between its Python frames where it runs: `sorted`
/// calling the key function (native frames between `helper` and
/// `by_weight`) and `sum` driving the generator (between `by_weight` and
/// `<genexpr>`).
fn agent_carries_py_chain(
    sample: &ResolvedSample,
    leaf_lines: &std::ops::RangeInclusive<i64>,
) -> bool {
    if !carries_py_chain(&agent_interp_frames(sample), leaf_lines) {
        return false;
    }
    // Leaf first: `None` for a native frame, the simple name of a Python one.
    let frames: Vec<Option<&str>> = sample
        .frames
        .iter()
        .filter(|f| f.mapping.is_some() || !f.lines.is_empty())
        .map(|f| match (&f.mapping, f.lines.first()) {
            (None, Some(l)) => Some(l.function.rsplit('.').next().unwrap_or(&l.function)),
            _ => None,
        })
        .collect();
    let at = |name: &str| frames.iter().position(|f| *f == Some(name));
    let native_between = |callee: &str, caller: &str| match (at(callee), at(caller)) {
        (Some(a), Some(b)) if a < b => frames[a + 1..b].iter().any(Option::is_none),
        _ => false,
    };
    native_between("by_weight", "helper") && native_between("<genexpr>", "by_weight")
}

/// Samples of py-spy's raw output (`frame;frame;… count`, root first,
/// frames `function (file:line)`): (frames leaf first, count).
fn py_spy_samples(raw: &str) -> Vec<(Vec<InterpFrameName>, i64)> {
    raw.lines()
        .filter_map(|l| {
            let (stack, count) = l.rsplit_once(' ')?;
            let frames = stack
                .split(';')
                .rev()
                .filter_map(|f| {
                    let (function, place) = f.rsplit_once(" (")?;
                    let (file, line) = place.strip_suffix(')')?.rsplit_once(':')?;
                    Some((function.to_owned(), file.to_owned(), line.parse().ok()?))
                })
                .collect();
            Some((frames, count.parse().ok()?))
        })
        .collect()
}

/// CPython frames are unwound in BPF and named with file and line, in one
/// stack with the native frames around them: for each CPython version
/// found, the share of samples carrying the workload's whole Python chain
/// (a class method, a callback from C, a generator expression) is at least
/// 90 % and within 3 points of py-spy's, sampling the same process.
#[test]
fn python_stacks_are_whole_and_named_like_py_spy_names_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let pythons = python_interpreters();
    let Some(spy) = py_spy() else { return };
    if pythons.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = workload_source("py_chain.py");
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &["--profiling-cpu-sampling-frequency=97"],
    );
    // One at a time: the workload has a CPU, py-spy the other.
    let mut runs = Vec::new();
    for python in &pythons {
        let child = Command::new(&python.path)
            .args([workload.as_str(), "4.5"])
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(300));
        let raw = dir.path().join(format!("py-spy-3.{}.txt", python.minor));
        let spied = Command::new(&spy)
            .args([
                "record",
                "--format",
                "raw",
                "--rate",
                "97",
                "--duration",
                "3",
            ])
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--output")
            .arg(&raw)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(spied.success(), "py-spy failed on 3.{}", python.minor);
        assert!(child.wait_with_output().unwrap().status.success());
        runs.push((python.minor, pid, raw));
    }
    std::thread::sleep(Duration::from_millis(300));
    let batches = agent.stop();

    let leaf_lines = py_chain_leaf_lines();
    let mut failures = Vec::new();
    for (minor, pid, raw) in runs {
        // py-spy attaches once the workload runs: the interpreter's own
        // start-up (exec, the loader, Py_Initialize) is the agent's alone.
        // (3.6 and 3.7 name it _Py_InitializeEx_Private, _Py_InitializeCore…)
        let start_up = [
            "do_execveat_common",
            "_dl_start",
            "Py_InitializeFromConfig",
            "_Py_Initialize",
            "pymain_init",
        ];
        let mine: Vec<_> = samples_of(&batches, pid)
            .into_iter()
            .filter(|s| {
                !agent_names(s)
                    .iter()
                    .any(|n| start_up.iter().any(|f| n.starts_with(f)))
            })
            .collect();
        let total: i64 = mine.iter().map(|s| s.value).sum();
        let ours = share(&mine, |s| agent_carries_py_chain(s, &leaf_lines));
        let spy_samples = py_spy_samples(&std::fs::read_to_string(&raw).unwrap());
        let spy_total: i64 = spy_samples.iter().map(|(_, n)| n).sum();
        let spy_whole: i64 = spy_samples
            .iter()
            .filter(|(f, _)| carries_py_chain(f, &leaf_lines))
            .map(|(_, n)| n)
            .sum();
        let theirs = spy_whole as f64 / spy_total.max(1) as f64;
        eprintln!(
            "CPython 3.{minor}: whole Python chain in {:.1}% of {total} agent samples, {:.1}% of {spy_total} py-spy samples",
            ours * 100.0,
            theirs * 100.0
        );
        for s in mine
            .iter()
            .filter(|s| !agent_carries_py_chain(s, &leaf_lines))
            .take(3)
        {
            eprintln!("  without the chain: {:?}", agent_names(s));
        }
        if total < 100 || spy_total < 100 || ours < 0.90 || ours < theirs - 0.03 {
            failures.push(format!(
                "3.{minor}: agent {:.1}% of {total}, py-spy {:.1}% of {spy_total}",
                ours * 100.0,
                theirs * 100.0
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Threads and code made and discarded all the time, on every CPython
/// 3.8+ found: every thread's Python stack is its own, and a name is never
/// another code object's (the function, its file and its line agree).
#[test]
fn python_names_stay_right_with_threads_and_fresh_code() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let pythons: Vec<Python> = python_interpreters()
        .into_iter()
        .filter(|p| p.minor >= 8) // threading.get_native_id
        .collect();
    if pythons.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(
        &dir.path().join("out"),
        &["--profiling-cpu-sampling-frequency=97"],
    );
    let children: Vec<(u8, Child)> = pythons
        .iter()
        .map(|python| {
            // Six interpreters share two CPUs: 6 s gives the least
            // sampled one (3.11 in a CI run: 45 in 4 s) room above 50.
            let child = Command::new(&python.path)
                .args([workload_source("py_threads.py").as_str(), "6"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            (python.minor, child)
        })
        .collect();
    let runs: Vec<(u8, u32, String)> = children
        .into_iter()
        .map(|(minor, child)| {
            let pid = child.id();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "3.{minor} failed");
            (
                minor,
                pid,
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let batches = agent.stop();

    let mut failures = Vec::new();
    for (minor, pid, stdout) in runs {
        // "alpha <native id>", "beta <native id>".
        let families: HashMap<&str, &str> = stdout
            .lines()
            .filter_map(|l| {
                let (family, tid) = l.split_once(' ')?;
                Some((tid, family))
            })
            .collect();
        assert_eq!(families.len(), 2, "3.{minor}: {stdout}");
        let (mut named, mut wrong) = (0i64, Vec::new());
        for sample in samples_of(&batches, pid) {
            let Some(&family) = sample.series.get("thread_id").and_then(|t| families.get(t)) else {
                continue;
            };
            for (function, file, line) in agent_interp_frames(&sample) {
                let Some((fam, i)) = function.split_once("_fresh_") else {
                    continue;
                };
                let i: i64 = i.parse().unwrap();
                // py_threads.py puts i % 50 blank lines before the def
                // (line i % 50 + 2, named while a call has not run its
                // first instruction yet, as Python's own tracebacks do).
                let body = (i % 50 + 2)..=(i % 50 + 6);
                if fam != family || file != format!("<{fam} {i}>") || !body.contains(&line) {
                    wrong.push(format!("thread {family}: {function} {file}:{line}"));
                }
                named += sample.value;
            }
        }
        eprintln!(
            "CPython 3.{minor}: {named} fresh frames named, {} wrong",
            wrong.len()
        );
        if !wrong.is_empty() || named < 50 {
            failures.push(format!("3.{minor}: {named} named, wrong: {wrong:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// A secret on a process's command line reaches no output (file, Parca,
/// OTLP, the HTTP view) of a pipeline without `relabel`; a pipeline whose
/// rule copies `__meta_process_cmdline` to a label does export it.
#[test]
fn command_line_secrets_never_leave_without_a_rule_that_copies_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = compile("fp_chain.c", dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (parca, parca_address) = sinks::ParcaSink::start(&runtime);
    let (otlp, otlp_endpoint) = sinks::OtlpHttpSink::start(&runtime);
    let (plain, copied) = (dir.path().join("plain"), dir.path().join("copied"));
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{ebpf_cpu: {{}}}}
processors:
  metadata: {{}}
  symbolize: {{}}
  relabel/copy:
    relabel_configs: [{{source_labels: [__meta_process_cmdline], target_label: cmdline}}]
exporters:
  file: {{directory: {plain}}}
  file/copied: {{directory: {copied}}}
  parca_grpc: {{address: '{parca_address}', tls: {{insecure: true}}, batch_write_interval: 1s, debuginfo_upload_disable: true}}
  otlp_profiles: {{endpoint: '{otlp_endpoint}', protocol: http, compression: none}}
service:
  pipelines:
    profiles:
      receivers: [ebpf_cpu]
      processors: [metadata, symbolize]
      exporters: [file, parca_grpc, otlp_profiles]
    profiles/copied:
      receivers: [ebpf_cpu]
      processors: [metadata, relabel/copy]
      exporters: [file/copied]
",
            plain = plain.display(),
            copied = copied.display(),
        ),
    )
    .unwrap();
    let agent = Agent::launch(&plain, &["--config", config.to_str().unwrap()]);

    let secret = format!("s3cret-{}", std::process::id());
    // 8 s: metadata reads a process's command line when its window is
    // processed, and beside a release build the pipeline lagged the 4 s the
    // workload used to live (the copying pipeline never showed it).
    let mut workload = Command::new(&binary)
        .args(["8", "--bearer-token", &secret])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = workload.id().to_string();
    // The status page's section of a pipeline.
    let section = |status_page: &str, pipeline: &str| {
        status_page
            .split("<h3>")
            .find(|s| s.starts_with(&format!("{pipeline} — ")))
            .unwrap_or_else(|| panic!("no {pipeline} on the status page"))
            .to_owned()
    };
    // The view shows the latest window processed, and each pipeline's on
    // its own schedule (a loaded machine's symbolizing pipeline lags seconds
    // behind the copying one): each page is read until it has shown a
    // window of the workload's life, and no read of the plain pipeline's
    // pages may ever show the secret.
    std::thread::sleep(Duration::from_millis(2000));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut copied_shown, mut plain_shown) = (false, HashSet::new());
    let plain_pages = [
        "/",
        "/query?pipeline=profiles&debug=1",
        "/flamegraph?pipeline=profiles",
    ];
    while Instant::now() < deadline && !(copied_shown && plain_shown.len() == plain_pages.len()) {
        for path in plain_pages {
            let mut answer = agent.get(path);
            if path == "/" {
                // The status page lists both pipelines: the copying one must show it.
                copied_shown |= section(&answer, "profiles/copied").contains(&secret);
                answer = section(&answer, "profiles");
            }
            assert!(!answer.contains(&secret), "{path} shows the secret");
            if answer.contains("fp_chain") {
                plain_shown.insert(path);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(workload.wait().unwrap().success());
    // Past the Parca exporter's next write.
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    assert!(
        copied_shown,
        "the control: the copying pipeline never showed the command line"
    );
    for path in plain_pages {
        assert!(
            plain_shown.contains(path),
            "{path} never showed the workload"
        );
    }
    let files: Vec<Vec<u8>> = profiles_in(&plain)
        .iter()
        .map(|f| sinks::gunzip(&std::fs::read(f).unwrap()))
        .collect();
    let parca_series = parca.series();
    let otlp_bodies = otlp.bodies();
    let outputs: [(&str, Vec<&[u8]>); 3] = [
        ("file", files.iter().map(Vec::as_slice).collect()),
        (
            "parca_grpc",
            parca_series
                .iter()
                .flat_map(|s| &s.profiles)
                .map(Vec::as_slice)
                .collect(),
        ),
        (
            "otlp_profiles",
            otlp_bodies.iter().map(Vec::as_slice).collect(),
        ),
    ];
    for (name, payloads) in &outputs {
        assert!(
            payloads.iter().any(|p| sinks::contains(p, "fp_chain")),
            "{name}: none of {} payloads has the workload",
            payloads.len()
        );
        assert!(
            !payloads.iter().any(|p| sinks::contains(p, &secret)),
            "{name} exported the secret"
        );
    }
    assert!(
        parca_series
            .iter()
            .any(|s| s.labels.contains(&("pid".to_owned(), pid.clone()))),
        "no Parca series of the workload"
    );
    for s in &parca_series {
        assert!(
            s.labels
                .iter()
                .all(|(n, v)| !agent_core::is_internal_label(n) && !v.contains(&secret)),
            "{:?}",
            s.labels
        );
    }
    // The control: copied by a rule, the command line is exported.
    let cmdlines: Vec<String> = batches_in(&copied)
        .iter()
        .flat_map(|b| b.resolved_samples())
        .filter(|s| s.series.get("pid") == Some(pid.as_str()))
        .filter_map(|s| s.series.get("cmdline").map(str::to_owned))
        .collect();
    assert!(
        cmdlines.iter().any(|c| c.contains(&secret)),
        "the rule's copy is missing: {cmdlines:?}"
    );
}

/// `--python-unwinding-disable`: the same workload shows the interpreter's
/// native frames only.
#[test]
fn python_unwinding_can_be_disabled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(python) = python_interpreters().pop() else {
        return;
    };
    assert_unwinding_disabled(
        &python.path,
        "py_chain.py",
        "--python-unwinding-disable",
        "_PyEval_EvalFrameDefault",
        0.9,
    );
}

/// Runs `interpreter WORKLOAD SECONDS` beside the agent (97 Hz, `flags`
/// added); the batches and the process's pid.
fn profile_script(
    interpreter: &Path,
    workload: &str,
    seconds: &str,
    flags: &[&str],
) -> (Vec<ProfileBatch>, u32) {
    profile_command(interpreter, &[workload, seconds], flags)
}

/// Runs `program ARGS` beside the agent (97 Hz, `flags` added); the batches
/// and the process's pid.
fn profile_command(program: &Path, args: &[&str], flags: &[&str]) -> (Vec<ProfileBatch>, u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut agent_args = vec!["--profiling-cpu-sampling-frequency=97"];
    agent_args.extend(flags);
    let agent = Agent::start_with(&dir.path().join("out"), &agent_args);
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_millis(300));
    (agent.stop(), pid)
}

/// With `--LANG-unwinding-disable` (`flag`), a 2 s run of `workload` shows
/// no interpreter frames, and the interpreter's loop (a native function
/// named `interpreter_loop…`) in more than `loop_share` of its samples.
fn assert_unwinding_disabled(
    interpreter: &Path,
    workload: &str,
    flag: &str,
    interpreter_loop: &str,
    loop_share: f64,
) {
    let (batches, pid) = profile_script(interpreter, &workload_source(workload), "2", &[flag]);
    let mine = samples_of(&batches, pid);
    let total: i64 = mine.iter().map(|s| s.value).sum();
    assert!(total > 50, "only {total} samples");
    let interp_frames = share(&mine, |s| !agent_interp_frames(s).is_empty());
    let in_loop = share(&mine, |s| {
        agent_names(s)
            .iter()
            .any(|n| n.starts_with(interpreter_loop))
    });
    assert_eq!(interp_frames, 0.0, "interpreter frames despite {flag}");
    assert!(
        in_loop > loop_share,
        "{interpreter_loop} in {:.1}%",
        in_loop * 100.0
    );
}

/// PHP, as .ci/run installs it (Debian's `php-cli`); CI must have it.
fn php() -> Option<PathBuf> {
    let found = ["/usr/bin/php8.2", "/usr/bin/php"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must install php-cli (see .ci/run)");
        }
        eprintln!("SKIPPED: no PHP found (/usr/bin/php8.2, /usr/bin/php)");
    }
    found
}

/// The lines of a function of a workload: from its `function NAME(` line
/// to the first line after it that closes a block at the margin.
fn function_lines(source: &str, name: &str) -> std::ops::RangeInclusive<i64> {
    let lines: Vec<&str> = source.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("function {name}(")))
        .unwrap();
    let end = start + lines[start..].iter().position(|l| *l == "}").unwrap();
    (start as i64 + 1)..=(end as i64 + 1)
}

/// The PHP chain of tests/workloads/php_chain.php below php_mid, callee first.
const PHP_CHAIN: [&str; 3] = ["php_mid", "php_outer", "{main}"];

/// Whether PHP frames (leaf first) hold php_chain.php's whole chain in
/// order, each in that file at a line of its own function: php_leaf (or
/// md5 called by array_map), then php_mid, php_outer and the script.
fn carries_php_chain(frames: &[InterpFrameName], source: &str) -> bool {
    let Some(mid) = frames.iter().position(|f| f.0 == "php_mid") else {
        return false;
    };
    let at = |name: &str| frames[..mid].iter().position(|f| f.0 == name);
    let leaf = frames[..mid].iter().any(|(function, file, line)| {
        function == "php_leaf"
            && file.ends_with("php_chain.php")
            && function_lines(source, "php_leaf").contains(line)
    }) || matches!((at("md5"), at("array_map")), (Some(a), Some(b)) if a < b);
    let mut want = PHP_CHAIN.iter().peekable();
    for (function, file, line) in &frames[mid..] {
        let Some(&&next) = want.peek() else { break };
        if function == next && file.ends_with("php_chain.php") {
            if next != "{main}" && !function_lines(source, next).contains(line) {
                return false;
            }
            want.next();
        }
    }
    leaf && want.peek().is_none()
}

/// The lines of a workload's loop: the line marked `LEAF LOOP START` and
/// the `count` lines after it.
fn leaf_loop_lines(source: &str, count: i64) -> std::ops::RangeInclusive<i64> {
    let start = source
        .lines()
        .position(|l| l.contains("LEAF LOOP START"))
        .unwrap() as i64
        + 1;
    start..=start + count
}

/// A PHP workload's stacks: php_outer → php_mid → php_leaf named with file
/// and line in (nearly) every sample, php_leaf's samples at its loop's
/// lines, usort (an internal function) between its comparator and php_mid,
/// md5 (an internal function array_map calls from C) above array_map.
#[test]
fn php_stacks_are_whole_and_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(php) = php() else { return };
    let workload = workload_source("php_chain.php");
    let (batches, pid) = profile_script(&php, &workload, "4", &[]);

    let source = std::fs::read_to_string(&workload).unwrap();
    // The engine's own start-up and shutdown run no PHP code.
    let outside = [
        "do_execveat_common",
        "_dl_start",
        "php_module_startup",
        "php_request_shutdown",
        "php_module_shutdown",
        "exit_mmap",
    ];
    let mine: Vec<_> = samples_of(&batches, pid)
        .into_iter()
        .filter(|s| {
            !agent_names(s)
                .iter()
                .any(|n| outside.iter().any(|f| n.starts_with(f)))
        })
        .collect();
    let total: i64 = mine.iter().map(|s| s.value).sum();
    let whole = share(&mine, |s| {
        carries_php_chain(&agent_interp_frames(s), &source)
    });
    eprintln!(
        "PHP: whole chain in {:.1}% of {total} samples",
        whole * 100.0
    );
    let (in_loop, leaf_lines) =
        leaf_samples_by_line(&mine, "php_leaf", &leaf_loop_lines(&source, 1));
    eprintln!("  php_leaf's samples by line: {leaf_lines:?}");
    for s in mine
        .iter()
        .filter(|s| !carries_php_chain(&agent_interp_frames(s), &source))
        .take(5)
    {
        eprintln!(
            "  without the chain: {:?} / {:?}",
            agent_names(s),
            agent_interp_frames(s)
        );
    }
    assert!(total >= 200, "only {total} samples");
    assert!(whole >= 0.95, "whole chain in {:.1}%", whole * 100.0);
    assert!(
        in_loop >= 0.9,
        "php_leaf at its loop's lines in {:.1}%",
        in_loop * 100.0
    );
    // An internal function called from C is not where a run starts.
    let md5 = share(&mine, |s| {
        let names: Vec<String> = agent_interp_frames(s).into_iter().map(|f| f.0).collect();
        names.first().is_some_and(|n| n == "md5") && names.get(1).is_some_and(|n| n == "array_map")
    });
    assert!(md5 > 0.01, "md5 → array_map in {:.1}%", md5 * 100.0);
    // The comparator's samples: {closure} → usort → php_mid.
    let through_usort = share(&mine, |s| {
        let names: Vec<String> = agent_interp_frames(s).into_iter().map(|f| f.0).collect();
        let at = |n: &str| names.iter().position(|f| f == n);
        matches!((at("{closure}"), at("usort"), at("php_mid")), (Some(a), Some(b), Some(c)) if a < b && b < c)
    });
    assert!(
        through_usort > 0.01,
        "{{closure}} → usort → php_mid in {:.1}%",
        through_usort * 100.0
    );
}

/// `--php-unwinding-disable`: the same workload shows the engine's native
/// frames only.
#[test]
fn php_unwinding_can_be_disabled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(php) = php() else { return };
    assert_unwinding_disabled(
        &php,
        "php_chain.php",
        "--php-unwinding-disable",
        "execute_ex",
        0.9,
    );
}

/// Ruby, as .ci/run installs it (Debian's `ruby`); CI must have it.
fn ruby() -> Option<PathBuf> {
    let found = ["/usr/bin/ruby3.1", "/usr/bin/ruby"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must install ruby (see .ci/run)");
        }
        eprintln!("SKIPPED: no Ruby found (/usr/bin/ruby3.1, /usr/bin/ruby)");
    }
    found
}

/// The lines of a Ruby workload's method: from its `def NAME` line to the
/// `end` at the same indentation.
fn ruby_method_lines(source: &str, name: &str) -> std::ops::RangeInclusive<i64> {
    let lines: Vec<&str> = source.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&format!("def {name}")))
        .unwrap();
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == format!("{}end", " ".repeat(indent)))
            .unwrap();
    (start as i64 + 1)..=(end as i64 + 1)
}

/// The share of the samples naming `function` whose innermost frame of it
/// is at one of `lines`, and those samples by line.
fn leaf_samples_by_line(
    samples: &[ResolvedSample],
    function: &str,
    lines: &std::ops::RangeInclusive<i64>,
) -> (f64, std::collections::BTreeMap<i64, i64>) {
    let mut by_line: std::collections::BTreeMap<i64, i64> = Default::default();
    for s in samples {
        if let Some(f) = agent_interp_frames(s).iter().find(|f| f.0 == function) {
            *by_line.entry(f.2).or_default() += s.value;
        }
    }
    let all: i64 = by_line.values().sum();
    let within: i64 = by_line
        .iter()
        .filter(|(l, _)| lines.contains(l))
        .map(|(_, n)| n)
        .sum();
    (within as f64 / all.max(1) as f64, by_line)
}

/// The Ruby chain of tests/workloads/rb_chain.rb, callee first: (label,
/// the method whose lines it is at).
const RB_CHAIN: [(&str, &str); 5] = [
    ("rb_leaf", "rb_leaf"),
    ("block in rb_mid", "rb_mid"),
    ("rb_mid", "rb_mid"),
    ("run", "run"),
    ("<main>", ""),
];

/// Whether Ruby frames (leaf first) hold rb_chain.rb's whole chain in
/// order, each in that file at a line of its method.
fn carries_rb_chain(frames: &[(String, String, i64)], source: &str) -> bool {
    let mut want = RB_CHAIN.iter().peekable();
    for (function, file, line) in frames {
        let Some(&&(label, method)) = want.peek() else {
            break;
        };
        if function == label && file.ends_with("rb_chain.rb") {
            if !method.is_empty() && !ruby_method_lines(source, method).contains(line) {
                return false;
            }
            want.next();
        }
    }
    want.peek().is_none()
}

/// A Ruby workload's stacks: RbOuter#run → rb_mid → block → rb_leaf named
/// with file and line in (nearly) every sample, the C method that calls
/// the block (Integer#times, Array#map) between it and rb_mid.
#[test]
fn ruby_stacks_are_whole_and_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(ruby) = ruby() else { return };
    let workload = workload_source("rb_chain.rb");
    let (batches, pid) = profile_script(&ruby, &workload, "4", &[]);

    let source = std::fs::read_to_string(&workload).unwrap();
    // The VM's own start-up (loading the prelude and rubygems) and shutdown
    // run none of the workload's code.
    let outside = [
        "do_execveat_common",
        "_dl_start",
        "ruby_setup",
        "ruby_options",
        "ruby_cleanup",
        "rb_ec_cleanup",
        "exit_mmap",
        "require",
        "Kernel#require",
    ];
    let mine: Vec<_> = samples_of(&batches, pid)
        .into_iter()
        .filter(|s| {
            !agent_names(s)
                .iter()
                .any(|n| outside.iter().any(|f| n.starts_with(f)))
        })
        .collect();
    let total: i64 = mine.iter().map(|s| s.value).sum();
    let whole = share(&mine, |s| {
        carries_rb_chain(&agent_interp_frames(s), &source)
    });
    let all: i64 = samples_of(&batches, pid).iter().map(|s| s.value).sum();
    eprintln!(
        "Ruby: whole chain in {:.1}% of {total} samples ({all} with the VM's start-up and exit)",
        whole * 100.0
    );
    for s in mine
        .iter()
        .filter(|s| !carries_rb_chain(&agent_interp_frames(s), &source))
        .take(5)
    {
        eprintln!(
            "  without the chain: {:?} / {:?}",
            agent_names(s),
            agent_interp_frames(s)
        );
    }
    assert!(total >= 200, "only {total} samples");
    assert!(whole >= 0.95, "whole chain in {:.1}%", whole * 100.0);
    // The loop: `while`, its body and the increment.
    let (in_loop, leaf_lines) =
        leaf_samples_by_line(&mine, "rb_leaf", &leaf_loop_lines(&source, 2));
    eprintln!("  rb_leaf's samples by line: {leaf_lines:?}");
    assert!(
        in_loop >= 0.9,
        "rb_leaf at its loop's lines in {:.1}%",
        in_loop * 100.0
    );
    // The C method calling the block sits between it and rb_mid, by name.
    let c_method_between = |s: &ResolvedSample, method: &str| {
        let names: Vec<String> = agent_interp_frames(s).into_iter().map(|f| f.0).collect();
        let at = |n: &str| names.iter().position(|f| f == n);
        matches!((at("block in rb_mid"), at(method), at("rb_mid")), (Some(a), Some(b), Some(c)) if a < b && b < c)
    };
    let times = share(&mine, |s| c_method_between(s, "Integer#times"));
    let map = share(&mine, |s| c_method_between(s, "Array#map"));
    eprintln!(
        "  Integer#times between the block and rb_mid in {:.1}%, Array#map in {:.1}%",
        times * 100.0,
        map * 100.0
    );
    assert!(
        times > 0.2 && map > 0.2,
        "C methods between Ruby frames: times {times}, map {map}"
    );
}

/// `--ruby-unwinding-disable`: the same workload shows the VM's native
/// frames only.
#[test]
fn ruby_unwinding_can_be_disabled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(ruby) = ruby() else { return };
    assert_unwinding_disabled(
        &ruby,
        "rb_chain.rb",
        "--ruby-unwinding-disable",
        "rb_vm_exec",
        0.8,
    );
}

/// The clocks a workload of off_cpu.c kept: (wall ns, ns blocked where it
/// blocks, ns off CPU in all: wall less its CPU time).
fn off_cpu_workload_clock(output: std::process::Output) -> (u64, u64, u64) {
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let [wall, blocked, cpu] = numbers[..] else {
        panic!("off_cpu printed {text:?}");
    };
    (wall, blocked, wall.saturating_sub(cpu))
}

/// Off-CPU profiling with every switch timed (`--off-cpu-threshold=1`): a
/// workload that spins 2 ms and sleeps 8 ms in nanosleep shows the time
/// its own clock measured in nanosleep (within 10 points of its wall time)
/// as off-CPU time under the kernel's nanosleep path and its own `nap`; a
/// workload reading a pipe written every 50 ms shows its blocked time
/// under the kernel's pipe read and its own `read_pipe`; and each one's
/// time off CPU in all (preempted too) is its wall time less its CPU time,
/// within 10 points. Its CPU profile beside is what it always is (the
/// spinning function), and the BPF cost per sched_switch is measured.
#[test]
fn off_cpu_time_is_profiled_where_threads_block() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = compile("off_cpu.c", dir.path());
    let _stats = BpfStats::enable();
    let agent = Agent::start_with(&dir.path().join("out"), &["--off-cpu-threshold=1"]);
    let agent_pid = agent.child.id();
    let before = program_runs(agent_pid, "off_cpu_switch");
    let run = |mode: &str| {
        Command::new(&binary)
            .args([mode, "5"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (nap, pipe) = (run("nap"), run("pipe"));
    let (nap_pid, pipe_pid) = (nap.id(), pipe.id());
    let (nap_wall, nap_asleep, nap_off) = off_cpu_workload_clock(nap.wait_with_output().unwrap());
    let (pipe_wall, pipe_blocked, pipe_off) =
        off_cpu_workload_clock(pipe.wait_with_output().unwrap());
    let after = program_runs(agent_pid, "off_cpu_switch");
    agent.wait_for_window_from(std::time::SystemTime::now());
    let batches = agent.stop();
    let of_kind = |kind: &str| -> Vec<ProfileBatch> {
        batches
            .iter()
            .filter(|b| b.profile_type.sample_type.kind == kind)
            .cloned()
            .collect()
    };
    let (off_cpu, cpu) = (of_kind("off_cpu"), of_kind("samples"));
    assert!(!off_cpu.is_empty() && !cpu.is_empty());
    assert!(off_cpu
        .iter()
        .all(|b| b.profile_type.sample_type.unit == "nanoseconds"));

    // Off-CPU time under both the kernel function and the workload's own.
    let time_under = |pid: u32, kernel: &str, user: &str| -> (i64, i64) {
        let samples = samples_of(&off_cpu, pid);
        let total = samples.iter().map(|s| s.value).sum();
        let under = samples
            .iter()
            .filter(|s| {
                let names = agent_names(s);
                names.iter().any(|n| n.contains(kernel)) && names.contains(&user)
            })
            .map(|s| s.value)
            .sum();
        (under, total)
    };
    let (in_nap, nap_total) = time_under(nap_pid, "nanosleep", "nap");
    // `pipe_read`, `anon_pipe_read` since Linux 6.15.
    let (in_read, reader_total) = time_under(pipe_pid, "pipe_read", "read_pipe");
    let of_wall = |ns: i64, wall: u64| ns as f64 / wall as f64;
    eprintln!(
        "nap: {:.3} of its wall time off CPU in nanosleep by the agent, {:.3} by its own clock; \
         off CPU in all {:.3} by the agent, {:.3} by its clocks; pipe: {:.3} in pipe_read by \
         the agent, {:.3} by its own clock; in all {:.3} by the agent, {:.3} by its clocks",
        of_wall(in_nap, nap_wall),
        of_wall(nap_asleep as i64, nap_wall),
        of_wall(nap_total, nap_wall),
        of_wall(nap_off as i64, nap_wall),
        of_wall(in_read, pipe_wall),
        of_wall(pipe_blocked as i64, pipe_wall),
        of_wall(reader_total, pipe_wall),
        of_wall(pipe_off as i64, pipe_wall),
    );
    assert!(
        (of_wall(in_nap, nap_wall) - of_wall(nap_asleep as i64, nap_wall)).abs() <= 0.10,
        "nanosleep: the agent's share is off by more than 10 points"
    );
    assert!(
        (of_wall(in_read, pipe_wall) - of_wall(pipe_blocked as i64, pipe_wall)).abs() <= 0.10,
        "pipe read: the agent's share is off by more than 10 points"
    );
    // And all their time off CPU, preempted included (a loaded machine
    // preempts the spinner often): wall time less CPU time.
    assert!(
        (of_wall(nap_total, nap_wall) - of_wall(nap_off as i64, nap_wall)).abs() <= 0.10,
        "nap: the agent's off-CPU share in all is off by more than 10 points"
    );
    assert!(
        (of_wall(reader_total, pipe_wall) - of_wall(pipe_off as i64, pipe_wall)).abs() <= 0.10,
        "pipe: the agent's off-CPU share in all is off by more than 10 points"
    );

    // CPU samples as ever: the spinning function.
    let spinning = samples_of(&cpu, nap_pid);
    assert!(
        spinning.iter().map(|s| s.value).sum::<i64>() > 0,
        "no CPU samples of the nap workload"
    );
    let spin_share = share(&spinning, |s| agent_names(s).contains(&"spin_cpu"));
    assert!(
        spin_share >= 0.8,
        "spin_cpu in {spin_share:.3} of its CPU samples"
    );

    let (ns, runs) = (after.0 - before.0, after.1 - before.1);
    assert!(runs > 0, "the sched_switch program never ran");
    eprintln!(
        "BPF per sched_switch at threshold 1: {} ns over {runs} switches",
        ns / runs
    );
}

/// The JavaScript chain of tests/workloads/js_chain.js, callee first.
const JS_CHAIN: [&str; 3] = ["nodeLeaf", "nodeMid", "nodeOuter"];

/// Whether V8 frames (leaf first) hold js_chain.js's chain in order, each
/// in that file at a line of its function.
fn carries_js_chain(frames: &[InterpFrameName], source: &str) -> bool {
    let mut want = JS_CHAIN.iter().peekable();
    for (function, file, line) in frames {
        let Some(&&name) = want.peek() else { break };
        if function == name && file.ends_with("js_chain.js") {
            if !function_lines(source, name).contains(line) {
                return false;
            }
            want.next();
        }
    }
    want.peek().is_none()
}

/// The Node.js binaries to test: `node` on the PATH, and those listed in
/// `AGENT_TEST_NODES` (colon-separated; .ci/run installs a current Node
/// there, which CI must have).
fn node_binaries() -> Vec<PathBuf> {
    let mut nodes = vec![PathBuf::from("node")];
    let listed = std::env::var("AGENT_TEST_NODES").unwrap_or_default();
    nodes.extend(
        listed
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    );
    if nodes.len() < 2 && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must list a current Node in AGENT_TEST_NODES (see .ci/run)");
    }
    nodes
}

/// A Node binary's version and whether V8 compiles with Maglev before
/// TurboFan (V8 13+: its code keeps no source positions unless a profiler
/// of V8's own asks, so the functions inlined into it are not known).
fn node_version(node: &Path) -> (String, bool) {
    let out = Command::new(node)
        .args([
            "-p",
            "process.version + ' (V8 ' + process.versions.v8 + ')'",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let v8_major: u32 = text
        .split("(V8 ")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap();
    (text, v8_major >= 13)
}

/// Whether a Node binary's V8 has the flag `flag` (Maglev's came with 11).
fn node_knows_flag(node: &Path, flag: &str) -> bool {
    let out = Command::new(node).arg("--v8-options").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with(&format!("{flag} ")))
}

/// The samples of node's main thread that run the script: not its
/// start-up (loading CA certificates, deserializing the isolate, starting
/// threads) nor its teardown, which run no JavaScript.
fn node_script_samples(batches: &[ProfileBatch], pid: u32) -> Vec<ResolvedSample> {
    let outside = [
        "do_execveat_common",
        "_dl_start",
        "node::InitializeOncePerProcess",
        "node::NewIsolate",
        "node::NodeMainInstance::~NodeMainInstance",
        "node::TearDownOncePerProcess",
        "exit_mmap",
        "clone3",
    ];
    samples_of(batches, pid)
        .into_iter()
        .filter(|s| s.series.get("thread_id") == Some(pid.to_string().as_str()))
        .filter(|s| {
            !agent_names(s)
                .iter()
                .any(|n| outside.iter().any(|o| n.contains(o)))
        })
        .collect()
}

/// Whether a sample's V8 frames name `function` in js_chain.js at one of
/// its lines.
fn names_js_function(s: &ResolvedSample, source: &str, function: &str) -> bool {
    agent_interp_frames(s).iter().any(|(f, file, line)| {
        f == function && file.ends_with("js_chain.js") && function_lines(source, f).contains(line)
    })
}

/// Functions inlined into optimized code come out as the lines of one
/// location, innermost first.
fn has_inlined_js_chain(s: &ResolvedSample) -> bool {
    s.frames.iter().any(|f| {
        let names: Vec<&str> = f.lines.iter().map(|l| l.function.as_str()).collect();
        names.starts_with(&["nodeLeaf", "nodeMid"])
    })
}

/// A Node.js workload run without any flag: its main thread's samples
/// carry nodeOuter → nodeMid → nodeLeaf, named by the agent with file and
/// line, once V8 has compiled them, inlining nodeLeaf and nodeMid into the
/// code it compiled on-stack for nodeOuter's loop; and the same when V8 is
/// kept to its interpreter (the tier before warm-up, which the first run
/// leaves within milliseconds). Where V8 compiles with Maglev before
/// TurboFan (13+), the functions inlined into Maglev's code are missed, so
/// its run holds the whole chain only after warm-up (its first second).
#[test]
fn node_stacks_are_whole_and_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() || !node_available() {
        return;
    }
    let workload = workload_source("js_chain.js");
    let source = std::fs::read_to_string(&workload).unwrap();
    for node in node_binaries() {
        let (version, compiles_with_maglev) = node_version(&node);
        let mut interpreter_only = vec!["--no-opt", "--no-sparkplug"];
        if node_knows_flag(&node, "--maglev") {
            interpreter_only.push("--no-maglev");
        }
        for flags in [&[][..], &interpreter_only[..]] {
            let tier = if flags.is_empty() {
                "compiled"
            } else {
                "interpreted"
            };
            let run = format!("Node {version} {tier}");
            let mut args = flags.to_vec();
            args.extend([workload.as_str(), "4"]);
            let (batches, pid) = profile_command(&node, &args, &[]);
            let mine = node_script_samples(&batches, pid);
            let warm = after_first_second(&batches, pid);
            let total: i64 = mine.iter().map(|s| s.value).sum();
            let whole_in = |samples: &[ResolvedSample]| {
                share(samples, |s| {
                    carries_js_chain(&agent_interp_frames(s), &source)
                })
            };
            let (whole, whole_warm) = (whole_in(&mine), whole_in(&warm));
            let (inlined, inlined_warm) = (
                share(&mine, has_inlined_js_chain),
                share(&warm, has_inlined_js_chain),
            );
            let outer = share(&mine, |s| names_js_function(s, &source, "nodeOuter"));
            eprintln!(
                "{run}: whole chain in {:.1}% of {total} main-thread samples ({:.1}% after the first second), inlined in {:.1}% ({:.1}%), nodeOuter in {:.1}%",
                whole * 100.0,
                whole_warm * 100.0,
                inlined * 100.0,
                inlined_warm * 100.0,
                outer * 100.0
            );
            for s in mine
                .iter()
                .filter(|s| !carries_js_chain(&agent_interp_frames(s), &source))
                .take(3)
            {
                let native = agent_names(s);
                let n = native.len();
                eprintln!(
                    "  without the chain: {:?} in {:?} … {:?}",
                    agent_interp_frames(s),
                    &native[..n.min(2)],
                    &native[n.saturating_sub(3)..]
                );
            }
            assert!(total >= 200, "{run}: only {total} samples");
            assert!(outer >= 0.9, "{run}: nodeOuter in {:.1}%", outer * 100.0);
            if !flags.is_empty() {
                assert!(whole >= 0.9, "{run}: whole chain in {:.1}%", whole * 100.0);
                assert_eq!(
                    inlined, 0.0,
                    "{run}: inlining without an optimizing compiler"
                );
                continue;
            }
            if !compiles_with_maglev {
                assert!(whole >= 0.9, "{run}: whole chain in {:.1}%", whole * 100.0);
                assert!(inlined >= 0.5, "{run}: inlined in {:.1}%", inlined * 100.0);
            }
            assert!(
                whole_warm >= 0.9,
                "{run}: whole chain after the first second in {:.1}%",
                whole_warm * 100.0
            );
            assert!(
                inlined_warm >= 0.5,
                "{run}: inlined after the first second in {:.1}%",
                inlined_warm * 100.0
            );
        }
    }
}

/// The script samples of `pid` from the windows after its first second
/// (97 samples at the tests' frequency, in one or more 1 s windows).
fn after_first_second(batches: &[ProfileBatch], pid: u32) -> Vec<ResolvedSample> {
    let mut seen = 0;
    let mut after = Vec::new();
    for batch in batches {
        let samples = node_script_samples(std::slice::from_ref(batch), pid);
        if seen >= 97 {
            after.extend(samples);
        } else {
            seen += samples.iter().map(|s| s.value).sum::<i64>();
        }
    }
    after
}

/// JavaScript frames on both sides of V8's builtins: the comparator that
/// Array.prototype.sort calls back sits above `sort` and the functions that
/// called it, down to an async function resumed from the microtask queue.
#[test]
fn node_frames_surround_builtins_and_resumed_async_functions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() || !node_available() {
        return;
    }
    let workload = workload_source("js_builtins.js");
    for node in node_binaries() {
        let (version, compiles_with_maglev) = node_version(&node);
        // Where Maglev compiles first, nodeSort (inlined into nodeAsync) may
        // be missed.
        let below_sort: &[&str] = if !compiles_with_maglev {
            &["sort", "nodeSort", "nodeAsync"]
        } else {
            &["sort", "nodeAsync"]
        };
        let (batches, pid) = profile_command(&node, &[workload.as_str(), "4"], &[]);
        let mine = node_script_samples(&batches, pid);
        let names = |s: &ResolvedSample| -> Vec<String> {
            agent_interp_frames(s).into_iter().map(|f| f.0).collect()
        };
        // `chain` in order among the sample's V8 frames.
        let in_order = |s: &ResolvedSample, chain: &[&str]| {
            let names = names(s);
            let mut at = 0;
            chain
                .iter()
                .all(|want| match names[at..].iter().position(|n| n == want) {
                    Some(i) => {
                        at += i + 1;
                        true
                    }
                    None => false,
                })
        };
        let leaf_is = |s: &ResolvedSample, prefixes: &[&str]| {
            agent_names(s)
                .first()
                .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)))
        };
        let comparing: Vec<ResolvedSample> = mine
            .iter()
            .filter(|s| leaf_is(s, &["nodeCompare"]))
            .cloned()
            .collect();
        // In sort's own code (its builtins, named or not: Debian's libnode
        // is stripped) or what it calls: native code, with `sort` the
        // innermost JavaScript.
        let sorting: Vec<ResolvedSample> = mine
            .iter()
            .filter(|s| {
                s.frames.first().is_some_and(|f| f.mapping.is_some())
                    && names(s).first().is_some_and(|n| n == "sort")
            })
            .cloned()
            .collect();
        let through = share(&comparing, |s| in_order(s, below_sort));
        let below = share(&sorting, |s| in_order(s, below_sort));
        let count = |v: &[ResolvedSample]| v.iter().map(|s| s.value).sum::<i64>();
        eprintln!(
            "Node {version}: in the comparator {} samples ({:.1}% with {below_sort:?} below), in sort's own code {} ({:.1}%)",
            count(&comparing),
            through * 100.0,
            count(&sorting),
            below * 100.0
        );
        assert!(
            count(&comparing) >= 10 && count(&sorting) >= 20,
            "too few samples"
        );
        assert!(
            through >= 0.9,
            "{version}: comparator frames through sort in {:.1}%",
            through * 100.0
        );
        assert!(
            below >= 0.9,
            "{version}: JavaScript below the sort builtins in {:.1}%",
            below * 100.0
        );
    }
}

/// `--v8-unwinding-disable`: the same workload shows no JavaScript frames,
/// only V8's own (its interpreter's builtins) and unnamed generated code.
#[test]
fn v8_unwinding_can_be_disabled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() || !node_available() {
        return;
    }
    let workload = workload_source("js_chain.js");
    let (batches, pid) = profile_script(
        Path::new("node"),
        &workload,
        "2",
        &["--v8-unwinding-disable"],
    );
    let mine = node_script_samples(&batches, pid);
    let total: i64 = mine.iter().map(|s| s.value).sum();
    assert!(total > 50, "only {total} samples");
    let js = share(&mine, |s| !agent_interp_frames(s).is_empty());
    assert_eq!(js, 0.0, "JavaScript frames despite --v8-unwinding-disable");
    let v8_builtins = share(&mine, |s| {
        agent_names(s).iter().any(|n| n.starts_with("Builtins_"))
    });
    assert!(
        v8_builtins > 0.5,
        "V8's builtins in {:.1}%",
        v8_builtins * 100.0
    );
}

/// The Java chain of tests/workloads/JChain.java, callee first.
const JAVA_CHAIN: [&str; 3] = ["JChain.jLeaf", "JChain.jMid", "JChain.jOuter"];

/// The JVMs to test: `java` on the PATH, and those listed in
/// `AGENT_TEST_JAVAS` (colon-separated; .ci/run installs a current JDK
/// there, which CI must have).
fn java_binaries() -> Vec<PathBuf> {
    let mut javas = vec![PathBuf::from("java")];
    let listed = std::env::var("AGENT_TEST_JAVAS").unwrap_or_default();
    javas.extend(
        listed
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    );
    if javas.len() < 2 && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must list a current JDK in AGENT_TEST_JAVAS (see .ci/run)");
    }
    javas
}

/// JChain.java compiled (for Java 11, so every JVM tested runs it) into a
/// directory of its own; None (skipped) without javac, outside CI.
fn compiled_java_chain() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("javac")
        .args(["--release", "11", "-g", "-d"])
        .arg(dir.path())
        .arg(workload_source("JChain.java"))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(dir),
        Ok(o) => panic!("javac failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI must have javac: {e}"
            );
            eprintln!("SKIPPED: no javac ({e})");
            None
        }
    }
}

/// Whether JVM frames (leaf first) hold JChain's chain in order, in
/// JChain.java: jLeaf at a line of its own, its callers at their calls.
fn carries_java_chain(frames: &[InterpFrameName], source: &str) -> bool {
    let line_of = |text: &str| source.lines().position(|l| l.contains(text)).unwrap() as i64 + 1;
    let lines = [
        java_method_lines(source, "jLeaf"),
        line_of("s += jLeaf(n);")..=line_of("s += jLeaf(n);"),
        line_of("total += jMid(20000);")..=line_of("total += jMid(20000);"),
    ];
    let mut want = JAVA_CHAIN.iter().zip(lines).peekable();
    for (function, file, line) in frames {
        let Some((&name, lines)) = want.peek() else {
            break;
        };
        if function == name && file == "JChain.java" {
            if !lines.contains(line) {
                return false;
            }
            want.next();
        }
    }
    want.peek().is_none()
}

/// The lines of a method of JChain.java: from its declaration to the
/// brace closing it (indented one level).
fn java_method_lines(source: &str, method: &str) -> std::ops::RangeInclusive<i64> {
    let lines: Vec<&str> = source.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(&format!(" {method}(")))
        .unwrap();
    let end = start + lines[start..].iter().position(|l| *l == "    }").unwrap();
    (start as i64 + 1)..=(end as i64 + 1)
}

/// A Java workload run without any flag on the JVM: the samples of its
/// main thread carry jOuter → jMid → jLeaf, named by the agent with file
/// and line, while interpreted and once compiled (C2 inlines jLeaf into
/// jMid: one location); and the JVM's own threads (GC, JIT compilers) show
/// their native frames named.
#[test]
fn jvm_stacks_are_whole_and_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(classes) = compiled_java_chain() else {
        return;
    };
    let source = std::fs::read_to_string(workload_source("JChain.java")).unwrap();
    for java in java_binaries() {
        let version = Command::new(&java).arg("-version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stderr)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        for (tier, flags) in [("mixed", &[][..]), ("interpreted", &["-Xint"][..])] {
            let run = format!("{version} {tier}");
            let mut args: Vec<&str> = flags.to_vec();
            args.extend([
                "-Xmx64m",
                "-cp",
                classes.path().to_str().unwrap(),
                "JChain",
                // 6 s: beside a build the main thread still gets well over
                // the 200 samples asserted below (4 s gave 167 there).
                "6",
            ]);
            let (batches, pid) = profile_command(&java, &args, &[]);
            let all = samples_of(&batches, pid);
            let comm = |s: &ResolvedSample| {
                s.attributes
                    .get("thread_comm")
                    .or(s.series.get("thread_comm"))
                    .unwrap_or_default()
                    .to_owned()
            };
            let main: Vec<ResolvedSample> =
                all.iter().filter(|s| comm(s) == "java").cloned().collect();
            let total: i64 = main.iter().map(|s| s.value).sum();
            let whole = share(&main, |s| {
                carries_java_chain(&agent_interp_frames(s), &source)
            });
            let inlined = share(&main, |s| {
                s.frames.iter().any(|f| {
                    let names: Vec<&str> = f.lines.iter().map(|l| l.function.as_str()).collect();
                    names.starts_with(&["JChain.jLeaf", "JChain.jMid"])
                })
            });
            eprintln!(
                "{run}: whole chain in {:.1}% of {total} main-thread samples, inlined in {:.1}%",
                whole * 100.0,
                inlined * 100.0
            );
            for s in main
                .iter()
                .filter(|s| !carries_java_chain(&agent_interp_frames(s), &source))
                .take(4)
            {
                let native = agent_names(s);
                let n = native.len();
                eprintln!(
                    "  without the chain: {:?} in {:?} … {:?}",
                    agent_interp_frames(s),
                    &native[..n.min(3)],
                    &native[n.saturating_sub(3)..]
                );
            }
            // The JVM's own threads: the garbage collector's (G1's) and the
            // JIT compilers'; their frames in libjvm named.
            let own: Vec<ResolvedSample> = all
                .iter()
                .filter(|s| {
                    let c = comm(s);
                    c.starts_with("GC Thread") || c.starts_with("G1 ") || c.contains("CompilerThre")
                })
                .cloned()
                .collect();
            let own_total: i64 = own.iter().map(|s| s.value).sum();
            let own_named = share(&own, |s| {
                let jvm: Vec<&agent_core::ResolvedFrame> = s
                    .frames
                    .iter()
                    .filter(|f| {
                        f.mapping
                            .as_ref()
                            .is_some_and(|m| m.filename.ends_with("/libjvm.so"))
                    })
                    .collect();
                !jvm.is_empty() && jvm.iter().all(|f| !f.lines.is_empty())
            });
            eprintln!(
                "  the JVM's own threads: {own_total} samples, {:.1}% with their libjvm frames named",
                own_named * 100.0
            );
            assert!(total >= 200, "{run}: only {total} samples");
            assert!(whole >= 0.95, "{run}: whole chain in {:.1}%", whole * 100.0);
            if tier == "mixed" {
                assert!(
                    inlined >= 0.5,
                    "{run}: jLeaf inlined into jMid in {:.1}%",
                    inlined * 100.0
                );
            }
            assert!(
                own_total >= 10,
                "{run}: {own_total} samples of the JVM's own threads"
            );
            assert!(
                own_named >= 0.9,
                "{run}: their frames named in {:.1}%",
                own_named * 100.0
            );
        }
    }
}

/// `--jvm-unwinding-disable`: the same workload shows no Java frames.
#[test]
fn jvm_unwinding_can_be_disabled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(classes) = compiled_java_chain() else {
        return;
    };
    let classpath = classes.path().to_str().unwrap();
    let (batches, pid) = profile_command(
        Path::new("java"),
        &["-Xmx64m", "-cp", classpath, "JChain", "2"],
        &["--jvm-unwinding-disable"],
    );
    let mine = samples_of(&batches, pid);
    let total: i64 = mine.iter().map(|s| s.value).sum();
    assert!(total > 50, "only {total} samples");
    let java = share(&mine, |s| !agent_interp_frames(s).is_empty());
    assert_eq!(java, 0.0, "Java frames despite --jvm-unwinding-disable");
}
