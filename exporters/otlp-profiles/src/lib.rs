//! `otlp_profiles` exporter: each batch becomes one OTLP
//! `ExportProfilesServiceRequest` (proto v1development, one dictionary per
//! request) sent over gRPC or HTTP, delivered by the exporter helper:
//! retried with backoff on what the OTLP spec calls retryable, honouring
//! the delay the backend asks for.

pub mod config;
mod send;

use std::sync::Arc;

use agent_core::otlp::{to_otlp_with, AttributeKeys};
use agent_core::telemetry::Counter;
use agent_core::{BuildContext, ComponentError, Exporter, Factory, ProfileBatch, Stability};
use agent_exporter_helper::{Delivery, Undelivered};
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use tracing::warn;

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
            rejected_profiles: counter(
                "otlp_profiles_partial_success_rejected_profiles",
                "Profiles the backend reported as rejected in a partial success.",
                &[],
            ),
            dropped_rejected: dropped("rejected"),
            dropped_retries_exhausted: dropped("retries_exhausted"),
            dropped_shutdown: dropped("shutdown"),
        };
        let delivery = Delivery::new(
            ctx,
            config.endpoint.redacted(),
            config.retry_on_failure.clone(),
            config.timeout,
            config.shutdown_flush_timeout,
        )?;
        Ok(Box::new(OtlpProfiles {
            delivery,
            sender,
            keys,
            config,
            metrics,
        }))
    }
}

struct Metrics {
    sent: Counter,
    rejected_profiles: Counter,
    dropped_rejected: Counter,
    dropped_retries_exhausted: Counter,
    dropped_shutdown: Counter,
}

struct OtlpProfiles {
    delivery: Delivery,
    sender: Sender,
    keys: AttributeKeys,
    config: OtlpProfilesConfig,
    metrics: Metrics,
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
        let sender = &self.sender;
        let payload = &payload;
        let delivered = self
            .delivery
            .send(|timeout| sender.send(payload, timeout))
            .await;
        let response = match delivered {
            Ok(response) => response,
            Err(undelivered) => {
                match undelivered {
                    Undelivered::Rejected(_) | Undelivered::Later(_) => {
                        &self.metrics.dropped_rejected
                    }
                    Undelivered::GaveUp(_) => &self.metrics.dropped_retries_exhausted,
                    Undelivered::Stopped(_) => &self.metrics.dropped_shutdown,
                }
                .inc();
                return Err(self.not_delivered(undelivered.to_string()));
            }
        };
        self.metrics.sent.inc();
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
        Ok(())
    }
}
