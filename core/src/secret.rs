//! Config values that must not leak: tokens, API keys, auth headers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that never appears in logs, errors or `print-config`.
#[derive(Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct Secret(pub String);

impl Secret {
    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// An endpoint (`scheme://[user[:password]@]host…` or `host:port`) whose
/// userinfo may hold a password: shown everywhere (logs, errors,
/// `print-config`, the status page) with the password replaced; the value
/// itself is there for connecting.
#[derive(Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct Endpoint(pub String);

impl Endpoint {
    /// The endpoint as configured, password included: for connecting only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The endpoint with the password of its userinfo (or, without a `:`,
    /// the whole userinfo, a token) replaced by `<redacted>`.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = match self.0.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, self.0.as_str()),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return self.0.clone();
        };
        let userinfo = match rest[..at].split_once(':') {
            Some((user, _)) => format!("{user}:<redacted>"),
            None => "<redacted>".to_owned(),
        };
        let prefix = scheme.map(|s| format!("{s}://")).unwrap_or_default();
        format!("{prefix}{userinfo}{}", &rest[at..])
    }
}

impl std::ops::Deref for Endpoint {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Endpoint {
    fn from(s: &str) -> Self {
        Endpoint(s.to_owned())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_password_is_shown_redacted() {
        let shown = |s: &str| Endpoint::from(s).to_string();
        assert_eq!(
            shown("https://alice:s3cret@otel.example:4318/v1"),
            "https://alice:<redacted>@otel.example:4318/v1"
        );
        assert_eq!(
            shown("http://t0ken@parca:7070"),
            "http://<redacted>@parca:7070"
        );
        assert_eq!(shown("bob:pw@parca:7070"), "bob:<redacted>@parca:7070");
        // An @ after the authority is no userinfo.
        assert_eq!(shown("https://host/path@x"), "https://host/path@x");
        assert_eq!(
            shown("grpc.polarsignals.com:443"),
            "grpc.polarsignals.com:443"
        );
        let yaml = serde_yaml::to_string(&Endpoint::from("http://a:b@h")).unwrap();
        assert!(!yaml.contains(":b@"), "{yaml}");
        assert_eq!(&*Endpoint::from("http://a:b@h"), "http://a:b@h");
    }
}
