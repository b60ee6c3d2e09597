//! Building the unwind table of the largest shared library on the machine
//! (`AGENT_UNWIND_BENCH_FILE` to choose another).
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};

fn largest_library() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("AGENT_UNWIND_BENCH_FILE") {
        return Some(file.into());
    }
    let mut candidates = Vec::new();
    let mut dirs = vec![PathBuf::from("/usr/lib"), PathBuf::from("/lib")];
    if let Some(home) = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))
    {
        dirs.push(home.join("toolchains"));
    }
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() && path.to_string_lossy().contains(".so") {
                if let Ok(meta) = entry.metadata() {
                    candidates.push((meta.len(), path));
                }
            }
        }
    }
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .map(|(_, p)| p)
        .find(|p| agent_unwind_table::compile_file(p).is_ok())
}

fn bench(c: &mut Criterion) {
    let Some(file) = largest_library() else {
        eprintln!("no shared library with .eh_frame found");
        return;
    };
    let table = agent_unwind_table::compile_file(&file).unwrap();
    eprintln!(
        "{}: {} bytes, {} functions, {} rows, {} table bytes, {:?}",
        file.display(),
        std::fs::metadata(&file).map_or(0, |m| m.len()),
        table.stats.functions,
        table.rows.len(),
        table.size_bytes(),
        table.stats,
    );
    let mut group = c.benchmark_group("unwind_table");
    group.sample_size(10);
    group.bench_function("compile_largest_library", |b| {
        b.iter(|| agent_unwind_table::compile_file(&file).unwrap().rows.len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
