//! The config shapes every network exporter takes, under the Collector's
//! names: `tls:` and `retry_on_failure:`.

use std::time::Duration;

use agent_core::bounds::{Checks, MAX_DURATION};
use agent_core::FieldError;
use serde::{Deserialize, Serialize};

/// How the connection is secured (`tls:`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Plaintext (h2c for gRPC) to a `host:port` address; an `http://` or
    /// `https://` URL says it itself.
    pub insecure: bool,
    /// TLS without verifying the server's certificate (the handshake
    /// signature is still checked).
    pub insecure_skip_verify: bool,
}

impl TlsSettings {
    /// Where `address` (`host:port` or an `http(s)://` URL) points and
    /// whether TLS is spoken there.
    pub fn target(&self, address: &str) -> Result<agent_net::Target, String> {
        agent_net::Target::parse(address, self.insecure)
    }

    /// A lazy gRPC channel to `address` with these settings.
    pub fn grpc_channel(&self, address: &str) -> Result<tonic::transport::Channel, String> {
        agent_net::grpc_channel(&self.target(address)?, self.insecure_skip_verify)
    }

    /// Problems, with keys under `prefix` (`tls`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        if self.insecure && self.insecure_skip_verify {
            return vec![FieldError::new(
                &format!("{prefix}::insecure_skip_verify"),
                "has no meaning with insecure (plaintext has no certificate to verify)",
            )];
        }
        Vec::new()
    }
}

/// Retries of a request the backend could not take for now
/// (`retry_on_failure:`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryOnFailure {
    /// Retry at all; off, a request that fails is not tried again.
    pub enabled: bool,
    /// First wait; doubles (jittered to between half and all of it) up to
    /// `max_interval`. A wait the backend asks for replaces it.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Longest wait between two attempts.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// From the first attempt, how long a request is tried; then it is
    /// given up (what that means is the exporter's: dropped, or kept).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryOnFailure {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

impl RetryOnFailure {
    /// Range problems, with keys under `prefix` (`retry_on_failure`).
    pub fn check(&self, prefix: &str, checks: &mut Checks) {
        let ms = Duration::from_millis;
        let key = |name: &str| format!("{prefix}::{name}");
        checks.duration(
            &key("initial_interval"),
            self.initial_interval,
            ms(1),
            MAX_DURATION,
        );
        checks.duration(&key("max_interval"), self.max_interval, ms(1), MAX_DURATION);
        checks.duration(
            &key("max_elapsed_time"),
            self.max_elapsed_time,
            ms(0),
            MAX_DURATION,
        );
        if self.initial_interval > self.max_interval {
            checks.push(FieldError::new(
                &key("max_interval"),
                format!("must not be shorter than {prefix}::initial_interval"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_keys_under_the_prefix() {
        let retry: RetryOnFailure =
            serde_yaml::from_str("{initial_interval: 1m, max_interval: 1s, max_elapsed_time: 8d}")
                .unwrap();
        let mut checks = Checks::default();
        retry.check("retry_on_failure", &mut checks);
        let fields: Vec<String> = checks.finish().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "retry_on_failure::max_elapsed_time",
                "retry_on_failure::max_interval"
            ]
        );
        let tls = TlsSettings {
            insecure: true,
            insecure_skip_verify: true,
        };
        assert_eq!(tls.validate("tls")[0].field, "tls::insecure_skip_verify");
        assert!(serde_yaml::from_str::<TlsSettings>("{insecure: true, ca: x}").is_err());
    }

    #[test]
    fn an_address_follows_insecure_unless_its_url_says() {
        let plain = TlsSettings {
            insecure: true,
            ..Default::default()
        };
        assert!(!plain.target("parca:7070").unwrap().tls);
        assert!(plain.target("https://parca:443").unwrap().tls);
        assert!(TlsSettings::default().target("parca:443").unwrap().tls);
    }
}
