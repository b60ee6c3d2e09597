//! OTLP profiles (proto v1.10, `opentelemetry-proto` 0.33) encoding and
//! decoding of [`ProfileBatch`]es.
//!
//! Layout: one `ResourceProfiles` per series with the series labels as
//! resource attributes, one `ScopeProfiles`, one `Profile`; sample attributes
//! (thread, CPU) as sample attributes; build ids as mapping attributes; the
//! frame type as a location attribute. Every dictionary table starts with its
//! zero entry, so index 0 always means "none".

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::profiles::v1development as otlp;
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::model::*;

pub use otlp::ProfilesData;

/// Mapping attribute carrying a GNU build id.
pub const BUILD_ID_GNU: &str = "process.executable.build_id.gnu";
/// Mapping attribute carrying a Go build id.
pub const BUILD_ID_GO: &str = "process.executable.build_id.go";
/// Mapping attribute carrying a content hash of the file.
pub const BUILD_ID_HASH: &str = "process.executable.build_id.htlhash";
/// Location attribute carrying the frame type.
pub const FRAME_TYPE: &str = "profile.frame.type";
/// Name of the instrumentation scope profiles are sent under.
pub const SCOPE_NAME: &str = "agent";

/// Why OTLP data could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// An index that points outside its table.
    #[error("malformed OTLP profiles: {0}")]
    Malformed(String),
}

fn build_id_key(kind: BuildIdKind) -> Option<&'static str> {
    match kind {
        BuildIdKind::None => None,
        BuildIdKind::Gnu => Some(BUILD_ID_GNU),
        BuildIdKind::Go => Some(BUILD_ID_GO),
        BuildIdKind::ContentHash => Some(BUILD_ID_HASH),
    }
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

/// How series and sample labels become attributes: renamed keys (a label
/// renamed to `""` is left out), and the keys whose values are integers.
/// The default keeps every label under its own name, as a string.
#[derive(Clone, Debug, Default)]
pub struct AttributeKeys {
    renames: HashMap<String, String>,
    integers: std::collections::HashSet<String>,
}

impl AttributeKeys {
    /// Labels renamed by `renames` (label → key); values of `integer_keys`
    /// that parse as integers are sent as integers.
    pub fn new(
        renames: impl IntoIterator<Item = (String, String)>,
        integer_keys: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            renames: renames.into_iter().collect(),
            integers: integer_keys.into_iter().collect(),
        }
    }

    /// The attribute key of `label`, or `None` when it is left out.
    pub fn key<'a>(&'a self, label: &'a str) -> Option<&'a str> {
        match self.renames.get(label) {
            Some(key) if key.is_empty() => None,
            Some(key) => Some(key),
            None => Some(label),
        }
    }

    /// The value of attribute `key`.
    pub fn value(&self, key: &str, value: &str) -> AnyValue {
        match value.parse::<i64>() {
            Ok(n) if self.integers.contains(key) => AnyValue {
                value: Some(any_value::Value::IntValue(n)),
            },
            _ => string_value(value),
        }
    }
}

/// Writes a dictionary whose zero entries are present, deduplicating attributes.
struct DictionaryBuilder {
    dict: otlp::ProfilesDictionary,
    extra_strings: HashMap<String, i32>,
    attributes: HashMap<(i32, String), i32>,
}

impl DictionaryBuilder {
    fn new(batch: &ProfileBatch) -> Self {
        let mut dict = otlp::ProfilesDictionary {
            string_table: batch.strings.items().to_vec(),
            ..Default::default()
        };
        dict.mapping_table.push(Default::default());
        dict.location_table.push(Default::default());
        dict.function_table.push(Default::default());
        dict.link_table.push(Default::default());
        dict.attribute_table.push(Default::default());
        dict.stack_table.push(Default::default());
        Self {
            dict,
            extra_strings: HashMap::new(),
            attributes: HashMap::new(),
        }
    }

