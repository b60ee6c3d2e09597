//! Tables checked row by row against binutils' `readelf --debug-dump=frames-interp`.

use super::*;
use std::path::PathBuf;
use std::process::Command;

/// What readelf says holds from `pc` on.
#[derive(Debug)]
struct ReadelfRow {
    pc: u64,
    cfa: String,
    rbp: String,
    ra: String,
}

fn readelf_rows(path: &Path) -> Vec<ReadelfRow> {
    let out = Command::new("readelf")
        .args(["--wide", "--debug-dump=frames-interp"])
        .arg(path)
        .output()
        .expect("readelf (binutils) is installed");
    // readelf exits 1 on some distribution libraries after printing every frame.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" FDE "),
        "readelf printed no FDE for {}",
        path.display()
    );
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut in_fde = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) == Some(&"FDE") || fields.get(3) == Some(&"CIE") {
            in_fde = fields[3] == "FDE";
            continue;
        }
        if !in_fde {
            continue;
        }
        if fields.first() == Some(&"LOC") {
            columns = fields.iter().map(|f| f.to_string()).collect();
            continue;
        }
        if fields.len() != columns.len() || columns.is_empty() || fields.get(1) == Some(&"ZERO") {
            continue;
        }
        let Ok(pc) = u64::from_str_radix(fields[0], 16) else {
            continue;
        };
        let get = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .map_or("u".to_owned(), |i| fields[i].to_owned())
        };
        rows.push(ReadelfRow {
            pc,
            cfa: get("CFA"),
            rbp: get("rbp"),
            ra: get("ra"),
        });
    }
    rows
}

/// Every readelf row is what our table says at that address.
fn assert_matches_readelf(path: &Path, table: &UnwindTable) -> usize {
    let expected = readelf_rows(path);
    assert!(!expected.is_empty(), "readelf found no rows");
    let mut checked = 0;
    for e in &expected {
        let row = table
            .row_for(e.pc)
            .unwrap_or_else(|| panic!("no row at {:#x} ({e:?})", e.pc));
        if row.kind() == RowKind::Signal {
            continue; // readelf shows the trampoline's expressions; we read the signal frame
        }
        let want_kind = if e.ra == "u" {
            RowKind::End
        } else if let Some(n) = e.cfa.strip_prefix("rsp+") {
            assert_eq!(row.cfa_offset.to_string(), n, "{e:?} vs {row:?}");
            RowKind::CfaRsp
        } else if let Some(n) = e.cfa.strip_prefix("rbp+") {
            assert_eq!(row.cfa_offset.to_string(), n, "{e:?} vs {row:?}");
            RowKind::CfaRbp
        } else {
            // An expression: the PLT one or something we refuse.
            assert!(
                matches!(row.kind(), RowKind::CfaPlt | RowKind::Unsupported),
                "{e:?} vs {row:?}"
            );
            row.kind()
        };
        assert_eq!(row.kind(), want_kind, "{e:?} vs {row:?}");
        if matches!(want_kind, RowKind::CfaRsp | RowKind::CfaRbp) {
            let rbp = match e.rbp.as_str() {
                "u" => 0,
                other => {
                    let words: i64 = other
                        .strip_prefix("c")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("odd rbp rule {other}"));
                    (words / 8) as i8
                }
            };
            assert_eq!(row.rbp_offset, rbp, "{e:?} vs {row:?}");
        }
        checked += 1;
    }
    checked
}

fn fixture(dir: &Path) -> PathBuf {
    let source = dir.join("omit.c");
    std::fs::write(
        &source,
        r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) long leaf(long x) { volatile long big[600]; big[x % 600] = x; return big[(x * 7) % 600] + x; }
__attribute__((noinline)) long middle(long x) { long s = 0; for (long i = 0; i < x; i++) s += leaf(i); return s; }
__attribute__((noinline)) long dynamic(long n) { long *a = __builtin_alloca(n * 8); for (long i = 0; i < n; i++) a[i] = middle(i); return a[n - 1]; }
int main(int argc, char **argv) { printf("%ld\n", dynamic(argc + 3)); return 0; }
"#,
    )
    .unwrap();
    let out = dir.join("omit");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("gcc is installed");
    assert!(status.success());
    out
}

