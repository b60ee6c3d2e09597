//! The config shapes every network exporter takes, under the Collector's
//! names: `tls:` and `retry_on_failure:`.

use std::path::{Path, PathBuf};
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
    /// CA certificates (PEM) the server's certificate is checked against,
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for servers that require one (mutual
    /// TLS); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Where `address` (`host:port` or an `http(s)://` URL) points and
    /// whether TLS is spoken there.
    pub fn target(&self, address: &str) -> Result<agent_net::Target, String> {
        agent_net::Target::parse(address, self.insecure)
    }

    /// A lazy gRPC channel to `address` with these settings.
    pub fn grpc_channel(&self, address: &str) -> Result<tonic::transport::Channel, String> {
        agent_net::grpc_channel(&self.target(address)?, &self.client()?)
    }

    /// The TLS client these settings describe, its files read now; the
    /// error names the key (`tls::ca_file: cannot read …`).
    pub fn client(&self) -> Result<agent_net::TlsClient, String> {
        self.read_client()
            .map_err(|e| format!("tls::{}: {}", e.field, e.message))
    }

    /// [`Self::client`], the error's key below `tls`.
    fn read_client(&self) -> Result<agent_net::TlsClient, FieldError> {
        let read = |key: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, FieldError> {
            path.as_deref()
                .map(|p| std::fs::read(p).map_err(|e| unreadable(key, p, e)))
                .transpose()
        };
        let identity = match (
            read("cert_file", &self.cert_file)?,
            read("key_file", &self.key_file)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        Ok(agent_net::TlsClient {
            skip_verify: self.insecure_skip_verify,
            ca_pem: read("ca_file", &self.ca_file)?,
            identity,
        })
    }

    /// Problems, with keys under `prefix` (`tls`): contradictions, and
    /// files that cannot be read or are not what their key says.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let key = |name: &str| format!("{prefix}::{name}");
        let mut errors = Vec::new();
        if self.insecure && self.insecure_skip_verify {
            errors.push(FieldError::new(
                &key("insecure_skip_verify"),
                "has no meaning with insecure (plaintext has no certificate to verify)",
            ));
        }
        if self.insecure_skip_verify && self.ca_file.is_some() {
            errors.push(FieldError::new(
                &key("ca_file"),
                "has no meaning with insecure_skip_verify (no certificate is verified)",
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => errors.push(FieldError::new(
                &key("key_file"),
                "required with cert_file (the certificate's private key)",
            )),
            (None, Some(_)) => errors.push(FieldError::new(
                &key("cert_file"),
                "required with key_file (the certificate the key belongs to)",
            )),
            _ => {}
        }
        if !errors.is_empty() {
            return errors;
        }
        if self.insecure {
            if let Some(name) = [
                ("ca_file", &self.ca_file),
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
            ]
            .into_iter()
            .find_map(|(name, path)| path.is_some().then_some(name))
            {
                return vec![FieldError::new(
                    &key(name),
                    "has no meaning with insecure (plaintext: no TLS)",
                )];
            }
            return Vec::new();
        }
        if self.ca_file.is_none() && self.cert_file.is_none() {
            // Nothing to read; the system's roots are checked on connecting.
            return Vec::new();
        }
        let problem = match self.read_client() {
            Err(e) => e,
            Ok(client) => match client.check() {
                Ok(()) => return Vec::new(),
                Err(e) => {
                    let name = match &e {
                        agent_net::TlsError::Ca(_) => "ca_file",
                        agent_net::TlsError::Certificate(_) => "cert_file",
                        agent_net::TlsError::Key(_) => "key_file",
                        // No system roots to check the server with.
                        agent_net::TlsError::Other(_) => "ca_file",
                    };
                    FieldError::new(name, e.to_string())
                }
            },
        };
        vec![FieldError::new(&key(&problem.field), problem.message)]
    }
}

fn unreadable(key: &str, path: &Path, error: std::io::Error) -> FieldError {
    FieldError::new(key, format!("cannot read {}: {error}", path.display()))
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
            ..Default::default()
        };
        assert_eq!(tls.validate("tls")[0].field, "tls::insecure_skip_verify");
        assert!(serde_yaml::from_str::<TlsSettings>("{insecure: true, ca: x}").is_err());
    }

    #[test]
    fn certificate_files_are_read_and_checked_naming_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Some(path)
        };
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = pair("agent");
        let (_, other_key) = pair("other");
        let settings =
            |ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>| TlsSettings {
                ca_file: ca,
                cert_file: cert,
                key_file: key,
                ..Default::default()
            };
        let problem = |s: TlsSettings| -> Vec<String> {
            s.validate("tls").into_iter().map(|e| e.field).collect()
        };
        let (cert_file, key_file) = (write("c.pem", &cert), write("c.key", &key));
        assert!(problem(settings(
            cert_file.clone(),
            cert_file.clone(),
            key_file.clone()
        ))
        .is_empty());
        let client = settings(None, cert_file.clone(), key_file.clone())
            .client()
            .unwrap();
        assert!(client.identity.is_some() && client.ca_pem.is_none());

        assert_eq!(
            problem(settings(None, cert_file.clone(), None)),
            ["tls::key_file"]
        );
        assert_eq!(
            problem(settings(None, None, key_file.clone())),
            ["tls::cert_file"]
        );
        let missing = Some(dir.path().join("missing.pem"));
        let errors = settings(missing, None, None).validate("tls");
        assert_eq!(errors[0].field, "tls::ca_file");
        assert!(
            errors[0].message.contains("cannot read"),
            "{}",
            errors[0].message
        );
        let garbage = write("garbage.pem", "not a certificate");
        assert_eq!(
            problem(settings(garbage.clone(), None, None)),
            ["tls::ca_file"]
        );
        assert_eq!(
            problem(settings(None, garbage, key_file.clone())),
            ["tls::cert_file"]
        );
        let wrong_key = write("other.key", &other_key);
        let errors = settings(None, cert_file.clone(), wrong_key).validate("tls");
        assert_eq!(errors[0].field, "tls::key_file");
        assert!(
            !errors[0].message.contains("PRIVATE KEY"),
            "no key bytes shown"
        );
        let plaintext = TlsSettings {
            insecure: true,
            ..settings(None, cert_file, key_file)
        };
        assert_eq!(problem(plaintext), ["tls::cert_file"]);
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
