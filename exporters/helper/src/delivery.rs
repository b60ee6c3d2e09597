//! One request tried until the backend takes it, within every bound the
//! config and the shutdown set.

use std::future::Future;
use std::time::Duration;

use agent_core::bounds::MAX_DURATION;
use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_core::{BuildContext, ComponentError, FlushBound};
use agent_net::Backoff;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::{Failure, RetryOnFailure, Verdict};

/// Why a request was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// The backend refuses it for good.
    #[error("refused: {0}")]
    Rejected(String),
    /// Retrying is off, or `max_elapsed_time` ran out.
    #[error("gave up: {0}")]
    GaveUp(String),
    /// Not now, not pointless later (refused credentials): keep it.
    #[error("not now: {0}")]
    Later(String),
    /// The agent stopped and the flush bound ran out.
    #[error("the agent stopped and shutdown_flush_timeout ({0:?}) ran out")]
    Stopped(Duration),
}

/// Counters every exporter that delivers with [`Delivery`] has.
#[derive(Clone)]
struct DeliveryMetrics {
    attempts_ok: Counter,
    attempts_failed: Counter,
    retries: Counter,
}

impl DeliveryMetrics {
    /// Registers `agent_exporter_attempts_total{result}` and
    /// `agent_exporter_retries_total` with the exporter's labels.
    fn new(telemetry: &ComponentTelemetry) -> Self {
        let attempts = |result| {
            telemetry.counter(
                "exporter_attempts",
                "Requests sent to the backend, retries included, by result.",
                &[("result", result)],
            )
        };
        Self {
            attempts_ok: attempts("ok"),
            attempts_failed: attempts("failed"),
            retries: telemetry.counter(
                "exporter_retries",
                "Attempts repeated after a retryable failure.",
                &[],
            ),
        }
    }
}

/// Tries requests for one exporter: a per-attempt `timeout`, backoff from
/// `retry`, and, once the agent stops, every attempt and wait ended by the
/// flush bound. Logs an outage once when it begins and once when it ends.
pub struct Delivery {
    exporter: String,
    destination: String,
    retry: RetryOnFailure,
    timeout: Duration,
    flush: FlushBound,
    metrics: DeliveryMetrics,
    /// How the last attempt failed, when it did: a failure of the same kind
    /// is not logged again (a refusal for good does not count: it is
    /// logged every time and is no outage).
    failing: Option<Outage>,
}

/// What kind of outage the backend is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// It cannot take requests for now.
    Unavailable,
    /// It refuses them until something changes (credentials).
    Refusing,
}

impl Delivery {
    /// Delivery for the exporter `ctx` builds, to `destination` (as shown:
    /// a password redacted), bounded once the agent stops by
    /// `shutdown_flush_timeout` (an error unless below the service's own
    /// shutdown bound).
    pub fn new(
        ctx: &BuildContext,
        destination: String,
        retry: RetryOnFailure,
        timeout: Duration,
        shutdown_flush_timeout: Duration,
    ) -> Result<Self, ComponentError> {
        Ok(Self {
            exporter: ctx.id.clone(),
            destination,
            retry,
            timeout,
            flush: FlushBound::new(ctx, "shutdown_flush_timeout", shutdown_flush_timeout)?,
            metrics: DeliveryMetrics::new(&ctx.telemetry),
            failing: None,
        })
    }

    /// Whether the agent has stopped and the flush bound has run out.
    pub fn has_stopped(&self) -> bool {
        self.flush.has_expired()
    }

