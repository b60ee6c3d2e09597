//! The profile model every pipeline carries: one dictionary-encoded batch per
//! time window and profile type.
//!
//! Everything repeated is stored once and referred to by index: strings,
//! mappings, functions, locations, stacks and label sets. A *series* is a
//! distinct label set; processors that work on labels touch each series once,
//! symbolizers each location once.

use std::collections::HashMap;
use std::hash::Hash;

/// Index into [`ProfileBatch::strings`]. Index 0 is always the empty string.
pub type StrId = u32;
/// Index into [`ProfileBatch::mappings`].
pub type MappingId = u32;
/// Index into [`ProfileBatch::functions`].
pub type FunctionId = u32;
/// Index into [`ProfileBatch::locations`].
pub type LocationId = u32;
/// Index into [`ProfileBatch::stacks`].
pub type StackId = u32;
/// Index into [`ProfileBatch::label_sets`]. Index 0 is always the empty set.
pub type LabelSetId = u32;

/// A (type, unit) pair such as `samples/count` or `cpu/nanoseconds`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueType {
    /// What is measured, e.g. `samples`.
    pub kind: String,
    /// Its unit, e.g. `count`.
    pub unit: String,
}

impl ValueType {
    /// Builds a value type from its two names.
    pub fn new(kind: &str, unit: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            unit: unit.to_owned(),
        }
    }
}

/// What the values of a batch count: sample type, period type and period.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProfileType {
    /// The type of every sample value.
    pub sample_type: ValueType,
    /// The type of the sampling period.
    pub period_type: ValueType,
    /// The sampling period in `period_type` units (0 if unknown).
    pub period: i64,
}

impl ProfileType {
    /// On-CPU samples taken `hz` times a second: `samples/count`, period `cpu/nanoseconds`.
    pub fn cpu_samples(hz: u64) -> Self {
        Self {
            sample_type: ValueType::new("samples", "count"),
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: 1_000_000_000 / hz.max(1) as i64,
        }
    }

    /// Time off CPU of threads timed with `probability` at each switch
    /// out: `off_cpu/nanoseconds`, period `switches/count` (one timed
    /// switch in every 1/probability).
    pub fn off_cpu(probability: f64) -> Self {
        Self {
            sample_type: ValueType::new("off_cpu", "nanoseconds"),
            period_type: ValueType::new("switches", "count"),
            period: (1.0 / probability.clamp(1e-9, 1.0)).round() as i64,
        }
    }
}

/// How a build id was obtained; decides the OTLP attribute it travels as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BuildIdKind {
    /// No build id is known.
    #[default]
    None,
    /// The ELF `NT_GNU_BUILD_ID` note, hex encoded.
    Gnu,
    /// The Go build id.
    Go,
    /// A hash of the file's content, for files without a build id.
    ContentHash,
}

/// A memory mapping of an object file (or of the kernel) into a process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First address of the mapping.
    pub memory_start: u64,
    /// First address past the mapping.
    pub memory_limit: u64,
    /// Offset in the file of `memory_start`.
    pub file_offset: u64,
    /// Path of the mapped file (as the process sees it).
    pub filename: StrId,
    /// Build id, hex; `0` (empty) when unknown.
    pub build_id: StrId,
    /// What kind of build id `build_id` is.
    pub build_id_kind: BuildIdKind,
}

/// A function: the unit names are attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Function {
    /// Human-readable (demangled) name.
    pub name: StrId,
    /// Name as the system knows it (mangled).
    pub system_name: StrId,
    /// Source file.
    pub filename: StrId,
    /// Line where the function starts (0 if unknown).
    pub start_line: i64,
}

/// One source position inside a location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// The function the position belongs to.
    pub function: FunctionId,
    /// Line number (0 if unknown).
    pub line: i64,
    /// Column (0 if unknown).
    pub column: i64,
}

/// Where a frame's code comes from; decides how it is symbolized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FrameType {
    /// Not known.
    #[default]
    Unknown,
    /// Native code of an object file.
    Native,
    /// Kernel code.
    Kernel,
    /// Code generated at run time (JIT), named by perf maps.
    Jit,
    /// A CPython function, named by the interpreter's code object.
    CPython,
    /// A PHP function, named by the engine's `zend_function`.
    Php,
    /// A Ruby method or block (or a C method called from Ruby).
    Ruby,
    /// A JavaScript function run by V8 (Node.js), named by its SharedFunctionInfo.
    V8Js,
    /// A Java (or other JVM language) method run by HotSpot, interpreted or compiled.
    Jvm,
}

