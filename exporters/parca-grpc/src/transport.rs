//! Connections to the Parca server: TCP, TLS with the system's roots (or
//! none, or unverified), the bearer token on every call, and the HTTP PUT of
//! signed-URL uploads over the same TLS stack.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::{ParcaGrpcConfig, Secret};

/// Where the server is and whether to use TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub uri: Uri,
    /// Speak TLS.
    pub tls: bool,
}

impl Target {
    /// Parses `host:port` (TLS unless `insecure`) or an `http(s)://` URL.
    pub fn parse(address: &str, insecure: bool) -> Result<Self, String> {
        let address = address.trim();
        let (tls, rest) = if let Some(rest) = address.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = address.strip_prefix("http://") {
            (false, rest)
        } else if address.contains("://") {
            return Err(format!(
                "{address}: only host:port, http:// and https:// are understood"
            ));
        } else {
            (!insecure, address)
        };
        let scheme = if tls { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{}", rest.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("{address}: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{address}: no host"));
        }
        if uri.port_u16().is_none() && !address.contains("://") {
            return Err(format!("{address}: no port (host:port)"));
        }
        Ok(Self { uri, tls })
    }
}

/// Any connected byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens TCP connections, wrapped in TLS when asked.
#[derive(Clone)]
pub struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    /// A connector speaking TLS with `alpn` when `tls` is set: verified
    /// against the system's roots, or not verified at all.
    pub fn new(tls: bool, skip_verify: bool, alpn: &[u8]) -> Result<Self, String> {
        if !tls {
            return Ok(Self { tls: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no usable CA certificates on this system (install ca-certificates, or use insecure_skip_verify)".to_owned());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Self {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }

    /// Connects to `uri`'s host and port.
    pub async fn connect(&self, uri: &Uri) -> std::io::Result<Box<dyn Io>> {
        let host = uri
            .host()
            .ok_or_else(|| std::io::Error::other("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
                Ok(Box::new(tls.connect(name, tcp).await?))
            }
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await.map(TokioIo::new) })
    }
}

/// Accepts any certificate (`insecure_skip_verify`) but still checks that
/// the handshake is signed by it.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A channel to the server; connects on first use and reconnects after
/// failures, so a server that is down at start-up is not an error.
pub fn channel(config: &ParcaGrpcConfig) -> Result<Channel, String> {
    let target = Target::parse(&config.address, config.insecure)?;
    let connector = Connector::new(target.tls, config.insecure_skip_verify, b"h2")?;
    let endpoint = Endpoint::from(target.uri)
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)));
    Ok(endpoint.connect_with_connector_lazy(connector))
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

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct BearerToken(pub TokenSource);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.0.current().map_err(Status::unauthenticated)? {
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
    fn addresses_parse_like_parca_agents() {
        let t = Target::parse("parca.example:443", false).unwrap();
        assert_eq!(
            (t.uri.to_string().as_str(), t.tls),
            ("https://parca.example:443/", true)
        );
        let t = Target::parse("localhost:7070", true).unwrap();
        assert_eq!(
            (t.uri.to_string().as_str(), t.tls),
            ("http://localhost:7070/", false)
        );
        let t = Target::parse("http://127.0.0.1:7070", false).unwrap();
        assert!(!t.tls);
        assert!(Target::parse("https://grpc.example", true).unwrap().tls);
        assert!(Target::parse("parca.example", false)
            .unwrap_err()
            .contains("no port"));
        assert!(Target::parse("ftp://x:1", false).is_err());
    }

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
