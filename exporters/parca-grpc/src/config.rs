//! The exporter's config: Parca Agent's `--remote-store-*`, `--debuginfo-*`
//! and `--telemetry-*` flags, plus the buffer bounds.

use std::path::PathBuf;
use std::time::Duration;

use agent_core::bounds::{Checks, MAX_DURATION};
use agent_core::{ComponentConfig, Endpoint, FieldError};
use agent_exporter_helper::{HeaderProtocol, Headers, RetryOnFailure, TlsSettings};
use serde::{Deserialize, Serialize};

pub use agent_core::Secret;

/// Config of the `parca_grpc` exporter.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ParcaGrpcConfig {
    /// `host:port` of the Parca server, or an `http://` / `https://` URL
    /// (`--remote-store-address`). A password in it is shown redacted.
    pub address: Endpoint,
    /// Bearer token (`--remote-store-bearer-token`; else `$PARCA_BEARER_TOKEN`).
    pub bearer_token: Secret,
    /// File holding the bearer token, re-read when it changes
    /// (`--remote-store-bearer-token-file`).
    pub bearer_token_file: Option<PathBuf>,
    /// gRPC metadata sent with every call (`--remote-store-grpc-headers`),
    /// e.g. a tenant id for a proxy; values never appear in logs or
    /// `print-config`.
    pub headers: Headers,
    /// TLS: `insecure` (plaintext; `--remote-store-insecure`),
    /// `insecure_skip_verify` (`--remote-store-insecure-skip-verify`),
    /// `ca_file`, and a client certificate for servers that require one
    /// (`cert_file`, `key_file`: `--remote-store-client-cert`,
    /// `--remote-store-client-key`).
    pub tls: TlsSettings,
    /// How often buffered profiles are written (`--remote-store-batch-write-interval`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub batch_write_interval: Duration,
    /// Log every RPC (`--remote-store-rpc-logging-enable`).
    pub rpc_logging: bool,
    /// Bound of one WriteRaw call (`--remote-store-rpc-unary-timeout`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub rpc_unary_timeout: Duration,
    /// Retries of a write the server could not take; one given up stays
    /// in the buffer for the next interval.
    pub retry_on_failure: RetryOnFailure,
    /// Most bytes of one WriteRaw request; more is split into several.
    pub max_request_bytes: usize,
    /// Most bytes of gzipped profiles held while the server cannot take
    /// them; beyond it the oldest windows are dropped and counted.
    pub buffer_bytes: usize,
    /// From the stop signal, how long writes may still go on (the last one
    /// included); what is not written is dropped and counted.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub shutdown_flush_timeout: Duration,
    /// Searched for separate debug files, in order (`--debuginfo-directories`).
    pub debuginfo_directories: Vec<PathBuf>,
    /// Where stripped files and the upload record are written (`--debuginfo-temp-dir`).
    pub debuginfo_temp_dir: PathBuf,
    /// Upload only what symbolization needs (`--debuginfo-strip`).
    pub debuginfo_strip: bool,
    /// Compress DWARF sections before upload (`--debuginfo-compress`).
    pub debuginfo_compress: bool,
    /// Upload no debuginfo (`--debuginfo-upload-disable`).
    pub debuginfo_upload_disable: bool,
    /// Most uploads at once (`--debuginfo-upload-max-parallel`).
    pub debuginfo_upload_max_parallel: usize,
    /// Bound of one upload (`--debuginfo-upload-timeout-duration`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub debuginfo_upload_timeout: Duration,
    /// How long the server's answer for a build id is remembered, across
    /// restarts (`--debuginfo-upload-cache-duration`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub debuginfo_upload_cache_duration: Duration,
    /// Where processes are read (the host's /proc mounted elsewhere in a container).
    pub proc_root: PathBuf,
    /// Send no panic report (`--telemetry-disable-panic-reporting`).
    pub panic_reporting_disable: bool,
    /// Size of the stderr tail sent with a panic report, in KiB
    /// (`--telemetry-stderr-buffer-size-kb`).
    pub stderr_buffer_size_kb: usize,
    /// Keep windows on disk instead of sending them, for
    /// `agent --offline-mode-upload` to send later.
    pub offline_mode: OfflineMode,
}

/// Offline mode: windows written to a local store, nothing sent.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineMode {
    /// Directory of the store (`--offline-mode-storage-path`); unset: off.
    /// While set, the exporter sends nothing: no profiles, no debuginfo,
    /// no panic reports.
    pub storage_path: Option<PathBuf>,
    /// How often the file being written is closed and a new one begun
    /// (`--offline-mode-rotation-interval`); closed files are what an
    /// upload beside a running agent sends.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub rotation_interval: Duration,
    /// Most bytes the store keeps; past it the oldest closed files are
    /// removed (logged and counted). 0: no limit.
    pub max_bytes: u64,
}

impl Default for OfflineMode {
    fn default() -> Self {
        Self {
            storage_path: None,
            rotation_interval: Duration::from_secs(600),
            max_bytes: 1 << 30,
        }
    }
}

