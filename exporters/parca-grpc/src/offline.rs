//! Offline mode (Parca Agent's `--offline-mode-*`): windows are kept on
//! disk as the WriteRaw requests they would have been, and sent later by
//! `agent --offline-mode-upload`, each removed only once the server took it.
//!
//! The store is a directory of segment files, each a run of records
//! `[length: u32 LE][CRC-32 of the body: u32 LE][body: WriteRawRequest]`,
//! one `write` per window. The segment being written ends in `.open`; its
//! writer holds a lock on the directory; every `rotation_interval`
//! it is synced and renamed to `.segment`. A writer killed mid-write leaves
//! a torn last record, found by its length or checksum and skipped; its
//! `.open` file is closed by the next writer or upload.
//!
//! The upload records how many records of a segment the server took in
//! `<segment>.sent` (written, synced and renamed after each answer), so an
//! upload cut off resumes after the last record taken: a window is sent
//! twice only if the upload dies between the server's answer and that
//! rename. An upload holds a lock on each segment it sends, so uploads
//! beside each other never send one twice.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_core::{BuildContext, ComponentError, Exporter, ProfileBatch};
use agent_exporter_helper::{Delivery, Undelivered};
use prost::Message;
use tracing::{info, warn};

use crate::config::{OfflineMode, ParcaGrpcConfig};
use crate::profiles::{encode_batch, EncodedSeries, ExecutableInfos};
use crate::proto::profilestore::WriteRawRequest;
use crate::writer::{take_request, write_raw};
use crate::ParcaClients;

/// Suffix of the segment being written.
const OPEN: &str = "open";
/// Suffix of a closed segment, ready to upload.
const CLOSED: &str = "segment";
/// Suffix of a segment's upload progress (records the server took).
const SENT: &str = "sent";
/// Bytes before each record's body: its length and its checksum.
const HEADER: usize = 8;

