//! The reader against Go's own `go tool addr2line` on real binaries: the Go
//! toolchains' programs and esbuild releases built with Go 1.15–1.19 (the
//! older table formats), all installed by `.ci/run`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

const GO_ROOT: &str = "/opt/agent-test-go";

/// The current Go toolchain's `go` (its addr2line reads every format).
fn reference_go() -> Option<PathBuf> {
    let go = Path::new(GO_ROOT).join("venv/bin/go");
    go.exists().then_some(go)
}

/// Go binaries of every table format found on this machine, with the
/// format each must have: the Go toolchains' own `go` and `gofmt`, and
/// esbuild releases built with older Go.
fn go_binaries() -> Vec<(PathBuf, Format)> {
    let current = current_toolchain_bin();
    let mut candidates: Vec<(PathBuf, Format)> = vec![
        ("/usr/lib/go-1.19/bin/go".into(), Format::Go118),
        ("/usr/lib/go-1.19/bin/gofmt".into(), Format::Go118),
    ];
    for (release, format) in [
        ("0.7.22", Format::Go12),
        ("0.8.57", Format::Go116),
        ("0.12.29", Format::Go116),
        ("0.14.54", Format::Go118),
    ] {
        let esbuild = format!("esbuild/{release}/package/bin/esbuild");
        candidates.push((Path::new(GO_ROOT).join(esbuild), format));
    }
    if let Some(bin) = current {
        candidates.push((bin.join("go"), Format::Go120));
        candidates.push((bin.join("gofmt"), Format::Go120));
    }
    let found: Vec<(PathBuf, Format)> =
        candidates.into_iter().filter(|(p, _)| p.exists()).collect();
    if std::env::var_os("CI").is_some() {
        assert_eq!(found.len(), 8, "CI installs every Go binary: {found:?}");
    }
    found
}

/// `<venv>/lib/python3.N/site-packages/go/bin` of the current toolchain
/// (`venv/bin/go` is a launcher script).
fn current_toolchain_bin() -> Option<PathBuf> {
    let lib = Path::new(GO_ROOT).join("venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|d| {
        let bin = d.path().join("site-packages/go/bin");
        bin.join("go").exists().then_some(bin)
    })
}

/// A spread of pcs: one inside every `step`th function.
fn sample_pcs<D: AsRef<[u8]>>(table: &GoTable<D>, step: usize) -> Vec<u64> {
    table
        .functions()
        .step_by(step)
        .enumerate()
        .map(|(i, f)| {
            let f = f.unwrap();
            f.entry + (i as u64 * 37) % (f.end - f.entry).max(1)
        })
        .collect()
}

