//! Reports how many samples of each named process carry a complete user
//! stack, from the pprof files the agent wrote (bench/unwind.sh).
//!
//! Usage: unwind_report DIR COMM=f1,f2,...,main ...
//! A sample is complete when its walk ended at the outermost frame and the
//! chain's functions on it are, in order, the tail of the chain (ending in
//! `main`).
use std::collections::BTreeMap;

use agent_core::pprof::from_pprof;

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
        for sample in batches.iter().flat_map(|b| b.resolved_samples()) {
            if sample.series.get("comm") != Some(comm.as_str()) {
                continue;
            }
            total += sample.value;
            let status = sample.series.get("unwind_status").unwrap_or("none");
            *statuses.entry(status.to_owned()).or_default() += sample.value;
            let names: Vec<&str> = sample
                .frames
                .iter()
                .flat_map(|f| f.lines.iter().map(|l| l.function.as_str()))
                .map(|n| n.split('(').next().unwrap_or(n))
                .filter(|n| chain.iter().any(|c| c == n))
                .collect();
            let tail = names.len() <= chain.len()
                && chain[chain.len() - names.len()..]
                    .iter()
                    .zip(&names)
                    .all(|(c, n)| c == n);
            if status == "complete" && names.last() == Some(&"main") && tail {
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