    fn text(&mut self, batch: &ProfileBatch, s: &str) -> i32 {
        if let Some(id) = batch.strings.find_str(s) {
            return id as i32;
        }
        if let Some(&id) = self.extra_strings.get(s) {
            return id;
        }
        let id = self.dict.string_table.len() as i32;
        self.dict.string_table.push(s.to_owned());
        self.extra_strings.insert(s.to_owned(), id);
        id
    }

    /// The index of attribute `key` = `value`, typed as `keys` says.
    fn attribute(
        &mut self,
        batch: &ProfileBatch,
        key: &str,
        value: &str,
        keys: &AttributeKeys,
    ) -> i32 {
        let key_index = self.text(batch, key);
        let next = self.dict.attribute_table.len() as i32;
        // The type follows from key and text, so they identify the attribute.
        let id = *self
            .attributes
            .entry((key_index, value.to_owned()))
            .or_insert(next);
        if id == next {
            self.dict.attribute_table.push(otlp::KeyValueAndUnit {
                key_strindex: key_index,
                value: Some(keys.value(key, value)),
                unit_strindex: 0,
            });
        }
        id
    }
}

/// Encodes a batch as an OTLP `ProfilesData` with its own dictionary, labels
/// under their own names.
pub fn to_otlp(batch: &ProfileBatch) -> otlp::ProfilesData {
    to_otlp_with(batch, &AttributeKeys::default())
}

