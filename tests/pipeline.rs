//! End-to-end: the `agent` binary runs pprof receiver -> file exporter.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_core::pprof::from_pprof;
use agent_core::{ProfileBatch, ResolvedSample};

#[allow(dead_code)] // the OTLP sink is for other tests
#[path = "support/sinks.rs"]
mod sinks;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cpu.pb.gz");

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
    c.args(["--http-address", "127.0.0.1:0"]);
    c
}

/// Sends SIGTERM to `child` and waits for it.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    child.wait().unwrap()
}

fn output_files(dir: &Path) -> Vec<PathBuf> {
    // The exporter creates the directory when the agent starts.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    files
}

/// Samples per profile type, sorted, without the labels the metadata
/// processor adds (`node`, and `__meta_*` for relabeling).
fn by_type(batches: &[ProfileBatch]) -> Vec<(String, Vec<ResolvedSample>)> {
    let mut out: Vec<(String, Vec<ResolvedSample>)> = Vec::new();
    for b in batches {
        let name = format!(
            "{}/{}",
            b.profile_type.sample_type.kind, b.profile_type.sample_type.unit
        );
        let mut samples = b.resolved_samples();
        for s in &mut samples {
            s.series.retain(|k, _| k != "node" && !k.starts_with("__"));
        }
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.extend(samples),
            None => out.push((name, samples)),
        }
    }
    for (_, v) in &mut out {
        v.sort();
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A pipeline config under `dir`: a pprof receiver watching `dir/incoming`
/// with windows of `window`, a file exporter writing to `dir/out`; returns
/// (incoming, out, config file).
fn watching_pipeline(dir: &Path, window: &str) -> (PathBuf, PathBuf, PathBuf) {
    let watch = dir.join("incoming");
    let out_dir = dir.join("out");
    std::fs::create_dir(&watch).unwrap();
    let config = dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {}, watch: true, poll_interval: 50ms, window: {window}}}}}\n\
             exporters: {{file: {{directory: {}}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], exporters: [file]}}}}}}\n",
            watch.display(),
            out_dir.display()
        ),
    )
    .unwrap();
    (watch, out_dir, config)
}

fn decode_all(files: &[PathBuf]) -> Vec<ProfileBatch> {
    files
        .iter()
        .flat_map(|f| from_pprof(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

#[test]
fn pprof_to_file_keeps_samples_totals_and_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {FIXTURE}}}}}\nprocessors: {{metadata: {{}}}}\nexporters: {{file: {{directory: {}}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], processors: [metadata], exporters: [file]}}}}}}\n",
            out_dir.display()
        ),
    )
    .unwrap();
    let status = agent()
        .args(["--config", config.to_str().unwrap(), "--node", "e2e-node"])
        .status()
        .unwrap();
    assert!(status.success());

    let input = from_pprof(&std::fs::read(FIXTURE).unwrap()).unwrap();
    let files = output_files(&out_dir);
    // One file per window; the fixture holds two sample types, so two batches.
    assert_eq!(files.len(), 2, "{files:?}");
    let output = decode_all(&files);
    assert_eq!(by_type(&output), by_type(&input));
    // Totals the fixture generator printed.
    let total = |t: &str| -> i64 {
        output
            .iter()
            .filter(|b| b.profile_type.sample_type.kind == t)
            .map(|b| b.total_value())
            .sum()
    };
    assert_eq!(total("samples"), 25);
    assert_eq!(total("cpu"), 1_315_789_450);
    // The stack with the inlined frame keeps both lines, innermost first.
    let deepest = output[0]
        .resolved_samples()
        .into_iter()
        .find(|s| s.frames.len() == 2)
        .unwrap();
    let names: Vec<&str> = deepest.frames[0]
        .lines
        .iter()
        .map(|l| l.function.as_str())
        .collect();
    assert_eq!(names, ["square", "compute"]);
    // The pipeline's labels are there.
    for b in &output {
        for s in &b.samples {
            assert_eq!(b.labels(s.series).get("node"), Some("e2e-node"));
        }
    }
}

