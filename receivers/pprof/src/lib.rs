//! `pprof` receiver: reads pprof files (plain or gzipped) from a file or a
//! directory, once or watching for new files, and emits them as batches.
//!
//! It makes every processor and exporter testable without root, and feeds
//! profiles made elsewhere (Go's `net/http/pprof`, `perf` converted with
//! `pprof`, other agents) through a pipeline.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use agent_core::pprof::from_pprof;
use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_core::{
    BatchSink, BuildContext, ComponentConfig, ComponentError, Factory, FieldError, ProfileBatch,
    Receiver, Shutdown, Stability,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// The receiver's counters.
#[derive(Clone)]
struct Counters {
    files_read: Counter,
    files_unreadable: Counter,
}

impl Counters {
    fn new(t: &ComponentTelemetry) -> Self {
        Self {
            files_read: t.counter("pprof_files_read", "pprof files read.", &[]),
            files_unreadable: t.counter(
                "pprof_files_unreadable",
                "Files skipped because they are not readable pprof.",
                &[],
            ),
        }
    }
}

/// Config of the `pprof` receiver.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PprofReceiverConfig {
    /// A pprof file, or a directory whose files are read in name order
    /// (names starting with `.` are skipped: writers' temporary files).
    pub path: PathBuf,
    /// Keep watching the directory and read files that appear.
    pub watch: bool,
    /// How often a watched directory is scanned.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Merge what is read within this window into one batch per profile
    /// type; `0s` emits each file at once.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Labels added to every series; a file's own sample labels win.
    pub labels: BTreeMap<String, String>,
}

impl Default for PprofReceiverConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            watch: false,
            poll_interval: Duration::from_secs(1),
            window: Duration::ZERO,
            labels: BTreeMap::new(),
        }
    }
}

impl ComponentConfig for PprofReceiverConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(FieldError::new(
                "path",
                "required: a pprof file or a directory of them",
            ));
        }
        if self.watch && self.poll_interval.is_zero() {
            errors.push(FieldError::new(
                "poll_interval",
                "must be above 0s when watching",
            ));
        }
        errors
    }
}

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PprofReceiverError {
    /// The path does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `watch` on a single file.
    #[error("{0} is a file; `watch` needs a directory")]
    WatchFile(PathBuf),
}

/// Builds `pprof` receivers.
pub struct PprofReceiverFactory;

impl Factory for PprofReceiverFactory {
    const TYPE: &'static str = "pprof";
    const STABILITY: Stability = Stability::Alpha;
    const DESCRIPTION: &'static str =
        "reads pprof files from a file or directory, once or watching";
    type Config = PprofReceiverConfig;
    type Output = Box<dyn Receiver>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        let meta = std::fs::metadata(&config.path).map_err(|source| PprofReceiverError::Path {
            path: config.path.clone(),
            source,
        })?;
        if config.watch && meta.is_file() {
            return Err(PprofReceiverError::WatchFile(config.path.clone()).into());
        }
        Ok(Box::new(PprofReceiver {
            counters: Counters::new(&ctx.telemetry),
            config,
        }))
    }
}

struct PprofReceiver {
    config: PprofReceiverConfig,
    counters: Counters,
}

/// Size and modification time of a file when it was read.
type Stamp = (u64, Option<SystemTime>);
/// What a scan remembers of each file.
type Seen = HashMap<PathBuf, Stamp>;

/// Files under `path` not read yet (or changed since a failed read), in name order.
fn new_files(path: &Path, seen: &Seen) -> std::io::Result<Vec<(PathBuf, Stamp)>> {
    let mut out = Vec::new();
    let entries: Vec<PathBuf> = if path.is_file() {
        vec![path.to_owned()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    for p in entries {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let stamp = (meta.len(), meta.modified().ok());
        if seen.get(&p) != Some(&stamp) {
            out.push((p, stamp));
        }
    }
    Ok(out)
}

/// Reads every new file; unreadable ones are counted and skipped.
fn scan(
    path: PathBuf,
    mut seen: Seen,
    labels: BTreeMap<String, String>,
    counters: Counters,
) -> (Seen, Vec<ProfileBatch>) {
    let files = match new_files(&path, &seen) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot list pprof directory");
            return (seen, Vec::new());
        }
    };
    let mut batches = Vec::new();
    for (file, stamp) in files {
        seen.insert(file.clone(), stamp);
        let parsed = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|data| match data.is_empty() {
                // An empty message would decode as a profile with no samples.
                true => Err("empty file (0 bytes)".to_owned()),
                false => from_pprof(&data).map_err(|e| e.to_string()),
            });
        match parsed {
            Ok(mut read) => {
                counters.files_read.inc();
                for b in &mut read {
                    b.map_series(|set| {
                        let mut out = set.clone();
                        for (k, v) in &labels {
                            if set.get(k).is_none() {
                                out.set(k.clone(), v.clone());
                            }
                        }
                        Some(out)
                    });
                }
                let samples: usize = read.iter().map(|b| b.samples.len()).sum();
                debug!(file = %file.display(), samples, "pprof file read");
                batches.extend(read);
            }
            Err(error) => {
                counters.files_unreadable.inc();
                warn!(file = %file.display(), %error, "skipping unreadable pprof file");
            }
        }
    }
    (seen, batches)
}

