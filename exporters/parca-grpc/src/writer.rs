//! The write path: a bounded buffer of encoded series, written every
//! interval in requests under the size limit, retried with exponential
//! backoff and jitter while the server cannot take them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::telemetry::{ComponentTelemetry, Counter, Gauge};
use agent_core::FlushBound;
use agent_net::Backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, error, info, warn};

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
    requests_ok: Counter,
    requests_failed: Counter,
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
            requests_ok: t.counter(
                "parca_grpc_write_requests",
                "WriteRaw calls.",
                &[("result", "ok")],
            ),
            requests_failed: t.counter(
                "parca_grpc_write_requests",
                "WriteRaw calls.",
                &[("result", "error")],
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
        let mut out = Vec::new();
        let mut size = 0;
        while let Some(s) = self.series.front() {
            if !out.is_empty() && size + s.bytes > max_bytes {
                break;
            }
            size += s.bytes;
            let s = self.series.pop_front().expect("front exists");
            self.bytes -= s.bytes;
            out.push(s);
        }
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

/// Whether a failed write may succeed if sent again.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

/// What the writer remembers between flushes, to log changes once.
#[derive(Default)]
struct Health {
    /// The server could not be reached at the last attempt.
    unreachable: bool,
    /// The server refused our credentials at the last attempt.
    unauthorized: bool,
}

/// Settings of the write loop.
pub struct WriterSettings {
    /// Between flushes.
    pub interval: Duration,
    /// Bound of one flush's retries.
    pub unary_timeout: Duration,
    /// Most bytes per request.
    pub max_request_bytes: usize,
    /// Log every call.
    pub rpc_logging: bool,
}

/// Writes the buffer every interval until `stop` turns true (no window
/// comes any more), then once more. Once the agent stops, every write,
/// retry and wait ends when `flush` expires.
pub async fn run(
    buffer: Arc<Mutex<Buffer>>,
    clients: ParcaClients,
    settings: WriterSettings,
    metrics: WriterMetrics,
    mut stop: watch::Receiver<bool>,
    mut flush_bound: FlushBound,
) {
    let mut health = Health::default();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(settings.interval) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let mut limits = Limits {
            deadline: Instant::now() + settings.unary_timeout,
            flush_bound: &mut flush_bound,
        };
        flush(
            &buffer,
            &clients,
            &settings,
            &metrics,
            &mut health,
            &mut limits,
        )
        .await;
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

/// When a flush must end: its own deadline, or the shutdown's.
struct Limits<'a> {
    deadline: Instant,
    flush_bound: &'a mut FlushBound,
}

/// Sends everything buffered, request by request, retrying each within
/// `limits`; what is not sent stays buffered.
async fn flush(
    buffer: &Mutex<Buffer>,
    clients: &ParcaClients,
    settings: &WriterSettings,
    metrics: &WriterMetrics,
    health: &mut Health,
    limits: &mut Limits<'_>,
) {
    loop {
        let request_series = {
            let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
            b.take_request(settings.max_request_bytes)
        };
        if request_series.is_empty() {
            return;
        }
        match send_with_retries(&request_series, clients, settings, metrics, health, limits).await {
            Sent::Yes => {
                metrics.sent_series.inc_by(request_series.len() as u64);
                metrics
                    .sent_samples
                    .inc_by(request_series.iter().map(|s| s.samples as u64).sum());
                metrics
                    .sent_bytes
                    .inc_by(request_series.iter().map(|s| s.bytes as u64).sum());
            }
            Sent::Rejected => metrics.dropped(DropReason::Rejected, &request_series),
            Sent::Later => {
                buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put_back(request_series);
                return;
            }
        }
    }
}

enum Sent {
    Yes,
    /// Refused for good: dropped.
    Rejected,
    /// Not now: keep for the next flush.
    Later,
}

async fn send_with_retries(
    series: &[EncodedSeries],
    clients: &ParcaClients,
    settings: &WriterSettings,
    metrics: &WriterMetrics,
    health: &mut Health,
    limits: &mut Limits<'_>,
) -> Sent {
    let request = WriteRawRequest {
        series: series.iter().map(|s| s.series.clone()).collect(),
        ..Default::default()
    };
    let deadline = limits.deadline;
    let mut backoff = Backoff::default();
    loop {
        let now = Instant::now();
        if now >= deadline || limits.flush_bound.has_expired() {
            return Sent::Later;
        }
        let started = std::time::Instant::now();
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(deadline - now);
        let mut client = clients.profiles.clone();
        let result = tokio::select! {
            result = client.write_raw(call) => result,
            _ = limits.flush_bound.expired() => return Sent::Later,
        };
        if settings.rpc_logging {
            info!(
                method = "WriteRaw",
                series = series.len(),
                code = ?result.as_ref().err().map_or(Code::Ok, |s| s.code()),
                duration_ms = started.elapsed().as_millis() as u64,
                "rpc"
            );
        }
        let status = match result {
            Ok(_) => {
                metrics.requests_ok.inc();
                if std::mem::take(&mut health.unreachable) {
                    info!("parca_grpc: Parca server reachable again");
                }
                if std::mem::take(&mut health.unauthorized) {
                    info!("parca_grpc: Parca server accepts the credentials again");
                }
                return Sent::Yes;
            }
            Err(status) => status,
        };
        metrics.requests_failed.inc();
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                // Reported once; the data waits for a fixed token (the
                // token file is re-read on every call).
                if !std::mem::replace(&mut health.unauthorized, true) {
                    error!(
                        code = ?status.code(),
                        message = status.message(),
                        "parca_grpc: the Parca server refuses our credentials; profiles are kept (within buffer_bytes) until it accepts them"
                    );
                }
                return Sent::Later;
            }
            code if retryable(code) => {
                if !std::mem::replace(&mut health.unreachable, true) {
                    warn!(
                        ?code,
                        message = status.message(),
                        "parca_grpc: cannot write to the Parca server; retrying with backoff"
                    );
                }
                let wait = backoff.next_delay();
                debug!(
                    ?code,
                    wait_ms = wait.as_millis() as u64,
                    "parca_grpc: write failed, retrying"
                );
                let until = (Instant::now() + wait).min(deadline);
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = limits.flush_bound.expired() => return Sent::Later,
                }
                if until == deadline {
                    return Sent::Later;
                }
            }
            code => {
                warn!(
                    ?code,
                    message = status.message(),
                    series = series.len(),
                    "parca_grpc: the Parca server rejected a write; its profiles are dropped"
                );
                return Sent::Rejected;
            }
        }
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
