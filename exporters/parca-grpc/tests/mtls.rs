//! Mutual TLS and headers against a Parca-protocol server that requires a
//! client certificate from its own CA: the right pair is accepted, no
//! certificate or one from another CA is refused with a clear, counted
//! error, and nothing is lost while refused. Certificates are made here.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agent_core::telemetry::Telemetry;
use agent_core::{
    BuildContext, Exporter, Factory, LabelSet, Location, ProfileBatch, ProfileType, Sample,
    Shutdown, Stop,
};
use agent_exporter_helper::{Headers, TlsSettings};
use agent_exporter_parca_grpc::proto::profilestore::profile_store_service_server::{
    ProfileStoreService, ProfileStoreServiceServer,
};
use agent_exporter_parca_grpc::proto::profilestore::{WriteRawRequest, WriteRawResponse};
use agent_exporter_parca_grpc::{ParcaGrpcConfig, ParcaGrpcFactory, Secret};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status};

mod support;
use support::{wait_for, LogCapture};

/// A leaf certificate and its key (PEM files).
struct Signed {
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a CA in `dir` named `name` and returns its certificate file and
/// an issuer for leaves.
fn ca(dir: &Path, name: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (path, Issuer::new(params, key))
}

/// A leaf for `names`, signed by `issuer`, written as `stem.pem`/`stem.key`.
fn leaf(dir: &Path, stem: &str, names: &[&str], issuer: &Issuer<'_, KeyPair>) -> Signed {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let signed = Signed {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&signed.cert, cert.pem()).unwrap();
    std::fs::write(&signed.key, key.serialize_pem()).unwrap();
    signed
}

/// Takes writes when the `x-tenant` header is right; counts their samples' rows.
#[derive(Default)]
struct Store {
    writes: AtomicUsize,
    tenants: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl ProfileStoreService for Store {
    async fn write_raw(
        &self,
        request: Request<WriteRawRequest>,
    ) -> Result<Response<WriteRawResponse>, Status> {
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.tenants.lock().unwrap().push(tenant);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(WriteRawResponse {}))
    }
}

/// A server-side TLS connection, as tonic wants its incoming streams.
struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Serves `store` over TLS with `server`'s certificate, requiring a client
/// certificate signed by `client_ca`; counts refused handshakes.
async fn serve_mtls(
    store: Arc<Store>,
    server: &Signed,
    client_ca: &Path,
) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(client_ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let chain = CertificateDer::pem_file_iter(&server.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused = Arc::new(AtomicUsize::new(0));
    let (accepted, incoming) = tokio::sync::mpsc::channel(16);
    let counted = refused.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, accepted, counted) =
                (acceptor.clone(), accepted.clone(), counted.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let _ = accepted
                            .send(Ok::<_, std::io::Error>(TlsConnection(tls)))
                            .await;
                    }
                    Err(_) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProfileStoreServiceServer::from_arc(store))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming)),
    );
    (port, refused)
}

/// One window with one sample of this process.
fn window(n: u64) -> Arc<ProfileBatch> {
    let mut b = ProfileBatch::new(
        ProfileType::cpu_samples(19),
        n * 1_000_000_000,
        1_000_000_000,
    );
    let location = b.locations.intern(Location {
        mapping: None,
        address: 0x1000,
        lines: vec![],
        frame_type: agent_core::FrameType::Unknown,
    });
    let stack = b.stacks.intern(vec![location]);
    let series = b
        .label_sets
        .intern(LabelSet::new([("comm", "app"), ("node", "n1")]));
    b.samples.push(Sample {
        stack,
        series,
        attributes: 0,
        value: 1,
        timestamp_unix_nanos: None,
    });
    Arc::new(b)
}

/// An exporter as the service has it: built and started, with its own
/// metrics registry and the agent's stop signal.
struct Started {
    exporter: Box<dyn Exporter>,
    telemetry: Telemetry,
    stop: Stop,
}

