//! End-to-end tests of the local HTTP view of a running agent
//! (pprof receiver pipeline, so no root is needed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_core::pprof::from_pprof;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cpu.pb.gz");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

struct Agent {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an agent watching a directory holding the fixture; returns once
/// the fixture's window has been exported.
fn start() -> Agent {
    start_with(true)
}

/// Starts an agent watching a directory, with the fixture in it or empty
/// (then it returns once the pipelines run: no window is ever exported).
fn start_with(fixture: bool) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("in");
    std::fs::create_dir(&watch).unwrap();
    if fixture {
        std::fs::copy(FIXTURE, watch.join("cpu.pb.gz")).unwrap();
    }
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {}, watch: true, poll_interval: 50ms}}}}\nprocessors: {{metadata: {{}}}}\n\
             exporters: {{file: {{directory: {}}}}}\n\
             service: {{http_address: '127.0.0.1:0', pipelines: {{profiles: {{receivers: [pprof], processors: [metadata], exporters: [file]}}}}}}\n",
            watch.display(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--log-format=json", "--log-level=debug", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut address = None;
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    let mut started = false;
    while if fixture { written < 2 } else { !started } {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "agent exited");
        if line.contains("HTTP server listening") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            address = Some(v["fields"]["address"].as_str().unwrap().to_owned());
        }
        if line.contains("profile written") {
            written += 1;
        }
        started |= line.contains("pipelines started");
        assert!(
            Instant::now() < deadline,
            "agent did not export the fixture"
        );
    }
    std::thread::spawn(move || for _ in log.lines() {});
    let address = address.expect("address logged");
    // Counters move right after the write that logged.
    while fixture
        && !text(&get(&address, "/metrics").1)
            .contains("agent_exporter_batches_total{exporter=\"file\"} 2")
    {
        assert!(Instant::now() < deadline, "export not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent {
        child,
        address,
        _dir: dir,
    }
}

