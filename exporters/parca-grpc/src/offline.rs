//! Offline mode (Parca Agent's `--offline-mode-*`): windows are kept on
//! disk as the WriteRaw requests they would have been, and sent later by
//! `agent --offline-mode-upload`, each file removed only once the server
//! took all of it.
//!
//! The store is a directory of segment files, named by a sequence number,
//! each a run of records `[length: u32 LE][CRC-32 of the body: u32 LE]
//! [body: WriteRawRequest]`, one `write` per window. The segment being
//! written ends in `.open`; its writer holds a lock on the directory; at the
//! first window after `rotation_interval` (or past a size) it is synced and
//! renamed to `.segment`. A writer killed mid-write leaves a torn last
//! record, found by its length or checksum and skipped; its `.open` file is
//! closed by the next writer or upload.
//!
//! The upload records how many records of a segment the server took in
//! `<segment>.sent`, overwritten in place and synced after each answer
//! (fixed width: no write needs a new block, so a full disk cannot stop it
//! between the answer and the record), so an upload cut off resumes after
//! the last record taken. An upload holds a lock on each segment it sends:
//! uploads beside each other, or the writer's size limit, never touch a
//! segment being sent.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_core::{BuildContext, ComponentError, Exporter, ProfileBatch};
use agent_exporter_helper::{grpc_failure, Delivery, Failure, Undelivered, Verdict};
use prost::Message;
use tonic::Code;
use tracing::{error, info, warn};

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
/// A segment is closed once this large (or at an eighth of `max_bytes`),
/// so the size limit can act and an upload reads bounded files.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;

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

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Files of `dir` ending in `.suffix`, oldest first.
fn files_ending(dir: &Path, suffix: &str) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    Ok(files)
}

/// The sequence number a store file's name begins with.
fn sequence(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.split(['-', '.']).next()?.parse().ok()
}

/// Closes the segments a killed writer left open (the caller holds the
/// directory lock, so no one writes them); empty ones are removed.
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
    sync_dir(dir)
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

/// A decoded record: the request, or why its body is no request.
pub type Record = Result<WriteRawRequest, prost::DecodeError>;

/// The records of a segment, read one at a time. Reading ends at the first
/// record that is cut short, empty (a writer never writes one; a zeroed
/// tail after a power loss is) or fails its checksum; the bytes from there
/// are [`Records::torn_bytes`].
pub struct Records<R> {
    input: R,
    total: u64,
    consumed: u64,
    ended: bool,
}

impl<R: Read> Records<R> {
    /// The records of `input`, `total` bytes long.
    pub fn new(input: R, total: u64) -> Self {
        Self {
            input,
            total,
            consumed: 0,
            ended: false,
        }
    }

    /// Bytes after the last whole record, once reading has ended.
    pub fn torn_bytes(&self) -> u64 {
        if self.ended {
            self.total - self.consumed
        } else {
            0
        }
    }