async fn exporter(config: ParcaGrpcConfig) -> Started {
    use agent_core::ComponentConfig;
    assert_eq!(config.validate(), vec![], "the config validates");
    let telemetry = Telemetry::default();
    let (stop, stopping) = Shutdown::new();
    let mut ctx = BuildContext::for_test("parca_grpc");
    ctx.telemetry = telemetry.scoped(&[]);
    ctx.stopping = stopping;
    let mut exporter = ParcaGrpcFactory.create(config, &ctx).unwrap();
    exporter.start().await.unwrap();
    Started {
        exporter,
        telemetry,
        stop,
    }
}

impl Started {
    /// Stops it as the service does: the signal, then shutdown; returns how
    /// long shutdown took.
    async fn stop(mut self) -> Duration {
        self.stop.stop();
        let began = Instant::now();
        self.exporter.shutdown().await.unwrap();
        began.elapsed()
    }
}

/// The value of `agent_exporter_attempts_total{result}` in `telemetry`.
fn attempts(telemetry: &Telemetry, result: &str) -> u64 {
    telemetry.value("agent_exporter_attempts_total", &[("result", result)]) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_a_client_certificate_takes_the_right_pair_only() {
    let logs = LogCapture::install();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, issuer) = ca(dir.path(), "test-ca");
    let (_, stranger_issuer) = ca(dir.path(), "stranger-ca");
    let server = leaf(dir.path(), "server", &["localhost"], &issuer);
    let client = leaf(dir.path(), "client", &["agent"], &issuer);
    let stranger = leaf(dir.path(), "stranger", &["agent"], &stranger_issuer);
    let store = Arc::new(Store::default());
    let (port, refused) = serve_mtls(store.clone(), &server, &ca_file).await;

    let config = |identity: Option<&Signed>| ParcaGrpcConfig {
        address: agent_core::Endpoint(format!("localhost:{port}")),
        tls: TlsSettings {
            ca_file: Some(ca_file.clone()),
            cert_file: identity.map(|s| s.cert.clone()),
            key_file: identity.map(|s| s.key.clone()),
            ..Default::default()
        },
        headers: Headers([("x-tenant".to_owned(), Secret("team-a".to_owned()))].into()),
        batch_write_interval: Duration::from_millis(200),
        shutdown_flush_timeout: Duration::from_secs(2),
        debuginfo_upload_disable: true,
        panic_reporting_disable: true,
        ..Default::default()
    };

    // The right pair: accepted, with the header on every call.
    let mut right = exporter(config(Some(&client))).await;
    right.exporter.export(window(1)).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || store
            .writes
            .load(Ordering::SeqCst)
            >= 1)
        .await
    );
    assert_eq!(refused.load(Ordering::SeqCst), 0);
    // The server counts the write before the client has its answer.
    assert!(
        wait_for(Duration::from_secs(5), || attempts(&right.telemetry, "ok")
            >= 1)
        .await,
        "the accepted write counted"
    );
    right.stop().await;
    assert!(store.tenants.lock().unwrap().iter().all(|t| t == "team-a"));

    // No certificate, or one from another CA: every handshake refused, the
    // failure counted and said once, with the TLS alert; nothing written,
    // and shutdown within its flush bound.
    for identity in [None, Some(&stranger)] {
        let writes = store.writes.load(Ordering::SeqCst);
        let refused_before = refused.load(Ordering::SeqCst);
        let mut wrong = exporter(config(identity)).await;
        wrong.exporter.export(window(2)).await.unwrap();
        let telemetry = &wrong.telemetry;
        assert!(
            wait_for(Duration::from_secs(20), || attempts(telemetry, "failed")
                >= 2)
            .await,
            "retried while refused"
        );
        assert!(refused.load(Ordering::SeqCst) > refused_before);
        assert_eq!(store.writes.load(Ordering::SeqCst), writes);
        assert_eq!(attempts(telemetry, "ok"), 0);
        let took = wrong.stop().await;
        assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    }
    // The alert, once per exporter: gRPC itself says only "connection closed".
    let text = logs.text();
    let alerts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ended the TLS connection"))
        .collect();
    assert_eq!(alerts.len(), 2, "once per exporter: {text}");
    assert!(alerts[0].contains("CertificateRequired"), "{}", alerts[0]);
    assert!(
        alerts[1].contains("UnknownCA") || alerts[1].contains("BadCertificate"),
        "{}",
        alerts[1]
    );
    assert!(!text.contains("team-a"), "header values are never logged");
}