#[test]
fn sigterm_mid_window_flushes_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (watch, out_dir, config) = watching_pipeline(dir.path(), "1h");
    let mut child = agent()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log-level=debug",
            "--log-format=json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::copy(FIXTURE, watch.join("cpu.pb.gz")).unwrap();
    // Wait until the agent has read the file: it is now only in the open window.
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "agent exited early");
        if line.contains("pprof file read") {
            break;
        }
        assert!(Instant::now() < deadline, "file never read");
    }
    assert!(
        output_files(&out_dir).is_empty(),
        "nothing is written before the window ends"
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
    let output = decode_all(&output_files(&out_dir));
    let input = from_pprof(&std::fs::read(FIXTURE).unwrap()).unwrap();
    assert_eq!(by_type(&output), by_type(&input));
}

#[test]
fn relabeling_with_a_parca_agent_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let parca = dir.path().join("parca-agent.yaml");
    std::fs::write(
        &parca,
        "relabel_configs:\n- {source_labels: [comm], regex: app, action: keep}\n- {source_labels: [pid], target_label: __meta_tmp}\n",
    )
    .unwrap();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {FIXTURE}}}}}\nprocessors: {{metadata: {{}}, relabel: {{relabel_configs: [{{source_labels: [comm, pid], separator: '/', target_label: process}}]}}}}\n\
             exporters: {{file: {{directory: {}}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], processors: [metadata, relabel], exporters: [file]}}}}}}\n",
            out_dir.display()
        ),
    )
    .unwrap();
    let status = agent()
        .args(["--config", config.to_str().unwrap(), "--node", "n1"])
        .arg(format!("--config-path={}", parca.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let output = decode_all(&output_files(&out_dir));
    let samples: i64 = output
        .iter()
        .filter(|b| b.profile_type.sample_type.kind == "samples")
        .map(|b| b.total_value())
        .sum();
    assert_eq!(samples, 18, "only comm=app is kept");
    for b in &output {
        for s in &b.samples {
            let l = b.labels(s.series);
            assert_eq!(l.get("comm"), Some("app"));
            assert_eq!(
                l.get("process"),
                Some(format!("app/{}", l.get("pid").unwrap()).as_str())
            );
            assert_eq!(l.get("node"), Some("n1"));
            assert!(l.pairs().iter().all(|(k, _)| !k.starts_with("__")), "{l:?}");
        }
    }
}

/// The embedded pipeline's relabel rules turn the metadata processor's
/// process and container labels into `executable`, `container` and `pod`:
/// pprof → metadata (a proc tree and a Docker Engine API written here) →
/// relabel → file.
#[test]
fn container_names_reach_the_output_through_the_embedded_rules() {
    const ID: &str = "6b9b8ad1de1c7e0c6d2a4a9f2f8ff1e5b0d5a1c3e8e3c1d39f8a7c0ffee12345";
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    // pid 100 ("app" in the fixture) runs in a docker container; 200 on the host.
    let proc_root = dir.path().join("proc");
    let exe = std::env::current_exe().unwrap();
    for (pid, comm, cgroup) in [
        (100, "app", format!("0::/system.slice/docker-{ID}.scope\n")),
        (200, "other", "0::/system.slice/other.service\n".to_owned()),
    ] {
        let p = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("stat"), format!("{pid} ({comm}) S 1 {pid} {pid} 0")).unwrap();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(p.join("cgroup"), cgroup).unwrap();
        std::os::unix::fs::symlink(&exe, p.join("exe")).unwrap();
    }
    let socket = dir.path().join("docker.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
    let app = axum::Router::new().route(
        &format!("/containers/{ID}/json"),
        axum::routing::get(|| async { r#"{"Name":"/checkout","Config":{"Labels":{}}}"# }),
    );
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let embedded: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../pipeline.yaml")).unwrap();
    let config = serde_yaml::to_string(&serde_yaml::from_str::<serde_yaml::Value>(&format!(
        "receivers: {{pprof: {{path: {FIXTURE}}}}}\n\
         processors: {{metadata: {{proc_root: {}, container_runtime_socket: {}}}, relabel: {}}}\n\
         exporters: {{file: {{directory: {}}}}}\n\
         service: {{pipelines: {{profiles: {{receivers: [pprof], processors: [metadata, relabel], exporters: [file]}}}}}}\n",
        proc_root.display(),
        socket.display(),
        serde_json::to_string(&embedded["processors"]["relabel"]).unwrap(),
        out_dir.display()
    )).unwrap())
    .unwrap();
    let config_file = dir.path().join("pipeline.yaml");
    std::fs::write(&config_file, config).unwrap();
    let status = agent()
        .args(["--config", config_file.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());

    let exe_name = exe.file_name().unwrap().to_str().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for b in decode_all(&output_files(&out_dir)) {
        for s in &b.samples {
            let l = b.labels(s.series);
            let pid = l.get("pid").unwrap().to_owned();
            let expected = match pid.as_str() {
                "100" => (Some(exe_name), Some("checkout")),
                "200" => (Some(exe_name), None),
                // No such process in the proc tree: nothing to add.
                _ => (None, None),
            };
            assert_eq!((l.get("executable"), l.get("container")), expected, "{l:?}");
            let container_id = expected.1.map(|_| ID);
            assert_eq!(l.get("container_id"), container_id, "{l:?}");
            assert_eq!(l.get("pod"), None);
            assert!(l.pairs().iter().all(|(k, _)| !k.starts_with("__")), "{l:?}");
            seen.insert(pid);
        }
    }
    assert_eq!(seen, ["100", "101", "200"].map(String::from).into());
}

/// What a user sees at the default log level: the first window, where it
/// went, and no line per window after it; the sample counters count the
/// samples written (values, not rows).
#[test]
fn progress_at_info_level_is_the_first_window_only_and_counters_count_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (watch, out_dir, config) = watching_pipeline(dir.path(), "300ms");
    let mut child = agent()
        .args(["--config", config.to_str().unwrap(), "--log-format=json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id();
    // Not left running if an assertion fails.
    let _kill = KillOnDrop(pid);
    let mut lines = Vec::new();
    let mut next_line = || {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "agent exited early: {lines:?}"
        );
        lines.push(line.clone());
        line
    };
    let http = loop {
        let line = next_line();
        if let Some(at) = line.find("\"address\":\"") {
            break line[at + 11..].split('"').next().unwrap().to_owned();
        }
    };
    // Two windows, a file each.
    std::fs::copy(FIXTURE, watch.join("a.pb.gz")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while output_files(&out_dir).is_empty() {
        assert!(Instant::now() < deadline, "first window never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::copy(FIXTURE, watch.join("b.pb.gz")).unwrap();
    while output_files(&out_dir).len() < 2 {
        assert!(Instant::now() < deadline, "second window never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700)); // a few empty windows too
    let metrics = http_get(&http, "/metrics");
    assert_eq!(terminate(&mut child).code(), Some(0));
    let rest: Vec<String> = log.lines().map(Result::unwrap).collect();

    let all: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .chain(rest.iter().map(String::as_str))
        .collect();
    let first: Vec<&&str> = all
        .iter()
        .filter(|l| l.contains("first window exported"))
        .collect();
    assert_eq!(first.len(), 1, "{all:#?}");
    assert!(
        first[0].contains(&format!("\"destination\":\"{}\"", out_dir.display())),
        "{}",
        first[0]
    );
    // Between start-up and the stop request, nothing else at info level.
    let running: Vec<&&str> = all
        .iter()
        .skip_while(|l| !l.contains("pipelines started"))
        .skip(1)
        .take_while(|l| !l.contains("stop requested"))
        .filter(|l| !l.contains("first window exported"))
        .collect();
    assert!(running.is_empty(), "{running:#?}");

    let written: i64 = decode_all(&output_files(&out_dir))
        .iter()
        .filter(|b| b.profile_type.sample_type.unit == "count")
        .map(ProfileBatch::total_value)
        .sum();
    assert!(written > 0);
    let counter = |name: &str| -> i64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {metrics}"))
    };
    // Count samples of the count profile; rows of the other (nanoseconds) one.
    let rows: i64 = decode_all(&output_files(&out_dir))
        .iter()
        .filter(|b| b.profile_type.sample_type.unit != "count")
        .map(|b| b.samples.len() as i64)
        .sum();
    for name in [
        "agent_receiver_samples_total",
        "agent_exporter_samples_total",
    ] {
        assert_eq!(counter(name), written + rows, "{name}: {metrics}");
    }
    assert_eq!(counter("agent_receiver_sample_rows_total"), {
        let all = decode_all(&output_files(&out_dir));
        all.iter().map(|b| b.samples.len() as i64).sum::<i64>()
    });
}

/// Kills a process when a failing assertion unwinds past it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Peak resident memory of `pid` in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A 1 GiB gzip bomb and a 0-byte file are refused, counted by reason,
/// with the agent's memory under 100 MB; a profile whose mapping ends
/// before it starts is read, repaired (no end) and counted, so what is
/// written passes pprof's validation rules.
#[test]
fn a_gzip_bomb_is_refused_in_bounded_memory_and_a_bad_mapping_repaired() {
    use agent_core::pprof::proto;
    use prost::Message;
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let (watch, out_dir, config) = watching_pipeline(dir.path(), "300ms");
    // Written aside, then moved in whole.
    let bomb = dir.path().join("bomb.pb.gz");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 1G /dev/zero | gzip -1 > {}",
            bomb.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    assert!(std::fs::metadata(&bomb).unwrap().len() < 8 << 20);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(FIXTURE).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let mut profile = proto::Profile::decode(&*raw).unwrap();
    assert!(!profile.mapping.is_empty());
    profile.mapping[0].memory_start = 0x7000_0000;
    profile.mapping[0].memory_limit = 0x1000;
    let mut bad_mapping = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    bad_mapping.write_all(&profile.encode_to_vec()).unwrap();

    let mut child = agent()
        .args(["--config", config.to_str().unwrap(), "--log-format=json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(child.id());
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let http = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "agent exited early");
        if let Some(at) = line.find("\"address\":\"") {
            break line[at + 11..].split('"').next().unwrap().to_owned();
        }
    };
    // The log is read on, so the agent never blocks writing it.
    let logged = std::thread::spawn(move || log.lines().map(Result::unwrap).collect::<Vec<_>>());
    std::fs::rename(&bomb, watch.join("bomb.pb.gz")).unwrap();
    std::fs::write(watch.join("empty.pb.gz"), b"").unwrap();
    std::fs::write(watch.join("mapping.pb.gz"), bad_mapping.finish().unwrap()).unwrap();

    let counted = |metrics: &str, needle: &str| {
        metrics
            .lines()
            .any(|l| l.contains(needle) && l.ends_with(" 1"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = http_get(&http, "/metrics");
        if counted(&metrics, "reason=\"too_large\"")
            && counted(&metrics, "reason=\"empty\"")
            && counted(&metrics, "agent_pprof_mappings_repaired_total")
            && !output_files(&out_dir).is_empty()
        {
            break metrics;
        }
        assert!(Instant::now() < deadline, "not counted: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let peak = peak_rss(child.id());
    assert_eq!(terminate(&mut child).code(), Some(0));
    let logged = logged.join().unwrap();
    assert!(peak < 100 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        counted(&metrics, "agent_pprof_files_read_total"),
        "only the repaired profile is read: {metrics}"
    );
    assert!(
        logged
            .iter()
            .any(|l| l.contains("bomb.pb.gz") && l.contains("too_large")),
        "{logged:#?}"
    );

    // Every mapping written has an end at or above its start, or none.
    for file in output_files(&out_dir) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        for m in proto::Profile::decode(&*raw).unwrap().mapping {
            assert!(
                m.memory_limit == 0 || m.memory_limit >= m.memory_start,
                "{m:?} in {}",
                file.display()
            );
        }
    }
    eprintln!("peak RSS with a 1 GiB gzip bomb: {} MiB", peak >> 20);
}

/// 20,000 idle connections to the HTTP view (from two helper processes; a
/// process may hold 20,000 descriptors here) do not stop a window from
/// being exported on time: the view closes what it cannot serve, and its
/// file descriptors stay few.
#[test]
fn idle_connections_to_the_view_do_not_stop_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (watch, out_dir, config) = watching_pipeline(dir.path(), "300ms");
    let mut child = agent()
        .args(["--config", config.to_str().unwrap(), "--log-format=json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(child.id());
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let http = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "agent exited early");
        if let Some(at) = line.find("\"address\":\"") {
            break line[at + 11..].split('"').next().unwrap().to_owned();
        }
    };
    let drain = std::thread::spawn(move || log.lines().count());
    let flood = "import socket, sys, time\n\
                 host, port = sys.argv[1].rsplit(':', 1)\n\
                 held = [socket.create_connection((host, int(port))) for _ in range(10000)]\n\
                 print('ready', flush=True)\n\
                 time.sleep(600)\n";
    let mut floods: Vec<std::process::Child> = (0..2)
        .map(|_| {
            Command::new("python3")
                .args(["-c", flood, &http])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for f in &mut floods {
        let mut line = String::new();
        BufReader::new(f.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the flood could not connect");
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .count();
    let asked = Instant::now();
    std::fs::copy(FIXTURE, watch.join("a.pb.gz")).unwrap();
    while output_files(&out_dir).is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "no window within 5 s of its input, 20,000 connections open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exported = asked.elapsed();
    for mut f in floods {
        let _ = f.kill();
        let _ = f.wait();
    }
    assert!(http_get(&http, "/healthy").contains("200 OK"));
    assert_eq!(terminate(&mut child).code(), Some(0));
    drain.join().unwrap();
    assert!(fds < 200, "{fds} descriptors open with 20,000 connections");
    eprintln!(
        "20,000 idle connections: the agent held {fds} descriptors; window written {} ms after its input",
        exported.as_millis()
    );
}

/// Both network exporters pointed at backends that accept connections and
/// never answer (the worst outage: nothing fails fast), with
/// `shutdown_flush_timeout: 3s` and every other bound at the largest value
/// that validates: SIGTERM mid-attempt ends the agent, exit 0, within that
/// bound plus 2 s, and says what it dropped.
#[test]
fn sigterm_during_a_backend_outage_keeps_the_flush_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Listening, never accepting: connects succeed, no byte ever comes back.
    let parca = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let otlp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let watch = dir.path().join("incoming");
    std::fs::create_dir(&watch).unwrap();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {}, watch: true, poll_interval: 50ms, window: 200ms}}}}\n\
             exporters:\n\
             \x20 parca_grpc: {{address: 'http://{}', batch_write_interval: 500ms, shutdown_flush_timeout: 3s,\n\
             \x20   rpc_unary_timeout: 7d, retry_on_failure: {{max_interval: 7d, max_elapsed_time: 7d}}, buffer_bytes: 17179869184, debuginfo_upload_max_parallel: 1024,\n\
             \x20   debuginfo_upload_disable: true, panic_reporting_disable: true,\n\
             \x20   sending_queue: {{queue_size: 65536}}}}\n\
             \x20 otlp_profiles: {{endpoint: 'http://{}', shutdown_flush_timeout: 3s, timeout: 7d,\n\
             \x20   retry_on_failure: {{max_interval: 7d, max_elapsed_time: 7d}}, sending_queue: {{queue_size: 65536}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], exporters: [parca_grpc, otlp_profiles]}}}}}}\n",
            watch.display(),
            parca.local_addr().unwrap(),
            otlp.local_addr().unwrap(),
        ),
    )
    .unwrap();
    let mut child = agent()
        .args(["--config", config.to_str().unwrap(), "--log-format=json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = BufReader::new(child.stderr.take().unwrap());
    let lines = std::thread::spawn(move || log.lines().map_while(Result::ok).collect::<Vec<_>>());
    std::fs::copy(FIXTURE, watch.join("cpu.pb.gz")).unwrap();
    // The window is out and both exporters wait on their backends.
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    let status = terminate(&mut child);
    let took = stopped.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    let log = lines.join().unwrap().join("\n");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}\n{log}"
    );
    assert!(
        log.contains("parca_grpc: stopping with profiles the server did not take"),
        "{log}"
    );
    assert!(log.contains("shutdown_flush_timeout (3s) ran out"), "{log}");
}

/// An exporter allowed to flush longer than the agent may take to stop
/// fails the start, naming both keys (it would end in a shutdown timeout).
#[test]
fn a_flush_bound_past_the_shutdown_timeout_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        "receivers: {pprof: {path: /tmp}}\n\
         exporters: {otlp_profiles: {endpoint: 'http://127.0.0.1:9', shutdown_flush_timeout: 40s}}\n\
         service: {shutdown_timeout: 30s, pipelines: {profiles: {receivers: [pprof], exporters: [otlp_profiles]}}}\n",
    )
    .unwrap();
    let out = agent()
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exporters::otlp_profiles: shutdown_flush_timeout (40s) must be below service::shutdown_timeout (30s)"),
        "{stderr}"
    );
}

