//! Offline mode's upload against an in-process Parca server that takes
//! only some requests: an upload cut off resumes where it stopped, every
//! stored request arrives once, and the store ends empty.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use agent_core::BuildContext;
use agent_exporter_helper::RetryOnFailure;
use agent_exporter_parca_grpc::offline::{upload, OfflineStore, Uploaded};
use agent_exporter_parca_grpc::profiles::EncodedSeries;
use agent_exporter_parca_grpc::proto::profilestore::profile_store_service_server::{
    ProfileStoreService, ProfileStoreServiceServer,
};
use agent_exporter_parca_grpc::proto::profilestore::{
    Label, LabelSet, RawProfileSeries, WriteRawRequest, WriteRawResponse,
};
use agent_exporter_parca_grpc::{OfflineMode, ParcaGrpcConfig};
use tonic::{Request, Response, Status};

/// Takes `budget` requests, then answers `refusal`; refuses as malformed
/// any request holding the series `poison`.
struct Flaky {
    budget: Mutex<usize>,
    refusal: tonic::Code,
    taken: Mutex<Vec<String>>,
}

fn names(request: &WriteRawRequest) -> Vec<String> {
    request
        .series
        .iter()
        .map(|s| s.labels.as_ref().unwrap().labels[0].value.clone())
        .collect()
}

#[tonic::async_trait]
impl ProfileStoreService for Flaky {
    async fn write_raw(
        &self,
        request: Request<WriteRawRequest>,
    ) -> Result<Response<WriteRawResponse>, Status> {
        let names = names(request.get_ref());
        if names.iter().any(|n| n == "poison") {
            return Err(Status::invalid_argument("poison"));
        }
        let mut budget = self.budget.lock().unwrap();
        if *budget == 0 {
            return Err(Status::new(self.refusal, "not now"));
        }
        *budget -= 1;
        self.taken.lock().unwrap().extend(names);
        Ok(Response::new(WriteRawResponse {}))
    }
}

async fn serve(server: Arc<Flaky>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProfileStoreServiceServer::from_arc(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

fn series(name: &str) -> EncodedSeries {
    EncodedSeries {
        series: RawProfileSeries {
            labels: Some(LabelSet {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: name.into(),
                }],
            }),
            samples: vec![],
        },
        samples: 1,
        bytes: 1,
    }
}

/// Settings of a store in `dir` that holds one closed segment of windows
/// per entry of `segments` (written, then let go as a stopped agent would).
fn store_with(dir: &std::path::Path, segments: &[&[&str]]) -> OfflineMode {
    let settings = OfflineMode {
        storage_path: Some(dir.to_owned()),
        ..Default::default()
    };
    let telemetry = agent_core::Telemetry::default().scoped(&[]);
    let mut store = OfflineStore::open(dir, &settings, 1 << 20, &telemetry).unwrap();
    for windows in segments {
        for name in *windows {
            store.append(vec![series(name)]).unwrap();
        }
        store.close().unwrap();
    }
    settings
}

#[tokio::test]
async fn an_upload_cut_off_resumes_and_sends_every_window_once() {
    let dir = tempfile::tempdir().unwrap();
    // Three segments of two windows; one window the server refuses for good.
    let settings = store_with(
        dir.path(),
        &[&["w1", "w2"], &["w3", "poison"], &["w5", "w6"]],
    );
    let server = Arc::new(Flaky {
        budget: Mutex::new(4),
        refusal: tonic::Code::Unavailable,
        taken: Mutex::new(Vec::new()),
    });
    let address = serve(server.clone()).await;
    let config = ParcaGrpcConfig {
        address: format!("http://{address}").as_str().into(),
        retry_on_failure: RetryOnFailure {
            enabled: false,
            ..Default::default()
        },
        offline_mode: settings,
        ..Default::default()
    };
    let ctx = BuildContext::for_test("parca_grpc");

    let first = upload(&config, &ctx).await.unwrap();
    assert_eq!(
        first,
        Uploaded {
            sent: 4,
            refused: 1,
            segments_done: 2,
            segments_left: 1,
            ..Default::default()
        },
        "the server stopped taking requests after four, in the last segment"
    );
    *server.budget.lock().unwrap() = usize::MAX;
    let second = upload(&config, &ctx).await.unwrap();
    assert_eq!(
        second,
        Uploaded {
            sent: 1,
            segments_done: 1,
            ..Default::default()
        },
        "the second upload begins where the first stopped, inside a segment"
    );
    assert_eq!(
        *server.taken.lock().unwrap(),
        ["w1", "w2", "w3", "w5", "w6"],
        "every window once, in order; the refused one dropped"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "the store ends empty: {left:?}");
}

/// A server that answers every write with a code no retry helps (a proxy
/// routing the path nowhere: `UNIMPLEMENTED`) ends the upload and loses
/// nothing: only `INVALID_ARGUMENT` drops a stored window.
#[tokio::test]
async fn a_server_refusing_every_write_ends_the_upload_and_the_store_stays() {
    let dir = tempfile::tempdir().unwrap();
    let settings = store_with(dir.path(), &[&["w1"]]);
    let stored = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".segment"))
            .collect();
        names.sort();
        names
    };
    let before = stored(dir.path());
    let server = Arc::new(Flaky {
        budget: Mutex::new(0),
        refusal: tonic::Code::Unimplemented,
        taken: Mutex::new(Vec::new()),
    });
    let address = serve(server.clone()).await;
    let config = ParcaGrpcConfig {
        address: format!("http://{address}").as_str().into(),
        offline_mode: settings,
        ..Default::default()
    };
    let done = upload(&config, &BuildContext::for_test("parca_grpc"))
        .await
        .unwrap();
    assert_eq!(
        done,
        Uploaded {
            segments_left: 1,
            ..Default::default()
        }
    );
    assert_eq!(stored(dir.path()), before, "nothing removed");
}

#[tokio::test]
async fn an_upload_without_an_address_or_a_store_says_which() {
    let ctx = BuildContext::for_test("parca_grpc");
    let dir = tempfile::tempdir().unwrap();
    let mut config = ParcaGrpcConfig {
        offline_mode: OfflineMode {
            storage_path: Some(dir.path().to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let error = upload(&config, &ctx).await.unwrap_err();
    assert!(
        error.starts_with("address is required to upload"),
        "{error}"
    );
    config.address = "http://127.0.0.1:9".into();
    config.offline_mode.storage_path = Some(dir.path().join("missing"));
    let error = upload(&config, &ctx).await.unwrap_err();
    assert!(
        error.ends_with("does not exist (offline_mode::storage_path)"),
        "{error}"
    );
}
