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
    /// Larger (decompressed) than [`PprofLimits::max_bytes`].
    #[error("larger than {limit} bytes decompressed (the limit)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// More samples than [`PprofLimits::max_samples`].
    #[error("{count} samples, more than the limit of {limit}")]
    TooManySamples {
        /// Samples in the profile.
        count: u64,
        /// The limit.
        limit: u64,
    },
}

/// What decoding one pprof may take: checked before the message is
/// decoded (decoded, a profile takes ~17 times its encoded size), so a
/// gzip bomb or a giant profile is refused without the memory it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PprofLimits {
    /// Bytes of the message, after decompression.
    pub max_bytes: u64,
    /// Samples in the message.
    pub max_samples: u64,
}

impl PprofLimits {
    /// No limit (profiles the agent wrote itself).
    pub const NONE: Self = Self {
        max_bytes: u64::MAX,
        max_samples: u64::MAX,
    };
}

/// A decoded pprof, with what had to be repaired to keep it valid.
#[derive(Debug)]
pub struct DecodedPprof {
    /// One batch per sample type.
    pub batches: Vec<ProfileBatch>,
    /// Mappings whose `memory_limit` lay below their `memory_start`: the
    /// limit is dropped (unknown), as pprof's validation would refuse it.
    pub repaired_mappings: usize,
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

/// Decompresses `data` if it is gzipped; at most `max_bytes` of it.
fn gunzip_bounded(data: &[u8], max_bytes: u64) -> Result<std::borrow::Cow<'_, [u8]>, PprofError> {
    let too_large = PprofError::TooLarge { limit: max_bytes };
    if !data.starts_with(&[0x1f, 0x8b]) {
        return match data.len() as u64 > max_bytes {
            true => Err(too_large),
            false => Ok(data.into()),
        };
    }
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max_bytes as usize));
    GzDecoder::new(data)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut out)?;
    match out.len() as u64 > max_bytes {
        true => Err(too_large),
        false => Ok(out.into()),
    }
}

/// The number of samples (field 2) in an encoded `Profile`, read from the
/// top-level field keys and lengths only (nothing is allocated).
fn count_samples(mut buf: &[u8]) -> Result<u64, PprofError> {
    fn varint(buf: &mut &[u8]) -> Result<u64, PprofError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf
                .split_first()
                .ok_or_else(|| PprofError::Malformed("truncated message".into()))?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PprofError::Malformed("invalid varint".into()))
    }
    let mut samples = 0;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut buf)?;
                0
            }
            1 => 8,
            2 => {
                samples += u64::from(key >> 3 == 2);
                varint(&mut buf)?
            }
            5 => 4,
            wire => return Err(PprofError::Malformed(format!("wire type {wire}"))),
        };
        buf = usize::try_from(skip)
            .ok()
            .and_then(|n| buf.get(n..))
            .ok_or_else(|| PprofError::Malformed("truncated message".into()))?;
    }
    Ok(samples)
}

/// Decodes a pprof (plain or gzipped) into one batch per sample type.
///
/// Every sample label (string or numeric) becomes a series label; numeric
/// values are written in decimal. Locations in a mapping named
/// `[kernel.kallsyms]` are kernel frames, other mapped ones native.
pub fn from_pprof(data: &[u8]) -> Result<Vec<ProfileBatch>, PprofError> {
    Ok(decode_pprof(data, PprofLimits::NONE)?.batches)
}

/// [`from_pprof`] within `limits`, saying what it repaired.
pub fn decode_pprof(data: &[u8], limits: PprofLimits) -> Result<DecodedPprof, PprofError> {
    let raw = gunzip_bounded(data, limits.max_bytes)?;
    if limits.max_samples != u64::MAX {
        let count = count_samples(&raw)?;
        if count > limits.max_samples {
            return Err(PprofError::TooManySamples {
                count,
                limit: limits.max_samples,
            });
        }
    }
    let p = proto::Profile::decode(&*raw)?;
    from_pprof_message(&p)
}

