//! Symbolizing 100k distinct addresses of a large library: the Rust
//! toolchain's librustc_driver (150 MB, symbol tables) and this benchmark's
//! own executable (DWARF line tables with inlines). Cold: open, parse and
//! look up; warm: look up again with the file parsed (per-address memo
//! cleared). `bench/symbolize.sh` compares with llvm-symbolizer and addr2line.

use std::path::{Path, PathBuf};
use std::process::Command;

use agent_processor_symbolize::{Locator, OpenSymbolizer};
use criterion::{criterion_group, criterion_main, Criterion};
use object::{Object, ObjectSymbol, SymbolKind};

const ADDRESSES: usize = 100_000;

fn librustc_driver() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let lib = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().contains("librustc_driver-"))
}

/// Distinct addresses inside the file's functions, spread evenly (no RNG needed).
fn addresses(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let functions: Vec<(u64, u64)> = obj
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .map(|s| (s.address(), s.size()))
        .collect();
    let mut picked: Vec<u64> = (0..ADDRESSES)
        .map(|i| {
            let (start, size) = functions[i * 7919 % functions.len()];
            start + (i as u64 * 104_729) % size
        })
        .collect();
    picked.sort_unstable();
    picked.dedup();
    picked
}

fn bench_file(c: &mut Criterion, label: &str, path: &Path) {
    let locator = Locator {
        proc_root: PathBuf::from("/proc"),
        debug_dirs: vec![],
    };
    let addresses = addresses(path);
    let mut group = c.benchmark_group(format!("symbolize_{label}"));
    group.sample_size(10);
    group.bench_function(format!("cold_{}_addresses", addresses.len()), |b| {
        b.iter(|| {
            let mut s = locator.open_file(path).unwrap();
            for &a in &addresses {
                std::hint::black_box(s.symbolize(a));
            }
        })
    });
    let mut warm = locator.open_file(path).unwrap();
    for &a in &addresses {
        warm.symbolize(a);
    }
    group.bench_function(format!("warm_{}_addresses", addresses.len()), |b| {
        // Clearing the memo is part of each iteration (a few ms of drops).
        b.iter(|| {
            warm.clear_memo();
            for &a in &addresses {
                std::hint::black_box(warm.symbolize(a));
            }
        })
    });
    group.finish();
}

fn symbolize(c: &mut Criterion) {
    match librustc_driver() {
        Some(lib) => bench_file(c, "librustc_driver", &lib),
        None => eprintln!("librustc_driver not found; skipping that library"),
    }
    bench_file(c, "own_executable", &std::env::current_exe().unwrap());
}

criterion_group!(benches, symbolize);
criterion_main!(benches);
