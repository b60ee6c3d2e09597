//! Debuginfo upload, once per build id: ShouldInitiateUpload →
//! InitiateUpload → Upload (gRPC stream of one `info` and 8 MiB chunks) or
//! HTTP PUT to a signed URL → MarkUploadFinished. The server's answers are
//! remembered in a file, so a restart does not upload again within the
//! cache duration.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_object_files::{ObjectLocator, ObjectRef};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::profiles::DebuginfoCandidate;
use crate::proto::debuginfo::{
    upload_instructions::UploadStrategy, upload_request, BuildIdType, DebuginfoType,
    InitiateUploadRequest, MarkUploadFinishedRequest, ShouldInitiateUploadRequest, UploadInfo,
    UploadRequest,
};
use crate::ParcaClients;

/// Bytes per `chunk_data` message.
pub const CHUNK_BYTES: usize = 8 << 20;

/// A failed upload is tried again after this long (or the cache duration,
/// if shorter).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// What the server said about a build id, and until when it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Uploaded, or the server has it / does not want it: ask again after `until`.
    Done,
    /// The file cannot be uploaded (unreadable, invalid): never again.
    Invalid,
}

/// The record of answers, kept in `<temp dir>/parca-agent-debuginfo-uploads.json`.
pub struct UploadRecord {
    path: PathBuf,
    entries: HashMap<String, (Answer, u64)>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl UploadRecord {
    /// Reads the record in `dir` (an unreadable record starts empty).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join("parca-agent-debuginfo-uploads.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self { path, entries }
    }

    /// True when `build_id` needs no upload now.
    pub fn settled(&self, build_id: &str) -> bool {
        match self.entries.get(build_id) {
            Some((Answer::Invalid, _)) => true,
            Some((Answer::Done, until)) => *until > unix_now(),
            None => false,
        }
    }

    /// Remembers an answer for `ttl` (Invalid: for good) and saves the record.
    pub fn remember(&mut self, build_id: &str, answer: Answer, ttl: Duration) {
        let now = unix_now();
        self.entries
            .retain(|_, (a, until)| *a == Answer::Invalid || *until > now);
        self.entries
            .insert(build_id.to_owned(), (answer, now + ttl.as_secs()));
        let saved = serde_json::to_vec(&self.entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = self.path.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = saved {
            warn!(file = %self.path.display(), error = %e, "cannot save the debuginfo upload record");
        }
    }
}

/// Settings of the uploader.
#[derive(Clone)]
pub struct UploaderSettings {
    /// Finds files and debug files.
    pub locator: ObjectLocator,
    /// Where stripped files are written.
    pub temp_dir: PathBuf,
    /// Upload only what symbolization needs.
    pub strip: bool,
    /// Compress DWARF.
    pub compress: bool,
    /// Most uploads at once.
    pub max_parallel: usize,
    /// Bound of one upload.
    pub timeout: Duration,
    /// How long answers are remembered.
    pub cache_duration: Duration,
    /// Log every call.
    pub rpc_logging: bool,
    /// For signed-URL uploads: skip certificate verification.
    pub insecure_skip_verify: bool,
}

/// Counters of uploads.
struct UploadMetrics {
    uploaded: Counter,
    uploaded_bytes: Counter,
    not_needed: Counter,
    failed: Counter,
    invalid: Counter,
}

/// Takes candidates from the exporter and uploads what the server wants.
pub struct Uploader {
    settings: UploaderSettings,
    clients: ParcaClients,
    record: Mutex<UploadRecord>,
    in_flight: Mutex<std::collections::HashSet<String>>,
    /// Build ids whose upload failed for now, and when to try again.
    postponed: Mutex<HashMap<String, std::time::Instant>>,
    parallel: Semaphore,
    metrics: UploadMetrics,
}

/// How an upload ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Uploaded(u64),
    NotNeeded(String),
    /// Retry with a later window (server busy, upload in progress elsewhere).
    Later(String),
    Invalid(String),
}

/// A file removed when dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The running uploader: offered candidates; dropped, it stops.
pub struct Uploads {
    candidates: mpsc::Sender<DebuginfoCandidate>,
    task: tokio::task::JoinHandle<()>,
}

impl Uploads {
    /// Offers a file to upload; a full queue drops it (its build id comes
    /// again with a later window).
    pub fn offer(&self, candidate: DebuginfoCandidate) {
        let _ = self.candidates.try_send(candidate);
    }

