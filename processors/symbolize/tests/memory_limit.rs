//! `symbolize` within its `memory_limit`: this test's own executable (a
//! debug build whose DWARF is many times the limit) named in batches, with
//! the heap the symbolizer keeps and peaks at measured by the allocator,
//! and the names compared with a run without a limit.
//!
//! Alone in its file: the resident-memory figures are the process's own.

use std::path::Path;

use agent_core::BuildContext;
use agent_heap_meter::{measure_peak, CountingAllocator};
use agent_processor_symbolize::{SymbolizeConfig, Symbolizer, MIN_MEMORY_LIMIT};
use object::{Object, ObjectSection, ObjectSymbol};

mod common;
use common::{batch_for, chains_of, map};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Addresses per batch, as a window of a busy process might bring.
const BATCH: usize = 1000;

/// The middle of every `step`th function of `binary`.
fn function_addresses(binary: &Path, step: usize) -> Vec<u64> {
    let data = map(binary);
    let obj = object::File::parse(&*data).unwrap();
    let mut addresses: Vec<u64> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .map(|s| s.address() + s.size() / 2)
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses.into_iter().step_by(step).collect()
}

fn debug_info_bytes(binary: &Path) -> u64 {
    let data = map(binary);
    let obj = object::File::parse(&*data).unwrap();
    obj.sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".debug_")))
        .map(|s| s.size())
        .sum()
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// `f`'s result, and how far resident memory rose above where it started.
fn resident_growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    // Writing 5 resets the peak (VmHWM) to the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let out = f();
    (out, status_kib("VmHWM:").saturating_sub(before) << 10)
}

/// What one run kept and named.
struct Run {
    /// A hash of the frames of each address (names, files, lines).
    chains: Vec<u64>,
    /// Addresses named with a file and line.
    named: usize,
    /// Heap held after each batch (the symbolizer's: batches are dropped).
    kept_after_batch: Vec<i64>,
    /// The most heap held at any moment.
    peak: i64,
    /// What the symbolizer reports holding after each batch.
    reported_after_batch: Vec<i64>,
}

fn run(binary: &Path, addresses: &[u64], memory_limit: u64) -> Run {
    // Allocated up front: only the symbolizer's memory moves while measured.
    let mut chains = Vec::with_capacity(addresses.len());
    let mut named = 0;
    let batches = addresses.len().div_ceil(BATCH);
    let mut kept_after_batch = Vec::with_capacity(batches);
    let mut reported_after_batch = Vec::with_capacity(batches);
    let ctx = BuildContext::for_test("symbolize");
    let ((), usage) = measure_peak(|| {
        let mut symbolizer = Symbolizer::new(
            SymbolizeConfig {
                memory_limit,
                ..SymbolizeConfig::default()
            },
            &ctx,
        );
        let start = agent_heap_meter::thread_net_bytes();
        for addresses in addresses.chunks(BATCH) {
            let mut batch = batch_for(binary, addresses);
            symbolizer.symbolize(&mut batch);
            for chain in chains_of(&batch) {
                named += usize::from(
                    chain
                        .last()
                        .is_some_and(|f| !f.0.is_empty() && !f.1.is_empty()),
                );
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&chain, &mut hasher);
                chains.push(std::hash::Hasher::finish(&hasher));
            }
            drop(batch);
            kept_after_batch.push(agent_heap_meter::thread_net_bytes() - start);
            // The same gauge the symbolizer sets (created on first use).
            reported_after_batch.push(ctx.telemetry.gauge("symbolize_memory_bytes", "", &[]).get());
        }
    });
    Run {
        chains,
        named,
        kept_after_batch,
        peak: usage.peak,
        reported_after_batch,
    }
}

#[test]
fn names_within_a_memory_limit_are_the_names_without_one() {
    let exe = std::env::current_exe().unwrap();
    let limit = MIN_MEMORY_LIMIT;
    let dwarf = debug_info_bytes(&exe);
    assert!(
        dwarf > 5 * limit,
        "{}: {dwarf} bytes of DWARF is not several times {limit}",
        exe.display()
    );
    let addresses = function_addresses(&exe, 1);
    assert!(addresses.len() > 8 * BATCH, "{} addresses", addresses.len());

    // One batch first, unmeasured: the code it runs and the allocator's
    // arenas become resident once (7 MiB here), in neither run's figure.
    run(&exe, &addresses[..BATCH], limit);
    let (limited, hwm_growth) = resident_growth(|| run(&exe, &addresses, limit));
    let (unlimited, unlimited_hwm_growth) = resident_growth(|| run(&exe, &addresses, u64::MAX));
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    eprintln!(
        "{} addresses, {} MiB of DWARF; limit {} MiB: kept {:.1} MiB at most, peak heap {:.1} MiB, resident growth {:.1} MiB; unlimited: kept {:.1} MiB, peak {:.1} MiB, resident growth {:.1} MiB",
        addresses.len(),
        dwarf >> 20,
        limit >> 20,
        *limited.kept_after_batch.iter().max().unwrap() as f64 / 1048576.0,
        limited.peak as f64 / 1048576.0,
        mib(hwm_growth),
        *unlimited.kept_after_batch.iter().max().unwrap() as f64 / 1048576.0,
        unlimited.peak as f64 / 1048576.0,
        mib(unlimited_hwm_growth),
    );

    let named = limited.named;
    assert!(
        named * 10 > addresses.len() * 9,
        "only {named} of {} addresses named with file and line",
        addresses.len()
    );
    let differing = limited
        .chains
        .iter()
        .zip(&unlimited.chains)
        .zip(&addresses)
        .filter(|((a, b), _)| a != b)
        .map(|(_, address)| format!("{address:#x}"))
        .take(5)
        .collect::<Vec<_>>();
    assert!(
        differing.is_empty(),
        "named differently with a limit: {differing:?}"
    );

    for (i, (&kept, &reported)) in limited
        .kept_after_batch
        .iter()
        .zip(&limited.reported_after_batch)
        .enumerate()
    {
        // The pool holds its files to the limit; the processor's own
        // bookkeeping (its table of files, counters) is outside it.
        assert!(
            kept <= limit as i64 + (64 << 10),
            "after batch {i} the symbolizer kept {kept} bytes, over its {limit}"
        );
        assert!(reported <= limit as i64, "batch {i}: reports {reported}");
    }
    // Within a batch, the file being read rebuilds its index and reads
    // units (an eighth of the limit) on top of what is kept, and the batch
    // itself grows: about twice the limit here, against 12 times without.
    assert!(
        limited.peak <= 5 * limit as i64 / 2,
        "peak heap {} over 2.5 times the limit",
        limited.peak
    );
    // Resident adds the allocator's free lists and the file pages read
    // between releases: 11 MiB here (60 MiB of DWARF), 79 MiB without a
    // limit.
    assert!(
        hwm_growth <= 5 * limit && 3 * hwm_growth < unlimited_hwm_growth,
        "resident memory grew by {hwm_growth} bytes (limit {limit}), without a limit {unlimited_hwm_growth}"
    );
    let unlimited_kept = *unlimited.kept_after_batch.iter().max().unwrap();
    assert!(
        unlimited_kept > 2 * limit as i64,
        "without a limit it kept {unlimited_kept}: this test would not show the limit working"
    );
}
