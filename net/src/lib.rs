//! Client connections shared by exporters: TCP, TLS through rustls with
//! the system's roots (or unverified, when asked), lazy gRPC channels, and
//! one-shot HTTP/1.1 requests over the same stack. One TLS stack, one async
//! runtime (tokio), no OpenSSL.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

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
    /// Errors do not repeat the address (it may hold a password): callers
    /// name the key it came from.
    pub fn parse(address: &str, insecure: bool) -> Result<Self, String> {
        let address = address.trim();
        let (tls, rest) = if let Some(rest) = address.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = address.strip_prefix("http://") {
            (false, rest)
        } else if address.contains("://") {
            return Err("only host:port, http:// and https:// are understood".to_owned());
        } else {
            (!insecure, address)
        };
        let scheme = if tls { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{}", rest.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        if uri.host().is_none_or(str::is_empty) {
            return Err("no host".to_owned());
        }
        if uri.port_u16().is_none() && !address.contains("://") {
            return Err("no port (host:port)".to_owned());
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

/// A client connection that could not be set up (address, TLS roots).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the connection to {target}: {reason}")]
pub struct SetupError {
    /// The configured address or endpoint.
    pub target: String,
    /// What failed.
    pub reason: String,
}

/// A gRPC channel to `target`; connects on first use and reconnects after
/// failures, so a server that is down at start-up is not an error.
pub fn grpc_channel(target: &Target, skip_verify: bool) -> Result<Channel, String> {
    let connector = Connector::new(target.tls, skip_verify, b"h2")?;
    let endpoint = Endpoint::from(target.uri.clone())
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(60)));
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Sends one HTTP/1.1 request to an absolute `http(s)://` URI on a fresh
/// connection and returns the answer with its whole body.
pub async fn http1_request(
    request: http::Request<Bytes>,
    skip_verify: bool,
) -> Result<http::Response<Bytes>, String> {
    let uri = request.uri().clone();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{uri}: neither http:// nor https://")),
    };
    let connector = Connector::new(tls, skip_verify, b"http/1.1")?;
    let io = connector
        .connect(&uri)
        .await
        .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    // HTTP/1.1 wants the path in the request line and the authority as Host.
    let (mut parts, body) = request.into_parts();
    let host = uri.authority().map_or("", |a| a.as_str()).to_owned();
    parts.uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    parts.headers.insert(
        http::header::HOST,
        host.parse()
            .map_err(|e: http::header::InvalidHeaderValue| e.to_string())?,
    );
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    let response = sender
        .send_request(http::Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// Exponential backoff with jitter: waits double from `initial` up to `max`.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// 0.5 s doubling up to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Waits starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial.min(max),
            max,
        }
    }

    /// The next wait: uniform in [next/2, next], then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let max = self.next;
        self.next = (self.next * 2).min(self.max);
        let millis = max.as_millis() as u64;
        Duration::from_millis(millis / 2 + random() % (millis / 2 + 1))
    }
}

/// A random number for jitter: std's hasher keys are random per instance.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
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
    fn backoff_grows_with_jitter_up_to_30s() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(250) && waits[0] <= Duration::from_millis(500));
        assert!(waits[3] >= Duration::from_secs(2) && waits[3] <= Duration::from_secs(4));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(30)));
        assert!(waits[9] >= Duration::from_secs(15));
    }
}