impl FrameType {
    /// The `profile.frame.type` attribute value of OpenTelemetry's semantic conventions.
    pub fn otel_name(self) -> Option<&'static str> {
        match self {
            FrameType::Unknown => None,
            FrameType::Native => Some("native"),
            FrameType::Kernel => Some("kernel"),
            FrameType::Jit => Some("jit"),
            FrameType::CPython => Some("cpython"),
            FrameType::Php => Some("php"),
            FrameType::Ruby => Some("ruby"),
            FrameType::V8Js => Some("v8js"),
            FrameType::Jvm => Some("jvm"),
        }
    }

    /// The inverse of [`FrameType::otel_name`].
    pub fn from_otel_name(name: &str) -> Self {
        match name {
            "native" => FrameType::Native,
            "kernel" => FrameType::Kernel,
            "jit" => FrameType::Jit,
            "cpython" => FrameType::CPython,
            "php" => FrameType::Php,
            "ruby" => FrameType::Ruby,
            "v8js" => FrameType::V8Js,
            "jvm" => FrameType::Jvm,
            _ => FrameType::Unknown,
        }
    }
}

/// A code address, with its source lines once symbolized.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The mapping holding the address, if known.
    pub mapping: Option<MappingId>,
    /// The instruction address as seen by the process.
    pub address: u64,
    /// Source lines; the first is the innermost inlined function, the last
    /// the function the others were inlined into. Empty until symbolized.
    pub lines: Vec<Line>,
    /// Where the code comes from.
    pub frame_type: FrameType,
}

/// True for a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Labels starting with `__` (but `__name__`) are internal, as in
/// Prometheus: for relabeling rules, never sent anywhere.
pub fn is_internal_label(name: &str) -> bool {
    name.starts_with("__") && name != "__name__"
}

/// A label set: `(name, value)` pairs sorted by name, names unique.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LabelSet(Vec<(String, String)>);

impl LabelSet {
    /// Builds a label set; a later pair wins over an earlier one with the same name.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut set = LabelSet::default();
        for (k, v) in pairs {
            set.set(k, v);
        }
        set
    }

    /// The pairs, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Sets `name` to `value`, replacing a previous value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    /// Removes `name`; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self
            .0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()?;
        Some(self.0.remove(i).1)
    }

    /// Keeps the pairs for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// One observation: a stack seen `value` times in a series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The stack, leaf first.
    pub stack: StackId,
    /// The series (process-level labels).
    pub series: LabelSetId,
    /// Labels of this sample only (thread, CPU); 0 when none.
    pub attributes: LabelSetId,
    /// The measured value, in the batch's sample type.
    pub value: i64,
    /// When the sample was taken, if recorded.
    pub timestamp_unix_nanos: Option<u64>,
}

/// An append-only table that stores each distinct value once.
#[derive(Clone, Debug)]
pub struct Interner<T: Clone + Eq + Hash> {
    items: Vec<T>,
    index: HashMap<T, u32>,
}

impl<T: Clone + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> Interner<T> {
    /// The id of `item`, adding it if new.
    pub fn intern(&mut self, item: T) -> u32 {
        if let Some(&id) = self.index.get(&item) {
            return id;
        }
        let id = u32::try_from(self.items.len()).expect("more than 2^32 dictionary entries");
        self.items.push(item.clone());
        self.index.insert(item, id);
        id
    }

    /// The id of `item` if present.
    pub fn find(&self, item: &T) -> Option<u32> {
        self.index.get(item).copied()
    }

    /// The entry with id `id`.
    pub fn get(&self, id: u32) -> &T {
        &self.items[id as usize]
    }

    /// Replaces the entry with id `id` in place, so every reference to `id`
    /// sees `item`. If `item` equals another entry the two stay distinct ids.
    pub fn update(&mut self, id: u32, item: T) {
        let old = std::mem::replace(&mut self.items[id as usize], item.clone());
        if self.index.get(&old) == Some(&id) {
            self.index.remove(&old);
        }
        self.index.entry(item).or_insert(id);
    }

