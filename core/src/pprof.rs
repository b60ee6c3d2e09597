//! pprof (`profile.proto`) encoding and decoding of [`ProfileBatch`]es.
//!
//! The message types are written by hand with `prost` derives from the field
//! numbers of pprof's `profile.proto`, so no protoc is needed at build time.

use std::collections::HashMap;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;

use crate::model::*;

/// pprof's wire messages.
#[allow(missing_docs)]
pub mod proto {
    /// `perftools.profiles.Profile`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
        #[prost(int64, tag = "15")]
        pub doc_url: i64,
    }

    /// `perftools.profiles.ValueType`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    /// `perftools.profiles.Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    /// `perftools.profiles.Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    /// `perftools.profiles.Mapping`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    /// `perftools.profiles.Location`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    /// `perftools.profiles.Line`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    /// `perftools.profiles.Function`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// The mapping name pprof producers (perf, Parca) give to kernel code.
pub const KERNEL_MAPPING_NAME: &str = "[kernel.kallsyms]";

/// Why a pprof could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// Not gzip or corrupt gzip.
    #[error("cannot decompress: {0}")]
    Gzip(#[from] std::io::Error),
    /// Not a protobuf `Profile`.
    #[error("not a pprof profile: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A reference to an id or string that does not exist.
    #[error("malformed pprof: {0}")]
    Malformed(String),
}

/// How [`to_pprof`] splits a batch into profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PprofGrouping {
    /// One profile for the whole batch; series labels become sample labels.
    Batch,
    /// One profile per series; the series also travels beside it.
    Series {
        /// Also write the series labels as sample labels, so the file
        /// describes itself; otherwise sample labels hold only attributes.
        series_labels_in_samples: bool,
    },
}

/// One encoded profile and, for [`PprofGrouping::Series`], its series.
#[derive(Clone, Debug)]
pub struct EncodedProfile {
    /// The series this profile holds (`None` for a whole batch).
    pub series: Option<LabelSet>,
    /// Number of samples in it.
    pub sample_count: usize,
    /// The gzipped `Profile` message.
    pub gzipped: Vec<u8>,
}

/// Encodes a batch as gzipped pprof, grouped as asked.
pub fn to_pprof(batch: &ProfileBatch, grouping: PprofGrouping) -> Vec<EncodedProfile> {
    match grouping {
        PprofGrouping::Batch => {
            let profile = build_profile(batch, batch.samples.iter(), true);
            vec![EncodedProfile {
                series: None,
                sample_count: batch.samples.len(),
                gzipped: gzip(&profile),
            }]
        }
        PprofGrouping::Series {
            series_labels_in_samples,
        } => build_series_profiles(batch, series_labels_in_samples)
            .into_iter()
            .map(|(series, sample_count, profile)| EncodedProfile {
                series: Some(batch.labels(series).clone()),
                sample_count,
                gzipped: gzip(&profile),
            })
            .collect(),
    }
}

/// Gzips an encoded profile.
pub fn gzip(profile: &proto::Profile) -> Vec<u8> {
    let raw = profile.encode_to_vec();
    let mut enc = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(&raw).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Ids of one dictionary renumbered for one profile: `NONE` until used.
/// The entries set are remembered, so the table is reset in time
/// proportional to what one profile used, not to the batch's dictionary.
struct Remap<T: Copy> {
    ids: Vec<T>,
    touched: Vec<u32>,
    none: T,
}

impl<T: Copy + PartialEq> Remap<T> {
    fn new(len: usize, none: T) -> Self {
        Self {
            ids: vec![none; len],
            touched: Vec::new(),
            none,
        }
    }

    fn get(&self, id: u32) -> Option<T> {
        let v = self.ids[id as usize];
        (v != self.none).then_some(v)
    }

    fn set(&mut self, id: u32, value: T) {
        self.ids[id as usize] = value;
        self.touched.push(id);
    }

    fn reset(&mut self) {
        for id in self.touched.drain(..) {
            self.ids[id as usize] = self.none;
        }
    }
}

/// Renumbers the dictionary entries a subset of samples uses as pprof ids
/// 1..n (strings 0..n with `""` first), in order of first use; reused
/// across the profiles of one batch.
struct PprofBuilder<'a> {
    batch: &'a ProfileBatch,
    out: proto::Profile,
    strings: Remap<i64>,
    mappings: Remap<u64>,
    functions: Remap<u64>,
    locations: Remap<u64>,
    extra_strings: HashMap<&'a str, i64>,
    label_sets: Vec<Option<Vec<proto::Label>>>,
    label_sets_touched: Vec<LabelSetId>,
}

