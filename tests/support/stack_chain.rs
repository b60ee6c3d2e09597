//! Whether a sample's user stack is whole, shared by tests/ebpf.rs and
//! examples/unwind_report.rs (bench/unwind.sh) so both judge alike.

use agent_core::ResolvedSample;

/// The walk ended at the outermost frame (`unwind_status` complete), `main`
/// is on the stack, and the chain's functions on it (names without C++
/// parameters) are, in order, the tail of `chain` (leaf first, `main` last).
pub fn complete_down_to_main(sample: &ResolvedSample, chain: &[&str]) -> bool {
    let names: Vec<&str> = sample
        .frames
        .iter()
        .flat_map(|f| f.lines.iter().map(|l| l.function.as_str()))
        .map(|n| n.split('(').next().unwrap_or(n))
        .filter(|n| chain.contains(n))
        .collect();
    sample.series.get("unwind_status") == Some("complete")
        && names.last() == Some(&"main")
        && chain.ends_with(&names)
}