/// [`to_otlp`] with labels turned into attributes by `keys`.
pub fn to_otlp_with(batch: &ProfileBatch, keys: &AttributeKeys) -> otlp::ProfilesData {
    let mut d = DictionaryBuilder::new(batch);
    for m in batch.mappings.items() {
        let attribute_indices = match build_id_key(m.build_id_kind) {
            Some(key) if m.build_id != 0 => {
                vec![d.attribute(batch, key, batch.str(m.build_id), keys)]
            }
            _ => vec![],
        };
        d.dict.mapping_table.push(otlp::Mapping {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename_strindex: m.filename as i32,
            attribute_indices,
        });
    }
    for f in batch.functions.items() {
        d.dict.function_table.push(otlp::Function {
            name_strindex: f.name as i32,
            system_name_strindex: f.system_name as i32,
            filename_strindex: f.filename as i32,
            start_line: f.start_line,
        });
    }
    for l in batch.locations.items() {
        let attribute_indices = match l.frame_type.otel_name() {
            Some(name) => vec![d.attribute(batch, FRAME_TYPE, name, keys)],
            None => vec![],
        };
        d.dict.location_table.push(otlp::Location {
            mapping_index: l.mapping.map_or(0, |m| m as i32 + 1),
            address: l.address,
            lines: l
                .lines
                .iter()
                .map(|line| otlp::Line {
                    function_index: line.function as i32 + 1,
                    line: line.line,
                    column: line.column,
                })
                .collect(),
            attribute_indices,
        });
    }
    for st in batch.stacks.items() {
        d.dict.stack_table.push(otlp::Stack {
            location_indices: st.iter().map(|&l| l as i32 + 1).collect(),
        });
    }
    // Attribute indices of each label set, computed once per set.
    let mut set_attributes: Vec<Option<Vec<i32>>> = vec![None; batch.label_sets.len()];
    let sample_type = otlp::ValueType {
        type_strindex: d.text(batch, &batch.profile_type.sample_type.kind),
        unit_strindex: d.text(batch, &batch.profile_type.sample_type.unit),
    };
    let period_type = otlp::ValueType {
        type_strindex: d.text(batch, &batch.profile_type.period_type.kind),
        unit_strindex: d.text(batch, &batch.profile_type.period_type.unit),
    };
    let mut per_series: HashMap<LabelSetId, Vec<otlp::Sample>> = HashMap::new();
    for s in &batch.samples {
        let attribute_indices = set_attributes[s.attributes as usize]
            .get_or_insert_with(|| {
                batch
                    .labels(s.attributes)
                    .pairs()
                    .iter()
                    .filter_map(|(k, v)| {
                        let key = keys.key(k)?;
                        Some(d.attribute(batch, key, v, keys))
                    })
                    .collect()
            })
            .clone();
        per_series.entry(s.series).or_default().push(otlp::Sample {
            stack_index: s.stack as i32 + 1,
            attribute_indices,
            link_index: 0,
            values: vec![s.value],
            timestamps_unix_nano: s.timestamp_unix_nanos.into_iter().collect(),
        });
    }
    let resource_profiles = batch
        .series_ids()
        .into_iter()
        .map(|series| otlp::ResourceProfiles {
            resource: Some(Resource {
                attributes: batch
                    .labels(series)
                    .pairs()
                    .iter()
                    .filter_map(|(k, v)| {
                        let key = keys.key(k)?;
                        Some(KeyValue {
                            key: key.to_owned(),
                            value: Some(keys.value(key, v)),
                            key_strindex: 0,
                        })
                    })
                    .collect(),
                ..Default::default()
            }),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                profiles: vec![otlp::Profile {
                    sample_type: Some(sample_type),
                    samples: per_series.remove(&series).unwrap_or_default(),
                    time_unix_nano: batch.start_unix_nanos,
                    duration_nano: batch.duration_nanos,
                    period_type: Some(period_type),
                    period: batch.profile_type.period,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    otlp::ProfilesData {
        resource_profiles,
        dictionary: Some(d.dict),
    }
}

/// Renders an attribute value as a label value.
fn any_value_text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(f)) => f.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn entry<'a, T>(table: &'a [T], index: i32, what: &str) -> Result<&'a T, OtlpError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i))
        .ok_or_else(|| {
            OtlpError::Malformed(format!(
                "{what} index {index} outside a table of {}",
                table.len()
            ))
        })
}

/// Decodes `ProfilesData` into one batch per (profile type, window).
///
/// Resource attributes become series labels, sample attributes sample
/// labels; non-string attribute values are rendered as text.
pub fn from_otlp(data: &otlp::ProfilesData) -> Result<Vec<ProfileBatch>, OtlpError> {
    let default_dict = otlp::ProfilesDictionary::default();
    let dict = data.dictionary.as_ref().unwrap_or(&default_dict);
    let text = |i: i32| entry(&dict.string_table, i, "string").map(String::as_str);
    let attr = |i: i32| -> Result<(String, String), OtlpError> {
        let a = entry(&dict.attribute_table, i, "attribute")?;
        Ok((text(a.key_strindex)?.to_owned(), any_value_text(&a.value)))
    };
    let mut batches: Vec<ProfileBatch> = Vec::new();
    // Per batch: OTLP table index -> batch id, filled on first use.
    let mut maps: Vec<HashMap<(u8, i32), u32>> = Vec::new();
    for rp in &data.resource_profiles {
        let series = LabelSet::new(
            rp.resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), any_value_text(&kv.value))),
        );
        for sp in &rp.scope_profiles {
            for p in &sp.profiles {
                let vt = |v: &Option<otlp::ValueType>| -> Result<ValueType, OtlpError> {
                    match v {
                        Some(v) => Ok(ValueType::new(
                            text(v.type_strindex)?,
                            text(v.unit_strindex)?,
                        )),
                        None => Ok(ValueType::new("", "")),
                    }
                };
                let profile_type = ProfileType {
                    sample_type: vt(&p.sample_type)?,
                    period_type: vt(&p.period_type)?,
                    period: p.period,
                };
                let slot = match batches.iter().position(|b| {
                    b.profile_type == profile_type
                        && b.start_unix_nanos == p.time_unix_nano
                        && b.duration_nanos == p.duration_nano
                }) {
                    Some(i) => i,
                    None => {
                        batches.push(ProfileBatch::new(
                            profile_type,
                            p.time_unix_nano,
                            p.duration_nano,
                        ));
                        maps.push(HashMap::new());
                        batches.len() - 1
                    }
                };
                let mut importer = Importer {
                    dict,
                    batch: &mut batches[slot],
                    ids: &mut maps[slot],
                };
                let series_id = importer.batch.label_sets.intern(series.clone());
                for s in &p.samples {
                    let stack = importer.stack(s.stack_index)?;
                    let attributes = LabelSet::new(
                        s.attribute_indices
                            .iter()
                            .map(|&i| attr(i))
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                    let attributes = importer.batch.label_sets.intern(attributes);
                    let sample = |value, timestamp_unix_nanos| Sample {
                        stack,
                        series: series_id,
                        attributes,
                        value,
                        timestamp_unix_nanos,
                    };
                    let out = &mut importer.batch.samples;
                    match (s.values.len(), s.timestamps_unix_nano.len()) {
                        (_, 0) => out.extend(s.values.iter().map(|&v| sample(v, None))),
                        (0, _) => {
                            out.extend(s.timestamps_unix_nano.iter().map(|&t| sample(1, Some(t))))
                        }
                        (a, b) if a == b => out.extend(
                            s.values
                                .iter()
                                .zip(&s.timestamps_unix_nano)
                                .map(|(&v, &t)| sample(v, Some(t))),
                        ),
                        (a, b) => {
                            return Err(OtlpError::Malformed(format!(
                                "sample has {a} values but {b} timestamps"
                            )))
                        }
                    }
                }
            }
        }
    }
    Ok(batches)
}

