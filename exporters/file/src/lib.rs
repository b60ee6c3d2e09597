//! `file` exporter: writes each batch (one window) as gzipped pprof under a
//! directory, atomically, keeping the directory within a retention limit.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use agent_core::pprof::{to_pprof, PprofGrouping};
use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Exporter, Factory, FieldError, ProfileBatch,
    Stability,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// Config of the `file` exporter.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileExporterConfig {
    /// Where files are written (`--local-store-directory`); created if missing.
    pub directory: PathBuf,
    /// One file per series instead of one per window.
    pub per_series: bool,
    /// Bounds on what the directory keeps; the oldest files go first.
    pub retention: Retention,
}

/// Limits on the files kept; 0 means no limit.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Most files kept.
    pub max_files: usize,
    /// Most bytes kept.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_files: 1000,
            max_bytes: 1 << 30,
        }
    }
}

impl Default for FileExporterConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("./profiles"),
            per_series: false,
            retention: Retention::default(),
        }
    }
}

impl ComponentConfig for FileExporterConfig {
    fn validate(&self) -> Vec<FieldError> {
        if self.directory.as_os_str().is_empty() {
            vec![FieldError::new("directory", "must not be empty")]
        } else {
            Vec::new()
        }
    }
}

/// Why a directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileExporterError {
    /// Creating or listing the directory failed.
    #[error("cannot use directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a profile failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Builds `file` exporters.
pub struct FileExporterFactory;

impl Factory for FileExporterFactory {
    const TYPE: &'static str = "file";
    const STABILITY: Stability = Stability::Alpha;
    const DESCRIPTION: &'static str = "writes each window as gzipped pprof files under a directory";
    type Config = FileExporterConfig;
    type Output = Box<dyn Exporter>;

    fn create(
        &self,
        config: Self::Config,
        _ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        let dir_error = |source| FileExporterError::Directory {
            path: config.directory.clone(),
            source,
        };
        std::fs::create_dir_all(&config.directory).map_err(dir_error)?;
        // A directory we cannot write fails the start, not every window:
        // a probe file is created (and removed when dropped).
        tempfile::Builder::new()
            .prefix(".probe-")
            .tempfile_in(&config.directory)
            .map_err(dir_error)?;
        let kept = existing_files(&config.directory).map_err(dir_error)?;
        Ok(Box::new(FileExporter {
            directory: config.directory.clone(),
            store: Arc::new(Mutex::new(Store {
                config,
                kept,
                sequence: 0,
            })),
        }))
    }
}

const PREFIX: &str = "profile-";
const SUFFIX: &str = ".pb.gz";

/// Files this exporter wrote earlier, oldest first (names sort by time).
fn existing_files(dir: &Path) -> std::io::Result<VecDeque<(PathBuf, u64)>> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(PREFIX) && name.ends_with(SUFFIX)
        })
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    files.sort();
    Ok(files.into())
}

/// The directory and what it holds.
struct Store {
    config: FileExporterConfig,
    kept: VecDeque<(PathBuf, u64)>,
    sequence: u64,
}

impl Store {
    fn write(&mut self, batch: &ProfileBatch) -> Result<(), FileExporterError> {
        let grouping = if self.config.per_series {
            PprofGrouping::Series {
                series_labels_in_samples: true,
            }
        } else {
            PprofGrouping::Batch
        };
        let written_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.sequence += 1;
        for (i, profile) in to_pprof(batch, grouping).into_iter().enumerate() {
            let name = if self.config.per_series {
                format!(
                    "{PREFIX}{written_ms:013}-{:06}-{i:04}{SUFFIX}",
                    self.sequence
                )
            } else {
                format!("{PREFIX}{written_ms:013}-{:06}{SUFFIX}", self.sequence)
            };
            let path = self.config.directory.join(name);
            write_atomically(&self.config.directory, &path, &profile.gzipped).map_err(
                |source| FileExporterError::Write {
                    path: path.clone(),
                    source,
                },
            )?;
            debug!(file = %path.display(), samples = profile.sample_count, "profile written");
            self.kept.push_back((path, profile.gzipped.len() as u64));
        }
        self.enforce_retention();
        Ok(())
    }

    /// Deletes the oldest files until the limits hold; the newest file stays.
    fn enforce_retention(&mut self) {
        let Retention {
            max_files,
            max_bytes,
        } = self.config.retention;
        let mut bytes: u64 = self.kept.iter().map(|(_, n)| n).sum();
        while self.kept.len() > 1
            && ((max_files > 0 && self.kept.len() > max_files)
                || (max_bytes > 0 && bytes > max_bytes))
        {
            let Some((path, size)) = self.kept.pop_front() else {
                break;
            };
            bytes -= size;
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(file = %path.display(), error = %e, "cannot delete old profile");
                }
            }
        }
    }
}

