//! `/debug/pprof/profile`: the agent profiling itself with pprof-rs
//! (a SIGPROF sampler inside the process), converted to the agent's own
//! model and encoded by `to_pprof`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::labels;
use agent_core::pprof::{to_pprof, PprofGrouping};
use agent_core::{
    FrameType, Function, LabelSet, Line, Location, ProfileBatch, ProfileType, Sample,
};

/// Samples per second while profiling itself.
const FREQUENCY: i32 = 99;

/// Why self-profiling failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfProfileError {
    /// pprof-rs refused (typically: a profile is already being taken).
    #[error("cannot profile the agent now: {0}")]
    Busy(String),
}

/// Profiles this process for `duration`; returns a gzipped pprof.
pub async fn profile(duration: Duration) -> Result<Vec<u8>, SelfProfileError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| SelfProfileError::Busy(e.to_string()))?;
    let start = SystemTime::now();
    tokio::time::sleep(duration).await;
    let report = tokio::task::spawn_blocking(move || guard.report().build())
        .await
        .map_err(|e| SelfProfileError::Busy(e.to_string()))?
        .map_err(|e| SelfProfileError::Busy(e.to_string()))?;
    let start_ns = start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut batch = ProfileBatch::new(
        ProfileType::cpu_samples(FREQUENCY as u64),
        start_ns,
        duration.as_nanos() as u64,
    );
    let series = batch.label_sets.intern(LabelSet::new([
        (labels::COMM, "agent".to_string()),
        (labels::PID, std::process::id().to_string()),
    ]));
    let mut attributes: HashMap<String, u32> = HashMap::new();
    for (frames, count) in &report.data {
        let mut stack = Vec::with_capacity(frames.frames.len());
        for symbols in &frames.frames {
            // pprof-rs lists inlined functions innermost first, as the model does.
            let lines = symbols
                .iter()
                .map(|sym| {
                    let name = batch.strings.intern_str(&sym.name());
                    let file = batch.strings.intern_str(&sym.filename());
                    let function = batch.functions.intern(Function {
                        name,
                        system_name: name,
                        filename: file,
                        start_line: 0,
                    });
                    Line {
                        function,
                        line: i64::from(sym.lineno()),
                        column: 0,
                    }
                })
                .collect();
            let address = symbols.first().and_then(|s| s.addr).map_or(0, |a| a as u64);
            stack.push(batch.locations.intern(Location {
                mapping: None,
                address,
                lines,
                frame_type: FrameType::Native,
            }));
        }
        let stack = batch.stacks.intern(stack);
        let thread = frames.thread_name_or_id();
        let attrs = *attributes.entry(thread.clone()).or_insert_with(|| {
            batch
                .label_sets
                .intern(LabelSet::new([(labels::THREAD_COMM, thread)]))
        });
        batch.samples.push(Sample {
            stack,
            series,
            attributes: attrs,
            value: *count as i64,
            timestamp_unix_nanos: None,
        });
    }
    Ok(to_pprof(&batch, PprofGrouping::Batch).remove(0).gzipped)
}