impl<'a> PprofBuilder<'a> {
    fn new(batch: &'a ProfileBatch) -> Self {
        Self {
            batch,
            out: proto::Profile::default(),
            strings: Remap::new(batch.strings.len(), -1),
            mappings: Remap::new(batch.mappings.len(), 0),
            functions: Remap::new(batch.functions.len(), 0),
            locations: Remap::new(batch.locations.len(), 0),
            extra_strings: HashMap::new(),
            label_sets: vec![None; batch.label_sets.len()],
            label_sets_touched: Vec::new(),
        }
    }

    fn string(&mut self, id: StrId) -> i64 {
        if let Some(i) = self.strings.get(id) {
            return i;
        }
        let i = self.out.string_table.len() as i64;
        self.out.string_table.push(self.batch.str(id).to_owned());
        self.strings.set(id, i);
        i
    }

    /// Strings that are not in the batch's table (label names and values).
    fn text(&mut self, s: &'a str) -> i64 {
        if let Some(id) = self.batch.strings.find_str(s) {
            return self.string(id);
        }
        if let Some(&i) = self.extra_strings.get(s) {
            return i;
        }
        let i = self.out.string_table.len() as i64;
        self.out.string_table.push(s.to_owned());
        self.extra_strings.insert(s, i);
        i
    }

    fn mapping(&mut self, id: MappingId) -> u64 {
        if let Some(i) = self.mappings.get(id) {
            return i;
        }
        let m = self.batch.mappings.get(id);
        let pid = self.out.mapping.len() as u64 + 1;
        self.mappings.set(id, pid);
        let filename = self.string(m.filename);
        let build_id = self.string(m.build_id);
        self.out.mapping.push(proto::Mapping {
            id: pid,
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename,
            build_id,
            ..Default::default()
        });
        pid
    }

    fn function(&mut self, id: FunctionId) -> u64 {
        if let Some(i) = self.functions.get(id) {
            return i;
        }
        let f = self.batch.functions.get(id);
        let pid = self.out.function.len() as u64 + 1;
        self.functions.set(id, pid);
        let function = proto::Function {
            id: pid,
            name: self.string(f.name),
            system_name: self.string(f.system_name),
            filename: self.string(f.filename),
            start_line: f.start_line,
        };
        self.out.function.push(function);
        pid
    }

    fn location(&mut self, id: LocationId) -> u64 {
        if let Some(i) = self.locations.get(id) {
            return i;
        }
        let loc = self.batch.locations.get(id);
        let pid = self.out.location.len() as u64 + 1;
        self.locations.set(id, pid);
        let mapping_id = loc.mapping.map_or(0, |m| self.mapping(m));
        let line = loc
            .lines
            .iter()
            .map(|l| proto::Line {
                function_id: self.function(l.function),
                line: l.line,
                column: l.column,
            })
            .collect();
        self.out.location.push(proto::Location {
            id: pid,
            mapping_id,
            address: loc.address,
            line,
            is_folded: false,
        });
        pid
    }

    /// Appends the labels of set `id`, encoding each set once per profile.
    fn labels(&mut self, id: LabelSetId, out: &mut Vec<proto::Label>) {
        if self.label_sets[id as usize].is_none() {
            let batch = self.batch;
            let encoded = batch
                .labels(id)
                .pairs()
                .iter()
                .map(|(k, v)| proto::Label {
                    key: self.text(k),
                    str: self.text(v),
                    ..Default::default()
                })
                .collect();
            self.label_sets[id as usize] = Some(encoded);
            self.label_sets_touched.push(id);
        }
        out.extend_from_slice(self.label_sets[id as usize].as_deref().unwrap_or_default());
    }

