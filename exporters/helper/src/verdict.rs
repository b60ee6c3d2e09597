//! What a failed attempt means for the request: try again (maybe after a
//! wait the backend asked for), keep it for later, or give it up.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A later attempt may succeed: after `after` when the backend said so.
    Retry {
        /// The backend's wait (gRPC `RetryInfo`, HTTP `Retry-After`).
        after: Option<Duration>,
    },
    /// Retrying now is pointless, but the request is not wrong (refused
    /// credentials that may be fixed): the exporter keeps it.
    Later,
    /// The backend refuses this request for good.
    Permanent,
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What follows.
    pub verdict: Verdict,
    /// What happened, for logs and errors.
    pub reason: String,
}

impl Failure {
    /// A failure a later attempt may not have.
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Retry { after: None },
            reason: reason.into(),
        }
    }

    /// A failure every attempt would have.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Permanent,
            reason: reason.into(),
        }
    }
}

/// The OTLP specification's verdict on a gRPC status: `CANCELLED`,
/// `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE` and
/// `DATA_LOSS` are retried; `RESOURCE_EXHAUSTED` only when the server says
/// when to come back (`RetryInfo`, whose delay is honoured for any code).
pub fn grpc_failure(status: &tonic::Status) -> Failure {
    let after = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    let retry = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => after.is_some(),
        _ => false,
    };
    Failure {
        verdict: if retry {
            Verdict::Retry { after }
        } else {
            Verdict::Permanent
        },
        reason: described(status),
    }
}

/// The status with its causes (a transport error's own message says only
/// "transport error"; its sources say a TLS alert or a refused connection).
fn described(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_spec() {
        let retried = |code| {
            matches!(
                grpc_failure(&tonic::Status::new(code, "x")).verdict,
                Verdict::Retry { .. }
            )
        };
        assert!(retried(Code::Unavailable) && retried(Code::DeadlineExceeded));
        assert!(retried(Code::Aborted) && retried(Code::DataLoss));
        assert!(!retried(Code::InvalidArgument) && !retried(Code::Unauthenticated));
        assert!(!retried(Code::Unknown));
        // RESOURCE_EXHAUSTED only with RetryInfo, whose delay is kept.
        assert!(!retried(Code::ResourceExhausted));
        let with_info = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        assert_eq!(
            grpc_failure(&with_info).verdict,
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
    }
}
