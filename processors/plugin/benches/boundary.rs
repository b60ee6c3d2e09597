//! The plugin boundary for a batch of 100k samples: encode to OTLP bytes,
//! call through the C ABI (a pass-through SDK plugin), decode back.

use agent_core::model::*;
use agent_plugin_sdk::{Plugin, ProfilesData};
use agent_processor_plugin::{process_batch, Library, PluginProcessor, VTable};
use criterion::{criterion_group, criterion_main, Criterion};

struct PassThrough;
impl Plugin for PassThrough {
    const NAME: &'static std::ffi::CStr = c"pass_through";
    fn create(_: agent_plugin_sdk::serde_json::Value) -> Result<Self, String> {
        Ok(PassThrough)
    }
    fn process(&mut self, data: ProfilesData) -> Result<ProfilesData, String> {
        Ok(data)
    }
}
static VTABLE: agent_plugin_sdk::PluginVTable = agent_plugin_sdk::vtable::<PassThrough>();

/// 100k samples over 10k stacks (depth 10..30) of 20k locations, 100 series.
fn batch() -> ProfileBatch {
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 10_000_000_000);
    let file = b.strings.intern_str("/usr/lib/libapp.so");
    let mapping = b.mappings.intern(Mapping {
        memory_start: 0x1000,
        memory_limit: 0x10_0000_0000,
        file_offset: 0,
        filename: file,
        build_id: 0,
        build_id_kind: BuildIdKind::None,
    });
    let locations: Vec<LocationId> = (0..20_000u64)
        .map(|i| {
            let name = b.strings.intern_str(&format!("function_{}", i % 5000));
            let f = b.functions.intern(Function {
                name,
                system_name: name,
                filename: file,
                start_line: 0,
            });
            b.locations.intern(Location {
                mapping: Some(mapping),
                address: 0x1000 + i * 16,
                lines: vec![Line {
                    function: f,
                    line: i as i64,
                    column: 0,
                }],
                frame_type: FrameType::Native,
            })
        })
        .collect();
    let stacks: Vec<StackId> = (0..10_000)
        .map(|_| {
            let depth = 10 + next(21);
            b.stacks.intern(
                (0..depth)
                    .map(|_| locations[next(20_000) as usize])
                    .collect(),
            )
        })
        .collect();
    let series: Vec<LabelSetId> = (0..100)
        .map(|i| {
            b.label_sets.intern(LabelSet::new([
                ("pid", i.to_string()),
                ("comm", format!("p{}", i % 10)),
            ]))
        })
        .collect();
    for _ in 0..100_000 {
        b.samples.push(Sample {
            stack: stacks[next(10_000) as usize],
            series: series[next(100) as usize],
            attributes: 0,
            value: 1,
            timestamp_unix_nanos: None,
        });
    }
    b
}

fn boundary(c: &mut Criterion) {
    let batch = batch();
    // SAFETY: a static vtable of the same C layout, as dlopen would return.
    let library = unsafe {
        Library::from_vtable(
            (&VTABLE as *const agent_plugin_sdk::PluginVTable).cast::<VTable>(),
            std::path::Path::new("linked-in"),
            None,
        )
    }
    .unwrap();
    let mut plugin = PluginProcessor::new(
        library,
        std::path::Path::new("linked-in"),
        &Default::default(),
    )
    .unwrap();
    let mut g = c.benchmark_group("plugin boundary, 100k samples");
    g.sample_size(20);
    g.bench_function("encode + call + decode", |b| {
        b.iter(|| process_batch(&mut plugin, &batch).unwrap())
    });
    g.finish();
    let out = process_batch(&mut plugin, &batch).unwrap();
    assert_eq!(out.total_value(), batch.total_value());
}

criterion_group!(benches, boundary);
criterion_main!(benches);