    /// The pprof message of `samples`; the builder is ready for the next.
    fn build(
        &mut self,
        samples: impl Iterator<Item = &'a Sample>,
        series_as_sample_labels: bool,
    ) -> proto::Profile {
        let batch = self.batch;
        self.out = proto::Profile {
            string_table: vec![String::new()],
            time_nanos: batch.start_unix_nanos as i64,
            duration_nanos: batch.duration_nanos as i64,
            period: batch.profile_type.period,
            ..Default::default()
        };
        self.strings.set(0, 0);
        let pt = &batch.profile_type;
        let sample_type = proto::ValueType {
            r#type: self.text(&pt.sample_type.kind),
            unit: self.text(&pt.sample_type.unit),
        };
        let period_type = proto::ValueType {
            r#type: self.text(&pt.period_type.kind),
            unit: self.text(&pt.period_type.unit),
        };
        self.out.sample_type.push(sample_type);
        self.out.period_type = Some(period_type);
        let mut out_samples = Vec::new();
        for s in samples {
            let location_id = batch
                .stacks
                .get(s.stack)
                .iter()
                .map(|&l| self.location(l))
                .collect();
            let mut label = Vec::new();
            if series_as_sample_labels {
                self.labels(s.series, &mut label);
            }
            self.labels(s.attributes, &mut label);
            out_samples.push(proto::Sample {
                location_id,
                value: vec![s.value],
                label,
            });
        }
        self.out.sample = out_samples;
        self.strings.reset();
        self.mappings.reset();
        self.functions.reset();
        self.locations.reset();
        self.extra_strings.clear();
        for id in self.label_sets_touched.drain(..) {
            self.label_sets[id as usize] = None;
        }
        std::mem::take(&mut self.out)
    }
}

/// Builds the pprof message of `samples` of `batch`.
pub fn build_profile<'a>(
    batch: &'a ProfileBatch,
    samples: impl Iterator<Item = &'a Sample>,
    series_as_sample_labels: bool,
) -> proto::Profile {
    PprofBuilder::new(batch).build(samples, series_as_sample_labels)
}

/// One pprof message per series of `batch`, in first-use order, with the
/// series and its sample count; series labels appear as sample labels only
/// when `series_as_sample_labels`.
pub fn build_series_profiles(
    batch: &ProfileBatch,
    series_as_sample_labels: bool,
) -> Vec<(LabelSetId, usize, proto::Profile)> {
    let mut groups: HashMap<LabelSetId, Vec<&Sample>> = HashMap::new();
    for s in &batch.samples {
        groups.entry(s.series).or_default().push(s);
    }
    let mut builder = PprofBuilder::new(batch);
    batch
        .series_ids()
        .into_iter()
        .map(|series| {
            let samples = &groups[&series];
            let profile = builder.build(samples.iter().copied(), series_as_sample_labels);
            (series, samples.len(), profile)
        })
        .collect()
}

/// Decompresses `data` if it is gzipped.
pub fn maybe_gunzip(data: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, std::io::Error> {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(data.len() * 4);
        GzDecoder::new(data).read_to_end(&mut out)?;
        Ok(out.into())
    } else {
        Ok(data.into())
    }
}

/// Decodes a pprof (plain or gzipped) into one batch per sample type.
///
/// Every sample label (string or numeric) becomes a series label; numeric
/// values are written in decimal. Locations in a mapping named
/// `[kernel.kallsyms]` are kernel frames, other mapped ones native.
pub fn from_pprof(data: &[u8]) -> Result<Vec<ProfileBatch>, PprofError> {
    let raw = maybe_gunzip(data)?;
    let p = proto::Profile::decode(&*raw)?;
    from_pprof_message(&p)
}