/// An exclusive lock on `path` (a file, or the store directory, which its
/// one writer locks), or `None` when another process holds it. Locks are
/// on files the store has anyway, so an uploaded store ends empty.
fn try_lock(path: &Path) -> io::Result<Option<File>> {
    let file = File::open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Files of `dir` ending in `.suffix`, oldest first (names begin with the
/// time they were opened).
fn files_ending(dir: &Path, suffix: &str) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    Ok(files)
}

/// Closes the segments a killed writer left open (the caller holds the
/// writer lock, so no one writes them); empty ones are removed.
fn close_abandoned(dir: &Path) -> io::Result<()> {
    for open in files_ending(dir, OPEN)? {
        if std::fs::metadata(&open)?.len() == 0 {
            std::fs::remove_file(&open)?;
            continue;
        }
        File::open(&open)?.sync_all()?;
        std::fs::rename(&open, open.with_extension(CLOSED))?;
        info!(file = %open.display(), "offline store: a segment left open by a stopped agent is closed");
    }
    Ok(())
}

/// Appends one record to `out`.
fn put_record(out: &mut Vec<u8>, request: &WriteRawRequest) -> io::Result<()> {
    let body = request.encode_to_vec();
    let length = u32::try_from(body.len())
        .map_err(|_| io::Error::other("a request of 4 GiB or more cannot be stored"))?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// The records of one segment file.
#[derive(Debug, Default)]
pub struct Records {
    /// Each whole record's request, or why it could not be decoded.
    pub requests: Vec<Result<WriteRawRequest, prost::DecodeError>>,
    /// Bytes at the end that are no whole record (a writer killed mid-write).
    pub torn_bytes: usize,
}

/// Splits a segment's bytes into records; reading stops at the first
/// record cut short or failing its checksum.
pub fn parse_records(mut data: &[u8]) -> Records {
    let mut records = Records::default();
    while data.len() >= HEADER {
        let length = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[4..HEADER].try_into().expect("4 bytes"));
        let Some(body) = data.get(HEADER..HEADER + length) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        records.requests.push(WriteRawRequest::decode(body));
        data = &data[HEADER + length..];
    }
    records.torn_bytes = data.len();
    records
}

/// Counters of the writing side.
struct StoreMetrics {
    records: Counter,
    bytes: Counter,
    removed_bytes: Counter,
}

/// The segment being written.
struct OpenSegment {
    file: File,
    path: PathBuf,
    opened: Instant,
    /// Bytes of whole records in it.
    length: u64,
}

/// The writing side of a store, held by one exporter.
pub struct OfflineStore {
    dir: PathBuf,
    settings: OfflineMode,
    max_request_bytes: usize,
    /// Held while this store is open.
    _lock: File,
    current: Option<OpenSegment>,
    metrics: StoreMetrics,
}

impl OfflineStore {
    /// Opens the store in `dir` (created if missing) for writing, and
    /// closes segments a killed writer left open.
    pub fn open(
        dir: &Path,
        settings: &OfflineMode,
        max_request_bytes: usize,
        telemetry: &ComponentTelemetry,
    ) -> Result<Self, String> {
        let failed = |e: io::Error| format!("cannot use offline store {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(failed)?;
        let lock = try_lock(dir).map_err(failed)?.ok_or_else(|| {
            format!(
                "offline store {} is in use by another agent or an upload",
                dir.display()
            )
        })?;
        close_abandoned(dir).map_err(failed)?;
        let mut store = Self {
            dir: dir.to_owned(),
            settings: settings.clone(),
            max_request_bytes,
            _lock: lock,
            current: None,
            metrics: StoreMetrics {
                records: telemetry.counter(
                    "parca_grpc_offline_records",
                    "WriteRaw requests written to the offline store.",
                    &[],
                ),
                bytes: telemetry.counter(
                    "parca_grpc_offline_bytes",
                    "Bytes written to the offline store.",
                    &[],
                ),
                removed_bytes: telemetry.counter(
                    "parca_grpc_offline_removed_bytes",
                    "Bytes of not yet uploaded segments removed to keep offline_mode::max_bytes.",
                    &[],
                ),
            },
        };
        store.keep_within_limit();
        Ok(store)
    }

    /// Writes one window's series as requests of at most
    /// `max_request_bytes`, in one write; rotates the segment when due.
    pub fn append(&mut self, series: Vec<EncodedSeries>) -> io::Result<()> {
        if series.is_empty() {
            return Ok(());
        }
        let mut queue: VecDeque<EncodedSeries> = series.into();
        let mut out = Vec::new();
        let mut records = 0;
        while !queue.is_empty() {
            let request = WriteRawRequest {
                series: take_request(&mut queue, self.max_request_bytes)
                    .into_iter()
                    .map(|s| s.series)
                    .collect(),
                ..Default::default()
            };
            put_record(&mut out, &request)?;
            records += 1;
        }
        let segment = match &mut self.current {
            Some(s) => s,
            None => self.current.insert(self.new_segment()?),
        };
        if let Err(e) = segment.file.write_all(&out) {
            // A partial record would hide every later one from the reader:
            // cut it off and go on in a new segment.
            let _ = segment.file.set_len(segment.length);
            let _ = self.close();
            return Err(e);
        }
        segment.length += out.len() as u64;
        self.metrics.records.inc_by(records);
        self.metrics.bytes.inc_by(out.len() as u64);
        if segment.opened.elapsed() >= self.settings.rotation_interval {
            self.close()?;
        }
        Ok(())
    }

    fn new_segment(&self) -> io::Result<OpenSegment> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self
            .dir
            .join(format!("{ms:013}-{}.{OPEN}", std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        Ok(OpenSegment {
            file,
            path,
            opened: Instant::now(),
            length: 0,
        })
    }

    /// Syncs and closes the segment being written (the next window opens a
    /// new one), then keeps the store within its limit.
    pub fn close(&mut self) -> io::Result<()> {
        if let Some(segment) = self.current.take() {
            segment.file.sync_all()?;
            std::fs::rename(&segment.path, segment.path.with_extension(CLOSED))?;
        }
        self.keep_within_limit();
        Ok(())
    }

    /// Removes the oldest closed segments while the store holds more than
    /// `max_bytes`.
    fn keep_within_limit(&mut self) {
        let limit = self.settings.max_bytes;
        if limit == 0 {
            return;
        }
        let Ok(closed) = files_ending(&self.dir, CLOSED) else {
            return;
        };
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut total: u64 = closed.iter().map(|p| size(p)).sum::<u64>()
            + self.current.as_ref().map_or(0, |s| s.length);
        for oldest in closed {
            if total <= limit {
                break;
            }
            let bytes = size(&oldest);
            match std::fs::remove_file(&oldest) {
                Ok(()) => {
                    let _ = std::fs::remove_file(oldest.with_extension(SENT));
                    warn!(file = %oldest.display(), bytes, limit_bytes = limit,
                        "offline store over offline_mode::max_bytes: oldest segment removed before upload");
                    self.metrics.removed_bytes.inc_by(bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %oldest.display(), error = %e, "cannot remove an old offline segment")
                }
            }
            total = total.saturating_sub(bytes);
        }
    }
}

/// `parca_grpc` in offline mode: windows go to the store, nothing is sent.
pub struct OfflineExporter {
    dir: PathBuf,
    settings: OfflineMode,
    max_request_bytes: usize,
    infos: ExecutableInfos,
    telemetry: ComponentTelemetry,
    /// Once started.
    store: Option<Arc<Mutex<OfflineStore>>>,
}

impl OfflineExporter {
    /// An exporter writing to `dir`; the store is opened at start.
    pub fn new(
        dir: PathBuf,
        config: &ParcaGrpcConfig,
        infos: ExecutableInfos,
        ctx: &BuildContext,
    ) -> Self {
        Self {
            dir,
            settings: config.offline_mode.clone(),
            max_request_bytes: config.max_request_bytes,
            infos,
            telemetry: ctx.telemetry.clone(),
            store: None,
        }
    }

    /// Runs `f` on the store on a blocking thread (writes and syncs wait
    /// on the disk).
    async fn with_store(
        &self,
        f: impl FnOnce(&mut OfflineStore) -> io::Result<()> + Send + 'static,
    ) -> Result<(), ComponentError> {
        let Some(store) = self.store.clone() else {
            return Err("the offline store is not open (exported to before start)".into());
        };
        let dir = self.dir.display().to_string();
        tokio::task::spawn_blocking(move || f(&mut store.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| format!("offline store writer failed: {e}"))?
            .map_err(|e| format!("cannot write offline store {dir}: {e}").into())
    }
}

#[async_trait::async_trait]
impl Exporter for OfflineExporter {
    fn destination(&self) -> String {
        format!("offline store {}", self.dir.display())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        let (dir, settings, max) = (
            self.dir.clone(),
            self.settings.clone(),
            self.max_request_bytes,
        );
        let telemetry = self.telemetry.clone();
        let store = tokio::task::spawn_blocking(move || {
            OfflineStore::open(&dir, &settings, max, &telemetry)
        })
        .await
        .map_err(|e| format!("offline store opening failed: {e}"))??;
        info!(store = %self.dir.display(), "offline mode: windows are stored, not sent (agent --offline-mode-upload sends them)");
        self.store = Some(Arc::new(Mutex::new(store)));
        Ok(())
    }

    async fn export(&mut self, batch: Arc<ProfileBatch>) -> Result<(), ComponentError> {
        // Executable infos are read now: the processes may be gone by the upload.
        let (series, _debuginfo) = encode_batch(&batch, &mut self.infos);
        self.with_store(move |store| store.append(series)).await
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if self.store.is_none() {
            return Ok(());
        }
        self.with_store(OfflineStore::close).await
    }
}

/// What an upload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Requests the server took.
    pub sent: usize,
    /// Requests the server refused for good (dropped, logged).
    pub refused: usize,
    /// Records whose body could not be decoded (dropped, logged).
    pub unreadable: usize,
    /// Segments sent and removed.
    pub segments_done: usize,
    /// Segments still in the store (the server stopped taking requests,
    /// or the upload was stopped).
    pub segments_left: usize,
}

/// Sends every closed segment of the store (and, when no agent writes it,
/// the ones a killed agent left open), oldest first, and removes each once
/// the server took all of it. Stops at the first request the server does
/// not take for now (retried within `retry_on_failure`), or when `ctx`'s
/// stop signal comes; what is left stays for the next upload.
pub async fn upload(config: &ParcaGrpcConfig, ctx: &BuildContext) -> Result<Uploaded, String> {
    let dir = config
        .offline_mode
        .storage_path
        .as_deref()
        .ok_or("offline_mode::storage_path is not set (--offline-mode-storage-path)")?;
    if config.address.trim().is_empty() {
        return Err(
            "address is required to upload (the Parca server's host:port; --remote-store-address)"
                .into(),
        );
    }
    let failed = |e: io::Error| format!("cannot read offline store {}: {e}", dir.display());
    if !dir.is_dir() {
        return Err(format!(
            "offline store {} does not exist (offline_mode::storage_path)",
            dir.display()
        ));
    }
    // With no agent writing, segments it left open are ours to close and
    // send (and no agent starts writing until the upload ends).
    let writer_gone = try_lock(dir).map_err(failed)?;
    if writer_gone.is_some() {
        close_abandoned(dir).map_err(failed)?;
    } else {
        info!(store = %dir.display(), "the store is in use (an agent writing it, or another upload): open segments are left to it");
    }
    let clients = ParcaClients::new(config)?;
    let mut delivery = Delivery::new(
        ctx,
        config.address.redacted(),
        config.retry_on_failure.clone(),
        config.rpc_unary_timeout,
        config.shutdown_flush_timeout,
    )
    .map_err(|e| e.to_string())?;
    let segments = files_ending(dir, CLOSED).map_err(failed)?;
    let mut done = Uploaded::default();
    for (n, segment) in segments.iter().enumerate() {
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        // Another upload sends it, or sent it and removed it after we
        // listed it (its removal happens under its lock), or the writer's
        // size limit removed it.
        let _sending = match try_lock(segment) {
            Ok(Some(lock)) if segment.exists() => lock,
            Ok(_) => continue,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(failed(e)),
        };
        let data = match std::fs::read(segment) {
            Ok(d) => d,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(failed(e)),
        };
        let records = parse_records(&data);
        if records.torn_bytes > 0 {
            warn!(file = %segment.display(), bytes = records.torn_bytes,
                "offline store: the end of a segment is no whole record (its writer was killed mid-write); skipped");
        }
        let progress = segment.with_extension(SENT);
        let taken = read_progress(&progress);
        for (i, request) in records.requests.into_iter().enumerate().skip(taken) {
            if ctx.stopping.is_requested() {
                done.segments_left = segments.len() - n;
                return Ok(done);
            }
            match request {
                Ok(request) => match delivery
                    .send(|timeout| write_raw(&clients, &request, timeout, config.rpc_logging))
                    .await
                {
                    Ok(()) => done.sent += 1,
                    Err(Undelivered::Rejected(reason)) => {
                        warn!(file = %segment.display(), record = i, %reason, "the Parca server refuses a stored request; dropped");
                        done.refused += 1;
                    }
                    Err(e) => {
                        warn!(reason = %e, "upload stopped: the Parca server does not take requests now");
                        done.segments_left = segments.len() - n;
                        return Ok(done);
                    }
                },
                Err(e) => {
                    warn!(file = %segment.display(), record = i, error = %e, "offline store: a record cannot be decoded; dropped");
                    done.unreadable += 1;
                }
            }
            write_progress(&progress, i + 1).map_err(failed)?;
        }
        for file in [segment, &progress] {
            match std::fs::remove_file(file) {
                Err(e) if !gone(&e) => return Err(failed(e)),
                _ => {}
            }
        }
        done.segments_done += 1;
    }
    Ok(done)
}

/// Records of a segment the server took; 0 when none is recorded.
fn read_progress(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records `taken` for a segment: written beside it, synced, renamed over.
fn write_progress(path: &Path, taken: usize) -> io::Result<()> {
    let tmp = path.with_extension("sent-tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(taken.to_string().as_bytes())?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::profilestore::{Label, LabelSet, RawProfileSeries};

    fn series(name: &str, bytes: usize) -> EncodedSeries {
        EncodedSeries {
            series: RawProfileSeries {
                labels: Some(LabelSet {
                    labels: vec![Label {
                        name: "__name__".into(),
                        value: name.into(),
                    }],
                }),
                samples: vec![],
            },
            samples: 1,
            bytes,
        }
    }

    fn store(dir: &Path, settings: OfflineMode, max_request_bytes: usize) -> OfflineStore {
        let t = agent_core::telemetry::Telemetry::default().scoped(&[]);
        OfflineStore::open(dir, &settings, max_request_bytes, &t).unwrap()
    }

    fn names(records: &Records) -> Vec<Vec<String>> {
        records
            .requests
            .iter()
            .map(|r| {
                r.as_ref()
                    .unwrap()
                    .series
                    .iter()
                    .map(|s| s.labels.as_ref().unwrap().labels[0].value.clone())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn windows_are_split_into_requests_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), OfflineMode::default(), 100);
        s.append(vec![series("a", 60), series("b", 60), series("c", 30)])
            .unwrap();
        s.append(vec![series("d", 10)]).unwrap();
        s.close().unwrap();
        let closed = files_ending(dir.path(), CLOSED).unwrap();
        assert_eq!(closed.len(), 1);
        let records = parse_records(&std::fs::read(&closed[0]).unwrap());
        assert_eq!(names(&records), [vec!["a"], vec!["b", "c"], vec!["d"]]);
        assert_eq!(records.torn_bytes, 0);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_records_and_is_measured() {
        let mut data = Vec::new();
        for name in ["a", "b"] {
            let request = WriteRawRequest {
                series: vec![series(name, 1).series],
                ..Default::default()
            };
            put_record(&mut data, &request).unwrap();
        }
        let whole = data.len();
        let torn = parse_records(&data[..whole - 3]);
        assert_eq!(names(&torn), [vec!["a"]]);
        assert_eq!(torn.torn_bytes, whole / 2 - 3);
        data[whole - 1] ^= 0xff;
        let corrupt = parse_records(&data);
        assert_eq!(names(&corrupt), [vec!["a"]]);
        assert_eq!(corrupt.torn_bytes, whole / 2);
    }

    #[test]
    fn one_writer_per_store_and_a_killed_writers_segment_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = store(dir.path(), OfflineMode::default(), 100);
        first.append(vec![series("a", 1)]).unwrap();
        let t = agent_core::telemetry::Telemetry::default().scoped(&[]);
        let second = OfflineStore::open(dir.path(), &OfflineMode::default(), 100, &t);
        assert!(
            second.is_err_and(|e| e.contains("is in use by another agent or an upload")),
            "two writers on one store"
        );
        // Dropped without close: as if killed.
        drop(first);
        assert_eq!(files_ending(dir.path(), OPEN).unwrap().len(), 1);
        let _next = store(dir.path(), OfflineMode::default(), 100);
        assert!(files_ending(dir.path(), OPEN).unwrap().is_empty());
        assert_eq!(files_ending(dir.path(), CLOSED).unwrap().len(), 1);
    }

    #[test]
    fn segments_rotate_and_the_oldest_go_past_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = Vec::new();
        let request = WriteRawRequest {
            series: vec![series("a", 1).series],
            ..Default::default()
        };
        put_record(&mut one, &request).unwrap();
        let size = one.len() as u64;
        let settings = OfflineMode {
            storage_path: None,
            rotation_interval: std::time::Duration::ZERO,
            max_bytes: 2 * size + size / 2,
        };
        let mut s = store(dir.path(), settings, 1000);
        for name in ["a", "b", "c", "d"] {
            s.append(vec![series(name, 1)]).unwrap();
            // Names are by the millisecond.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let closed = files_ending(dir.path(), CLOSED).unwrap();
        let kept: Vec<Vec<String>> = closed
            .iter()
            .flat_map(|p| names(&parse_records(&std::fs::read(p).unwrap())))
            .collect();
        assert_eq!(kept, [vec!["c"], vec!["d"]], "the newest stay");
        assert_eq!(
            s.metrics.removed_bytes.get(),
            (4 - kept.len() as u64) * size
        );
    }
}
