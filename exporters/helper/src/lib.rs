//! What every network exporter shares — the OpenTelemetry Collector's
//! `exporterhelper`, in our own code: the `tls:`, `headers:` and
//! `retry_on_failure:` config shapes, what a gRPC status means for a retry, and [`Delivery`]:
//! one request tried until it is taken, with a per-attempt timeout, jittered
//! backoff that honours the backend's hint, `max_elapsed_time`, and the
//! shutdown's flush bound ending every attempt and wait.
//!
//! The bounded queue in front of each exporter is the service's
//! (`sending_queue`, every exporter has it); what an exporter keeps beyond
//! it (Parca's write buffer) is its own.

mod config;
mod delivery;
mod headers;
mod verdict;

pub use config::{RetryOnFailure, TlsSettings};
pub use delivery::{Delivery, Undelivered};
pub use headers::{HeaderProtocol, Headers};
pub use verdict::{grpc_failure, Failure, Verdict};