/// Converts a decoded pprof message into one batch per sample type.
pub fn from_pprof_message(p: &proto::Profile) -> Result<Vec<ProfileBatch>, PprofError> {
    let st = |i: i64| -> Result<&str, PprofError> {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map(|s| s.as_str())
            .ok_or_else(|| PprofError::Malformed(format!("string index {i} out of range")))
    };
    if p.string_table.first().is_some_and(|s| !s.is_empty()) {
        return Err(PprofError::Malformed(
            "string_table[0] must be the empty string".into(),
        ));
    }
    let period_type = match &p.period_type {
        Some(v) => ValueType::new(st(v.r#type)?, st(v.unit)?),
        None => ValueType::new("", ""),
    };
    // Decode the dictionary once into a template batch, then copy it per sample type.
    let mut template = ProfileBatch::new(
        ProfileType {
            sample_type: ValueType::new("", ""),
            period_type,
            period: p.period,
        },
        p.time_nanos.max(0) as u64,
        p.duration_nanos.max(0) as u64,
    );
    let strings: Vec<StrId> = p
        .string_table
        .iter()
        .map(|s| template.strings.intern_str(s))
        .collect();
    let s = |i: i64| -> Result<StrId, PprofError> {
        st(i)?;
        Ok(strings[i as usize])
    };
    let mut mappings = HashMap::new();
    for m in &p.mapping {
        let filename = s(m.filename)?;
        let build_id = s(m.build_id)?;
        let id = template.mappings.intern(Mapping {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename,
            build_id,
            build_id_kind: if build_id == 0 {
                BuildIdKind::None
            } else {
                BuildIdKind::Gnu
            },
        });
        mappings.insert(m.id, (id, st(m.filename)? == KERNEL_MAPPING_NAME));
    }
    let mut functions = HashMap::new();
    for f in &p.function {
        let id = template.functions.intern(Function {
            name: s(f.name)?,
            system_name: s(f.system_name)?,
            filename: s(f.filename)?,
            start_line: f.start_line,
        });
        functions.insert(f.id, id);
    }
    let mut locations = HashMap::new();
    for l in &p.location {
        let mapping = match l.mapping_id {
            0 => None,
            id => Some(*mappings.get(&id).ok_or_else(|| {
                PprofError::Malformed(format!("location {} names missing mapping {id}", l.id))
            })?),
        };
        let lines = l
            .line
            .iter()
            .map(|line| {
                Ok(Line {
                    function: *functions.get(&line.function_id).ok_or_else(|| {
                        PprofError::Malformed(format!(
                            "location {} names missing function {}",
                            l.id, line.function_id
                        ))
                    })?,
                    line: line.line,
                    column: line.column,
                })
            })
            .collect::<Result<_, PprofError>>()?;
        let frame_type = match mapping {
            Some((_, true)) => FrameType::Kernel,
            Some((_, false)) => FrameType::Native,
            None => FrameType::Unknown,
        };
        let id = template.locations.intern(Location {
            mapping: mapping.map(|(m, _)| m),
            address: l.address,
            lines,
            frame_type,
        });
        locations.insert(l.id, id);
    }
    // Stacks and series are shared by every sample type.
    let mut decoded = Vec::with_capacity(p.sample.len());
    for sample in &p.sample {
        let stack = sample
            .location_id
            .iter()
            .map(|id| {
                locations.get(id).copied().ok_or_else(|| {
                    PprofError::Malformed(format!("sample names missing location {id}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut labels = LabelSet::default();
        for l in &sample.label {
            let value = if l.str != 0 {
                st(l.str)?.to_owned()
            } else {
                l.num.to_string()
            };
            labels.set(st(l.key)?, value);
        }
        if sample.value.len() != p.sample_type.len() {
            return Err(PprofError::Malformed(format!(
                "sample has {} values for {} sample types",
                sample.value.len(),
                p.sample_type.len()
            )));
        }
        decoded.push((
            template.stacks.intern(stack),
            template.label_sets.intern(labels),
        ));
    }
    let mut batches = Vec::with_capacity(p.sample_type.len());
    for (i, vt) in p.sample_type.iter().enumerate() {
        let mut batch = template.clone();
        batch.profile_type.sample_type = ValueType::new(st(vt.r#type)?, st(vt.unit)?);
        batch.samples = p
            .sample
            .iter()
            .zip(&decoded)
            .map(|(sample, &(stack, series))| Sample {
                stack,
                series,
                attributes: 0,
                value: sample.value[i],
                timestamp_unix_nanos: None,
            })
            .collect();
        batches.push(batch);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::two_series_batch;

    fn decode(gz: &[u8]) -> proto::Profile {
        proto::Profile::decode(&*maybe_gunzip(gz).unwrap()).unwrap()
    }

    #[test]
    fn ids_are_dense_and_in_order_and_string_zero_is_empty() {
        let b = two_series_batch();
        let series = PprofGrouping::Series {
            series_labels_in_samples: false,
        };
        for grouping in [PprofGrouping::Batch, series] {
            for enc in to_pprof(&b, grouping) {
                let p = decode(&enc.gzipped);
                assert_eq!(p.string_table[0], "");
                for (i, m) in p.mapping.iter().enumerate() {
                    assert_eq!(m.id, i as u64 + 1);
                }
                for (i, l) in p.location.iter().enumerate() {
                    assert_eq!(l.id, i as u64 + 1);
                }
                for (i, f) in p.function.iter().enumerate() {
                    assert_eq!(f.id, i as u64 + 1);
                }
            }
        }
    }

    #[test]
    fn batch_grouping_round_trips_with_series_as_sample_labels() {
        let b = two_series_batch();
        let enc = to_pprof(&b, PprofGrouping::Batch);
        assert_eq!(enc.len(), 1);
        let back = from_pprof(&enc[0].gzipped).unwrap();
        assert_eq!(back.len(), 1);
        // pprof has one label list per sample: attributes merge into the series.
        let expected: Vec<_> = b
            .resolved_samples()
            .into_iter()
            .map(|mut s| {
                for (k, v) in s.attributes.pairs() {
                    s.series.set(k.clone(), v.clone());
                }
                s.attributes = LabelSet::default();
                s
            })
            .collect();
        assert_eq!(back[0].resolved_samples(), expected);
        assert_eq!(back[0].profile_type, b.profile_type);
        assert_eq!(back[0].start_unix_nanos, b.start_unix_nanos);
        assert_eq!(back[0].duration_nanos, b.duration_nanos);
    }

    #[test]
    fn series_grouping_gives_one_profile_per_series_with_only_its_samples() {
        let b = two_series_batch();
        let enc = to_pprof(
            &b,
            PprofGrouping::Series {
                series_labels_in_samples: false,
            },
        );
        assert_eq!(enc.len(), 2);
        assert_eq!(enc[0].series.as_ref().unwrap().get("comm"), Some("a"));
        assert_eq!(enc[0].sample_count, 2);
        let p = decode(&enc[0].gzipped);
        let values: Vec<i64> = p.sample.iter().map(|s| s.value[0]).collect();
        assert_eq!(values, vec![3, 5]);
        // Only attributes remain as sample labels.
        assert_eq!(
            p.string_table[p.sample[0].label[0].key as usize],
            "thread_id"
        );
        assert_eq!(p.sample[0].label.len(), 1);
    }

    #[test]
    fn multi_value_profiles_split_per_sample_type() {
        let p = proto::Profile {
            sample_type: vec![
                proto::ValueType { r#type: 1, unit: 2 },
                proto::ValueType { r#type: 3, unit: 4 },
            ],
            sample: vec![proto::Sample {
                location_id: vec![],
                value: vec![2, 20_000_000],
                label: vec![proto::Label {
                    key: 5,
                    num: 42,
                    ..Default::default()
                }],
            }],
            string_table: ["", "samples", "count", "cpu", "nanoseconds", "pid"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let batches = from_pprof_message(&p).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].profile_type.sample_type.kind, "cpu");
        assert_eq!(batches[1].total_value(), 20_000_000);
        assert_eq!(
            batches[0].labels(batches[0].samples[0].series).get("pid"),
            Some("42")
        );
    }

    #[test]
    fn malformed_references_are_errors_not_panics() {
        let p = proto::Profile {
            sample_type: vec![proto::ValueType { r#type: 0, unit: 0 }],
            sample: vec![proto::Sample {
                location_id: vec![7],
                value: vec![1],
                label: vec![],
            }],
            string_table: vec![String::new()],
            ..Default::default()
        };
        let err = from_pprof_message(&p).unwrap_err().to_string();
        assert!(err.contains("missing location 7"), "{err}");
        let bad_string = proto::Profile {
            sample_type: vec![proto::ValueType { r#type: 9, unit: 0 }],
            string_table: vec![String::new()],
            ..Default::default()
        };
        assert!(from_pprof_message(&bad_string).is_err());
        assert!(from_pprof(b"\x1f\x8bnot really gzip").is_err());
        assert!(from_pprof(b"\xff\xff\xff").is_err());
    }
}
