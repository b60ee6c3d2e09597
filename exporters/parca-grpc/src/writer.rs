//! The write path: a bounded buffer of encoded series, written every
//! interval in requests under the size limit, each delivered by the
//! exporter helper (retries, timeouts, the shutdown's bound); what the
//! server does not take for now stays in the buffer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::telemetry::{ComponentTelemetry, Counter, Gauge};
use agent_exporter_helper::{grpc_failure, Delivery, Failure, Undelivered, Verdict};
use tokio::sync::watch;
use tonic::Code;
use tracing::{info, warn};

use crate::profiles::EncodedSeries;
use crate::proto::profilestore::WriteRawRequest;
use crate::ParcaClients;

/// Why series were dropped.
#[derive(Clone, Copy, Debug)]
enum DropReason {
    /// The buffer was full (the server was away too long).
    BufferFull,
    /// The server refused them for good.
    Rejected,
    /// The agent stopped before the server took them.
    Shutdown,
}

impl DropReason {
    fn name(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Counters of the write path.
#[derive(Clone)]
pub struct WriterMetrics {
    sent_series: Counter,
    sent_samples: Counter,
    sent_bytes: Counter,
    dropped_series: [Counter; 3],
    dropped_samples: [Counter; 3],
    buffered_bytes: Gauge,
}

impl WriterMetrics {
    /// Registers the metrics.
    pub fn new(t: &ComponentTelemetry) -> Self {
        let dropped = |what: &str, help: &str| {
            [
                DropReason::BufferFull,
                DropReason::Rejected,
                DropReason::Shutdown,
            ]
            .map(|r| t.counter(what, help, &[("reason", r.name())]))
        };
        Self {
            sent_series: t.counter(
                "parca_grpc_series_sent",
                "Series profiles the Parca server took.",
                &[],
            ),
            sent_samples: t.counter(
                "parca_grpc_samples_sent",
                "Samples the Parca server took.",
                &[],
            ),
            sent_bytes: t.counter(
                "parca_grpc_sent_bytes",
                "Bytes of WriteRaw requests the Parca server took.",
                &[],
            ),
            dropped_series: dropped(
                "parca_grpc_dropped_series",
                "Series profiles not delivered, by reason.",
            ),
            dropped_samples: dropped(
                "parca_grpc_dropped_samples",
                "Samples not delivered, by reason.",
            ),
            buffered_bytes: t.gauge(
                "parca_grpc_buffer_bytes",
                "Bytes of profiles waiting for the Parca server.",
                &[],
            ),
        }
    }

    fn dropped(&self, reason: DropReason, series: &[EncodedSeries]) {
        let i = reason as usize;
        self.dropped_series[i].inc_by(series.len() as u64);
        self.dropped_samples[i].inc_by(series.iter().map(|s| s.samples as u64).sum());
    }
}

/// Encoded series waiting to be written, oldest first, within a byte bound.
pub struct Buffer {
    series: VecDeque<EncodedSeries>,
    bytes: usize,
    limit: usize,
    metrics: WriterMetrics,
}

impl Buffer {
    /// An empty buffer holding at most `limit` bytes.
    pub fn new(limit: usize, metrics: WriterMetrics) -> Self {
        Self {
            series: VecDeque::new(),
            bytes: 0,
            limit,
            metrics,
        }
    }

    /// Appends a window; the oldest series go when it does not fit.
    pub fn push(&mut self, window: Vec<EncodedSeries>) {
        for s in window {
            self.bytes += s.bytes;
            self.series.push_back(s);
        }
        self.enforce_limit();
    }

    /// Puts series that could not be written back in front (they are the oldest).
    fn put_back(&mut self, series: Vec<EncodedSeries>) {
        for s in series.into_iter().rev() {
            self.bytes += s.bytes;
            self.series.push_front(s);
        }
        self.enforce_limit();
    }

    fn enforce_limit(&mut self) {
        let mut dropped = Vec::new();
        while self.bytes > self.limit {
            let Some(s) = self.series.pop_front() else {
                break;
            };
            self.bytes -= s.bytes;
            dropped.push(s);
        }
        if !dropped.is_empty() {
            warn!(
                series = dropped.len(),
                limit_bytes = self.limit,
                "parca_grpc buffer full: oldest profiles dropped"
            );
            self.metrics.dropped(DropReason::BufferFull, &dropped);
        }
        self.metrics.buffered_bytes.set(self.bytes as i64);
    }

    /// The oldest series that fit in `max_bytes` (at least one).
    fn take_request(&mut self, max_bytes: usize) -> Vec<EncodedSeries> {
        let out = take_request(&mut self.series, max_bytes);
        self.bytes -= out.iter().map(|s| s.bytes).sum::<usize>();
        self.metrics.buffered_bytes.set(self.bytes as i64);
        out
    }

    /// Series waiting.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Takes the oldest series of `queue` that fit in `max_bytes` together
/// (at least one, however large).
pub(crate) fn take_request(
    queue: &mut VecDeque<EncodedSeries>,
    max_bytes: usize,
) -> Vec<EncodedSeries> {
    let mut out = Vec::new();
    let mut size = 0;
    while let Some(s) = queue.front() {
        if !out.is_empty() && size + s.bytes > max_bytes {
            break;
        }
        size += s.bytes;
        out.extend(queue.pop_front());
    }
    out
}

/// What a failed write means: the OTLP spec's verdicts, and two of
/// Parca's own — `UNKNOWN` is how a broken connection can surface (retried),
/// refused credentials keep the data until a fixed token is accepted (the
/// token file is re-read on every call).
fn write_failure(status: &tonic::Status) -> Failure {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Failure {
            verdict: Verdict::Later,
            reason: format!(
                "the Parca server refuses our credentials ({:?}: {}); profiles are kept within buffer_bytes until it accepts them",
                status.code(),
                status.message()
            ),
        },
        Code::Unknown => Failure::retryable(format!("Unknown: {}", status.message())),
        _ => grpc_failure(status),
    }
}

/// Settings of the write loop.
pub struct WriterSettings {
    /// Between flushes.
    pub interval: Duration,
    /// Most bytes per request.
    pub max_request_bytes: usize,
    /// Log every call.
    pub rpc_logging: bool,
}

/// Writes the buffer every interval until `stop` turns true (no window
/// comes any more), then once more. Once the agent stops, every write,
/// retry and wait ends at the delivery's flush bound.
pub async fn run(
    buffer: Arc<Mutex<Buffer>>,
    clients: ParcaClients,
    settings: WriterSettings,
    metrics: WriterMetrics,
    mut stop: watch::Receiver<bool>,
    mut delivery: Delivery,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(settings.interval) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        flush(&buffer, &clients, &settings, &metrics, &mut delivery).await;
        if stopping {
            let left: Vec<EncodedSeries> = {
                let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
                b.take_request(usize::MAX)
            };
            if !left.is_empty() {
                warn!(
                    series = left.len(),
                    "parca_grpc: stopping with profiles the server did not take"
                );
                metrics.dropped(DropReason::Shutdown, &left);
            }
            return;
        }
    }
}

/// Sends everything buffered, request by request; what is not taken for
/// now stays buffered, what is refused for good is dropped.
async fn flush(
    buffer: &Mutex<Buffer>,
    clients: &ParcaClients,
    settings: &WriterSettings,
    metrics: &WriterMetrics,
    delivery: &mut Delivery,
) {
    loop {
        let series = {
            let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
            b.take_request(settings.max_request_bytes)
        };
        if series.is_empty() {
            return;
        }
        let request = WriteRawRequest {
            series: series.iter().map(|s| s.series.clone()).collect(),
            ..Default::default()
        };
        let written = delivery
            .send(|timeout| {
                write_raw(
                    clients,
                    &request,
                    timeout,
                    settings.rpc_logging,
                    write_failure,
                )
            })
            .await;
        match written {
            Ok(()) => {
                metrics.sent_series.inc_by(series.len() as u64);
                metrics
                    .sent_samples
                    .inc_by(series.iter().map(|s| s.samples as u64).sum());
                metrics
                    .sent_bytes
                    .inc_by(series.iter().map(|s| s.bytes as u64).sum());
            }
            Err(Undelivered::Rejected(_)) => metrics.dropped(DropReason::Rejected, &series),
            Err(Undelivered::GaveUp(_) | Undelivered::Later(_) | Undelivered::Stopped(_)) => {
                buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put_back(series);
                return;
            }
        }
    }
}

/// One WriteRaw call, its timeout told to the server; a failure judged by
/// `judge`.
pub(crate) fn write_raw(
    clients: &ParcaClients,
    request: &WriteRawRequest,
    timeout: Duration,
    rpc_logging: bool,
    judge: fn(&tonic::Status) -> Failure,
) -> impl std::future::Future<Output = Result<(), Failure>> + 'static {
    let mut client = clients.profiles.clone();
    let series = request.series.len();
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(timeout);
    async move {
        let started = std::time::Instant::now();
        let result = client.write_raw(call).await;
        if rpc_logging {
            info!(
                method = "WriteRaw",
                series,
                code = ?result.as_ref().err().map_or(Code::Ok, |s| s.code()),
                duration_ms = started.elapsed().as_millis() as u64,
                "rpc"
            );
        }
        result.map(drop).map_err(|status| judge(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::profilestore::RawProfileSeries;

    fn series(bytes: usize) -> EncodedSeries {
        EncodedSeries {
            series: RawProfileSeries::default(),
            samples: 3,
            bytes,
        }
    }

    fn buffer(limit: usize) -> Buffer {
        let t = agent_core::telemetry::Telemetry::default().scoped(&[]);
        Buffer::new(limit, WriterMetrics::new(&t))
    }

    #[test]
    fn refused_credentials_keep_the_data_and_broken_connections_retry() {
        let verdict = |code| write_failure(&tonic::Status::new(code, "x")).verdict;
        assert_eq!(verdict(Code::Unauthenticated), Verdict::Later);
        assert_eq!(verdict(Code::PermissionDenied), Verdict::Later);
        assert_eq!(verdict(Code::Unknown), Verdict::Retry { after: None });
        assert_eq!(verdict(Code::Unavailable), Verdict::Retry { after: None });
        assert_eq!(verdict(Code::InvalidArgument), Verdict::Permanent);
    }

    #[test]
    fn requests_stay_under_the_size_limit() {
        let mut b = buffer(1000);
        b.push(vec![series(40), series(40), series(40), series(200)]);
        assert_eq!(b.take_request(100).len(), 2);
        assert_eq!(b.take_request(100).len(), 1);
        assert_eq!(b.take_request(100).len(), 1, "one too large goes alone");
        assert!(b.take_request(100).is_empty());
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let mut b = buffer(100);
        b.push(vec![series(40), series(40)]);
        b.push(vec![series(40)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.metrics.dropped_series[0].get(), 1);
        assert_eq!(b.metrics.dropped_samples[0].get(), 3);
        let taken = b.take_request(1000);
        b.put_back(taken);
        assert_eq!(
            (b.len(), b.bytes),
            (2, 80),
            "put back loses nothing that fits"
        );
    }
}
