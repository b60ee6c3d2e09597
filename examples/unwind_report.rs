//! Reports how many samples of each named process carry a complete user
//! stack, from the pprof files the agent wrote (bench/unwind.sh).
//!
//! Usage: unwind_report DIR COMM=f1,f2,...,main ...
//! "Complete" is judged as the end-to-end test judges it
//! (tests/support/stack_chain.rs).
use std::collections::BTreeMap;

use agent_core::pprof::from_pprof;

#[path = "../tests/support/stack_chain.rs"]
mod stack_chain;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: unwind_report DIR COMM=chain ...")?;
    let chains: Vec<(String, Vec<String>)> = args
        .map(|a| {
            let (comm, chain) = a.split_once('=').unwrap_or((&a, "main"));
            (
                comm.to_owned(),
                chain.split(',').map(str::to_owned).collect(),
            )
        })
        .collect();
    let mut batches = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".pb.gz") {
            batches.extend(from_pprof(&std::fs::read(&path)?)?);
        }
    }
    for (comm, chain) in &chains {
        let (mut total, mut complete) = (0i64, 0i64);
        let mut statuses: BTreeMap<String, i64> = BTreeMap::new();
        let chain: Vec<&str> = chain.iter().map(String::as_str).collect();
        for sample in batches.iter().flat_map(|b| b.resolved_samples()) {
            if sample.series.get("comm") != Some(comm.as_str())
                || stack_chain::outside_the_workload(&sample, &chain)
            {
                continue;
            }
            total += sample.value;
            let status = sample.series.get("unwind_status").unwrap_or("none");
            *statuses.entry(status.to_owned()).or_default() += sample.value;
            if stack_chain::complete_down_to_main(&sample, &chain) {
                complete += sample.value;
            }
        }
        println!(
            "{comm}: agent complete {:.1}% of {total} samples {statuses:?}",
            complete as f64 * 100.0 / total.max(1) as f64
        );
    }
    Ok(())
}
