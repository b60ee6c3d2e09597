//! `pprof` receiver: reads pprof files (plain or gzipped) from a file or a
//! directory, once or watching for new files, and emits them as batches.
//!
//! It makes every processor and exporter testable without root, and feeds
//! profiles made elsewhere (Go's `net/http/pprof`, `perf` converted with
//! `pprof`, other agents) through a pipeline.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use agent_core::bounds::{Checks, MAX_DURATION};
use agent_core::pprof::{decode_pprof, PprofError, PprofLimits};
use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_core::{
    BatchSink, BuildContext, ComponentConfig, ComponentError, Factory, FieldError, ProfileBatch,
    Receiver, Shutdown, Stability,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// Why a file was skipped: the `reason` label of `pprof_files_unreadable`.
const UNREADABLE_REASONS: [&str; 5] = ["io", "empty", "too_large", "too_many_samples", "malformed"];

/// The receiver's counters.
#[derive(Clone)]
struct Counters {
    files_read: Counter,
    /// By [`UNREADABLE_REASONS`].
    files_unreadable: [Counter; 5],
    mappings_repaired: Counter,
}

impl Counters {
    fn new(t: &ComponentTelemetry) -> Self {
        Self {
            files_read: t.counter("pprof_files_read", "pprof files read.", &[]),
            files_unreadable: UNREADABLE_REASONS.map(|reason| {
                t.counter(
                    "pprof_files_unreadable",
                    "Files skipped, by reason: io (cannot be read), empty (0 bytes), too_large (over max_decompressed_bytes), too_many_samples (over max_samples), malformed (not a valid pprof).",
                    &[("reason", reason)],
                )
            }),
            mappings_repaired: t.counter(
                "pprof_mappings_repaired",
                "Mappings read whose memory_limit lay below their memory_start: the limit was dropped (unknown), as pprof's validation refuses such a range.",
                &[],
            ),
        }
    }

    fn unreadable(&self, reason: &str) {
        if let Some(i) = UNREADABLE_REASONS.iter().position(|r| *r == reason) {
            self.files_unreadable[i].inc();
        }
    }
}

/// Config of the `pprof` receiver.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PprofReceiverConfig {
    /// A pprof file, or a directory whose files are read in name order
    /// (names starting with `.` are skipped: writers' temporary files).
    pub path: PathBuf,
    /// Keep watching the directory and read files that appear.
    pub watch: bool,
    /// How often a watched directory is scanned.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Merge what is read within this window into one batch per profile
    /// type; `0s` emits each file at once.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Labels added to every series; a file's own sample labels win.
    pub labels: BTreeMap<String, String>,
    /// Files larger than this once decompressed are skipped (counted): a
    /// gzip bomb costs at most this much memory.
    pub max_decompressed_bytes: u64,
    /// Files with more samples than this are skipped (counted): decoded, a
    /// profile takes ~17 times its encoded size.
    pub max_samples: u64,
}

impl PprofReceiverConfig {
    fn limits(&self) -> PprofLimits {
        PprofLimits {
            max_bytes: self.max_decompressed_bytes,
            max_samples: self.max_samples,
        }
    }
}

impl Default for PprofReceiverConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            watch: false,
            poll_interval: Duration::from_secs(1),
            window: Duration::ZERO,
            labels: BTreeMap::new(),
            max_decompressed_bytes: 32 << 20,
            max_samples: 500_000,
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
        let mut checks = Checks::new(errors);
        let ms = Duration::from_millis;
        if self.watch {
            checks.duration("poll_interval", self.poll_interval, ms(10), MAX_DURATION);
        }
        checks.duration("window", self.window, ms(0), ms(3_600_000));
        checks.number(
            "max_decompressed_bytes",
            self.max_decompressed_bytes,
            1,
            1 << 40,
        );
        checks.number("max_samples", self.max_samples, 1, 1 << 40);
        checks.finish()
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

/// Files under `path` not read yet (or changed since a failed read), in
/// name order; files gone from `path` are forgotten, so a directory whose
/// files come and go costs memory for what it holds, not what it held.
fn new_files(path: &Path, seen: &mut Seen) -> std::io::Result<Vec<(PathBuf, Stamp)>> {
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
    seen.retain(|p, _| entries.binary_search(p).is_ok());
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

/// Reads `file` within `limits`: its batches and repaired mappings, or
/// why not and the reason label it is counted under.
fn read_file(
    file: &Path,
    limits: PprofLimits,
) -> Result<agent_core::pprof::DecodedPprof, (String, &'static str)> {
    let io = |e: std::io::Error| (e.to_string(), "io");
    let size = std::fs::metadata(file).map_err(io)?.len();
    // Compressed data is never (much) larger than what it expands to: a
    // file above the limit is refused without reading it.
    if size > limits.max_bytes {
        let e = PprofError::TooLarge {
            limit: limits.max_bytes,
        };
        return Err((format!("{size} bytes on disk, {e}"), "too_large"));
    }
    // Read within the limit, should the file grow meanwhile.
    let mut data = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(limits.max_bytes.saturating_add(1))
                .read_to_end(&mut data)
        })
        .map_err(io)?;
    if data.is_empty() {
        // An empty message would decode as a profile with no samples.
        return Err(("empty file (0 bytes)".to_owned(), "empty"));
    }
    decode_pprof(&data, limits).map_err(|e| {
        let reason = match e {
            PprofError::TooLarge { .. } => "too_large",
            PprofError::TooManySamples { .. } => "too_many_samples",
            _ => "malformed",
        };
        (e.to_string(), reason)
    })
}