#[test]
fn a_program_without_frame_pointers_matches_readelf() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fixture(dir.path());
    let table = compile_file(&exe).unwrap();
    assert_eq!(table.source, Source::EhFrame);
    let checked = assert_matches_readelf(&exe, &table);
    assert!(checked > 10, "only {checked} rows checked");
    // alloca makes `dynamic` use rbp as its CFA base, with rbp saved at CFA-16.
    assert!(table
        .rows
        .iter()
        .any(|r| r.kind() == RowKind::CfaRbp && r.rbp_offset == -2));
    // The PLT stubs use the expression form.
    assert!(table.rows.iter().any(|r| r.kind() == RowKind::CfaPlt));
    // _start ends the stack.
    assert!(table.rows.iter().any(|r| r.kind() == RowKind::End));
    assert_eq!(table.stats.unsupported_cfa + table.stats.unsupported_rbp, 0);
}

#[test]
fn a_mapped_file_whose_pages_go_while_read_gives_the_rows_of_its_bytes() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let mapped = compile_file(libc).unwrap();
    let read = compile(&std::fs::read(libc).unwrap()).unwrap();
    assert!(mapped.rows.len() > 10_000);
    assert!(mapped.rows == read.rows, "rows differ");
}

#[test]
fn libc_matches_readelf_and_has_its_signal_trampoline() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let table = compile_file(libc).unwrap();
    let checked = assert_matches_readelf(libc, &table);
    assert!(checked > 10_000, "only {checked} rows checked");
    assert!(table.stats.signal_rows >= 1, "{:?}", table.stats);
    assert!(table.rows.iter().any(|r| r.kind() == RowKind::Signal));
    // Neighbours never repeat a rule.
    assert!(table.rows.windows(2).all(|w| !w[0].same_rule(&w[1])));
    assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc));
}

/// Zeroes the section header fields of an ELF header, as some packers and
/// `sstrip` leave files: only program headers remain.
fn without_section_headers(data: &[u8]) -> Vec<u8> {
    let mut copy = data.to_vec();
    copy[0x28..0x30].fill(0); // e_shoff
    copy[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    copy
}

#[test]
fn without_section_headers_the_eh_frame_header_finds_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fixture(dir.path());
    let data = std::fs::read(&exe).unwrap();
    let with = compile(&data).unwrap();
    let without = compile(&without_section_headers(&data)).unwrap();
    assert_eq!(without.source, Source::EhFrameHdr);
    assert_eq!(with.rows, without.rows);
}

#[test]
fn debug_frame_is_used_when_there_is_no_eh_frame() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let built = dir.path().join("debug-frame-built");
    // -g without asynchronous unwind tables puts the program's CFI in .debug_frame.
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-o",
        ])
        .arg(&built)
        .arg(dir.path().join("omit.c"))
        .status()
        .unwrap();
    assert!(status.success());
    let only_debug = dir.path().join("only-debug-frame");
    let status = Command::new("objcopy")
        .args([
            "--remove-section",
            ".eh_frame",
            "--remove-section",
            ".eh_frame_hdr",
        ])
        .arg(&built)
        .arg(&only_debug)
        .status()
        .unwrap();
    assert!(status.success());
    let table = compile_file(&only_debug).unwrap();
    assert_eq!(table.source, Source::DebugFrame);
    let checked = assert_matches_readelf(&only_debug, &table);
    assert!(checked > 5, "only {checked} rows checked");
    // leaf's 4800-byte array (less the 128-byte red zone).
    assert!(table
        .rows
        .iter()
        .any(|r| r.kind() == RowKind::CfaRsp && r.cfa_offset > 4096));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(matches!(
        compile(b"not an elf file"),
        Err(UnwindTableError::NotElf(_))
    ));
    let data = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    // Truncated in the middle of the frame information: whatever parses is kept or an error.
    for cut in [64, 4096, data.len() / 3] {
        let _ = compile(&data[..cut]);
    }
    assert!(matches!(
        compile_file(Path::new("/nonexistent/file")),
        Err(UnwindTableError::Io { .. })
    ));
}