/// Converts a decoded pprof message into one batch per sample type.
pub fn from_pprof_message(p: &proto::Profile) -> Result<DecodedPprof, PprofError> {
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
    let mut repaired_mappings = 0;
    for m in &p.mapping {
        let filename = s(m.filename)?;
        let build_id = s(m.build_id)?;
        let limit_valid = m.memory_limit == 0 || m.memory_limit >= m.memory_start;
        repaired_mappings += usize::from(!limit_valid);
        let id = template.mappings.intern(Mapping {
            memory_start: m.memory_start,
            memory_limit: if limit_valid { m.memory_limit } else { 0 },
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
    Ok(DecodedPprof {
        batches,
        repaired_mappings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::two_series_batch;

    fn decode(gz: &[u8]) -> proto::Profile {
        proto::Profile::decode(&*gunzip_bounded(gz, u64::MAX).unwrap()).unwrap()
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
        let batches = from_pprof_message(&p).unwrap().batches;
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

    /// `batch` as gzipped pprof bytes.
    fn gzipped(batch: &ProfileBatch) -> Vec<u8> {
        to_pprof(batch, PprofGrouping::Batch).remove(0).gzipped
    }

    #[test]
    fn limits_refuse_a_gzip_bomb_and_too_many_samples_before_decoding() {
        // 4 MiB of zeros in 4 KiB: refused after the limit's worth.
        let mut bomb = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..4 {
            bomb.write_all(&zeros).unwrap();
        }
        let bomb = bomb.finish().unwrap();
        let limits = PprofLimits {
            max_bytes: 1 << 20,
            max_samples: 10,
        };
        let err = decode_pprof(&bomb, limits).unwrap_err();
        assert!(
            matches!(err, PprofError::TooLarge { limit } if limit == 1 << 20),
            "{err}"
        );
        // Plain bytes over the limit, too.
        let plain = vec![0u8; (1 << 20) + 1];
        assert!(matches!(
            decode_pprof(&plain, limits),
            Err(PprofError::TooLarge { .. })
        ));

        let b = two_series_batch();
        let samples = b.samples.len() as u64;
        let exact = PprofLimits {
            max_bytes: u64::MAX,
            max_samples: samples,
        };
        assert_eq!(
            decode_pprof(&gzipped(&b), exact).unwrap().batches[0].total_value(),
            b.total_value()
        );
        let fewer = PprofLimits {
            max_samples: samples - 1,
            ..exact
        };
        let err = decode_pprof(&gzipped(&b), fewer).unwrap_err();
        assert!(
            matches!(err, PprofError::TooManySamples { count, limit } if count == samples && limit == samples - 1),
            "{err}"
        );
    }

    #[test]
    fn sample_counting_reads_keys_only_and_refuses_what_is_cut() {
        let b = two_series_batch();
        let raw = gunzip_bounded(&gzipped(&b), u64::MAX).unwrap().into_owned();
        assert_eq!(count_samples(&raw).unwrap(), b.samples.len() as u64);
        for cut in 1..raw.len().min(64) {
            // A cut message is an error or fewer samples, never a panic.
            if let Ok(n) = count_samples(&raw[..raw.len() - cut]) {
                assert!(n <= b.samples.len() as u64);
            }
        }
        assert!(count_samples(&[0x0f]).is_err()); // wire type 7
        assert!(count_samples(&[0x12, 0x05, 0x00]).is_err()); // length past the end
    }

    #[test]
    fn a_mapping_ending_before_it_starts_loses_its_limit_and_is_counted() {
        let mut b = two_series_batch();
        let mut p =
            proto::Profile::decode(&*gunzip_bounded(&gzipped(&b), u64::MAX).unwrap()).unwrap();
        assert!(!p.mapping.is_empty());
        p.mapping[0].memory_start = 0x2000;
        p.mapping[0].memory_limit = 0x1000;
        let decoded = from_pprof_message(&p).unwrap();
        assert_eq!(decoded.repaired_mappings, 1);
        let m = decoded.batches[0].mappings.get(0);
        assert_eq!((m.memory_start, m.memory_limit), (0x2000, 0));
        // Valid ones are kept as they are.
        b = two_series_batch();
        let fine = decode_pprof(&gzipped(&b), PprofLimits::NONE).unwrap();
        assert_eq!(fine.repaired_mappings, 0);
    }
}