    fn next_body(&mut self) -> io::Result<Option<Vec<u8>>> {
        let left = self.total - self.consumed;
        if left < HEADER as u64 {
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        self.input.read_exact(&mut header)?;
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        // Checked against what is left before anything is allocated.
        if length == 0 || HEADER as u64 + u64::from(length) > left {
            return Ok(None);
        }
        let mut body = vec![0; length as usize];
        self.input.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            return Ok(None);
        }
        self.consumed += HEADER as u64 + u64::from(length);
        Ok(Some(body))
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        match self.next_body() {
            Ok(Some(body)) => Some(Ok(WriteRawRequest::decode(body.as_slice()))),
            Ok(None) => {
                self.ended = true;
                None
            }
            // Shorter than its size said: it changed while read.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.ended = true;
                None
            }
            Err(e) => {
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

/// A segment's records, all read (tests, tools).
#[derive(Debug, Default)]
pub struct Parsed {
    /// Each whole record.
    pub requests: Vec<Record>,
    /// Bytes after the last whole record.
    pub torn_bytes: u64,
}

/// Reads every record of a segment's bytes.
pub fn parse_records(data: &[u8]) -> Parsed {
    let mut records = Records::new(data, data.len() as u64);
    let requests = records.by_ref().map_while(Result::ok).collect();
    Parsed {
        requests,
        torn_bytes: records.torn_bytes(),
    }
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
    /// The next segment's sequence number.
    next: u64,
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
        let failed = |e: io::Error| {
            format!(
                "cannot use offline store {} (offline_mode::storage_path): {e}",
                dir.display()
            )
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let lock = try_lock(dir).map_err(failed)?.ok_or_else(|| {
            format!(
                "offline store {} (offline_mode::storage_path) is in use by another agent, another parca_grpc exporter or an upload",
                dir.display()
            )
        })?;
        close_abandoned(dir).map_err(failed)?;
        // After every file there is, progress files of removed segments
        // included: a new segment never meets an old one's progress.
        let next = std::fs::read_dir(dir)
            .map_err(failed)?
            .filter_map(|e| sequence(&e.ok()?.path()))
            .max()
            .map_or(1, |n| n + 1);
        let mut store = Self {
            dir: dir.to_owned(),
            settings: settings.clone(),
            max_request_bytes,
            _lock: lock,
            current: None,
            next,
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

    /// Most bytes of one segment.
    fn segment_limit(&self) -> u64 {
        match self.settings.max_bytes {
            0 => MAX_SEGMENT_BYTES,
            limit => (limit / 8).clamp(1, MAX_SEGMENT_BYTES),
        }
    }

    /// Writes one window's series as requests of at most
    /// `max_request_bytes`, in one write; closes the segment when its time
    /// or size is up.
    pub fn append(&mut self, series: Vec<EncodedSeries>) -> io::Result<()> {
        if series.is_empty() {
            return Ok(());
        }
        let mut queue: std::collections::VecDeque<EncodedSeries> = series.into();
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
        let limit = self.segment_limit();
        let segment = match &mut self.current {
            Some(s) => s,
            None => {
                let s = self.new_segment()?;
                self.current.insert(s)
            }
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
        if segment.opened.elapsed() >= self.settings.rotation_interval || segment.length >= limit {
            self.close()?;
        }
        Ok(())
    }

    fn new_segment(&mut self) -> io::Result<OpenSegment> {
        let path = self.dir.join(format!("{:012}.{OPEN}", self.next));
        self.next += 1;
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
            sync_dir(&self.dir)?;
        }
        self.keep_within_limit();
        Ok(())
    }

    /// Removes the oldest closed segments while the store holds more than
    /// `max_bytes`; a segment an upload is sending is left to it.
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
            let Ok(Some(_unsent)) = try_lock(&oldest) else {
                continue;
            };
            match std::fs::remove_file(&oldest) {
                Ok(()) => {
                    let _ = std::fs::remove_file(oldest.with_extension(SENT));
                    warn!(file = %oldest.display(), bytes, limit_bytes = limit,
                        "offline store over offline_mode::max_bytes: oldest segment removed before upload");
                    self.metrics.removed_bytes.inc_by(bytes);
                    total = total.saturating_sub(bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %oldest.display(), error = %e, "cannot remove an old offline segment")
                }
            }
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
    /// Requests the server refused as malformed (`INVALID_ARGUMENT`; dropped, logged).
    pub refused: usize,
    /// Records whose body could not be decoded (dropped, logged).
    pub unreadable: usize,
    /// Bytes after a segment's last whole record (a writer killed
    /// mid-write; skipped, logged).
    pub torn_bytes: u64,
    /// Segments sent and removed.
    pub segments_done: usize,
    /// Segments still in the store (the server stopped taking requests,
    /// or the upload was stopped).
    pub segments_left: usize,
}

/// What a failed upload of a stored request means: only a request the
/// server finds malformed is dropped; any other refusal (a proxy's
/// `UNIMPLEMENTED` for a wrong path, `INTERNAL`, refused credentials) ends
/// the upload with the request kept for the next one.
fn upload_failure(status: &tonic::Status) -> Failure {
    let described = grpc_failure(status);
    let verdict = match status.code() {
        Code::InvalidArgument => Verdict::Permanent,
        // How a broken connection can surface.
        Code::Unknown => Verdict::Retry { after: None },
        _ if described.verdict == Verdict::Permanent => Verdict::Later,
        _ => described.verdict,
    };
    Failure {
        verdict,
        reason: described.reason,
    }
}

/// A segment's upload progress: how many of its records the server took,
/// overwritten in place at a fixed width and synced after each answer.
struct Progress(File);

impl Progress {
    const WIDTH: usize = 20;

    /// Opens (or creates) `path`; the records already taken. The current
    /// count is written back at once, so a store that cannot record
    /// progress fails before anything is sent.
    fn open(path: &Path) -> io::Result<(Self, usize)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let taken = text.trim().parse().unwrap_or(0);
        let progress = Self(file);
        progress.record(taken)?;
        Ok((progress, taken))
    }

    fn record(&self, taken: usize) -> io::Result<()> {
        let text = format!("{taken:0width$}", width = Self::WIDTH);
        self.0.write_all_at(text.as_bytes(), 0)?;
        self.0.sync_data()
    }
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
    let failed = |e: io::Error| {
        format!(
            "cannot read offline store {} (offline_mode::storage_path): {e}",
            dir.display()
        )
    };
    if !dir.is_dir() {
        return Err(format!(
            "offline store {} does not exist (offline_mode::storage_path)",
            dir.display()
        ));
    }
    // With no agent writing, segments it left open are ours to close and
    // send. The lock is let go at once: an agent may start writing while
    // the closed segments are sent (each is locked while it is).
    match try_lock(dir).map_err(failed)? {
        Some(_no_writer) => close_abandoned(dir).map_err(failed)?,
        None => {
            info!(store = %dir.display(), "the store is in use (an agent writing it, or another upload): its open segment is left to it")
        }
    }
    // Progress left by an upload that died between removing a segment and
    // removing its progress.
    for progress in files_ending(dir, SENT).map_err(failed)? {
        if !progress.with_extension(CLOSED).exists() {
            let _ = std::fs::remove_file(&progress);
        }
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
        let file = File::open(segment).map_err(failed)?;
        let total = file.metadata().map_err(failed)?.len();
        let progress_path = segment.with_extension(SENT);
        let (progress, taken) = Progress::open(&progress_path).map_err(failed)?;
        let mut records = Records::new(BufReader::new(file), total);
        let mut index = 0;
        for record in records.by_ref() {
            let record = record.map_err(failed)?;
            index += 1;
            if index <= taken {
                continue;
            }
            if ctx.stopping.is_requested() {
                info!("upload stopped by the stop signal");
                done.segments_left = segments.len() - n;
                return Ok(done);
            }
            match record {
                Ok(request) => match delivery
                    .send(|timeout| {
                        write_raw(
                            &clients,
                            &request,
                            timeout,
                            config.rpc_logging,
                            upload_failure,
                        )
                    })
                    .await
                {
                    Ok(()) => done.sent += 1,
                    Err(Undelivered::Rejected(reason)) => {
                        error!(file = %segment.display(), record = index, %reason, "the Parca server refuses a stored request as malformed; dropped");
                        done.refused += 1;
                    }
                    Err(e) => {
                        match e {
                            Undelivered::Stopped(_) => info!("upload stopped by the stop signal"),
                            e => {
                                warn!(reason = %e, "upload stopped: the Parca server does not take requests now")
                            }
                        }
                        done.segments_left = segments.len() - n;
                        return Ok(done);
                    }
                },
                Err(e) => {
                    error!(file = %segment.display(), record = index, error = %e, "offline store: a record cannot be decoded; dropped");
                    done.unreadable += 1;
                }
            }
            progress.record(index).map_err(failed)?;
        }
        if records.torn_bytes() > 0 {
            warn!(file = %segment.display(), bytes = records.torn_bytes(),
                "offline store: the end of a segment is no whole record (its writer was killed mid-write, or the file is damaged); skipped");
            done.torn_bytes += records.torn_bytes();
        }
        for file in [segment, &progress_path] {
            match std::fs::remove_file(file) {
                Err(e) if !gone(&e) => return Err(failed(e)),
                _ => {}
            }
        }
        let _ = sync_dir(dir);
        done.segments_done += 1;
    }
    Ok(done)
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

    fn names(records: &Parsed) -> Vec<Vec<String>> {
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
        assert_eq!(torn.torn_bytes as usize, whole / 2 - 3);
        data[whole - 1] ^= 0xff;
        let corrupt = parse_records(&data);
        assert_eq!(names(&corrupt), [vec!["a"]]);
        assert_eq!(corrupt.torn_bytes as usize, whole / 2);
        // A zeroed tail (a power loss) is no record, though its checksum fits.
        let mut zeroed = data[..whole / 2].to_vec();
        zeroed.extend([0; 16]);
        let parsed = parse_records(&zeroed);
        assert_eq!(names(&parsed), [vec!["a"]]);
        assert_eq!(parsed.torn_bytes, 16);
    }

    #[test]
    fn only_a_malformed_request_is_dropped_by_an_upload() {
        let verdict = |code| upload_failure(&tonic::Status::new(code, "x")).verdict;
        assert_eq!(verdict(Code::InvalidArgument), Verdict::Permanent);
        for kept in [
            Code::Unimplemented,
            Code::NotFound,
            Code::Internal,
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::PermissionDenied,
        ] {
            assert_eq!(verdict(kept), Verdict::Later, "{kept:?}");
        }
        assert_eq!(verdict(Code::Unknown), Verdict::Retry { after: None });
        assert_eq!(verdict(Code::Unavailable), Verdict::Retry { after: None });
    }

    #[test]
    fn one_writer_per_store_and_a_killed_writers_segment_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = store(dir.path(), OfflineMode::default(), 100);
        first.append(vec![series("a", 1)]).unwrap();
        let t = agent_core::telemetry::Telemetry::default().scoped(&[]);
        let second = OfflineStore::open(dir.path(), &OfflineMode::default(), 100, &t);
        assert!(
            second.is_err_and(|e| e.contains("is in use by another agent")),
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
        for name in ["a", "b"] {
            s.append(vec![series(name, 1)]).unwrap();
        }
        // An upload sending the oldest keeps it from the size limit.
        let oldest = files_ending(dir.path(), CLOSED).unwrap().remove(0);
        let sending = try_lock(&oldest).unwrap().unwrap();
        s.append(vec![series("c", 1)]).unwrap();
        assert!(oldest.exists(), "a segment being sent was removed");
        drop(sending);
        s.append(vec![series("d", 1)]).unwrap();
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

    #[test]
    fn a_new_segment_never_takes_the_number_of_an_old_progress_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000000000007.sent"), "3").unwrap();
        let mut s = store(dir.path(), OfflineMode::default(), 100);
        s.append(vec![series("a", 1)]).unwrap();
        s.close().unwrap();
        let closed = files_ending(dir.path(), CLOSED).unwrap();
        assert_eq!(sequence(&closed[0]), Some(8));
    }
}
