//! `to_pprof` and `to_otlp` on a batch of 1M samples with 50k distinct stacks.

use agent_profile::model::*;
use agent_profile::otlp::{to_otlp, to_otlp_with, AttributeKeys};
use agent_profile::pprof::{to_pprof, PprofGrouping};
use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;

/// A deterministic pseudo-random sequence (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 1M samples over 50k stacks (depth 8..40) of 100k symbolized locations in
/// 200 mappings, 500 series, thread and CPU attributes.
pub fn large_batch() -> ProfileBatch {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 10_000_000_000);
    let mappings: Vec<MappingId> = (0..200u64)
        .map(|i| {
            let filename = b.strings.intern_str(&format!("/usr/lib/lib{i}.so"));
            let build_id = b.strings.intern_str(&format!("{:040x}", i * 7919));
            b.mappings.intern(Mapping {
                memory_start: 0x7f00_0000_0000 + i * 0x100_0000,
                memory_limit: 0x7f00_0000_0000 + (i + 1) * 0x100_0000,
                file_offset: 0,
                filename,
                build_id,
                build_id_kind: BuildIdKind::Gnu,
            })
        })
        .collect();
    let functions: Vec<FunctionId> = (0..20_000)
        .map(|i| {
            let name = b
                .strings
                .intern_str(&format!("namespace::module::function_{i}"));
            let filename = b.strings.intern_str(&format!("src/file_{}.rs", i % 2000));
            b.functions.intern(Function {
                name,
                system_name: name,
                filename,
                start_line: i as i64,
            })
        })
        .collect();
    let locations: Vec<LocationId> = (0..100_000u64)
        .map(|i| {
            let m = mappings[rng.below(200) as usize];
            let lines = (0..1 + rng.below(3))
                .map(|_| Line {
                    function: functions[rng.below(20_000) as usize],
                    line: rng.below(5000) as i64,
                    column: 0,
                })
                .collect();
            b.locations.intern(Location {
                mapping: Some(m),
                address: 0x7f00_0000_0000 + i * 16,
                lines,
                frame_type: FrameType::Native,
            })
        })
        .collect();
    let stacks: Vec<StackId> = (0..50_000)
        .map(|_| {
            let depth = 8 + rng.below(33);
            b.stacks.intern(
                (0..depth)
                    .map(|_| locations[rng.below(100_000) as usize])
                    .collect(),
            )
        })
        .collect();
    let series: Vec<LabelSetId> = (0..500)
        .map(|i| {
            b.label_sets.intern(LabelSet::new([
                ("comm", format!("proc{}", i % 50)),
                ("pid", format!("{}", 1000 + i)),
                ("node", "node-1".to_string()),
            ]))
        })
        .collect();
    let attributes: Vec<LabelSetId> = (0..64)
        .map(|i| {
            b.label_sets.intern(LabelSet::new([
                ("cpu", format!("{}", i % 8)),
                ("thread_id", format!("{}", 5000 + i)),
            ]))
        })
        .collect();
    for _ in 0..1_000_000 {
        b.samples.push(Sample {
            stack: stacks[rng.below(50_000) as usize],
            series: series[rng.below(500) as usize],
            attributes: attributes[rng.below(64) as usize],
            value: 1 + rng.below(3) as i64,
            timestamp_unix_nanos: None,
        });
    }
    b
}

fn conversions(c: &mut Criterion) {
    let batch = large_batch();
    let mut g = c.benchmark_group("1M samples, 50k stacks");
    g.sample_size(10);
    g.bench_function("to_pprof batch (gzipped)", |bench| {
        bench.iter(|| to_pprof(&batch, PprofGrouping::Batch))
    });
    g.bench_function("to_pprof per series (gzipped)", |bench| {
        bench.iter(|| {
            to_pprof(
                &batch,
                PprofGrouping::Series {
                    series_labels_in_samples: false,
                },
            )
        })
    });
    g.bench_function("to_otlp (encoded)", |bench| {
        bench.iter(|| to_otlp(&batch).encode_to_vec())
    });
    // What otlp_profiles does: semantic-convention keys, integer pids/CPUs.
    let keys = AttributeKeys::new(
        [
            ("pid", "process.pid"),
            ("comm", "process.command"),
            ("node", "host.name"),
            ("thread_id", "thread.id"),
            ("cpu", "cpu.logical_number"),
        ]
        .map(|(l, k)| (l.to_owned(), k.to_owned())),
        ["process.pid", "thread.id", "cpu.logical_number"].map(str::to_owned),
    );
    g.bench_function("to_otlp_with semantic keys (encoded)", |bench| {
        bench.iter(|| to_otlp_with(&batch, &keys).encode_to_vec())
    });
    g.finish();
}

criterion_group!(benches, conversions);
criterion_main!(benches);
