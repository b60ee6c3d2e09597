//! Whether a sample's user stack is whole, shared by tests/ebpf.rs and
//! examples/unwind_report.rs (bench/unwind.sh) so both judge alike.

use agent_core::ResolvedSample;

/// A sample of the process while it was not running the workload's code:
/// in the kernel exec'ing it (`do_execveat_common`, `bprm_execve`: still the
/// old image until the new one starts) or tearing it down (`do_exit`),
/// or a whole walk with none of `chain`'s functions on it (the dynamic
/// loader before `main`). Such samples cannot reach `main` through the
/// workload's code and say nothing about unwinding it, so both the e2e test
/// and bench/unwind.sh leave them out; every other walk that stopped early
/// counts against the unwinder.
pub fn outside_the_workload(sample: &ResolvedSample, chain: &[&str]) -> bool {
    let mut names = sample
        .frames
        .iter()
        .flat_map(|f| f.lines.iter().map(|l| l.function.as_str()));
    let exec_or_exit = names
        .clone()
        .any(|n| n == "bprm_execve" || n.starts_with("do_execveat_common") || n == "do_exit");
    let whole_without_chain = sample.series.get("unwind_status") == Some("complete")
        && !names.any(|n| chain.contains(&n.split('(').next().unwrap_or(n)));
    exec_or_exit || whole_without_chain
}

/// The walk ended at the outermost frame (`unwind_status` complete), `main`
/// is on the stack, and the chain's functions on it (names without C++
/// parameters) are, in order, the tail of `chain` (leaf first, `main` last).
pub fn complete_down_to_main(sample: &ResolvedSample, chain: &[&str]) -> bool {
    complete_down_to(sample, chain, "main")
}

/// [`complete_down_to_main`] for a stack whose outermost function is `root`
/// (`runtime.goexit` for a goroutine).
pub fn complete_down_to(sample: &ResolvedSample, chain: &[&str], root: &str) -> bool {
    let names: Vec<&str> = sample
        .frames
        .iter()
        .flat_map(|f| f.lines.iter().map(|l| l.function.as_str()))
        .map(|n| n.split('(').next().unwrap_or(n))
        .filter(|n| chain.contains(n))
        .collect();
    sample.series.get("unwind_status") == Some("complete")
        && names.last() == Some(&root)
        && chain.ends_with(&names)
}
