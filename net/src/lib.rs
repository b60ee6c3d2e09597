//! Client connections shared by exporters: TCP, TLS through rustls with
//! the system's roots or a given CA (or unverified, when asked) and an
//! optional client certificate, lazy gRPC channels, and
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

/// How a TLS client checks the server and proves itself.
#[derive(Clone, Default)]
pub struct TlsClient {
    /// Accept any server certificate (the handshake signature is still checked).
    pub skip_verify: bool,
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its private key (PEM), presented to
    /// servers that ask for one (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsClient {
    /// Never the key's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("skip_verify", &self.skip_verify)
            .field("ca", &self.ca_pem.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What is wrong with a [`TlsClient`]; never shows a key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA certificates.
    #[error("CA file: {0}")]
    Ca(String),
    /// The client certificate chain.
    #[error("client certificate file: {0}")]
    Certificate(String),
    /// The client key, or the key does not fit the certificate.
    #[error("client key file: {0}")]
    Key(String),
    /// Anything else (the system's roots, the protocol versions).
    #[error("{0}")]
    Other(String),
}

impl TlsClient {
    /// Checks the certificates and key (what a connection would use).
    pub fn check(&self) -> Result<(), TlsError> {
        self.rustls_config(b"h2").map(drop)
    }

    fn rustls_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(e.to_string()))?;
        let builder = if self.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_pem {
                Some(pem) => {
                    let certs = CertificateDer::pem_slice_iter(pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| TlsError::Ca(e.to_string()))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(TlsError::Ca("no usable certificate in it".to_owned()));
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(TlsError::Other("no usable CA certificates on this system (install ca-certificates, or give a CA file, or use insecure_skip_verify)".to_owned()));
                    }
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsError::Certificate(e.to_string()))?;
                if chain.is_empty() {
                    return Err(TlsError::Certificate("no certificate in it".to_owned()));
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| TlsError::Key(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Key(format!("does not fit the certificate: {e}")))?
            }
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// Opens TCP connections, wrapped in TLS when asked.
#[derive(Clone)]
pub struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
    alerts: Arc<AlertLog>,
}

/// The TLS alerts servers ended this connector's connections with: a
/// refused client certificate reaches gRPC callers only as "connection
/// closed", so the alert is logged here, once until a connection works.
#[derive(Default)]
struct AlertLog {
    last: std::sync::Mutex<Option<String>>,
}

impl AlertLog {
    fn saw(&self, host: &str, error: &std::io::Error) {
        let text = error.to_string();
        if !text.contains("alert") {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(text.as_str()) {
            tracing::warn!(server = host, error = %text, "the server ended the TLS connection (a client certificate it requires, missing or not trusted, shows as an alert here)");
            *last = Some(text);
        }
    }

    fn worked(&self) {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A TLS stream that tells its connector's [`AlertLog`] how it ends.
struct Watched<S> {
    inner: S,
    host: String,
    alerts: Arc<AlertLog>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Err(e)) => this.alerts.saw(&this.host, e),
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.alerts.worked(),
            _ => {}
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connector {
    /// A connector speaking TLS with `alpn` when `tls` is given, plain TCP
    /// otherwise.
    pub fn new(tls: Option<&TlsClient>, alpn: &[u8]) -> Result<Self, String> {
        let tls = tls
            .map(|t| t.rustls_config(alpn))
            .transpose()
            .map_err(|e| e.to_string())?
            .map(|config| tokio_rustls::TlsConnector::from(Arc::new(config)));
        Ok(Self {
            tls,
            alerts: Arc::default(),
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
                let name = ServerName::try_from(host.clone()).map_err(std::io::Error::other)?;
                let stream = tls.connect(name, tcp).await.inspect_err(|e| {
                    self.alerts.saw(&host, e);
                })?;
                Ok(Box::new(Watched {
                    inner: stream,
                    host,
                    alerts: self.alerts.clone(),
                }))
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

/// A gRPC channel to `target` (TLS as `tls` says when the target speaks
/// it); connects on first use and reconnects after failures, so a server
/// that is down at start-up is not an error.
pub fn grpc_channel(target: &Target, tls: &TlsClient) -> Result<Channel, String> {
    let connector = Connector::new(target.tls.then_some(tls), b"h2")?;
    let endpoint = Endpoint::from(target.uri.clone())
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(60)));
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Whether `uri` is https (else http); an error for other schemes.
fn is_https(uri: &Uri) -> Result<bool, String> {
    match uri.scheme_str() {
        Some("https") => Ok(true),
        Some("http") => Ok(false),
        _ => Err(format!("{uri}: neither http:// nor https://")),
    }
}

/// HTTP/1.1 requests to one scheme, a connection each: TLS is set up once
/// (files parsed, roots loaded) and a server's TLS alert is logged once
/// per outage, not per request.
#[derive(Clone)]
pub struct Http1Client {
    https: bool,
    connector: Connector,
}

impl Http1Client {
    /// A client for `uri`'s scheme (TLS as `tls` says, for https).
    pub fn for_uri(uri: &Uri, tls: &TlsClient) -> Result<Self, String> {
        let https = is_https(uri)?;
        Ok(Self {
            https,
            connector: Connector::new(https.then_some(tls), b"http/1.1")?,
        })
    }

    /// Sends `request` (an absolute URI of this client's scheme) on a fresh
    /// connection and returns the answer with its whole body.
    pub async fn request(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, String> {
        let uri = request.uri().clone();
        if is_https(&uri)? != self.https {
            return Err(format!("{uri}: not this client's scheme"));
        }
        send_http1(&self.connector, request).await
    }
}

/// Sends one HTTP/1.1 request to an absolute `http(s)://` URI on a fresh
/// connection (TLS as `tls` says, for https) and returns the answer with
/// its whole body.
pub async fn http1_request(
    request: http::Request<Bytes>,
    tls: &TlsClient,
) -> Result<http::Response<Bytes>, String> {
    Http1Client::for_uri(request.uri(), tls)?
        .request(request)
        .await
}

async fn send_http1(
    connector: &Connector,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, String> {
    let uri = request.uri().clone();
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
