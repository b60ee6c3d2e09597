//! What the unwinder would hold in BPF maps with every process on this
//! machine profiled: every process's executable mappings read as the
//! receiver reads them, one table per distinct object (build id), compiled
//! as the receiver compiles them. Prints processes, objects, rows, bytes and
//! the compile time. Run as root to read every process.
use std::collections::HashMap;
use std::time::Instant;

use agent_receiver_ebpf_cpu::bpf::ProcessUnwindInfo;
use agent_receiver_ebpf_cpu::process::ProcessTracker;
use agent_receiver_ebpf_cpu::unwind;

fn main() {
    let started = Instant::now();
    let vdso = unwind::own_vdso();
    let mut tracker = ProcessTracker::new("/proc");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
            tracker.observe(pid);
            if tracker.get(pid).is_some_and(|p| !p.mappings.is_empty()) {
                pids.push(pid);
            }
        }
    }
    // Object key -> (rows, or why there is no table).
    let mut objects: HashMap<String, Result<usize, String>> = HashMap::new();
    let mut mappings = 0usize;
    for &pid in &pids {
        let info = tracker.get(pid).expect("observed");
        for m in &info.mappings {
            mappings += 1;
            let Some(key) = unwind::object_key(m) else {
                continue;
            };
            objects.entry(key).or_insert_with_key(|key| {
                unwind::compile_object(key, m, &tracker.proc_dir(pid), vdso.as_deref())
                    .map(|t| t.rows.len())
                    .map_err(|e| e.to_string())
            });
        }
    }
    let rows: usize = objects.values().filter_map(|r| r.as_ref().ok()).sum();
    let with_table = objects.values().filter(|r| r.is_ok()).count();
    let table_bytes = rows * std::mem::size_of::<agent_unwind_table::UnwindRow>();
    let process_bytes = pids.len() * std::mem::size_of::<ProcessUnwindInfo>();
    println!(
        "{} processes, {mappings} executable mappings, {} distinct objects ({with_table} with a table), {rows} rows",
        pids.len(),
        objects.len()
    );
    println!(
        "table rows {:.1} MiB + process entries {:.1} MiB = {:.1} MiB; read and compiled in {:.2} s",
        table_bytes as f64 / (1 << 20) as f64,
        process_bytes as f64 / (1 << 20) as f64,
        (table_bytes + process_bytes) as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let mut failures: Vec<&String> = objects.values().filter_map(|r| r.as_ref().err()).collect();
    failures.sort();
    failures.dedup();
    for f in failures {
        println!("  no table: {f}");
    }
}
