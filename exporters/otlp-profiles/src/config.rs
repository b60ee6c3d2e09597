//! Config of the `otlp_profiles` exporter.

use std::collections::BTreeMap;
use std::time::Duration;

use agent_core::bounds::{Checks, MAX_DURATION};
use agent_core::labels;
use agent_core::{ComponentConfig, Endpoint, FieldError};
use agent_exporter_helper::{HeaderProtocol, Headers, RetryOnFailure, TlsSettings};
use serde::{Deserialize, Serialize};

/// The OTLP transport.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `ProfilesService/Export` over gRPC.
    #[default]
    Grpc,
    /// `POST /v1development/profiles` with a protobuf body.
    Http,
}

/// How requests are compressed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip.
    #[default]
    Gzip,
    /// Uncompressed.
    None,
}

/// Config of the `otlp_profiles` exporter.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpProfilesConfig {
    /// gRPC: `host:port` (TLS unless `tls::insecure`) or an `http(s)://` URL;
    /// HTTP: an `http(s)://` base URL (`/v1development/profiles` is added
    /// unless the URL already ends with it). A password in it is shown
    /// redacted.
    pub endpoint: Endpoint,
    /// `grpc` or `http`.
    pub protocol: Protocol,
    /// `gzip` or `none`.
    pub compression: Compression,
    /// Sent with every request (gRPC metadata or HTTP headers), e.g. an
    /// `authorization` header; values never appear in logs or `print-config`.
    pub headers: Headers,
    /// TLS: `insecure` (gRPC to a `host:port` endpoint in plaintext),
    /// `insecure_skip_verify`, a CA and a client certificate.
    pub tls: TlsSettings,
    /// Bound of one attempt.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries with backoff.
    pub retry_on_failure: RetryOnFailure,
    /// From the stop signal, how long batches may still be tried (attempts
    /// and waits end then); what is not delivered is dropped and counted.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub shutdown_flush_timeout: Duration,
    /// Label → attribute key, over the defaults (see [`default_attribute_keys`]);
    /// `""` leaves the label out.
    pub attributes: BTreeMap<String, String>,
}

impl Default for OtlpProfilesConfig {
    fn default() -> Self {
        Self {
            endpoint: Endpoint::default(),
            protocol: Protocol::Grpc,
            compression: Compression::Gzip,
            headers: Headers::default(),
            tls: TlsSettings::default(),
            timeout: Duration::from_secs(10),
            retry_on_failure: RetryOnFailure::default(),
            shutdown_flush_timeout: Duration::from_secs(10),
            attributes: BTreeMap::new(),
        }
    }
}

/// Our labels and their OpenTelemetry semantic-convention attribute keys.
pub fn default_attribute_keys() -> BTreeMap<String, String> {
    [
        (labels::PID, "process.pid"),
        ("ppid", "process.parent_pid"),
        (labels::COMM, "process.command"),
        ("executable", "process.executable.name"),
        ("executable_path", "process.executable.path"),
        ("container_id", "container.id"),
        ("container", "container.name"),
        ("pod", "k8s.pod.name"),
        ("namespace", "k8s.namespace.name"),
        (labels::NODE, "host.name"),
        ("service_name", "service.name"),
        (labels::THREAD_ID, "thread.id"),
        (labels::THREAD_COMM, "thread.name"),
        (labels::CPU, "cpu.logical_number"),
    ]
    .into_iter()
    .map(|(label, key)| (label.to_owned(), key.to_owned()))
    .collect()
}

/// Attribute keys whose values are integers in the semantic conventions.
pub const INTEGER_KEYS: &[&str] = &[
    "process.pid",
    "process.parent_pid",
    "thread.id",
    "cpu.logical_number",
];

/// The path OTLP/HTTP profiles are posted to.
pub const HTTP_PATH: &str = "/v1development/profiles";