    /// Takes no more files and lets the uploads in flight finish, for at
    /// most `bound`; what is still running then is aborted (a file not
    /// uploaded is offered again by the next run: only finished ones are
    /// recorded).
    pub async fn finish(mut self, bound: Duration) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.candidates, closed));
        let _ = tokio::time::timeout(bound, &mut self.task).await;
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        // Aborting the task drops its JoinSet, which aborts the uploads.
        self.task.abort();
    }
}

impl Uploader {
    /// Starts the upload task; candidates are offered to what it returns,
    /// and dropping that ends the task and every upload in flight.
    pub fn start(
        settings: UploaderSettings,
        clients: ParcaClients,
        telemetry: &ComponentTelemetry,
    ) -> Uploads {
        let record = UploadRecord::load(&settings.temp_dir);
        let counter = |result: &str| {
            telemetry.counter(
                "parca_grpc_debuginfo_uploads",
                "Debuginfo files by what became of them.",
                &[("result", result)],
            )
        };
        let uploader = Arc::new(Uploader {
            parallel: Semaphore::new(settings.max_parallel),
            settings,
            clients,
            record: Mutex::new(record),
            in_flight: Mutex::default(),
            postponed: Mutex::default(),
            metrics: UploadMetrics {
                uploaded: counter("uploaded"),
                not_needed: counter("not_needed"),
                failed: counter("failed"),
                invalid: counter("invalid"),
                uploaded_bytes: telemetry.counter(
                    "parca_grpc_debuginfo_uploaded_bytes",
                    "Bytes of debuginfo uploaded.",
                    &[],
                ),
            },
        });
        let (tx, mut rx) = mpsc::channel::<DebuginfoCandidate>(1024);
        let task = tokio::spawn(async move {
            let mut uploads = JoinSet::new();
            loop {
                tokio::select! {
                    candidate = rx.recv() => {
                        let Some(candidate) = candidate else {
                            // No more offers: the uploads in flight finish.
                            while uploads.join_next().await.is_some() {}
                            break;
                        };
                        if !uploader.claim(&candidate.build_id) {
                            continue;
                        }
                        let uploader = uploader.clone();
                        uploads.spawn(async move {
                            let Ok(_permit) = uploader.parallel.acquire().await else {
                                return;
                            };
                            uploader.run_one(&candidate).await;
                            uploader.release(&candidate.build_id);
                        });
                    }
                    Some(_) = uploads.join_next(), if !uploads.is_empty() => {}
                }
            }
        });
        Uploads {
            candidates: tx,
            task,
        }
    }