#[test]
fn plt_expressions_are_recognised_exactly() {
    let plt = [0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
    assert_eq!(plt_threshold(&plt), Some(11));
    let mut sec = plt;
    sec[6] = 0x3a;
    assert_eq!(plt_threshold(&sec), Some(10));
    let mut other = plt;
    other[1] = 16;
    assert_eq!(plt_threshold(&other), None);
}

#[test]
fn the_entry_point_ends_the_stack_where_no_cfi_covers_it() {
    use RowKind::{CfaRsp, End, None as Gap};
    let rows = |kinds: &[(u32, RowKind)]| -> Vec<UnwindRow> {
        kinds
            .iter()
            .map(|&(pc, kind)| UnwindRow {
                pc,
                kind: kind as u8,
                rbp_offset: 0,
                cfa_offset: if kind == CfaRsp { 8 } else { 0 },
            })
            .collect()
    };
    /// (pc, kind) of each row.
    type Rows<'a> = &'a [(u32, RowKind)];
    // (rows, entry point, rows after marking it)
    let cases: [(Rows, u64, Rows); 5] = [
        // ld.so: a gap from 0x100 on, _start at 0x180, the next function at 0x1c0.
        (
            &[(0x10, CfaRsp), (0x100, Gap), (0x1c0, CfaRsp)],
            0x180,
            &[(0x10, CfaRsp), (0x100, Gap), (0x180, End), (0x1c0, CfaRsp)],
        ),
        // Far from the next row: only ENTRY_CODE_BYTES are the entry code.
        (
            &[(0x10, CfaRsp), (0x100, Gap)],
            0x100,
            &[(0x10, CfaRsp), (0x100, End), (0x200, Gap)],
        ),
        (
            &[(0x10, CfaRsp), (0x100, Gap), (0x1000, CfaRsp)],
            0x800,
            &[
                (0x10, CfaRsp),
                (0x100, Gap),
                (0x800, End),
                (0x900, Gap),
                (0x1000, CfaRsp),
            ],
        ),
        // Covered by call frame information (a program's _start): unchanged.
        (
            &[(0x10, CfaRsp), (0x100, Gap)],
            0x20,
            &[(0x10, CfaRsp), (0x100, Gap)],
        ),
        // No entry point (a shared library): unchanged.
        (
            &[(0x10, CfaRsp), (0x100, Gap)],
            0,
            &[(0x10, CfaRsp), (0x100, Gap)],
        ),
    ];
    for (before, entry, after) in cases {
        let mut marked = rows(before);
        super::mark_entry_point(&mut marked, entry);
        assert_eq!(marked, rows(after), "entry point {entry:#x} in {before:?}");
    }
}

#[path = "../../tests/support/go_workload.rs"]
mod go_workload;

/// Go's linker writes `.debug_frame` from the same stack-pointer deltas:
/// every CFA it states is the one our rows (from `.gopclntab`) give.
#[test]
fn go_rows_agree_with_the_go_linkers_debug_frame() {
    for go in go_workload::go_toolchains() {
        let dir = tempfile::tempdir().unwrap();
        let binary = go_workload::build_go_chain(&go, dir.path(), "go_chain", "");
        let table = compile_file(&binary).unwrap();
        assert_eq!(table.source, Source::GoPclntab, "{}", go.display());
        assert!(table.stats.go_functions > 1000, "{:?}", table.stats);
        let (mut compared, mut differences) = (0, Vec::new());
        for row in readelf_rows(&binary) {
            let Some(cfa) = row.cfa.strip_prefix("rsp+") else {
                continue;
            };
            let ours = table.row_for(row.pc).copied();
            match ours.map(|r| (r.kind(), r.cfa_offset)) {
                // Top frames end the stack; stack switches use frame pointers.
                Some((RowKind::End, _)) | None => continue,
                Some((RowKind::CfaRsp, offset)) if offset.to_string() == cfa => {}
                // Frames of 64 KiB and more do not fit a row, and a
                // stack pointer above the return address is no frame
                // (assembly that pops it): both counted as unsupported.
                Some((RowKind::Unsupported, _))
                    if cfa.parse::<u64>().is_ok_and(|c| !(8..=0xffff).contains(&c)) => {}
                _ => differences.push(format!("{:#x}: readelf rsp+{cfa}, ours {ours:?}", row.pc)),
            }
            compared += 1;
        }
        eprintln!(
            "{}: {compared} rows compared, {} differ",
            go.display(),
            differences.len()
        );
        assert!(compared > 1000 && differences.is_empty(), "{differences:?}");
    }
}