/// Writes to a hidden temporary file in `dir`, syncs it, then renames it,
/// so readers never see a partial file.
fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

struct FileExporter {
    /// Shared with the blocking task that writes; a panic there leaves it usable.
    store: Arc<Mutex<Store>>,
    directory: PathBuf,
}

#[agent_core::async_trait]
impl Exporter for FileExporter {
    fn destination(&self) -> String {
        self.directory.display().to_string()
    }

    async fn export(&mut self, batch: Arc<ProfileBatch>) -> Result<(), ComponentError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(&batch)
        })
        .await
        .map_err(|e| format!("file writer task failed: {e}"))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::model::{LabelSet, ProfileType, Sample};
    use agent_core::pprof::from_pprof;

    fn batch() -> ProfileBatch {
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
        let stack = b.stacks.intern(vec![]);
        for (comm, value) in [("a", 1), ("b", 2)] {
            let series = b.label_sets.intern(LabelSet::new([("comm", comm)]));
            b.samples.push(Sample {
                stack,
                series,
                attributes: 0,
                value,
                timestamp_unix_nanos: None,
            });
        }
        b
    }

    fn exporter(config: FileExporterConfig) -> Box<dyn Exporter> {
        FileExporterFactory
            .create(config, &BuildContext::for_test("file"))
            .unwrap()
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_directory_that_cannot_be_written_fails_the_start() {
        // procfs takes no new files, even from root.
        let config = FileExporterConfig {
            directory: "/proc/self".into(),
            ..Default::default()
        };
        let error = match FileExporterFactory.create(config, &BuildContext::for_test("file")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("/proc/self accepted as an output directory"),
        };
        assert!(
            error.starts_with("cannot use directory /proc/self:"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn writes_one_file_per_window_with_series_as_sample_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = exporter(FileExporterConfig {
            directory: dir.path().join("nested"),
            ..Default::default()
        });
        e.export(Arc::new(batch())).await.unwrap();
        let written = files(&dir.path().join("nested"));
        assert_eq!(written.len(), 1, "{written:?}");
        let back = from_pprof(&std::fs::read(&written[0]).unwrap()).unwrap();
        let comms: Vec<_> = back[0]
            .samples
            .iter()
            .map(|s| back[0].labels(s.series).get("comm").unwrap().to_owned())
            .collect();
        assert_eq!(comms, ["a", "b"]);
    }

    #[tokio::test]
    async fn per_series_files_and_retention_by_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("unrelated.txt"), "keep me").unwrap();
        let mut e = exporter(FileExporterConfig {
            directory: dir.path().into(),
            per_series: true,
            retention: Retention {
                max_files: 3,
                max_bytes: 0,
            },
        });
        for _ in 0..3 {
            e.export(Arc::new(batch())).await.unwrap();
        }
        let written = files(dir.path());
        // 6 profiles written, 3 kept, plus the unrelated file; no temp files left.
        assert_eq!(written.len(), 4, "{written:?}");
        assert!(written.iter().any(|p| p.ends_with("unrelated.txt")));
        let last = written
            .iter()
            .rfind(|p| p.to_string_lossy().ends_with(".pb.gz"))
            .unwrap();
        let back = from_pprof(&std::fs::read(last).unwrap()).unwrap();
        assert_eq!(back[0].samples.len(), 1);
        assert_eq!(
            back[0].labels(back[0].samples[0].series).get("comm"),
            Some("b")
        );
    }

    #[tokio::test]
    async fn retention_by_bytes_counts_files_from_earlier_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("profile-0000000000001-000001.pb.gz"),
            vec![0u8; 5000],
        )
        .unwrap();
        let mut e = exporter(FileExporterConfig {
            directory: dir.path().into(),
            per_series: false,
            retention: Retention {
                max_files: 0,
                max_bytes: 4000,
            },
        });
        e.export(Arc::new(batch())).await.unwrap();
        let written = files(dir.path());
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(!written[0].ends_with("profile-0000000000001-000001.pb.gz"));
    }

    #[test]
    fn an_unusable_directory_is_refused_at_start() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = FileExporterFactory
            .create(
                FileExporterConfig {
                    directory: file.path().join("sub"),
                    ..Default::default()
                },
                &BuildContext::for_test("file"),
            )
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("cannot use directory"), "{err}");
    }
}
