//! Symbolizes the addresses (ELF virtual addresses, hex, one per line) read
//! from stdin in one object file three times: cold (open and parse, then look
//! up), warm (look up again, parsed file kept, per-address memo cleared) and
//! memo (again, as a running agent sees addresses it has named before).
//! Prints the times and what the symbolizer keeps (heap, measured) to
//! stderr; with `--print`, the frames in the layout of
//! `addr2line -a -f -i -C`.
//!
//! `cargo run --release -p agent-processor-symbolize --example symbolize_file -- FILE [--print] < addresses`

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use agent_processor_symbolize::{Locator, OpenSymbolizer};

#[global_allocator]
static ALLOCATOR: agent_heap_meter::CountingAllocator = agent_heap_meter::CountingAllocator;

fn main() {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(
        args.next()
            .expect("usage: symbolize_file FILE [--print] < addresses"),
    );
    let print = args.next().as_deref() == Some("--print");
    let addresses: Vec<u64> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| u64::from_str_radix(l.trim().trim_start_matches("0x"), 16).ok())
        .collect();
    let locator = Locator {
        proc_root: PathBuf::from("/proc"),
        debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
    };

    let cold = Instant::now();
    let mut symbolizer = locator.open_file(&file).unwrap_or_else(|e| panic!("{e}"));
    let frames: Vec<_> = addresses.iter().map(|&a| symbolizer.symbolize(a)).collect();
    // What a batch's end does in the agent.
    symbolizer.release_pages();
    let cold = cold.elapsed();

    symbolizer.clear_memo();
    let warm = Instant::now();
    for &a in &addresses {
        std::hint::black_box(symbolizer.symbolize(a));
    }
    let warm = warm.elapsed();

    let memo = Instant::now();
    for &a in &addresses {
        std::hint::black_box(symbolizer.symbolize(a));
    }
    let memo = memo.elapsed();

    let named = frames.iter().filter(|f| !f.is_empty()).count();
    let kept = symbolizer.footprint();
    eprintln!(
        "{} addresses, {named} named: cold {:.3} s, warm {:.3} s, memo {:.3} s; keeps {:.1} MiB of heap and {:.1} MiB of DWARF units read",
        addresses.len(),
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        memo.as_secs_f64(),
        kept.heap as f64 / 1048576.0,
        kept.units as f64 / 1048576.0,
    );
    if print {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (address, frames) in addresses.iter().zip(&frames) {
            writeln!(out, "{address:#018x}").unwrap();
            if frames.is_empty() {
                writeln!(out, "??\n??:0").unwrap();
            }
            for f in frames.iter() {
                let name = if f.name.is_empty() { "??" } else { &f.name };
                let file = if f.file.is_empty() { "??" } else { &f.file };
                writeln!(out, "{name}\n{file}:{}", f.line).unwrap();
            }
        }
    }
}