impl OtlpProfilesConfig {
    /// The URL requests are posted to (HTTP). Errors show the endpoint
    /// with its password redacted.
    pub fn http_url(&self) -> Result<http::Uri, String> {
        let shown = self.endpoint.redacted();
        let base = self.endpoint.trim().trim_end_matches('/');
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!(
                "{shown}: the http protocol needs an http:// or https:// URL"
            ));
        }
        let url = if base.ends_with(HTTP_PATH) {
            base.to_owned()
        } else {
            format!("{base}{HTTP_PATH}")
        };
        let uri: http::Uri = url.parse().map_err(|e| format!("{shown}: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{shown}: no host"));
        }
        Ok(uri)
    }
}

impl ComponentConfig for OtlpProfilesConfig {
    const RENAMED_KEYS: &'static [(&'static str, &'static str)] = &[
        ("insecure", "tls::insecure"),
        ("insecure_skip_verify", "tls::insecure_skip_verify"),
        ("retry", "retry_on_failure"),
    ];

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.tls.validate("tls");
        if self.endpoint.trim().is_empty() {
            errors.push(FieldError::new(
                "endpoint",
                "required: where to send profiles (host:port or an http(s):// URL)",
            ));
        } else {
            let parsed = match self.protocol {
                Protocol::Grpc => self
                    .tls
                    .target(&self.endpoint)
                    .map(drop)
                    .map_err(|e| format!("{}: {e}", self.endpoint)),
                Protocol::Http => self.http_url().map(drop),
            };
            if let Err(e) = parsed {
                errors.push(FieldError::new("endpoint", &e));
            }
        }
        errors.extend(self.headers.validate(
            "headers",
            match self.protocol {
                Protocol::Grpc => HeaderProtocol::Grpc,
                Protocol::Http => HeaderProtocol::Http,
            },
        ));
        let mut checks = Checks::new(errors);
        let ms = Duration::from_millis;
        checks.duration("timeout", self.timeout, ms(1), MAX_DURATION);
        checks.duration(
            "shutdown_flush_timeout",
            self.shutdown_flush_timeout,
            ms(0),
            MAX_DURATION,
        );
        self.retry_on_failure.check("retry_on_failure", &mut checks);
        let mut errors = checks.finish();
        for label in self.attributes.keys() {
            if !agent_core::is_label_name(label) {
                errors.push(FieldError::new(
                    &format!("attributes::{label}"),
                    "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> OtlpProfilesConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn errors_name_their_keys() {
        let fields = |c: &OtlpProfilesConfig| -> Vec<String> {
            c.validate().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(&OtlpProfilesConfig::default()), ["endpoint"]);
        assert!(config("endpoint: collector:4317").validate().is_empty());
        assert!(config("endpoint: http://collector:4318\nprotocol: http")
            .validate()
            .is_empty());
        assert_eq!(
            fields(&config("endpoint: collector:4318\nprotocol: http")),
            ["endpoint"]
        );
        assert_eq!(fields(&config("endpoint: collector")), ["endpoint"]);
        assert_eq!(
            fields(&config(
                "endpoint: c:4317\nheaders: {Bad Name: x, ok-name: \"line\\nbreak\"}\ntimeout: 0s\nretry_on_failure: {initial_interval: 1m, max_interval: 1s}\nattributes: {1x: y}"
            )),
            [
                "headers::Bad Name",
                "headers::ok-name",
                "timeout",
                "retry_on_failure::max_interval",
                "attributes::1x"
            ]
        );
    }

    #[test]
    fn http_urls_get_the_profiles_path_once() {
        let url = |e: &str| {
            config(&format!("endpoint: {e}\nprotocol: http"))
                .http_url()
                .unwrap()
                .to_string()
        };
        assert_eq!(url("http://c:4318"), "http://c:4318/v1development/profiles");
        assert_eq!(
            url("https://otlp.example/"),
            "https://otlp.example/v1development/profiles"
        );
        assert_eq!(
            url("http://c:4318/v1development/profiles"),
            "http://c:4318/v1development/profiles"
        );
    }

    #[test]
    fn header_values_are_redacted() {
        let c = config("endpoint: c:4317\nheaders: {authorization: Bearer s3cr3t}");
        let printed = serde_yaml::to_string(&c).unwrap();
        assert!(!printed.contains("s3cr3t") && printed.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
