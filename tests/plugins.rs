//! End-to-end: custom processors, at compile time (drop_frames) and at run
//! time (plugins in Rust and C), in a pprof -> processor -> file pipeline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agent_core::pprof::from_pprof;
use agent_core::ProfileBatch;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cpu.pb.gz");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Builds a cargo target and returns the shared library it produced.
fn cargo_cdylib(args: &[&str]) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--message-format=json"])
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        // cdylib crates and examples; proc-macro artifacts are .so files too.
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib" || k == "example"))
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
        .expect("cargo produced a shared library")
}

/// Compiles the C gate plugin with extra flags.
fn c_plugin(dir: &Path, name: &str, source: &Path, flags: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I"])
        .arg(Path::new(ROOT).join("plugin/include"))
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn gate_source() -> PathBuf {
    Path::new(ROOT).join("examples/plugins/c-gate/gate.c")
}

/// Runs pprof(fixture) -> processor `id` (config `body`) -> file; returns the
/// run and what it wrote.
fn run(dir: &Path, id: &str, body: &str) -> (Output, Vec<ProfileBatch>) {
    let out_dir = dir.join("out");
    let config = dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {FIXTURE}}}}}\nprocessors: {{{id}: {body}}}\nexporters: {{file: {{directory: {}}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], processors: [{id}], exporters: [file]}}}}}}\n",
            out_dir.display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--http-address", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let mut batches = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&out_dir) {
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            batches.extend(from_pprof(&std::fs::read(f).unwrap()).unwrap());
        }
    }
    (output, batches)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
#[cfg_attr(
    not(feature = "processor-drop-frames"),
    ignore = "drop_frames is built with --features processor-drop-frames (as CI does)"
)]
fn compile_time_drop_frames_removes_matching_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (out, batches) = run(
        dir.path(),
        "drop_frames",
        "{function_regex: '^(square|write)$'}",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let input = from_pprof(&std::fs::read(FIXTURE).unwrap()).unwrap();
    assert_eq!(batches.len(), 2);
    for (b, i) in batches.iter().zip(&input) {
        assert_eq!(b.total_value(), i.total_value());
        for s in b.resolved_samples() {
            for f in &s.frames {
                for l in &f.lines {
                    assert!(
                        l.function != "square" && l.function != "write",
                        "{l:?} kept"
                    );
                }
            }
        }
    }
}

#[test]
fn rust_plugin_adds_its_label() {
    let dir = tempfile::tempdir().unwrap();
    let so = cargo_cdylib(&["-p", "agent-plugin-example-label"]);
    let (out, batches) = run(
        dir.path(),
        "plugin/custom",
        &format!(
            "{{path: {}, config: {{key: team, value: perf}}}}",
            so.display()
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(batches.len(), 2);
    let input = from_pprof(&std::fs::read(FIXTURE).unwrap()).unwrap();
    for (b, i) in batches.iter().zip(&input) {
        assert_eq!(b.total_value(), i.total_value());
        for s in &b.samples {
            assert_eq!(b.labels(s.series).get("team"), Some("perf"));
            assert!(b.labels(s.series).get("comm").is_some());
        }
    }
}

#[test]
fn c_plugin_passes_one_batch_in_n() {
    let dir = tempfile::tempdir().unwrap();
    let so = c_plugin(dir.path(), "libgate.so", &gate_source(), &[]);
    let (out, batches) = run(
        dir.path(),
        "plugin/custom",
        &format!("{{path: {}, config: {{pass_every: 2}}}}", so.display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The fixture gives two batches (two sample types); the gate passes the first.
    assert_eq!(batches.len(), 1);
    let input = from_pprof(&std::fs::read(FIXTURE).unwrap()).unwrap();
    assert_eq!(batches[0].total_value(), input[0].total_value());
}

#[test]
fn a_panicking_plugin_drops_batches_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let so = cargo_cdylib(&["-p", "agent-plugin-sdk", "--example", "panicking_plugin"]);
    let (out, batches) = run(
        dir.path(),
        "plugin/custom",
        &format!("{{path: {}}}", so.display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(batches.is_empty());
    let log = stderr(&out);
    assert_eq!(
        log.matches("plugin panicked: this plugin always panics")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn bad_plugins_are_refused_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let wrong_abi = c_plugin(
        dir.path(),
        "libwrong.so",
        &gate_source(),
        &["-DABI_VERSION=99"],
    );
    let (out, _) = run(
        dir.path(),
        "plugin/custom",
        &format!("{{path: {}}}", wrong_abi.display()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("speaks ABI version 99; this agent speaks version 1"),
        "{}",
        stderr(&out)
    );

    let no_entry_src = dir.path().join("none.c");
    std::fs::write(&no_entry_src, "int unrelated(void) { return 0; }\n").unwrap();
    let no_entry = c_plugin(dir.path(), "libnone.so", &no_entry_src, &[]);
    let (out, _) = run(
        dir.path(),
        "plugin/custom",
        &format!("{{path: {}}}", no_entry.display()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not an agent plugin: it does not export `agent_plugin_entry`"),
        "{}",
        stderr(&out)
    );

    let gate = c_plugin(dir.path(), "libgate.so", &gate_source(), &[]);
    let (out, _) = run(
        dir.path(),
        "plugin/custom",
        &format!("{{path: {}, config: {{pass_every: 0}}}}", gate.display()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("plugin gate"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused its config: pass_every must be a positive integer"),
        "{}",
        stderr(&out)
    );

    let (out, _) = run(dir.path(), "plugin/custom", "{path: /nonexistent/libx.so}");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot load plugin /nonexistent/libx.so"),
        "{}",
        stderr(&out)
    );
}