/// Copies dictionary entries from OTLP tables into one batch.
struct Importer<'a> {
    dict: &'a otlp::ProfilesDictionary,
    batch: &'a mut ProfileBatch,
    ids: &'a mut HashMap<(u8, i32), u32>,
}

const STRING: u8 = 0;
const MAPPING: u8 = 1;
const FUNCTION: u8 = 2;
const LOCATION: u8 = 3;
const STACK: u8 = 4;

impl Importer<'_> {
    fn cached(&mut self, table: u8, index: i32) -> Option<u32> {
        self.ids.get(&(table, index)).copied()
    }

    fn string(&mut self, i: i32) -> Result<StrId, OtlpError> {
        if let Some(id) = self.cached(STRING, i) {
            return Ok(id);
        }
        let id = self
            .batch
            .strings
            .intern_str(entry(&self.dict.string_table, i, "string")?);
        self.ids.insert((STRING, i), id);
        Ok(id)
    }

    fn attribute_pairs(&self, indices: &[i32]) -> Result<Vec<(String, String)>, OtlpError> {
        indices
            .iter()
            .map(|&i| {
                let a = entry(&self.dict.attribute_table, i, "attribute")?;
                let key = entry(&self.dict.string_table, a.key_strindex, "string")?;
                Ok((key.clone(), any_value_text(&a.value)))
            })
            .collect()
    }

    fn mapping(&mut self, i: i32) -> Result<MappingId, OtlpError> {
        if let Some(id) = self.cached(MAPPING, i) {
            return Ok(id);
        }
        let m = entry(&self.dict.mapping_table, i, "mapping")?;
        let mut build_id = 0;
        let mut build_id_kind = BuildIdKind::None;
        for (key, value) in self.attribute_pairs(&m.attribute_indices)? {
            let kind = match key.as_str() {
                BUILD_ID_GNU => BuildIdKind::Gnu,
                BUILD_ID_GO => BuildIdKind::Go,
                BUILD_ID_HASH => BuildIdKind::ContentHash,
                _ => continue,
            };
            build_id = self.batch.strings.intern_str(&value);
            build_id_kind = kind;
        }
        let mapping = Mapping {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename: self.string(m.filename_strindex)?,
            build_id,
            build_id_kind,
        };
        let id = self.batch.mappings.intern(mapping);
        self.ids.insert((MAPPING, i), id);
        Ok(id)
    }

    fn function(&mut self, i: i32) -> Result<FunctionId, OtlpError> {
        if let Some(id) = self.cached(FUNCTION, i) {
            return Ok(id);
        }
        let f = entry(&self.dict.function_table, i, "function")?;
        let function = Function {
            name: self.string(f.name_strindex)?,
            system_name: self.string(f.system_name_strindex)?,
            filename: self.string(f.filename_strindex)?,
            start_line: f.start_line,
        };
        let id = self.batch.functions.intern(function);
        self.ids.insert((FUNCTION, i), id);
        Ok(id)
    }

    fn location(&mut self, i: i32) -> Result<LocationId, OtlpError> {
        if let Some(id) = self.cached(LOCATION, i) {
            return Ok(id);
        }
        let l = entry(&self.dict.location_table, i, "location")?;
        let mapping = match l.mapping_index {
            0 => None,
            m => Some(self.mapping(m)?),
        };
        let lines = l
            .lines
            .iter()
            .map(|line| {
                Ok(Line {
                    function: self.function(line.function_index)?,
                    line: line.line,
                    column: line.column,
                })
            })
            .collect::<Result<_, OtlpError>>()?;
        let frame_type = self
            .attribute_pairs(&l.attribute_indices)?
            .into_iter()
            .find(|(k, _)| k == FRAME_TYPE)
            .map_or(FrameType::Unknown, |(_, v)| FrameType::from_otel_name(&v));
        let id = self.batch.locations.intern(Location {
            mapping,
            address: l.address,
            lines,
            frame_type,
        });
        self.ids.insert((LOCATION, i), id);
        Ok(id)
    }

    fn stack(&mut self, i: i32) -> Result<StackId, OtlpError> {
        if let Some(id) = self.cached(STACK, i) {
            return Ok(id);
        }
        let st = entry(&self.dict.stack_table, i, "stack")?;
        let locations = st
            .location_indices
            .iter()
            .map(|&l| self.location(l))
            .collect::<Result<Vec<_>, _>>()?;
        let id = self.batch.stacks.intern(locations);
        self.ids.insert((STACK, i), id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::two_series_batch;

    #[test]
    fn round_trip_keeps_samples_stacks_mappings_and_labels() {
        let mut b = two_series_batch();
        b.samples[1].timestamp_unix_nanos = Some(1_500);
        let data = to_otlp(&b);
        let back = from_otlp(&data).unwrap();
        assert_eq!(back.len(), 1);
        let back = &back[0];
        let mut expected = b.resolved_samples();
        let mut got = back.resolved_samples();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(back.profile_type, b.profile_type);
        assert_eq!(back.mappings.items()[0].build_id_kind, BuildIdKind::Gnu);
        assert_eq!(back.locations.items()[0].frame_type, FrameType::Native);
    }

    #[test]
    fn dictionary_zero_entries_exist_and_one_resource_per_series() {
        let data = to_otlp(&two_series_batch());
        let d = data.dictionary.as_ref().unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.mapping_table[0], Default::default());
        assert_eq!(d.location_table[0], Default::default());
        assert_eq!(d.function_table[0], Default::default());
        assert_eq!(d.link_table[0], Default::default());
        assert_eq!(d.attribute_table[0], Default::default());
        assert_eq!(d.stack_table[0], Default::default());
        assert_eq!(data.resource_profiles.len(), 2);
        let attrs = &data.resource_profiles[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(attrs[0].key, "comm");
        let mapping = &d.mapping_table[1];
        let a = &d.attribute_table[mapping.attribute_indices[0] as usize];
        assert_eq!(d.string_table[a.key_strindex as usize], BUILD_ID_GNU);
    }

    #[test]
    fn bad_indices_are_errors() {
        let mut data = to_otlp(&two_series_batch());
        data.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = 99;
        let err = from_otlp(&data).unwrap_err().to_string();
        assert!(err.contains("stack index 99"), "{err}");
    }
}