    /// Marks `build_id` as being handled; false when it needs nothing now.
    fn claim(&self, build_id: &str) -> bool {
        if self.lock_record().settled(build_id) {
            return false;
        }
        let retry_at = self
            .postponed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(build_id)
            .copied();
        if retry_at.is_some_and(|at| std::time::Instant::now() < at) {
            return false;
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(build_id.to_owned())
    }

    fn release(&self, build_id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(build_id);
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, UploadRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run_one(&self, candidate: &DebuginfoCandidate) {
        let id = &candidate.build_id;
        let outcome =
            match tokio::time::timeout(self.settings.timeout, self.upload(candidate)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Later(format!(
                    "took longer than {} s",
                    self.settings.timeout.as_secs_f64()
                )),
            };
        let ttl = self.settings.cache_duration;
        match outcome {
            Outcome::Uploaded(bytes) => {
                info!(build_id = %id, path = %candidate.path, bytes, "debuginfo uploaded");
                self.metrics.uploaded.inc();
                self.metrics.uploaded_bytes.inc_by(bytes);
                self.lock_record().remember(id, Answer::Done, ttl);
            }
            Outcome::NotNeeded(reason) => {
                debug!(build_id = %id, %reason, "debuginfo not needed");
                self.metrics.not_needed.inc();
                self.lock_record().remember(id, Answer::Done, ttl);
            }
            Outcome::Later(reason) => {
                debug!(build_id = %id, %reason, "debuginfo upload postponed");
                self.metrics.failed.inc();
                // Not every window: each attempt reads (and strips) the file.
                let at = std::time::Instant::now() + RETRY_AFTER.min(ttl);
                let mut postponed = self.postponed.lock().unwrap_or_else(|e| e.into_inner());
                postponed.retain(|_, t| *t > std::time::Instant::now());
                postponed.insert(id.clone(), at);
            }
            Outcome::Invalid(reason) => {
                warn!(build_id = %id, path = %candidate.path, %reason, "debuginfo cannot be uploaded; not trying again");
                self.metrics.invalid.inc();
                self.lock_record().remember(id, Answer::Invalid, ttl);
            }
        }
    }

    /// Reads the best file for `candidate`: the separate debug file when
    /// there is one, else the object itself.
    fn read_file(&self, c: &DebuginfoCandidate) -> Result<(Vec<u8>, PathBuf), Outcome> {
        let pids: Vec<u32> = c.pid.into_iter().collect();
        let obj = ObjectRef {
            path: &c.path,
            build_id: Some(&c.build_id),
            pids: &pids,
            range: c.range,
        };
        let locator = &self.settings.locator;
        let binary = locator.open_binary(&obj);
        let debug = locator.find_debug_file(&obj, Some(&c.build_id), binary.as_ref());
        let mut file = match (debug, binary) {
            (Some(d), _) => d.file,
            (None, Some(b)) => b.file,
            (None, None) => return Err(Outcome::Later("file not found (process gone?)".into())),
        };
        let shown = agent_object_files::fd_path(&file);
        let shown = std::fs::read_link(&shown).unwrap_or(shown);
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| Outcome::Later(format!("cannot read {}: {e}", shown.display())))?;
        Ok((data, shown))
    }

    async fn upload(&self, c: &DebuginfoCandidate) -> Outcome {
        let (data, source) = match self.read_file(c) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let data = if self.settings.strip || self.settings.compress {
            match crate::strip::prepare(&data, self.settings.strip, self.settings.compress) {
                Ok(prepared) => prepared,
                Err(e) => return Outcome::Invalid(format!("{}: {e}", source.display())),
            }
        } else {
            data
        };
        // The stripped file is written where --debuginfo-temp-dir says, so
        // the bytes uploaded can be inspected; removed after upload.
        let temp = RemovedOnDrop(
            self.settings
                .temp_dir
                .join(format!("parca-agent-{}.debuginfo", c.build_id)),
        );
        if self.settings.strip {
            if let Err(e) = std::fs::write(&temp.0, &data) {
                debug!(file = %temp.0.display(), error = %e, "cannot keep the stripped file");
            }
        }
        // Removed however this ends, an upload aborted at shutdown included.
        self.send(c, &data).await
    }

    async fn send(&self, c: &DebuginfoCandidate, data: &[u8]) -> Outcome {
        let hash = format!("{:x}", Sha256::digest(data));
        let mut client = self.clients.debuginfo.clone();
        let should = client
            .should_initiate_upload(ShouldInitiateUploadRequest {
                build_id: c.build_id.clone(),
                hash: hash.clone(),
                force: false,
                r#type: DebuginfoType::DebuginfoUnspecified.into(),
                build_id_type: BuildIdType::Gnu.into(),
            })
            .await;
        self.log_rpc("ShouldInitiateUpload", &should);
        match should {
            Ok(r) if !r.get_ref().should_initiate_upload => {
                return Outcome::NotNeeded(r.into_inner().reason)
            }
            Ok(_) => {}
            Err(s) => return status_outcome(s),
        }
        let initiated = client
            .initiate_upload(InitiateUploadRequest {
                build_id: c.build_id.clone(),
                size: data.len() as i64,
                hash,
                force: false,
                r#type: DebuginfoType::DebuginfoUnspecified.into(),
                build_id_type: BuildIdType::Gnu.into(),
            })
            .await;
        self.log_rpc("InitiateUpload", &initiated);
        let instructions = match initiated {
            Ok(r) => match r.into_inner().upload_instructions {
                Some(i) => i,
                None => return Outcome::Invalid("the server sent no upload instructions".into()),
            },
            Err(s) => return status_outcome(s),
        };
        let sent = match instructions.upload_strategy() {
            UploadStrategy::Grpc => self.upload_grpc(c, &instructions.upload_id, data).await,
            UploadStrategy::SignedUrl => put_signed_url(
                &instructions.signed_url,
                data.to_vec(),
                self.settings.insecure_skip_verify,
            )
            .await
            .map_err(Outcome::Later),
            UploadStrategy::Unspecified => {
                return Outcome::Invalid("the server allows no upload strategy".into())
            }
        };
        if let Err(outcome) = sent {
            return outcome;
        }
        let finished = client
            .mark_upload_finished(MarkUploadFinishedRequest {
                build_id: c.build_id.clone(),
                upload_id: instructions.upload_id.clone(),
                r#type: DebuginfoType::DebuginfoUnspecified.into(),
            })
            .await;
        self.log_rpc("MarkUploadFinished", &finished);
        match finished {
            Ok(_) => Outcome::Uploaded(data.len() as u64),
            Err(s) => status_outcome(s),
        }
    }

    async fn upload_grpc(
        &self,
        c: &DebuginfoCandidate,
        upload_id: &str,
        data: &[u8],
    ) -> Result<(), Outcome> {
        let info = UploadRequest {
            data: Some(upload_request::Data::Info(UploadInfo {
                build_id: c.build_id.clone(),
                upload_id: upload_id.to_owned(),
                r#type: DebuginfoType::DebuginfoUnspecified.into(),
            })),
        };
        let chunks = data.chunks(CHUNK_BYTES).map(|chunk| UploadRequest {
            data: Some(upload_request::Data::ChunkData(chunk.to_vec())),
        });
        let messages: Vec<UploadRequest> = std::iter::once(info).chain(chunks).collect();
        let result = self
            .clients
            .debuginfo
            .clone()
            .upload(tokio_stream::iter(messages))
            .await;
        self.log_rpc("Upload", &result);
        match result {
            Ok(r) if r.get_ref().size == data.len() as u64 => Ok(()),
            Ok(r) => Err(Outcome::Later(format!(
                "the server received {} of {} bytes",
                r.get_ref().size,
                data.len()
            ))),
            Err(s) => Err(status_outcome(s)),
        }
    }

    fn log_rpc<T>(&self, method: &str, result: &Result<tonic::Response<T>, tonic::Status>) {
        if self.settings.rpc_logging {
            let code = result.as_ref().err().map_or(Code::Ok, |s| s.code());
            info!(method, ?code, "rpc");
        }
    }
}

/// What a failed call means for the upload.
fn status_outcome(status: tonic::Status) -> Outcome {
    let why = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        // Someone else uploaded it meanwhile.
        Code::AlreadyExists => Outcome::NotNeeded(why),
        Code::InvalidArgument | Code::OutOfRange | Code::Unimplemented => Outcome::Invalid(why),
        // In progress elsewhere, server busy, network: a later window retries.
        _ => Outcome::Later(why),
    }
}