impl Default for ParcaGrpcConfig {
    fn default() -> Self {
        Self {
            address: Endpoint::default(),
            bearer_token: Secret::default(),
            bearer_token_file: None,
            headers: Headers::default(),
            tls: TlsSettings::default(),
            batch_write_interval: Duration::from_secs(10),
            rpc_logging: false,
            rpc_unary_timeout: Duration::from_secs(300),
            retry_on_failure: RetryOnFailure::default(),
            max_request_bytes: 4 << 20,
            buffer_bytes: 64 << 20,
            shutdown_flush_timeout: Duration::from_secs(10),
            debuginfo_directories: vec![PathBuf::from("/usr/lib/debug")],
            debuginfo_temp_dir: PathBuf::from("/tmp"),
            debuginfo_strip: true,
            debuginfo_compress: false,
            debuginfo_upload_disable: false,
            debuginfo_upload_max_parallel: 25,
            debuginfo_upload_timeout: Duration::from_secs(120),
            debuginfo_upload_cache_duration: Duration::from_secs(300),
            proc_root: PathBuf::from("/proc"),
            panic_reporting_disable: false,
            stderr_buffer_size_kb: 4096,
            offline_mode: OfflineMode::default(),
        }
    }
}

impl ComponentConfig for ParcaGrpcConfig {
    const RENAMED_KEYS: &'static [(&'static str, &'static str)] = &[
        ("insecure", "tls::insecure"),
        ("insecure_skip_verify", "tls::insecure_skip_verify"),
    ];

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.address.trim().is_empty() {
            // Offline, the address is needed only by the upload (which says so).
            if self.offline_mode.storage_path.is_none() {
                errors.push(FieldError::new(
                    "address",
                    "is required (the Parca server's host:port; --remote-store-address)",
                ));
            }
        } else if let Err(e) = self.tls.target(&self.address) {
            errors.push(FieldError::new("address", format!("{}: {e}", self.address)));
        }
        if !self.bearer_token.is_empty() && self.bearer_token_file.is_some() {
            errors.push(FieldError::new(
                "bearer_token_file",
                "set either bearer_token or bearer_token_file, not both",
            ));
        } else if let Some(file) = &self.bearer_token_file {
            // Re-read on every call later; unreadable now is a mistake, not
            // a server refusing the token.
            if let Err(e) = std::fs::read(file) {
                errors.push(FieldError::new(
                    "bearer_token_file",
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
        errors.extend(self.headers.validate("headers", HeaderProtocol::Grpc));
        if self.headers.0.contains_key("authorization")
            && (!self.bearer_token.is_empty() || self.bearer_token_file.is_some())
        {
            errors.push(FieldError::new(
                "headers::authorization",
                "set either an authorization header or a bearer token, not both",
            ));
        }
        errors.extend(self.tls.validate("tls"));
        let mut checks = Checks::new(errors);
        let ms = Duration::from_millis;
        for (key, value, min) in [
            ("batch_write_interval", self.batch_write_interval, ms(100)),
            ("rpc_unary_timeout", self.rpc_unary_timeout, ms(100)),
            ("shutdown_flush_timeout", self.shutdown_flush_timeout, ms(0)),
            (
                "debuginfo_upload_timeout",
                self.debuginfo_upload_timeout,
                ms(100),
            ),
            (
                "debuginfo_upload_cache_duration",
                self.debuginfo_upload_cache_duration,
                ms(0),
            ),
        ] {
            checks.duration(key, value, min, MAX_DURATION);
        }
        self.retry_on_failure.check("retry_on_failure", &mut checks);
        checks.duration(
            "offline_mode::rotation_interval",
            self.offline_mode.rotation_interval,
            Duration::from_secs(1),
            MAX_DURATION,
        );
        if let Some(path) = &self.offline_mode.storage_path {
            if path.as_os_str().is_empty() {
                checks.push(FieldError::new(
                    "offline_mode::storage_path",
                    "must not be empty (leave it out to send to the server)",
                ));
            }
        }
        checks.number(
            "max_request_bytes",
            self.max_request_bytes,
            64 << 10,
            1 << 30,
        );
        checks.number(
            "buffer_bytes",
            self.buffer_bytes,
            self.max_request_bytes,
            16 << 30,
        );
        checks.number(
            "debuginfo_upload_max_parallel",
            self.debuginfo_upload_max_parallel,
            1,
            1024,
        );
        checks.number(
            "stderr_buffer_size_kb",
            self.stderr_buffer_size_kb,
            0,
            1 << 20,
        );
        let mut errors = checks.finish();
        for (i, d) in self.debuginfo_directories.iter().enumerate() {
            if !d.is_absolute() {
                errors.push(FieldError::new(
                    &format!("debuginfo_directories::{i}"),
                    format!("{} is not an absolute path", d.display()),
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows() {
        let config = ParcaGrpcConfig {
            address: "parca:7070".into(),
            bearer_token: Secret("s3cr3t".into()),
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let yaml = serde_yaml::to_string(&config).unwrap();
        assert!(!yaml.contains("s3cr3t") && yaml.contains("<redacted>"));
        assert!(config.validate().is_empty());
    }

    #[test]
    fn problems_name_their_key() {
        let config = ParcaGrpcConfig {
            bearer_token: Secret("t".into()),
            bearer_token_file: Some("/t".into()),
            tls: TlsSettings {
                insecure: true,
                insecure_skip_verify: true,
                ..Default::default()
            },
            batch_write_interval: Duration::ZERO,
            debuginfo_upload_max_parallel: 0,
            debuginfo_directories: vec!["relative".into()],
            ..Default::default()
        };
        let fields: Vec<String> = config.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "address",
                "bearer_token_file",
                "tls::insecure_skip_verify",
                "batch_write_interval",
                "debuginfo_upload_max_parallel",
                "debuginfo_directories::0"
            ]
        );
        let bad_url = ParcaGrpcConfig {
            address: "ftp://parca".into(),
            ..Default::default()
        };
        assert_eq!(bad_url.validate()[0].field, "address");
    }
}