/// Every series stored in an offline store, decompressed, sorted: what an
/// upload must deliver, each once. Files renamed meanwhile are skipped.
fn stored_series(store: &Path) -> Vec<Vec<u8>> {
    use agent_exporter_parca_grpc::offline::parse_records;
    let mut profiles = Vec::new();
    for entry in std::fs::read_dir(store).unwrap() {
        let Ok(data) = std::fs::read(entry.unwrap().path()) else {
            continue;
        };
        for request in parse_records(&data).requests {
            for series in request.unwrap().series {
                profiles.extend(series.samples.iter().map(|s| sinks::gunzip(&s.raw_profile)));
            }
        }
    }
    profiles.sort();
    profiles
}

/// The sum of sample values of pprof profiles.
fn sample_total(profiles: &[Vec<u8>]) -> i64 {
    profiles
        .iter()
        .flat_map(|p| from_pprof(p).unwrap())
        .flat_map(|b| b.samples)
        .map(|s| s.value)
        .sum()
}

/// Offline mode: windows stored while the Parca server is out of reach
/// survive a SIGKILL mid-way (its torn last write included) and
/// `--offline-mode-upload` sends each stored window exactly once to the
/// server, leaving the store empty.
#[test]
fn offline_windows_survive_a_sigkill_and_are_uploaded_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("incoming");
    std::fs::create_dir(&watch).unwrap();
    let store = dir.path().join("store");
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {}, watch: true, poll_interval: 50ms, window: 200ms}}}}\n\
             exporters:\n\
             \x20 parca_grpc: {{address: 'http://127.0.0.1:9', debuginfo_upload_disable: true, panic_reporting_disable: true,\n\
             \x20   retry_on_failure: {{enabled: false}}, offline_mode: {{storage_path: {}, rotation_interval: 1s}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], exporters: [parca_grpc]}}}}}}\n",
            watch.display(),
            store.display(),
        ),
    )
    .unwrap();
    let mut child = agent()
        .args(["--config", config.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let windows = 8;
    for i in 0..windows {
        std::fs::copy(FIXTURE, watch.join(format!("cpu-{i}.pb.gz"))).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every file's samples stored, however the files fell into windows.
    let fixture = sample_total(&[std::fs::read(FIXTURE).unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.is_dir() || sample_total(&stored_series(&store)) < windows * fixture {
        assert!(Instant::now() < deadline, "windows not stored in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let segments: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        segments.iter().any(|p| p.extension().unwrap() == "segment"),
        "rotated every second: {segments:?}"
    );
    // As if killed in the middle of a write: half a record header (in the
    // open segment, or in one of its own if the kill came right after a
    // rotation).
    let open = segments
        .iter()
        .find(|p| p.extension().unwrap() == "open")
        .cloned()
        .unwrap_or_else(|| store.join("999999999999.open"));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&open)
            .unwrap();
        f.write_all(&[0x40, 0, 0]).unwrap();
    }
    let stored = stored_series(&store);
    eprintln!(
        "stored at the kill: {} series in {segments:?}",
        stored.len()
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (parca, address) = sinks::ParcaSink::start(&runtime);
    let upload = agent()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--remote-store-address",
            &format!("http://{address}"),
            "--offline-mode-upload",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&upload.stderr);
    assert_eq!(upload.status.code(), Some(0), "{log}");
    assert!(log.contains("offline upload finished"), "{log}");
    assert!(
        log.contains("torn_bytes=3"),
        "the torn record is skipped and told: {log}"
    );
    let mut received: Vec<Vec<u8>> = parca
        .series()
        .into_iter()
        .flat_map(|s| s.profiles)
        .collect();
    received.sort();
    assert_eq!(
        received.len(),
        stored.len(),
        "each stored window once (stored {}, received {})",
        stored.len(),
        received.len()
    );
    assert!(received == stored, "the server got what was stored");
    let left: Vec<_> = std::fs::read_dir(&store).unwrap().collect();
    assert!(left.is_empty(), "the store ends empty: {left:?}");

    // Nothing left: a second upload sends nothing and succeeds.
    let before = parca.series().len();
    let again = agent()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--remote-store-address",
            &format!("http://{address}"),
            "--offline-mode-upload",
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(parca.series().len(), before);
}