    /// All entries in id order.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Interner<String> {
    /// The id of `s` if present.
    pub fn find_str(&self, s: &str) -> Option<StrId> {
        self.index.get(s).copied()
    }

    /// Interns a `&str` without allocating when it is already present.
    pub fn intern_str(&mut self, s: &str) -> StrId {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        self.intern(s.to_owned())
    }
}

/// One time window of one profile type, dictionary-encoded.
#[derive(Clone, Debug)]
pub struct ProfileBatch {
    /// What the sample values count.
    pub profile_type: ProfileType,
    /// Start of the window (Unix nanoseconds).
    pub start_unix_nanos: u64,
    /// Length of the window.
    pub duration_nanos: u64,
    /// Interned strings; entry 0 is `""`.
    pub strings: Interner<String>,
    /// Mappings.
    pub mappings: Interner<Mapping>,
    /// Functions.
    pub functions: Interner<Function>,
    /// Locations.
    pub locations: Interner<Location>,
    /// Stacks: location ids, leaf first.
    pub stacks: Interner<Vec<LocationId>>,
    /// Series and sample label sets; entry 0 is the empty set.
    pub label_sets: Interner<LabelSet>,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl ProfileBatch {
    /// An empty batch for `profile_type` covering the given window.
    pub fn new(profile_type: ProfileType, start_unix_nanos: u64, duration_nanos: u64) -> Self {
        let mut batch = Self {
            profile_type,
            start_unix_nanos,
            duration_nanos,
            strings: Interner::default(),
            mappings: Interner::default(),
            functions: Interner::default(),
            locations: Interner::default(),
            stacks: Interner::default(),
            label_sets: Interner::default(),
            samples: Vec::new(),
        };
        batch.strings.intern(String::new());
        batch.label_sets.intern(LabelSet::default());
        batch
    }

    /// A CPU batch with one sample (value 1, empty stack) per label set, in
    /// order: what label processors see, for their tests.
    pub fn one_sample_per_series(sets: impl IntoIterator<Item = LabelSet>) -> Self {
        let mut batch = Self::new(ProfileType::cpu_samples(19), 0, 1);
        let stack = batch.stacks.intern(Vec::new());
        for set in sets {
            let series = batch.label_sets.intern(set);
            batch.samples.push(Sample {
                stack,
                series,
                attributes: 0,
                value: 1,
                timestamp_unix_nanos: None,
            });
        }
        batch
    }

    /// The series labels of each sample, in sample order.
    pub fn sample_series_labels(&self) -> Vec<LabelSet> {
        self.samples
            .iter()
            .map(|s| self.labels(s.series).clone())
            .collect()
    }

    /// The string with id `id`.
    pub fn str(&self, id: StrId) -> &str {
        self.strings.get(id)
    }

    /// The label set with id `id`.
    pub fn labels(&self, id: LabelSetId) -> &LabelSet {
        self.label_sets.get(id)
    }

    /// Sum of all sample values.
    pub fn total_value(&self) -> i64 {
        self.samples.iter().map(|s| s.value).sum()
    }

    /// How many samples the batch stands for: the sum of the values when
    /// they count samples (unit `count`), else the number of sample rows
    /// (a row with value 3 is three samples taken; one with 30 ms is one).
    pub fn sample_count(&self) -> u64 {
        if self.profile_type.sample_type.unit == "count" {
            self.samples.iter().map(|s| s.value.max(0) as u64).sum()
        } else {
            self.samples.len() as u64
        }
    }

    /// The distinct series ids used by samples, in first-use order.
    pub fn series_ids(&self) -> Vec<LabelSetId> {
        let mut seen = vec![false; self.label_sets.len()];
        let mut ids = Vec::new();
        for s in &self.samples {
            if !std::mem::replace(&mut seen[s.series as usize], true) {
                ids.push(s.series);
            }
        }
        ids
    }

    /// Rewrites every series once: `f` returns the new label set, or `None`
    /// to drop the series with its samples. Returns the dropped sample count.
    pub fn map_series(&mut self, mut f: impl FnMut(&LabelSet) -> Option<LabelSet>) -> usize {
        let mut new_ids: Vec<Option<Option<LabelSetId>>> = vec![None; self.label_sets.len()];
        for id in self.series_ids() {
            let mapped = f(self.label_sets.get(id)).map(|set| self.label_sets.intern(set));
            new_ids[id as usize] = Some(mapped);
        }
        let before = self.samples.len();
        self.samples
            .retain_mut(|s| match new_ids[s.series as usize] {
                Some(Some(id)) => {
                    s.series = id;
                    true
                }
                _ => false,
            });
        before - self.samples.len()
    }

    /// Whether a series or sample label of the batch's samples is internal
    /// ([`is_internal_label`]).
    pub fn has_internal_labels(&self) -> bool {
        let mut ids: Vec<LabelSetId> = self
            .samples
            .iter()
            .flat_map(|s| [s.series, s.attributes])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().any(|id| {
            self.label_sets
                .get(id)
                .pairs()
                .iter()
                .any(|(name, _)| is_internal_label(name))
        })
    }

    /// Removes internal labels from every series and sample.
    pub fn drop_internal_labels(&mut self) {
        self.map_series(|labels| {
            let mut labels = labels.clone();
            labels.retain(|name, _| !is_internal_label(name));
            Some(labels)
        });
        self.retain_attribute_labels(|name| !is_internal_label(name));
    }

    /// Keeps the sample attribute labels `keep` accepts (by name).
    pub fn retain_attribute_labels(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut new_ids: HashMap<LabelSetId, LabelSetId> = HashMap::new();
        for s in &mut self.samples {
            s.attributes = *new_ids.entry(s.attributes).or_insert_with(|| {
                let mut set = self.label_sets.get(s.attributes).clone();
                set.retain(|k, _| keep(k));
                self.label_sets.intern(set)
            });
        }
    }

    /// [`ProfileBatch::map_series`] for rules that also read sample labels:
    /// `f` sees each distinct (series, sample attributes) pair once and
    /// returns the sample's new series, or `None` to drop it. Returns the
    /// dropped sample count.
    pub fn map_series_by_attributes(
        &mut self,
        mut f: impl FnMut(&LabelSet, &LabelSet) -> Option<LabelSet>,
    ) -> usize {
        let mut new_ids: HashMap<(LabelSetId, LabelSetId), Option<LabelSetId>> = HashMap::new();
        for s in &self.samples {
            new_ids.entry((s.series, s.attributes)).or_insert_with(|| {
                f(
                    self.label_sets.get(s.series),
                    self.label_sets.get(s.attributes),
                )
                .map(|set| self.label_sets.intern(set))
            });
        }
        let before = self.samples.len();
        self.samples
            .retain_mut(|s| match new_ids[&(s.series, s.attributes)] {
                Some(id) => {
                    s.series = id;
                    true
                }
                None => false,
            });
        before - self.samples.len()
    }

    /// Appends every sample of `other` (same profile type), re-interning its
    /// dictionary entries; widens the window to cover both.
    pub fn merge(&mut self, other: &ProfileBatch) {
        let strings: Vec<StrId> = other
            .strings
            .items()
            .iter()
            .map(|s| self.strings.intern_str(s))
            .collect();
        let mappings: Vec<MappingId> = other
            .mappings
            .items()
            .iter()
            .map(|m| {
                self.mappings.intern(Mapping {
                    filename: strings[m.filename as usize],
                    build_id: strings[m.build_id as usize],
                    ..m.clone()
                })
            })
            .collect();
        let functions: Vec<FunctionId> = other
            .functions
            .items()
            .iter()
            .map(|f| {
                self.functions.intern(Function {
                    name: strings[f.name as usize],
                    system_name: strings[f.system_name as usize],
                    filename: strings[f.filename as usize],
                    start_line: f.start_line,
                })
            })
            .collect();
        let locations: Vec<LocationId> = other
            .locations
            .items()
            .iter()
            .map(|l| {
                self.locations.intern(Location {
                    mapping: l.mapping.map(|m| mappings[m as usize]),
                    address: l.address,
                    lines: l
                        .lines
                        .iter()
                        .map(|line| Line {
                            function: functions[line.function as usize],
                            ..line.clone()
                        })
                        .collect(),
                    frame_type: l.frame_type,
                })
            })
            .collect();
        let stacks: Vec<StackId> = other
            .stacks
            .items()
            .iter()
            .map(|st| {
                self.stacks
                    .intern(st.iter().map(|&l| locations[l as usize]).collect())
            })
            .collect();
        let label_sets: Vec<LabelSetId> = other
            .label_sets
            .items()
            .iter()
            .map(|set| self.label_sets.intern(set.clone()))
            .collect();
        self.samples.extend(other.samples.iter().map(|s| Sample {
            stack: stacks[s.stack as usize],
            series: label_sets[s.series as usize],
            attributes: label_sets[s.attributes as usize],
            ..s.clone()
        }));
        let end = (self.start_unix_nanos + self.duration_nanos)
            .max(other.start_unix_nanos + other.duration_nanos);
        self.start_unix_nanos = self.start_unix_nanos.min(other.start_unix_nanos);
        self.duration_nanos = end.saturating_sub(self.start_unix_nanos);
    }

    /// Every sample with its dictionary references resolved: for tests, text
    /// views and comparisons across formats.
    pub fn resolved_samples(&self) -> Vec<ResolvedSample> {
        self.samples
            .iter()
            .map(|s| ResolvedSample {
                frames: self
                    .stacks
                    .get(s.stack)
                    .iter()
                    .map(|&l| self.resolve_location(l))
                    .collect(),
                series: self.labels(s.series).clone(),
                attributes: self.labels(s.attributes).clone(),
                value: s.value,
                timestamp_unix_nanos: s.timestamp_unix_nanos,
            })
            .collect()
    }

    /// One location with its mapping and lines resolved to strings.
    pub fn resolve_location(&self, id: LocationId) -> ResolvedFrame {
        let loc = self.locations.get(id);
        let mapping = loc.mapping.map(|m| {
            let m = self.mappings.get(m);
            ResolvedMapping {
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
                filename: self.str(m.filename).to_owned(),
                build_id: self.str(m.build_id).to_owned(),
            }
        });
        ResolvedFrame {
            address: loc.address,
            mapping,
            lines: loc
                .lines
                .iter()
                .map(|l| {
                    let f = self.functions.get(l.function);
                    ResolvedLine {
                        function: self.str(f.name).to_owned(),
                        system_name: self.str(f.system_name).to_owned(),
                        filename: self.str(f.filename).to_owned(),
                        line: l.line,
                    }
                })
                .collect(),
        }
    }
}

/// A sample with everything resolved (see [`ProfileBatch::resolved_samples`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedSample {
    /// Frames, leaf first.
    pub frames: Vec<ResolvedFrame>,
    /// Series labels.
    pub series: LabelSet,
    /// Sample labels.
    pub attributes: LabelSet,
    /// Value.
    pub value: i64,
    /// Timestamp, if any.
    pub timestamp_unix_nanos: Option<u64>,
}