    /// Tries `attempt` (given its timeout) until it succeeds or the request
    /// is given up; see [`Undelivered`] for why.
    pub async fn send<T, F, Fut>(&mut self, mut attempt: F) -> Result<T, Undelivered>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        // Zero is the Collector's "never give up" (the flush bound still
        // ends retries once the agent stops).
        let give_up_at = (!self.retry.max_elapsed_time.is_zero())
            .then(|| Instant::now() + self.retry.max_elapsed_time);
        let mut backoff = Backoff::new(self.retry.initial_interval, self.retry.max_interval);
        let stopped = Undelivered::Stopped(self.flush.timeout());
        loop {
            if self.flush.has_expired() {
                return Err(stopped);
            }
            let timeout = self.timeout;
            let outcome = tokio::select! {
                answer = tokio::time::timeout(timeout, attempt(timeout)) => answer
                    .unwrap_or_else(|_| Err(Failure::retryable(format!("no answer within {timeout:?}")))),
                _ = self.flush.expired() => return Err(stopped),
            };
            let failure = match outcome {
                Ok(answer) => {
                    self.metrics.attempts_ok.inc();
                    if self.failing.take().is_some() {
                        info!(exporter = %self.exporter, destination = %self.destination, "delivering again");
                    }
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            self.metrics.attempts_failed.inc();
            let after = match failure.verdict {
                Verdict::Permanent => {
                    warn!(exporter = %self.exporter, destination = %self.destination, reason = %failure.reason,
                        "the backend refuses a request for good");
                    return Err(Undelivered::Rejected(failure.reason));
                }
                Verdict::Later => {
                    if self.failing.replace(Outage::Refusing) != Some(Outage::Refusing) {
                        error!(exporter = %self.exporter, destination = %self.destination, reason = %failure.reason,
                            "the backend does not take requests; they are kept until it does");
                    }
                    return Err(Undelivered::Later(failure.reason));
                }
                Verdict::Retry { after } => after,
            };
            if self.failing.replace(Outage::Unavailable) != Some(Outage::Unavailable) {
                warn!(exporter = %self.exporter, destination = %self.destination, reason = %failure.reason,
                    retrying = self.retry.enabled, "the backend did not take a request");
            }
            if !self.retry.enabled {
                return Err(Undelivered::GaveUp(format!(
                    "retry_on_failure is off: {}",
                    failure.reason
                )));
            }
            // The backend's hint is a floor, as in the Collector (a hint of
            // zero must not turn retries into a busy loop); capped like any
            // configured wait.
            let wait = after
                .unwrap_or_default()
                .max(backoff.next_delay())
                .min(MAX_DURATION);
            if give_up_at.is_some_and(|at| Instant::now() + wait > at) {
                return Err(Undelivered::GaveUp(format!(
                    "not taken within retry_on_failure::max_elapsed_time ({:?}): {}",
                    self.retry.max_elapsed_time, failure.reason
                )));
            }
            debug!(exporter = %self.exporter, reason = %failure.reason, wait_ms = wait.as_millis() as u64, "retrying");
            self.metrics.retries.inc();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.flush.expired() => return Err(stopped),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use agent_core::{Shutdown, Stop};

    use super::*;

    fn delivery(retry: RetryOnFailure, flush: Duration) -> (Delivery, Stop) {
        let (stop, stopping) = Shutdown::new();
        let ctx = BuildContext {
            stopping,
            ..BuildContext::for_test("exporter")
        };
        let delivery = Delivery::new(
            &ctx,
            "backend".into(),
            retry,
            Duration::from_millis(200),
            flush,
        )
        .unwrap();
        (delivery, stop)
    }

    fn fast_retries(max_elapsed_ms: u64) -> RetryOnFailure {
        RetryOnFailure {
            initial_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(20),
            max_elapsed_time: Duration::from_millis(max_elapsed_ms),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_until_taken() {
        let (mut d, _stop) = delivery(fast_retries(5_000), Duration::from_secs(1));
        let calls = AtomicU32::new(0);
        let answer = d
            .send(|_| async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    0 => Err(Failure::retryable("down")),
                    // No answer: the attempt's timeout ends it, a retryable failure.
                    1 => std::future::pending().await,
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(answer, Ok(2));
        assert_eq!(d.metrics.retries.get(), 2);
        assert_eq!(
            (d.metrics.attempts_ok.get(), d.metrics.attempts_failed.get()),
            (1, 2)
        );
    }

    #[tokio::test]
    async fn each_verdict_ends_as_it_says() {
        let (mut d, _stop) = delivery(fast_retries(100), Duration::from_secs(1));
        let refused = d
            .send(|_| async { Err::<(), _>(Failure::permanent("bad request")) })
            .await;
        assert_eq!(refused, Err(Undelivered::Rejected("bad request".into())));
        let later = d
            .send(|_| async {
                Err::<(), _>(Failure {
                    verdict: Verdict::Later,
                    reason: "token refused".into(),
                })
            })
            .await;
        assert_eq!(later, Err(Undelivered::Later("token refused".into())));
        let started = std::time::Instant::now();
        let exhausted = d
            .send(|_| async { Err::<(), _>(Failure::retryable("down")) })
            .await;
        assert!(matches!(exhausted, Err(Undelivered::GaveUp(r)) if r.contains("max_elapsed_time")));
        assert!(started.elapsed() < Duration::from_millis(150));
        // The backend's hint is honoured: one wait past the bound ends at once.
        let hinted = d
            .send(|_| async {
                Err::<(), _>(Failure {
                    verdict: Verdict::Retry {
                        after: Some(Duration::from_secs(60)),
                    },
                    reason: "busy".into(),
                })
            })
            .await;
        assert!(matches!(hinted, Err(Undelivered::GaveUp(_))));
        let (mut off, _stop) = delivery(
            RetryOnFailure {
                enabled: false,
                ..Default::default()
            },
            Duration::from_secs(1),
        );
        let calls = AtomicU32::new(0);
        let once = off
            .send(|_| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(Failure::retryable("down"))
            })
            .await;
        assert!(matches!(once, Err(Undelivered::GaveUp(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_zero_max_elapsed_time_retries_until_taken_and_a_zero_hint_still_backs_off() {
        let (mut d, _stop) = delivery(fast_retries(0), Duration::from_secs(1));
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let answer = d
            .send(|_| async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    n @ 0..4 => Err(Failure {
                        verdict: Verdict::Retry {
                            after: Some(Duration::ZERO),
                        },
                        reason: format!("busy {n}"),
                    }),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(answer, Ok(4));
        // Four waits of at least half of 10, 20, 20, 20 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(35),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_outage_then_refused_credentials_are_two_things_to_say() {
        let (mut d, _stop) = delivery(fast_retries(30), Duration::from_secs(1));
        assert!(d.failing.is_none());
        let _ = d
            .send(|_| async { Err::<(), _>(Failure::retryable("down")) })
            .await;
        assert_eq!(d.failing, Some(Outage::Unavailable));
        let _ = d
            .send(|_| async {
                Err::<(), _>(Failure {
                    verdict: Verdict::Later,
                    reason: "token refused".into(),
                })
            })
            .await;
        assert_eq!(
            d.failing,
            Some(Outage::Refusing),
            "a new kind of outage is said"
        );
        // A refusal for good is no outage: it neither starts nor ends one.
        let _ = d
            .send(|_| async { Err::<(), _>(Failure::permanent("bad")) })
            .await;
        assert_eq!(d.failing, Some(Outage::Refusing));
        assert_eq!(d.send(|_| async { Ok(()) }).await, Ok(()));
        assert!(d.failing.is_none());
    }

    #[tokio::test]
    async fn a_stop_ends_retries_at_the_flush_bound() {
        let (mut d, stop) = delivery(fast_retries(60_000), Duration::from_millis(300));
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.stop();
            stop
        });
        let started = std::time::Instant::now();
        let answer = d
            .send(|_| async { Err::<(), _>(Failure::retryable("down")) })
            .await;
        let took = started.elapsed();
        assert_eq!(
            answer,
            Err(Undelivered::Stopped(Duration::from_millis(300)))
        );
        assert!((350..1500).contains(&took.as_millis()), "{took:?}");
        assert!(d.has_stopped());
        let _stop = stopper.await.unwrap();
        // Once run out, nothing is tried.
        let calls = AtomicU32::new(0);
        let after = d
            .send(|_| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .await;
        assert!(matches!(after, Err(Undelivered::Stopped(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }
}
