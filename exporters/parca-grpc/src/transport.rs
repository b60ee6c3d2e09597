//! The connection to the Parca server (through `agent-net`), and the
//! configured headers and the bearer token on every call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::{ParcaGrpcConfig, Secret};

/// A channel to the server; connects on first use and reconnects after
/// failures, so a server that is down at start-up is not an error.
pub fn channel(config: &ParcaGrpcConfig) -> Result<Channel, String> {
    config.tls.grpc_channel(&config.address)
}

/// Where the bearer token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// No token.
    None,
    /// A fixed token.
    Fixed(Secret),
    /// A file, re-read when its modification time changes.
    File {
        /// The file.
        path: PathBuf,
        /// The last read: modification time and token.
        last: Arc<Mutex<Option<(SystemTime, Secret)>>>,
    },
}

impl TokenSource {
    /// From the config: the token, else `$PARCA_BEARER_TOKEN`, else the file.
    pub fn from_config(config: &ParcaGrpcConfig) -> Self {
        if !config.bearer_token.is_empty() {
            return Self::Fixed(config.bearer_token.clone());
        }
        if let Some(path) = &config.bearer_token_file {
            return Self::File {
                path: path.clone(),
                last: Arc::default(),
            };
        }
        match std::env::var("PARCA_BEARER_TOKEN") {
            Ok(token) if !token.trim().is_empty() => Self::Fixed(Secret(token.trim().to_owned())),
            _ => Self::None,
        }
    }

    /// The token to send now; the error names the file, never the token.
    pub fn current(&self) -> Result<Option<Secret>, String> {
        match self {
            Self::None => Ok(None),
            Self::Fixed(token) => Ok(Some(token.clone())),
            Self::File { path, last } => {
                let shown = path.display();
                let modified = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|e| format!("cannot read bearer token file {shown}: {e}"))?;
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((at, token)) = last.as_ref() {
                    if *at == modified {
                        return Ok(Some(token.clone()));
                    }
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read bearer token file {shown}: {e}"))?;
                let token = Secret(text.trim().to_owned());
                if token.is_empty() {
                    return Err(format!("bearer token file {shown} is empty"));
                }
                *last = Some((modified, token.clone()));
                Ok(Some(token))
            }
        }
    }
}

/// Adds the configured `headers` and `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct CallMetadata {
    headers: MetadataMap,
    token: TokenSource,
}

impl CallMetadata {
    /// From the config; an error names the header that cannot be sent.
    pub fn from_config(config: &ParcaGrpcConfig) -> Result<Self, String> {
        Ok(Self {
            headers: config.headers.grpc_metadata()?,
            token: TokenSource::from_config(config),
        })
    }
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for entry in self.headers.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                request.metadata_mut().insert(key.clone(), value.clone());
            }
        }
        match self.token.current().map_err(Status::unauthenticated)? {
            None => Ok(request),
            Some(token) => {
                let value: MetadataValue<_> =
                    format!("Bearer {}", token.0).parse().map_err(|_| {
                        Status::unauthenticated("the bearer token is not valid header text")
                    })?;
                request.metadata_mut().insert("authorization", value);
                Ok(request)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::File {
            path: path.clone(),
            last: Arc::default(),
        };
        assert_eq!(source.current().unwrap().unwrap().0, "first");
        std::fs::write(&path, "second").unwrap();
        // A new modification time (coarse file systems tick slowly).
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(source.current().unwrap().unwrap().0, "second");
        std::fs::remove_file(&path).unwrap();
        let error = source.current().unwrap_err();
        assert!(
            error.contains("token") && !error.contains("second"),
            "{error}"
        );
    }
}