/// `go tool addr2line`'s answer per pc: (function, "file:line").
fn addr2line(go: &Path, binary: &Path, pcs: &[u64]) -> Vec<(String, String)> {
    let mut child = Command::new(go)
        .args(["tool", "addr2line"])
        .arg(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = pcs.iter().map(|pc| format!("{pc:#x}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|c| (c[0].to_owned(), c[1].to_owned()))
        .collect()
}

#[test]
fn names_files_and_lines_agree_with_go_tool_addr2line() {
    let Some(go) = reference_go() else { return };
    for (binary, format) in go_binaries() {
        let table = GoTable::new(std::fs::read(&binary).unwrap()).unwrap();
        assert_eq!(table.format(), format, "{}", binary.display());
        let pcs = sample_pcs(&table, (table.len() / 2000).max(1));
        let expected = addr2line(&go, &binary, &pcs);
        assert_eq!(expected.len(), pcs.len());
        let (mut differences, mut unknown) = (Vec::new(), 0);
        for (pc, (function, position)) in pcs.iter().zip(&expected) {
            let frames = table.frames(*pc).unwrap();
            // addr2line names the function holding the pc and the
            // innermost position (of an inlined call, if any).
            let ours = (
                frames.last().unwrap().function.to_owned(),
                format!("{}:{}", frames[0].file, frames[0].line),
            );
            // Go says line -1 (and no file) where the tables end before
            // the function's alignment padding, and a negative line for
            // marker symbols without a line table; we say 0, unknown.
            let position = match position.rsplit_once(':') {
                Some((file, line)) if line.starts_with('-') => format!("{file}:0"),
                _ => position.clone(),
            };
            if ours == (function.clone(), position.clone()) {
                continue;
            }
            // C code linked in by cgo has no line table: Go reads one at
            // offset 0 anyway and prints whatever it finds; we say unknown.
            if ours.1 == ":0" && &ours.0 == function {
                unknown += 1;
            } else {
                differences.push(format!("{pc:#x}: ours {ours:?}, go {function} {position}"));
            }
        }
        assert!(
            unknown * 50 < pcs.len(),
            "{}: {unknown} positions unknown",
            binary.display()
        );
        eprintln!(
            "{}: {:?}, {} functions, {} pcs compared, {} differ, {unknown} in C code without lines",
            binary.display(),
            format,
            table.len(),
            pcs.len(),
            differences.len()
        );
        assert!(
            differences.is_empty(),
            "{}: {:?}",
            binary.display(),
            &differences[..differences.len().min(10)]
        );
    }
}

#[test]
fn inlined_calls_expand_into_their_own_frames() {
    for (binary, format) in go_binaries() {
        let table = GoTable::new(std::fs::read(&binary).unwrap()).unwrap();
        assert!(table.has_inline_trees(), "{}", binary.display());
        // Every format's compiler inlines: some pc shows two or more frames,
        // each named, the outer one being the function holding the pc.
        let expanded = table
            .functions()
            .take(5_000)
            .flatten()
            .flat_map(|f| (f.entry..f.end).step_by(16))
            .filter_map(|pc| table.frames(pc).ok())
            .filter(|frames| frames.len() >= 2)
            .inspect(|frames| {
                assert!(
                    frames.iter().all(|f| !f.function.is_empty() && f.line > 0),
                    "{frames:?}"
                )
            })
            .count();
        assert!(
            expanded > 100,
            "{} ({format:?}): {expanded} pcs with inlined calls",
            binary.display()
        );
    }
}

#[test]
fn stacks_begin_at_the_runtime_entry_points() {
    for (binary, _) in go_binaries() {
        let table = GoTable::new(std::fs::read(&binary).unwrap()).unwrap();
        let top: Vec<&str> = table
            .functions()
            .flatten()
            .filter(|f| table.is_top_frame(f))
            .map(|f| table.name(&f).unwrap())
            .collect();
        assert!(
            top.contains(&"runtime.goexit"),
            "{}: {top:?}",
            binary.display()
        );
        assert!(
            top.contains(&"runtime.rt0_go"),
            "{}: {top:?}",
            binary.display()
        );
    }
}

/// Damaged tables: every call returns, with an error or a value, never a panic.
#[test]
fn damaged_tables_give_errors_not_panics() {
    let Some((binary, _)) = go_binaries().into_iter().next() else {
        return;
    };
    let original = std::fs::read(&binary).unwrap();
    let (start, _, len) = Image::read(&original).unwrap().pclntab;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut data = original.clone();
        // The header and function list in early rounds, anywhere after.
        let span = if round < 100 { 4096.min(len) } else { len };
        for _ in 0..1 + next() % 16 {
            let at = start + (next() as usize) % span;
            data[at] = next() as u8;
        }
        let Ok(table) = GoTable::new(data) else {
            continue;
        };
        let _ = table.text_range();
        for f in table.functions().take(300).flatten() {
            let _ = table.name(&f);
            let _ = table.sp_deltas(&f).take(1000).count();
            for pc in [f.entry, f.entry + 1, f.end.saturating_sub(1)] {
                let _ = table.frames(pc);
            }
        }
    }
}