/// A GET over HTTP/1.0 (no chunking): status and body.
fn get(address: &str, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn metrics_health_query_and_flamegraph() {
    let agent = start();
    let a = &agent.address;

    assert_eq!(get(a, "/healthy"), (200, b"ok\n".to_vec()));
    assert_eq!(get(a, "/ready").0, 200);

    let (status, metrics) = get(a, "/metrics");
    assert_eq!(status, 200);
    let metrics = text(&metrics);
    assert!(
        metrics.contains("agent_receiver_batches_total{receiver=\"pprof\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_exporter_batches_total{exporter=\"file\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    assert!(metrics.contains("process_cpu_seconds_total"), "{metrics}");
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin
                .take()
                .unwrap()
                .write_all(metrics.as_bytes())
                .unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        Err(e) if in_ci() => panic!("promtool is needed in CI: {e}"),
        Err(e) => eprintln!("SKIPPED promtool check: {e}"),
    }

    // The fixture's samples/count window: pid 100 has 17 samples, pid 101 one.
    let (status, body) = get(
        a,
        &format!("/query?query={}", enc(r#"{comm="app",pid="100"}"#)),
    );
    assert_eq!(status, 200);
    let batches = from_pprof(&body).unwrap();
    assert_eq!(batches[0].profile_type.sample_type.kind, "samples");
    assert_eq!(batches[0].total_value(), 17);
    for s in &batches[0].samples {
        let labels = batches[0].labels(s.series);
        assert_eq!(
            (labels.get("comm"), labels.get("pid")),
            (Some("app"), Some("100"))
        );
    }
    let total = |query: &str| -> i64 {
        let (status, body) = get(a, &format!("/query?query={}", enc(query)));
        assert_eq!(status, 200, "{query}");
        from_pprof(&body).unwrap()[0].total_value()
    };
    assert_eq!(total(r#"{comm=~"ap+"}"#), 18);
    assert_eq!(total(r#"{comm!="app"}"#), 7);
    assert_eq!(total(r#"{pid!~"10."}"#), 7);
    assert_eq!(total(""), 25);
    let (status, body) = get(
        a,
        &format!("/query?query={}&type={}", enc("{}"), enc("cpu/nanoseconds")),
    );
    assert_eq!(status, 200);
    assert_eq!(
        from_pprof(&body).unwrap()[0].profile_type.sample_type.kind,
        "cpu"
    );

    let (status, body) = get(
        a,
        &format!("/query?query={}&debug=1", enc(r#"{pid="100"}"#)),
    );
    assert_eq!(status, 200);
    let debug = text(&body);
    assert!(
        debug.contains("17 samples") || debug.contains("total 17"),
        "{debug}"
    );
    assert!(
        debug.contains("compute") && debug.contains("main"),
        "{debug}"
    );

    // A 400 says which parameter and what was expected.
    let (status, body) = get(a, &format!("/query?query={}", enc("{comm=nginx}")));
    assert_eq!(status, 400);
    let reason = text(&body);
    assert!(
        reason.contains("nginx") && reason.lines().count() == 1,
        "{reason}"
    );
    let (status, body) = get(a, "/query?debug=yes");
    assert_eq!(status, 400);
    assert!(text(&body).contains("debug"), "{}", text(&body));
    let (status, body) = get(a, "/query?pipeline=profiles/none");
    assert_eq!(status, 404);
    assert!(
        text(&body).starts_with("no pipeline `profiles/none` (pipelines: "),
        "{}",
        text(&body)
    );
    let (status, body) = get(a, "/query?type=wall/nanoseconds");
    assert_eq!(status, 404);
    assert!(
        text(&body).contains("no `wall/nanoseconds` profile"),
        "{}",
        text(&body)
    );

    let (status, svg) = get(a, &format!("/flamegraph?query={}", enc(r#"{comm="app"}"#)));
    assert_eq!(status, 200);
    let svg = text(&svg);
    assert!(
        svg.starts_with("<?xml") && svg.contains("<svg"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    for name in ["app (100)", "main", "compute", "square", "write"] {
        assert!(svg.contains(name), "flame graph lacks {name}");
    }
    assert!(
        !svg.contains("other (200)"),
        "the selector keeps other processes out"
    );

    let (status, page) = get(a, "/");
    assert_eq!(status, 200);
    let page = text(&page);
    for needed in [
        "receiver pprof",
        "processor metadata",
        "exporter file",
        "comm=&quot;app&quot;",
        "/flamegraph?query=",
    ] {
        assert!(page.contains(needed), "status page lacks {needed}");
    }
}

#[test]
fn self_profile_is_a_valid_pprof() {
    let agent = start();
    let (status, body) = get(&agent.address, "/debug/pprof/profile?seconds=1");
    assert_eq!(status, 200);
    let batches = from_pprof(&body).unwrap();
    assert_eq!(batches[0].profile_type.period_type.unit, "nanoseconds");
    assert_eq!(get(&agent.address, "/debug/pprof/profile?seconds=0").0, 400);
}

/// Chromium for the browser tests; outside CI its absence skips them, loudly.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if in_ci() {
            panic!("chromium is needed in CI for the browser test");
        }
        eprintln!("SKIPPED: no chromium");
    }
    found
}

/// Where the browser tests leave their screenshots.
fn screenshots() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&out).unwrap();
    out
}

/// Headless Chromium: console messages at INFO and above go to stderr.
fn browse(browser: &Path, profile: &Path, url: &str, screenshot: &Path) -> (String, String) {
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,900",
    ];
    let user_data = format!("--user-data-dir={}", profile.display());
    let shot = Command::new(browser)
        .args(common)
        .arg(&user_data)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .output()
        .unwrap();
    let dom = Command::new(browser)
        .args(common)
        .arg(&user_data)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    let console = format!("{}{}", text(&shot.stderr), text(&dom.stderr));
    (text(&dom.stdout), console)
}

/// Console output of the page. Chromium's log does not say the level of a
/// console message, and these pages log nothing, so any line is a failure.
fn console_errors(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn status_page_and_flamegraph_in_a_browser() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let agent = start();
    let dom = render(
        &browser,
        &format!("http://{}/", agent.address),
        "status.png",
    );
    assert!(
        dom.contains("Pipelines") && dom.contains("exporter file"),
        "{dom}"
    );
    assert!(
        dom.contains("comm=\"app\"") || dom.contains("comm=&quot;app&quot;"),
        "{dom}"
    );
    let url = format!(
        "http://{}/flamegraph?query={}",
        agent.address,
        enc(r#"{comm="app"}"#)
    );
    let dom = render(&browser, &url, "flamegraph.png");
    assert!(dom.contains("compute") && dom.contains("square"), "{dom}");
    eprintln!("screenshots in {}", screenshots().display());
}

/// Renders `url` in headless Chromium: checks the page logged nothing and
/// left a screenshot `shot` (in [`screenshots`]); returns its DOM.
fn render(browser: &Path, url: &str, shot: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let screenshot = screenshots().join(shot);
    let (dom, console) = browse(browser, profile.path(), url, &screenshot);
    assert!(console_errors(&console).is_empty(), "{url}: {console}");
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 1000,
        "{url}"
    );
    dom
}

/// Before the first window: the status page renders and says why it has
/// no processes yet; the profile routes answer 404 with that reason.
#[test]
fn before_the_first_window_the_view_says_so() {
    let agent = start_with(false);
    let (status, body) = get(&agent.address, "/query");
    assert_eq!(status, 404);
    assert!(
        text(&body).starts_with("no window has been exported yet: the agent started "),
        "{}",
        text(&body)
    );
    let (status, page) = get(&agent.address, "/");
    assert_eq!(status, 200);
    assert!(
        text(&page).contains("No window has been exported yet: the agent started"),
        "{}",
        text(&page)
    );
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let dom = render(
        &browser,
        &format!("http://{}/", agent.address),
        "status-before-first-window.png",
    );
    assert!(
        dom.contains("Pipelines") && dom.contains("No window has been exported yet"),
        "{dom}"
    );
}

/// The README's curl examples of the HTTP view work as pasted (pointed at
/// this agent), in the README's words.
#[test]
fn readme_http_examples_work_as_written() {
    let readme = include_str!("../README.md");
    let examples: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("curl ") && l.contains("http://127.0.0.1:7071/"))
        .collect();
    assert!(examples.len() >= 2, "README lost its HTTP view examples");
    let agent = start();
    let dir = tempfile::tempdir().unwrap();
    for example in examples {
        let command = example.replace("127.0.0.1:7071", &agent.address);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(dir.path())
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{command}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}
