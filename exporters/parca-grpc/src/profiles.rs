//! A batch as WriteRaw series: one gzipped pprof per series, its labels
//! with `__name__`, and an `executable_info` per pprof mapping so the
//! server can relate addresses to object files.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use agent_core::labels;
use agent_core::pprof::{build_series_profiles, gzip, KERNEL_MAPPING_NAME};
use agent_core::telemetry::Counter;
use agent_core::{BuildIdKind, ProfileBatch};
use agent_object_files::{ObjectLocator, ObjectRef};

use crate::proto::profilestore::{
    ExecutableInfo, Label, LabelSet as WireLabelSet, LoadSegment, RawProfileSeries, RawSample,
};

/// The `__name__` of CPU profiles, as Parca Agent sends them.
pub const CPU_PROFILE_NAME: &str = "parca_agent_cpu";

/// An object file worth uploading debuginfo for, as one process maps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DebuginfoCandidate {
    /// GNU build id, hex.
    pub build_id: String,
    /// Path as the process sees it.
    pub path: String,
    /// A process mapping it.
    pub pid: Option<u32>,
    /// The mapping's address range.
    pub range: (u64, u64),
}

/// A failed lookup is tried again after this long (the process may have
/// been gone; another one may map the same file).
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);
/// Most objects remembered; the memo is cleared when full.
const MEMO_LIMIT: usize = 1 << 14;

/// Executable infos of object files, each read once.
pub struct ExecutableInfos {
    locator: ObjectLocator,
    memo: HashMap<String, (Option<ExecutableInfo>, Instant)>,
    /// Object files that could not be read.
    failures: Counter,
}

impl ExecutableInfos {
    /// Reads files through `locator`; counts the unreadable in `failures`.
    pub fn new(locator: ObjectLocator, failures: Counter) -> Self {
        Self {
            locator,
            memo: HashMap::new(),
            failures,
        }
    }

    /// The info of a mapping; empty for the kernel, anonymous memory and
    /// files that cannot be read.
    fn get(
        &mut self,
        path: &str,
        build_id: &str,
        pid: Option<u32>,
        range: (u64, u64),
    ) -> ExecutableInfo {
        if path.is_empty() || path.starts_with('[') || path == KERNEL_MAPPING_NAME {
            return ExecutableInfo::default();
        }
        let key = match (build_id, pid) {
            ("", Some(pid)) => format!("{pid}:{path}"),
            ("", None) => path.to_owned(),
            (id, _) => id.to_owned(),
        };
        if let Some((info, at)) = self.memo.get(&key) {
            if info.is_some() || at.elapsed() < RETRY_FAILED_AFTER {
                return info.unwrap_or_default();
            }
        }
        let pids: Vec<u32> = pid.into_iter().collect();
        let found = self.locator.open_binary(&ObjectRef {
            path,
            build_id: (!build_id.is_empty()).then_some(build_id),
            pids: &pids,
            range,
        });
        let info = found.map(|f| ExecutableInfo {
            elf_type: f.info.elf_type.into(),
            load_segment: f.info.text_segment().map(|s| LoadSegment {
                offset: s.file_offset,
                vaddr: s.vaddr,
            }),
        });
        if info.is_none() {
            self.failures.inc();
        }
        if self.memo.len() >= MEMO_LIMIT {
            self.memo.clear();
        }
        self.memo.insert(key, (info, Instant::now()));
        info.unwrap_or_default()
    }
}

/// One window of one series, ready to send.
#[derive(Clone, Debug)]
pub struct EncodedSeries {
    /// The series with its one sample.
    pub series: RawProfileSeries,
    /// Samples in the profile.
    pub samples: usize,
    /// Encoded size of `series`.
    pub bytes: usize,
}

/// The `__name__` of a batch's profiles.
fn profile_name(batch: &ProfileBatch) -> String {
    let pt = &batch.profile_type;
    if pt.period_type.kind == "cpu" {
        return CPU_PROFILE_NAME.to_owned();
    }
    let kind: String = pt
        .sample_type
        .kind
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("parca_agent_{kind}")
}

/// Encodes `batch` as WriteRaw series, and lists the object files with
/// build ids it references (for debuginfo upload).
pub fn encode_batch(
    batch: &ProfileBatch,
    infos: &mut ExecutableInfos,
) -> (Vec<EncodedSeries>, Vec<DebuginfoCandidate>) {
    use prost::Message;
    let name = profile_name(batch);
    // Only GNU build ids name debuginfo the server can match; each is
    // offered once per batch, however many series map it.
    let gnu: HashSet<&str> = batch
        .mappings
        .items()
        .iter()
        .filter(|m| m.build_id_kind == BuildIdKind::Gnu)
        .map(|m| batch.str(m.build_id))
        .collect();
    let mut candidates: HashMap<String, DebuginfoCandidate> = HashMap::new();
    let mut out = Vec::new();
    for (series_id, samples, profile) in build_series_profiles(batch, false) {
        let series_labels = batch.labels(series_id);
        let pid = labels::series_pid(series_labels);
        let executable_info = profile
            .mapping
            .iter()
            .map(|m| {
                let path = &profile.string_table[m.filename as usize];
                let build_id = &profile.string_table[m.build_id as usize];
                let range = (m.memory_start, m.memory_limit);
                if gnu.contains(build_id.as_str()) && !path.starts_with('[') {
                    candidates
                        .entry(build_id.clone())
                        .or_insert_with(|| DebuginfoCandidate {
                            build_id: build_id.clone(),
                            path: path.clone(),
                            pid,
                            range,
                        });
                }
                infos.get(path, build_id, pid, range)
            })
            .collect();
        let mut labels = vec![Label {
            name: "__name__".to_owned(),
            value: name.clone(),
        }];
        for (k, v) in series_labels.pairs() {
            if k == "__name__" {
                labels[0].value = v.clone();
            } else {
                labels.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
        }
        let series = RawProfileSeries {
            labels: Some(WireLabelSet { labels }),
            samples: vec![RawSample {
                raw_profile: gzip(&profile),
                executable_info,
            }],
        };
        out.push(EncodedSeries {
            bytes: series.encoded_len(),
            series,
            samples,
        });
    }
    (out, candidates.into_values().collect())
}