/// A resolved location.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedFrame {
    /// Address.
    pub address: u64,
    /// Mapping, if any.
    pub mapping: Option<ResolvedMapping>,
    /// Lines, innermost first.
    pub lines: Vec<ResolvedLine>,
}

impl ResolvedFrame {
    /// The outermost function name of the frame; unsymbolized, the file
    /// and offset (`libc.so.6+0x1234`), or the bare address.
    pub fn display_name(&self) -> String {
        match (self.lines.last(), &self.mapping) {
            (Some(l), _) if !l.function.is_empty() => l.function.clone(),
            (_, Some(m)) if !m.filename.is_empty() => {
                let file = m.filename.rsplit('/').next().unwrap_or(&m.filename);
                if m.memory_start <= self.address && m.filename != crate::pprof::KERNEL_MAPPING_NAME
                {
                    format!(
                        "{file}+{:#x}",
                        self.address - m.memory_start + m.file_offset
                    )
                } else {
                    format!("{file} {:#x}", self.address)
                }
            }
            _ => format!("{:#x}", self.address),
        }
    }
}

/// A resolved mapping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedMapping {
    /// Start address.
    pub memory_start: u64,
    /// End address.
    pub memory_limit: u64,
    /// File offset.
    pub file_offset: u64,
    /// File name.
    pub filename: String,
    /// Build id.
    pub build_id: String,
}

