//! Batches of native addresses for the symbolize tests, and what the
//! symbolizer named in them.

use std::path::Path;

use agent_core::{
    BuildIdKind, FrameType, LabelSet, Location, Mapping, ProfileBatch, ProfileType, Sample,
};
use object::{Object, ObjectSegment};

/// Where a PIE is loaded in the batches (any page-aligned address).
pub const PIE_BASE: u64 = 0x5555_0000_0000;

/// `path` mapped: what parsing touches is read, not the whole file (the
/// memory test measures resident memory).
pub fn map(path: &Path) -> memmap2::Mmap {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a test's own fixture, not changed while mapped.
    unsafe { memmap2::Mmap::map(&file) }.unwrap()
}

/// (function, file, line) per frame, innermost first.
pub type Chain = Vec<(String, String, i64)>;

/// A batch with one sample per address, mapped the way the loader maps the
/// binary (a PIE at PIE_BASE), with its build id and no process.
pub fn batch_for(binary: &Path, addresses: &[u64]) -> ProfileBatch {
    let data = map(binary);
    let obj = object::File::parse(&*data).unwrap();
    let base = if obj.kind() == object::ObjectKind::Dynamic {
        PIE_BASE
    } else {
        0
    };
    let build_id: String = obj
        .build_id()
        .unwrap()
        .expect("fixture has a build id")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut batch = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
    let filename = batch.strings.intern_str(binary.to_str().unwrap());
    let build_id = batch.strings.intern_str(&build_id);
    let series = batch
        .label_sets
        .intern(LabelSet::new([("comm", "fixture")]));
    for &address in addresses {
        let segment = obj
            .segments()
            .find(|s| (s.address()..s.address() + s.size()).contains(&address))
            .expect("address in a segment");
        let page = segment.address() & !0xfff;
        let mapping = batch.mappings.intern(Mapping {
            memory_start: base + page,
            memory_limit: base + segment.address() + segment.size(),
            file_offset: segment.file_range().0 & !0xfff,
            filename,
            build_id,
            build_id_kind: BuildIdKind::Gnu,
        });
        push_sample(&mut batch, series, mapping, base + address);
    }
    batch
}

/// One sample of an unnamed native location at `address` in `mapping`.
pub fn push_sample(batch: &mut ProfileBatch, series: u32, mapping: u32, address: u64) {
    let location = batch.locations.intern(Location {
        mapping: Some(mapping),
        address,
        lines: Vec::new(),
        frame_type: FrameType::Native,
    });
    let stack = batch.stacks.intern(vec![location]);
    batch.samples.push(Sample {
        stack,
        series,
        attributes: 0,
        value: 1,
        timestamp_unix_nanos: None,
    });
}

pub fn chains_of(batch: &ProfileBatch) -> Vec<Chain> {
    batch
        .samples
        .iter()
        .map(|s| {
            let loc = batch.stacks.get(s.stack)[0];
            batch
                .resolve_location(loc)
                .lines
                .into_iter()
                .map(|l| (l.function, l.filename, l.line))
                .collect()
        })
        .collect()
}