/// PUTs `body` to a signed URL (HTTP/1.1, TLS for https). The URL is an
/// object store's, not the Parca server's: the system's roots check it and
/// no client certificate is shown.
async fn put_signed_url(url: &str, body: Vec<u8>, skip_verify: bool) -> Result<(), String> {
    let request = http::Request::put(url)
        .body(hyper::body::Bytes::from(body))
        .map_err(|e| format!("bad signed URL: {e}"))?;
    let tls = agent_net::TlsClient {
        skip_verify,
        ..Default::default()
    };
    let response = agent_net::http1_request(request, &tls).await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("signed URL upload answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_restart_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = UploadRecord::load(dir.path());
        record.remember("aa", Answer::Done, Duration::from_secs(300));
        record.remember("bb", Answer::Invalid, Duration::ZERO);
        record.remember("cc", Answer::Done, Duration::ZERO);
        let again = UploadRecord::load(dir.path());
        assert!(again.settled("aa"));
        assert!(again.settled("bb"), "invalid is for good");
        assert!(!again.settled("cc"), "expired");
        assert!(!again.settled("dd"));
    }

    #[test]
    fn server_answers_decide_what_happens_next() {
        let outcome = |code| status_outcome(tonic::Status::new(code, "x"));
        assert!(matches!(
            outcome(Code::AlreadyExists),
            Outcome::NotNeeded(_)
        ));
        assert!(matches!(
            outcome(Code::InvalidArgument),
            Outcome::Invalid(_)
        ));
        assert!(matches!(
            outcome(Code::FailedPrecondition),
            Outcome::Later(_)
        ));
        assert!(matches!(outcome(Code::Unavailable), Outcome::Later(_)));
    }
}
