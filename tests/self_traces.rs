//! The agent's own spans (`--otlp-address`, `--otlp-exporter`) arrive at
//! OTLP trace receivers served here: gRPC `TraceService` and HTTP `/v1/traces`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cpu.pb.gz");

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Runs the agent on the pprof fixture (relabel, then the file exporter)
/// with the given trace flags, until it has read the file and exits.
fn run_agent(dir: &Path, flags: &[String]) {
    let config = dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers: {{pprof: {{path: {FIXTURE}}}}}\n\
             processors: {{relabel: {{relabel_configs: [{{source_labels: [comm], target_label: process}}]}}}}\n\
             exporters: {{file: {{directory: {}}}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], processors: [relabel], exporters: [file]}}}}}}\n",
            dir.join("out").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--http-address", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks the spans: per window a `window` span whose children are
/// `collect`, `process relabel` and `export file`, all under `service.name=agent`.
fn check_spans(requests: &[ExportTraceServiceRequest]) {
    let mut spans = Vec::new();
    for request in requests {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().unwrap();
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(service, Some(any_value::Value::StringValue("agent".into())));
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let windows: Vec<_> = spans.iter().filter(|s| s.name == "window").collect();
    assert!(
        !windows.is_empty(),
        "no window span among {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let by_parent: HashMap<&[u8], Vec<&str>> = spans.iter().fold(HashMap::new(), |mut m, s| {
        m.entry(s.parent_span_id.as_slice())
            .or_default()
            .push(s.name.as_str());
        m
    });
    for w in &windows {
        assert!(w.parent_span_id.is_empty(), "a window is a root span");
        assert!(w.end_time_unix_nano >= w.start_time_unix_nano);
        let mut children = by_parent
            .get(w.span_id.as_slice())
            .cloned()
            .unwrap_or_default();
        children.sort();
        assert_eq!(children, ["collect", "export file", "process relabel"]);
        for s in spans.iter().filter(|s| s.parent_span_id == w.span_id) {
            assert_eq!(s.trace_id, w.trace_id);
        }
    }
    assert_eq!(
        spans.len(),
        4 * windows.len(),
        "nothing but windows and their stages"
    );
}

/// Runs the agent with `flags` (off the test's runtime, which serves the
/// receiver) and checks the spans that reached `received`.
async fn traced_run(flags: Vec<String>, received: &Received) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || run_agent(&path, &flags))
        .await
        .unwrap();
    check_spans(&received.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_grpc() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(received.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    traced_run(vec![format!("--otlp-address={address}")], &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_http() {
    let received = Received::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| async move {
                received
                    .lock()
                    .unwrap()
                    .push(ExportTraceServiceRequest::decode(&body[..]).unwrap());
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let flags = vec![
        format!("--otlp-address=http://{address}"),
        "--otlp-exporter=http".to_owned(),
    ];
    traced_run(flags, &received).await;
}
