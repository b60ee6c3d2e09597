//! `otlp_profiles` exporter: each batch becomes one OTLP
//! `ExportProfilesServiceRequest` (proto v1development, one dictionary per
//! request) sent over gRPC or HTTP, retried with backoff on the codes the
//! OTLP spec calls retryable, honouring the delay the backend asks for.

pub mod config;
mod send;

use std::sync::Arc;

use agent_core::bounds::MAX_DURATION;
use agent_core::otlp::{to_otlp_with, AttributeKeys};
use agent_core::telemetry::Counter;
use agent_core::{
    BuildContext, ComponentError, Exporter, Factory, FlushBound, ProfileBatch, Stability,
};
use agent_net::Backoff;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use config::{OtlpProfilesConfig, Protocol};

use crate::send::Sender;

/// Builds `otlp_profiles` exporters.
pub struct OtlpProfilesFactory;

/// Why a batch did not reach the backend.
#[derive(Debug, thiserror::Error)]
pub enum OtlpProfilesError {
    /// The batch was not delivered.
    #[error("profiles not delivered to {endpoint}: {reason}")]
    NotDelivered {
        /// The configured endpoint.
        endpoint: String,
        /// The last failure.
        reason: String,
    },
}

impl Factory for OtlpProfilesFactory {
    const TYPE: &'static str = "otlp_profiles";
    const STABILITY: Stability = Stability::Alpha;
    const DESCRIPTION: &'static str =
        "sends OTLP profiles (v1development) over gRPC or HTTP to any OpenTelemetry backend";
    type Config = OtlpProfilesConfig;
    type Output = Box<dyn Exporter>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        ctx.runtime()?;
        let sender = Sender::new(&config).map_err(|reason| agent_net::SetupError {
            target: config.endpoint.redacted(),
            reason,
        })?;
        let mut renames = config::default_attribute_keys();
        renames.extend(config.attributes.clone());
        let keys = AttributeKeys::new(
            renames,
            config::INTEGER_KEYS.iter().map(|k| (*k).to_owned()),
        );
        let counter = |name: &str, help: &str, extra: &[(&str, &str)]| {
            ctx.telemetry.counter(name, help, extra)
        };
        let dropped = |reason| {
            counter(
                "otlp_profiles_dropped_batches",
                "Batches not delivered, by reason.",
                &[("reason", reason)],
            )
        };
        let metrics = Metrics {
            sent: counter(
                "otlp_profiles_sent_batches",
                "Batches the backend accepted.",
                &[],
            ),
            retries: counter(
                "otlp_profiles_retries",
                "Attempts repeated after a retryable failure.",
                &[],
            ),
            rejected_profiles: counter(
                "otlp_profiles_partial_success_rejected_profiles",
                "Profiles the backend reported as rejected in a partial success.",
                &[],
            ),
            dropped_rejected: dropped("rejected"),
            dropped_retries_exhausted: dropped("retries_exhausted"),
            dropped_shutdown: dropped("shutdown"),
        };
        Ok(Box::new(OtlpProfiles {
            flush: FlushBound::new(ctx, "shutdown_flush_timeout", config.shutdown_flush_timeout)?,
            sender,
            keys,
            config,
            metrics,
            failing: false,
        }))
    }
}

struct Metrics {
    sent: Counter,
    retries: Counter,
    rejected_profiles: Counter,
    dropped_rejected: Counter,
    dropped_retries_exhausted: Counter,
    dropped_shutdown: Counter,
}

struct OtlpProfiles {
    /// Once the agent stops, how long batches may still be tried.
    flush: FlushBound,
    sender: Sender,
    keys: AttributeKeys,
    config: OtlpProfilesConfig,
    metrics: Metrics,
    /// The last batch failed: the next failure is not logged again.
    failing: bool,
}

impl OtlpProfiles {
    fn not_delivered(&self, reason: String) -> ComponentError {
        Box::new(OtlpProfilesError::NotDelivered {
            endpoint: self.config.endpoint.redacted(),
            reason,
        })
    }
}

#[async_trait::async_trait]
impl Exporter for OtlpProfiles {
    fn destination(&self) -> String {
        self.config.endpoint.redacted()
    }

    async fn export(&mut self, batch: Arc<ProfileBatch>) -> Result<(), ComponentError> {
        if batch.samples.is_empty() {
            return Ok(());
        }
        let data = to_otlp_with(&batch, &self.keys);
        let payload = self.sender.prepare(ExportProfilesServiceRequest {
            resource_profiles: data.resource_profiles,
            dictionary: data.dictionary,
        });
        let retry = &self.config.retry;
        let give_up_at = Instant::now() + retry.max_elapsed_time;
        let mut backoff = Backoff::new(retry.initial_interval, retry.max_interval);
        let stopped = |this: &Self| {
            this.metrics.dropped_shutdown.inc();
            this.not_delivered(format!(
                "the agent stopped and shutdown_flush_timeout ({:?}) ran out",
                this.config.shutdown_flush_timeout
            ))
        };
        loop {
            if self.flush.has_expired() {
                return Err(stopped(self));
            }
            let attempt = tokio::select! {
                sent = self.sender.send(&payload, self.config.timeout) => sent,
                _ = self.flush.expired() => return Err(stopped(self)),
            };
            let failure = match attempt {
                Ok(response) => {
                    self.metrics.sent.inc();
                    if std::mem::replace(&mut self.failing, false) {
                        info!(endpoint = %self.config.endpoint, "otlp_profiles: delivering again");
                    }
                    if let Some(partial) = response.partial_success {
                        if partial.rejected_profiles > 0 || !partial.error_message.is_empty() {
                            self.metrics
                                .rejected_profiles
                                .inc_by(partial.rejected_profiles.max(0) as u64);
                            warn!(
                                rejected_profiles = partial.rejected_profiles,
                                message = %partial.error_message,
                                "otlp_profiles: the backend accepted the batch only in part"
                            );
                        }
                    }
                    return Ok(());
                }
                Err(failure) => failure,
            };
            if !std::mem::replace(&mut self.failing, true) {
                warn!(
                    endpoint = %self.config.endpoint,
                    reason = %failure.reason,
                    retryable = failure.retryable,
                    "otlp_profiles: the backend did not take a batch"
                );
            }
            if !failure.retryable || !retry.enabled {
                self.metrics.dropped_rejected.inc();
                return Err(self.not_delivered(failure.reason));
            }
            // A backend's hint is capped like any configured wait.
            let wait = failure
                .retry_after
                .unwrap_or_else(|| backoff.next_delay())
                .min(MAX_DURATION);
            if Instant::now() + wait > give_up_at {
                self.metrics.dropped_retries_exhausted.inc();
                return Err(self.not_delivered(format!(
                    "gave up after {:?}: {}",
                    retry.max_elapsed_time, failure.reason
                )));
            }
            debug!(reason = %failure.reason, wait_ms = wait.as_millis() as u64, "otlp_profiles: retrying");
            self.metrics.retries.inc();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.flush.expired() => return Err(stopped(self)),
            }
        }
    }
}
