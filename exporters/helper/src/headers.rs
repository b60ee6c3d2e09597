//! `headers:` — sent with every request: gRPC metadata or HTTP headers.
//! Values are secrets (tokens, API keys): never logged or printed.

use std::collections::BTreeMap;

use agent_core::{FieldError, Secret};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

/// Header name → value, sent with every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Headers(pub BTreeMap<String, Secret>);

/// Which protocol the headers travel in: gRPC metadata keys are lowercase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProtocol {
    /// gRPC metadata.
    Grpc,
    /// HTTP/1.1 headers.
    Http,
}

impl Headers {
    /// Problems, with keys under `prefix` (`headers`); values are never shown.
    pub fn validate(&self, prefix: &str, protocol: HeaderProtocol) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, value) in &self.0 {
            let valid_name = match protocol {
                HeaderProtocol::Grpc => {
                    MetadataKey::<tonic::metadata::Ascii>::from_bytes(name.as_bytes()).is_ok()
                }
                HeaderProtocol::Http => HeaderName::from_bytes(name.as_bytes()).is_ok(),
            };
            let key = format!("{prefix}::{name}");
            let lowercase = name.to_ascii_lowercase();
            if protocol == HeaderProtocol::Grpc
                && (lowercase.starts_with("grpc-") || ["te", "content-type"].contains(&&*lowercase))
            {
                errors.push(FieldError::new(
                    &key,
                    "reserved by gRPC itself (grpc-*, te, content-type)",
                ));
            } else if !valid_name {
                errors.push(FieldError::new(
                    &key,
                    "not a valid header name (lowercase letters, digits, '-', '_', '.')",
                ));
            } else if HeaderValue::from_str(&value.0).is_err() {
                errors.push(FieldError::new(
                    &key,
                    "the value is not a valid header value (visible ASCII)",
                ));
            }
        }
        errors
    }

    /// As gRPC metadata (validated names and values; an error names the header).
    pub fn grpc_metadata(&self) -> Result<MetadataMap, String> {
        let mut metadata = MetadataMap::new();
        for (name, value) in &self.0 {
            let key = MetadataKey::from_bytes(name.as_bytes())
                .map_err(|_| format!("header {name}: not a valid gRPC metadata name"))?;
            let value: MetadataValue<_> = value
                .0
                .parse()
                .map_err(|_| format!("header {name}: the value is not a valid header value"))?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    /// As HTTP headers, marked sensitive.
    pub fn http(&self) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.0 {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header {name}: not a valid header name"))?;
            let mut value = HeaderValue::from_str(&value.0)
                .map_err(|_| format!("header {name}: the value is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_protocol_and_values_stay_hidden() {
        let headers: Headers =
            serde_yaml::from_str("{Bad Name: v, tenant-id: \"line\\nbreak\", x-scope: s3cr3t}")
                .unwrap();
        for protocol in [HeaderProtocol::Grpc, HeaderProtocol::Http] {
            let errors = headers.validate("headers", protocol);
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["headers::Bad Name", "headers::tenant-id"]);
            assert!(errors.iter().all(|e| !e.message.contains("break")));
        }
        let reserved: Headers =
            serde_yaml::from_str("{grpc-timeout: 1S, X-Scope-OrgID: t}").unwrap();
        let errors = reserved.validate("headers", HeaderProtocol::Grpc);
        assert_eq!(
            errors.len(),
            1,
            "names are case-insensitive; only grpc-* is reserved"
        );
        assert_eq!(errors[0].field, "headers::grpc-timeout");
        assert!(reserved
            .validate("headers", HeaderProtocol::Http)
            .is_empty());
        assert!(!format!("{headers:?}").contains("s3cr3t"));
        assert!(!serde_yaml::to_string(&headers).unwrap().contains("s3cr3t"));

        let good: Headers = serde_yaml::from_str("{x-scope: s3cr3t}").unwrap();
        let metadata = good.grpc_metadata().unwrap();
        assert_eq!(metadata.get("x-scope").unwrap(), "s3cr3t");
        assert!(good.http().unwrap()["x-scope"].is_sensitive());
    }
}
