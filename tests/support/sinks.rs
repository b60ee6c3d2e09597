//! Backends inside the test process that keep what the agent sends them:
//! a Parca server's `WriteRaw` (gRPC) and an OTLP/HTTP profiles endpoint.

use std::io::Read;
use std::sync::{Arc, Mutex};

use agent_exporter_parca_grpc::proto::profilestore::profile_store_service_server::{
    ProfileStoreService, ProfileStoreServiceServer,
};
use agent_exporter_parca_grpc::proto::profilestore::{WriteRawRequest, WriteRawResponse};

/// One series as a Parca server stores it.
pub struct ParcaSeries {
    pub labels: Vec<(String, String)>,
    /// Its profiles, decompressed.
    pub profiles: Vec<Vec<u8>>,
}

/// A Parca server that keeps every `WriteRaw` request.
#[derive(Default)]
pub struct ParcaSink {
    writes: Mutex<Vec<WriteRawRequest>>,
}

#[tonic::async_trait]
impl ProfileStoreService for ParcaSink {
    async fn write_raw(
        &self,
        request: tonic::Request<WriteRawRequest>,
    ) -> Result<tonic::Response<WriteRawResponse>, tonic::Status> {
        self.writes.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(WriteRawResponse {}))
    }
}

impl ParcaSink {
    /// Serves on `runtime`; returns the sink and its address.
    pub fn start(runtime: &tokio::runtime::Runtime) -> (Arc<Self>, String) {
        let sink = Arc::new(Self::default());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap().to_string();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(ProfileStoreServiceServer::from_arc(sink.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (sink, address)
    }

    /// Every series received so far.
    pub fn series(&self) -> Vec<ParcaSeries> {
        let writes = self.writes.lock().unwrap();
        writes
            .iter()
            .flat_map(|w| &w.series)
            .map(|s| ParcaSeries {
                labels: s
                    .labels
                    .iter()
                    .flat_map(|set| &set.labels)
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect(),
                profiles: s.samples.iter().map(|r| gunzip(&r.raw_profile)).collect(),
            })
            .collect()
    }
}

/// An OTLP/HTTP endpoint (`POST /v1development/profiles`, uncompressed
/// bodies) that keeps every body.
#[derive(Default)]
pub struct OtlpHttpSink {
    bodies: Mutex<Vec<Vec<u8>>>,
}

impl OtlpHttpSink {
    /// Serves on `runtime`; returns the sink and its `http://` endpoint.
    pub fn start(runtime: &tokio::runtime::Runtime) -> (Arc<Self>, String) {
        let sink = Arc::new(Self::default());
        let keep = sink.clone();
        let app = axum::Router::new().route(
            "/v1development/profiles",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                keep.bodies.lock().unwrap().push(body.to_vec());
                // An empty ExportProfilesServiceResponse: full success.
                Vec::<u8>::new()
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        (sink, endpoint)
    }

    /// Every request body received so far (protobuf: its strings verbatim).
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
}

/// `data` decompressed (gzip).
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