/// Reads every new file; unreadable ones are counted and skipped.
fn scan(
    path: PathBuf,
    mut seen: Seen,
    labels: BTreeMap<String, String>,
    limits: PprofLimits,
    counters: Counters,
) -> (Seen, Vec<ProfileBatch>) {
    let files = match new_files(&path, &mut seen) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot list pprof directory");
            return (seen, Vec::new());
        }
    };
    let mut batches = Vec::new();
    for (file, stamp) in files {
        seen.insert(file.clone(), stamp);
        match read_file(&file, limits) {
            Ok(decoded) => {
                counters.files_read.inc();
                if decoded.repaired_mappings > 0 {
                    counters
                        .mappings_repaired
                        .inc_by(decoded.repaired_mappings as u64);
                    warn!(file = %file.display(), mappings = decoded.repaired_mappings, "mappings ending before they start: their end is dropped");
                }
                let mut read = decoded.batches;
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
            Err((error, reason)) => {
                counters.unreadable(reason);
                warn!(file = %file.display(), %error, reason, "skipping unreadable pprof file");
            }
        }
    }
    (seen, batches)
}

impl PprofReceiver {
    async fn scan(&self, seen: Seen) -> (Seen, Vec<ProfileBatch>) {
        let (path, labels, limits, counters) = (
            self.config.path.clone(),
            self.config.labels.clone(),
            self.config.limits(),
            self.counters.clone(),
        );
        tokio::task::spawn_blocking(move || scan(path, seen, labels, limits, counters))
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
        stop.stop();
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
        let counters = scan_counts(dir.path(), PprofReceiverConfig::default().limits());
        assert_eq!(counters.files_read.get(), 1);
        assert_eq!(unreadable(&counters), [("empty", 1)]);
    }

    /// Scans `dir` once within `limits`; the counters.
    fn scan_counts(dir: &Path, limits: PprofLimits) -> Counters {
        let counters = Counters::new(&agent_core::telemetry::Telemetry::default().scoped(&[]));
        scan(
            dir.into(),
            Seen::default(),
            BTreeMap::new(),
            limits,
            counters.clone(),
        );
        counters
    }

    /// The non-zero unreadable counts, by reason.
    fn unreadable(counters: &Counters) -> Vec<(&'static str, u64)> {
        UNREADABLE_REASONS
            .iter()
            .zip(&counters.files_unreadable)
            .map(|(r, c)| (*r, c.get()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    #[test]
    fn files_over_the_limits_are_skipped_and_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let small = pprof_bytes(2, "x");
        std::fs::write(dir.path().join("a.pb.gz"), &small).unwrap();
        // Larger decompressed than the limit, smaller on disk.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut bomb, &vec![0u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("b.pb.gz"), bomb.finish().unwrap()).unwrap();
        // Larger on disk than the limit.
        std::fs::write(dir.path().join("c.pb"), vec![0u8; 300 << 10]).unwrap();
        let limits = PprofLimits {
            max_bytes: 256 << 10,
            max_samples: 1,
        };
        let counters = scan_counts(dir.path(), limits);
        assert_eq!(counters.files_read.get(), 1);
        assert_eq!(unreadable(&counters), [("too_large", 2)]);
        let counters = scan_counts(
            dir.path(),
            PprofLimits {
                max_samples: 0,
                ..limits
            },
        );
        assert_eq!(
            unreadable(&counters),
            [("too_large", 2), ("too_many_samples", 1)]
        );
    }

    #[test]
    fn files_gone_from_a_watched_directory_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new(&agent_core::telemetry::Telemetry::default().scoped(&[]));
        let limits = PprofReceiverConfig::default().limits();
        let mut seen = Seen::default();
        for i in 0..3 {
            let file = dir.path().join(format!("{i}.pb.gz"));
            std::fs::write(&file, pprof_bytes(1, "x")).unwrap();
            let (kept, read) = scan(
                dir.path().into(),
                seen,
                BTreeMap::new(),
                limits,
                counters.clone(),
            );
            assert_eq!(read.len(), 1, "file {i} read once");
            assert_eq!(kept.keys().collect::<Vec<_>>(), [&file]);
            seen = kept;
            std::fs::remove_file(&file).unwrap();
        }
        assert_eq!(counters.files_read.get(), 3);
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