impl PprofReceiver {
    async fn scan(&self, seen: Seen) -> (Seen, Vec<ProfileBatch>) {
        let (path, labels, counters) = (
            self.config.path.clone(),
            self.config.labels.clone(),
            self.counters.clone(),
        );
        tokio::task::spawn_blocking(move || scan(path, seen, labels, counters))
            .await
            .expect("scan does not panic")
    }
}

/// Batches held for the current window, one per profile type.
#[derive(Default)]
struct Window(Vec<ProfileBatch>);

impl Window {
    fn add(&mut self, batch: ProfileBatch) {
        match self
            .0
            .iter_mut()
            .find(|held| held.profile_type == batch.profile_type)
        {
            Some(held) => held.merge(&batch),
            None => self.0.push(batch),
        }
    }

    async fn flush(&mut self, sink: &BatchSink) {
        for batch in self.0.drain(..) {
            sink.send(batch).await;
        }
    }
}

#[agent_core::async_trait]
impl Receiver for PprofReceiver {
    async fn run(
        self: Box<Self>,
        sink: BatchSink,
        mut shutdown: Shutdown,
    ) -> Result<(), ComponentError> {
        let windowed = !self.config.window.is_zero();
        let mut window = Window::default();
        let mut seen = Seen::new();
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut window_end = tokio::time::Instant::now() + self.config.window;
        loop {
            tokio::select! {
                _ = shutdown.requested() => break,
                _ = poll.tick() => {
                    let (s, batches) = self.scan(seen).await;
                    seen = s;
                    for b in batches {
                        if windowed {
                            window.add(b);
                        } else {
                            sink.send(b).await;
                        }
                    }
                    if !self.config.watch {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(window_end), if windowed => {
                    window.flush(&sink).await;
                    window_end += self.config.window;
                }
            }
        }
        window.flush(&sink).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::model::{LabelSet, ProfileType, Sample};
    use agent_core::pprof::{to_pprof, PprofGrouping};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    fn pprof_bytes(value: i64, comm: &str) -> Vec<u8> {
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
        let stack = b.stacks.intern(vec![]);
        let series = b.label_sets.intern(LabelSet::new([("comm", comm)]));
        b.samples.push(Sample {
            stack,
            series,
            attributes: 0,
            value,
            timestamp_unix_nanos: None,
        });
        to_pprof(&b, PprofGrouping::Batch).remove(0).gzipped
    }

    fn receiver(config: PprofReceiverConfig) -> Box<dyn Receiver> {
        let ctx = BuildContext::for_test("pprof");
        PprofReceiverFactory.create(config, &ctx).unwrap()
    }

    async fn collect(mut rx: mpsc::Receiver<Arc<ProfileBatch>>) -> Vec<Arc<ProfileBatch>> {
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.push(b);
        }
        out
    }

    #[tokio::test]
    async fn reads_a_directory_once_skipping_garbage_and_adding_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pb.gz"), pprof_bytes(3, "x")).unwrap();
        std::fs::write(dir.path().join("b.pb.gz"), pprof_bytes(4, "y")).unwrap();
        std::fs::write(dir.path().join("c.txt"), b"not a profile").unwrap();
        std::fs::write(dir.path().join(".tmp123"), b"half written").unwrap();
        let config = PprofReceiverConfig {
            path: dir.path().into(),
            labels: [
                ("env".to_string(), "test".to_string()),
                ("comm".into(), "lost".into()),
            ]
            .into(),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let (_stop, shutdown) = Shutdown::new();
        receiver(config)
            .run(BatchSink::for_test(vec![tx]), shutdown)
            .await
            .unwrap();
        let batches = collect(rx).await;
        assert_eq!(batches.len(), 2);
        let labels = batches[1].labels(batches[1].samples[0].series);
        assert_eq!(labels.get("comm"), Some("y"));
        assert_eq!(labels.get("env"), Some("test"));
        assert_eq!(batches[1].total_value(), 4);
    }

    #[tokio::test]
    async fn a_window_merges_files_and_is_flushed_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = PprofReceiverConfig {
            path: dir.path().into(),
            watch: true,
            poll_interval: Duration::from_millis(10),
            window: Duration::from_secs(3600),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let (stop, shutdown) = Shutdown::new();
        let task = tokio::spawn(receiver(config).run(BatchSink::for_test(vec![tx]), shutdown));
        std::fs::write(dir.path().join("1.pb.gz"), pprof_bytes(3, "x")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(dir.path().join("2.pb.gz"), pprof_bytes(5, "x")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
        let batches = collect(rx).await;
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].total_value(), 8);
        assert_eq!(batches[0].samples.len(), 2);
    }

    #[test]
    fn an_empty_file_is_counted_unreadable_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.pb.gz"), b"").unwrap();
        std::fs::write(dir.path().join("full.pb.gz"), pprof_bytes(2, "x")).unwrap();
        let counters = Counters::new(&agent_core::telemetry::Telemetry::default().scoped(&[]));
        let (_, batches) = scan(
            dir.path().into(),
            Seen::default(),
            BTreeMap::new(),
            counters.clone(),
        );
        assert_eq!(batches.len(), 1);
        assert_eq!(
            (counters.files_read.get(), counters.files_unreadable.get()),
            (1, 1)
        );
    }

    #[test]
    fn a_missing_path_is_refused_at_start() {
        let ctx = BuildContext::for_test("pprof");
        let config = PprofReceiverConfig {
            path: "/nonexistent/profiles".into(),
            ..Default::default()
        };
        let err = PprofReceiverFactory
            .create(config, &ctx)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read /nonexistent/profiles"), "{err}");
    }
}