/// A resolved line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedLine {
    /// Function name.
    pub function: String,
    /// System name.
    pub system_name: String,
    /// Source file.
    pub filename: String,
    /// Line number.
    pub line: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn two_series_batch() -> ProfileBatch {
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 1_000, 10_000_000_000);
        let file = b.strings.intern_str("/usr/bin/app");
        let bid = b.strings.intern_str("abcd");
        let m = b.mappings.intern(Mapping {
            memory_start: 0x1000,
            memory_limit: 0x9000,
            file_offset: 0,
            filename: file,
            build_id: bid,
            build_id_kind: BuildIdKind::Gnu,
        });
        let name = b.strings.intern_str("main");
        let f = b.functions.intern(Function {
            name,
            system_name: name,
            filename: file,
            start_line: 3,
        });
        let l1 = b.locations.intern(Location {
            mapping: Some(m),
            address: 0x1234,
            lines: vec![Line {
                function: f,
                line: 7,
                column: 0,
            }],
            frame_type: FrameType::Native,
        });
        let l2 = b.locations.intern(Location {
            mapping: Some(m),
            address: 0x2000,
            lines: vec![],
            frame_type: FrameType::Native,
        });
        let st = b.stacks.intern(vec![l2, l1]);
        let a = b.label_sets.intern(LabelSet::new([("comm", "a")]));
        let c = b.label_sets.intern(LabelSet::new([("comm", "c")]));
        let t = b.label_sets.intern(LabelSet::new([("thread_id", "9")]));
        for (series, value) in [(a, 3), (c, 4), (a, 5)] {
            b.samples.push(Sample {
                stack: st,
                series,
                attributes: t,
                value,
                timestamp_unix_nanos: None,
            });
        }
        b
    }

    #[test]
    fn sample_count_counts_samples_not_rows() {
        let mut b = two_series_batch();
        // Three rows standing for 3 + 4 + 5 samples.
        assert_eq!((b.samples.len(), b.sample_count()), (3, 12));
        // Values that are not counts: one sample a row.
        b.profile_type.sample_type = ValueType::new("cpu", "nanoseconds");
        assert_eq!(b.sample_count(), 3);
    }

    #[test]
    fn label_set_is_sorted_and_later_pairs_win() {
        let set = LabelSet::new([("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(
            set.pairs(),
            &[("a".into(), "2".into()), ("b".into(), "3".into())]
        );
        assert_eq!(set.get("b"), Some("3"));
        assert_eq!(set.get("c"), None);
    }

    #[test]
    fn update_replaces_in_place_and_keeps_lookups_right() {
        let mut strings: Interner<String> = Interner::default();
        let a = strings.intern("a".into());
        let b = strings.intern("b".into());
        strings.update(a, "c".into());
        assert_eq!(strings.get(a), "c");
        assert_eq!(strings.find_str("a"), None);
        assert_eq!(strings.find_str("c"), Some(a));
        // An update to an existing value keeps both ids; lookups find the first.
        strings.update(a, "b".into());
        assert_eq!(strings.get(a), "b");
        assert_eq!(strings.find_str("b"), Some(b));
        assert_eq!(strings.intern("c".into()), 2);
    }

    #[test]
    fn map_series_runs_once_per_series_and_drops_samples() {
        let mut b = two_series_batch();
        let mut calls = 0;
        let dropped = b.map_series(|set| {
            calls += 1;
            if set.get("comm") == Some("c") {
                None
            } else {
                let mut s = set.clone();
                s.set("node", "n1");
                Some(s)
            }
        });
        assert_eq!(calls, 2);
        assert_eq!(dropped, 1);
        assert_eq!(b.samples.len(), 2);
        assert_eq!(b.total_value(), 8);
        for s in &b.samples {
            assert_eq!(b.labels(s.series).get("node"), Some("n1"));
        }
    }

    #[test]
    fn merge_keeps_every_sample_resolved_identically() {
        let a = two_series_batch();
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 500, 100);
        b.strings.intern_str("unrelated");
        b.merge(&a);
        b.merge(&a);
        let mut expected = a.resolved_samples();
        expected.extend(a.resolved_samples());
        assert_eq!(b.resolved_samples(), expected);
        assert_eq!(b.stacks.len(), 1);
        assert_eq!(b.start_unix_nanos, 500);
        assert_eq!(b.duration_nanos, 1_000 + 10_000_000_000 - 500);
    }
}
