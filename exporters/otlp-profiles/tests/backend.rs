//! The exporter against OTLP backends served in this test: a tonic
//! `ProfilesService` and an HTTP endpoint, each checking what arrives.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::telemetry::Telemetry;
use agent_core::{
    BuildContext, BuildIdKind, Exporter, Factory, FrameType, Function, LabelSet, Line, Location,
    Mapping, ProfileBatch, ProfileType, Sample,
};
use agent_exporter_otlp_profiles::{OtlpProfilesConfig, OtlpProfilesFactory};
use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_server::{
    ProfilesService, ProfilesServiceServer,
};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use prost::Message;
use tonic_types::StatusExt;

const BUILD_ID: &str = "4f1c2a9b7e3d5c6a8b9c0d1e2f3a4b5c6d7e8f90";

/// Two processes (one in a Kubernetes container), two threads, user and
/// kernel frames.
fn rich_batch() -> ProfileBatch {
    let mut b = ProfileBatch::new(
        ProfileType::cpu_samples(19),
        1_700_000_000_000_000_000,
        10_000_000_000,
    );
    let exe = b.strings.intern_str("/usr/bin/web");
    let build_id = b.strings.intern_str(BUILD_ID);
    let mapping = b.mappings.intern(Mapping {
        memory_start: 0x40_0000,
        memory_limit: 0x48_0000,
        file_offset: 0,
        filename: exe,
        build_id,
        build_id_kind: BuildIdKind::Gnu,
    });
    let function = |b: &mut ProfileBatch, name: &str, file: &str| {
        let name = b.strings.intern_str(name);
        let filename = b.strings.intern_str(file);
        b.functions.intern(Function {
            name,
            system_name: name,
            filename,
            start_line: 1,
        })
    };
    let main = function(&mut b, "main", "web.c");
    let handle = function(&mut b, "handle", "web.c");
    let syscall = function(&mut b, "do_syscall_64", "");
    let location = |b: &mut ProfileBatch, mapping, address, function, frame_type| {
        b.locations.intern(Location {
            mapping,
            address,
            lines: vec![Line {
                function,
                line: 42,
                column: 0,
            }],
            frame_type,
        })
    };
    let l_main = location(&mut b, Some(mapping), 0x40_1000, main, FrameType::Native);
    let l_handle = location(&mut b, Some(mapping), 0x40_2000, handle, FrameType::Native);
    let l_kernel = location(
        &mut b,
        None,
        0xffff_ffff_8100_0000,
        syscall,
        FrameType::Kernel,
    );
    let user = b.stacks.intern(vec![l_handle, l_main]);
    let kernel = b.stacks.intern(vec![l_kernel, l_handle, l_main]);
    let web = b.label_sets.intern(LabelSet::new([
        ("pid", "100"),
        ("comm", "web"),
        ("executable", "web"),
        ("container_id", "6b9b8ad1de1c"),
        ("container", "web"),
        ("pod", "web-0"),
        ("namespace", "shop"),
        ("node", "node-1"),
        ("service_name", "shop-web"),
    ]));
    let db = b.label_sets.intern(LabelSet::new([
        ("pid", "200"),
        ("comm", "postgres"),
        ("executable", "postgres"),
        ("node", "node-1"),
    ]));
    let worker = b.label_sets.intern(LabelSet::new([
        ("thread_id", "101"),
        ("thread_comm", "worker"),
        ("cpu", "1"),
    ]));
    let db_thread = b.label_sets.intern(LabelSet::new([
        ("thread_id", "200"),
        ("thread_comm", "postgres"),
        ("cpu", "0"),
    ]));
    for (series, stack, attributes, value) in [
        (web, user, worker, 5),
        (web, kernel, worker, 3),
        (db, user, db_thread, 7),
    ] {
        b.samples.push(Sample {
            stack,
            series,
            attributes,
            value,
            timestamp_unix_nanos: None,
        });
    }
    b
}

fn int(n: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(n)),
    }
}

fn text(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

/// Checks that every index resolves and the attributes follow the semantic
/// conventions; returns the sample total per `process.pid`.
fn check_request(request: &ExportProfilesServiceRequest) -> BTreeMap<i64, i64> {
    let d = request.dictionary.as_ref().expect("a dictionary");
    // Every table starts with its zero entry.
    assert_eq!(d.string_table[0], "");
    assert_eq!(d.mapping_table[0], Default::default());
    assert_eq!(d.location_table[0], Default::default());
    assert_eq!(d.function_table[0], Default::default());
    assert_eq!(d.link_table[0], Default::default());
    assert_eq!(d.attribute_table[0], Default::default());
    assert_eq!(d.stack_table[0], Default::default());
    let string = |i: i32| -> &str { &d.string_table[usize::try_from(i).unwrap()] };
    let attribute = |i: i32| {
        let a = &d.attribute_table[usize::try_from(i).unwrap()];
        (string(a.key_strindex), a.value.clone().unwrap())
    };
    for f in &d.function_table {
        string(f.name_strindex);
        string(f.system_name_strindex);
        string(f.filename_strindex);
    }
    for m in &d.mapping_table[1..] {
        string(m.filename_strindex);
        let attrs: Vec<_> = m.attribute_indices.iter().map(|&i| attribute(i)).collect();
        assert_eq!(attrs, [("process.executable.build_id.gnu", text(BUILD_ID))]);
    }
    let mut frame_types = Vec::new();
    for l in &d.location_table[1..] {
        assert!((l.mapping_index as usize) < d.mapping_table.len());
        for line in &l.lines {
            assert!(
                line.function_index > 0 && (line.function_index as usize) < d.function_table.len()
            );
        }
        for &i in &l.attribute_indices {
            let (key, value) = attribute(i);
            assert_eq!(key, "profile.frame.type");
            frame_types.push(value);
        }
    }
    assert!(frame_types.contains(&text("native")) && frame_types.contains(&text("kernel")));
    let mut totals = BTreeMap::new();
    for rp in &request.resource_profiles {
        let resource: HashMap<&str, AnyValue> = rp
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap()))
            .collect();
        let Some(any_value::Value::IntValue(pid)) = resource["process.pid"].value else {
            panic!("process.pid is not an integer: {resource:?}");
        };
        assert_eq!(resource["host.name"], text("node-1"));
        assert!(resource.contains_key("process.executable.name"));
        assert!(resource.contains_key("process.command"));
        assert!(
            !resource.keys().any(|k| ["pid", "comm", "node"].contains(k)),
            "{resource:?}"
        );
        if pid == 100 {
            assert_eq!(resource["container.id"], text("6b9b8ad1de1c"));
            assert_eq!(resource["container.name"], text("web"));
            assert_eq!(resource["k8s.pod.name"], text("web-0"));
            assert_eq!(resource["k8s.namespace.name"], text("shop"));
            assert_eq!(resource["service.name"], text("shop-web"));
        }
        for scope in &rp.scope_profiles {
            for profile in &scope.profiles {
                let st = profile.sample_type.as_ref().unwrap();
                assert_eq!(
                    (string(st.type_strindex), string(st.unit_strindex)),
                    ("samples", "count")
                );
                for s in &profile.samples {
                    let stack = &d.stack_table[usize::try_from(s.stack_index).unwrap()];
                    assert!(!stack.location_indices.is_empty());
                    for &l in &stack.location_indices {
                        assert!(l > 0 && (l as usize) < d.location_table.len());
                    }
                    let attrs: HashMap<&str, AnyValue> =
                        s.attribute_indices.iter().map(|&i| attribute(i)).collect();
                    assert!(matches!(
                        attrs["thread.id"].value,
                        Some(any_value::Value::IntValue(_))
                    ));
                    assert!(matches!(
                        attrs["cpu.logical_number"].value,
                        Some(any_value::Value::IntValue(_))
                    ));
                    assert!(attrs.contains_key("thread.name"));
                    *totals.entry(pid).or_insert(0) += s.values.iter().sum::<i64>();
                }
            }
        }
    }
    totals
}

fn expected_totals() -> BTreeMap<i64, i64> {
    [(100, 8), (200, 7)].into()
}

/// What the fake backend saw and how it answers.
#[derive(Default)]
struct Backend {
    requests: Mutex<Vec<ExportProfilesServiceRequest>>,
    headers: Mutex<Vec<HashMap<String, String>>>,
    /// Failures to answer before accepting, as gRPC statuses.
    failures: Mutex<Vec<tonic::Status>>,
    partial: Mutex<Option<ExportProfilesPartialSuccess>>,
}

#[derive(Clone)]
struct GrpcBackend(Arc<Backend>);

#[tonic::async_trait]
impl ProfilesService for GrpcBackend {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        self.0.headers.lock().unwrap().push(headers);
        if let Some(status) = self.0.failures.lock().unwrap().pop() {
            return Err(status);
        }
        self.0.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportProfilesServiceResponse {
            partial_success: self.0.partial.lock().unwrap().clone(),
        }))
    }
}

async fn grpc_backend(backend: Arc<Backend>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ProfilesServiceServer::new(GrpcBackend(backend))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

fn exporter(yaml: &str, telemetry: &Telemetry) -> Box<dyn Exporter> {
    let config: OtlpProfilesConfig = serde_yaml::from_str(yaml).unwrap();
    let mut ctx = BuildContext::for_test("otlp_profiles");
    ctx.telemetry = telemetry.scoped(&[("component", "otlp_profiles")]);
    OtlpProfilesFactory.create(config, &ctx).unwrap()
}

fn metric(telemetry: &Telemetry, name: &str, labels: &[(&str, &str)]) -> u64 {
    telemetry.value(name, labels) as u64
}

#[tokio::test]
async fn grpc_delivers_resolvable_conventional_profiles() {
    let backend = Arc::new(Backend::default());
    let address = grpc_backend(backend.clone()).await;
    let telemetry = Telemetry::default();
    let mut e = exporter(
        &format!("endpoint: {address}\ntls: {{insecure: true}}\nheaders: {{authorization: Bearer t0ken}}"),
        &telemetry,
    );
    e.export(Arc::new(rich_batch())).await.unwrap();
    let requests = backend.requests.lock().unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(check_request(&requests[0]), expected_totals());
    let headers = &backend.headers.lock().unwrap()[0];
    assert_eq!(headers["authorization"], "Bearer t0ken");
    assert_eq!(headers["grpc-encoding"], "gzip");
    assert_eq!(
        metric(&telemetry, "agent_otlp_profiles_sent_batches_total", &[]),
        1
    );
}

#[tokio::test]
async fn grpc_retries_what_the_spec_calls_retryable() {
    let backend = Arc::new(Backend::default());
    // Popped from the end: unavailable first, then throttled with RetryInfo.
    *backend.failures.lock().unwrap() = vec![
        tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(700))),
        ),
        tonic::Status::unavailable("restarting"),
    ];
    *backend.partial.lock().unwrap() = Some(ExportProfilesPartialSuccess {
        rejected_profiles: 1,
        error_message: "one profile too old".into(),
    });
    let address = grpc_backend(backend.clone()).await;
    let telemetry = Telemetry::default();
    let mut e = exporter(
        &format!("endpoint: http://{address}\nretry_on_failure: {{initial_interval: 50ms}}"),
        &telemetry,
    );
    let started = tokio::time::Instant::now();
    e.export(Arc::new(rich_batch())).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "RetryInfo honoured"
    );
    assert_eq!(backend.requests.lock().unwrap().len(), 1);
    assert_eq!(backend.headers.lock().unwrap().len(), 3);
    assert_eq!(metric(&telemetry, "agent_exporter_retries_total", &[]), 2);
    assert_eq!(
        metric(
            &telemetry,
            "agent_otlp_profiles_partial_success_rejected_profiles_total",
            &[]
        ),
        1
    );

    // A permanent refusal is not retried: dropped and counted.
    backend
        .failures
        .lock()
        .unwrap()
        .push(tonic::Status::invalid_argument("bad dictionary"));
    let error = e
        .export(Arc::new(rich_batch()))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("bad dictionary"), "{error}");
    assert_eq!(
        metric(
            &telemetry,
            "agent_otlp_profiles_dropped_batches_total",
            &[("reason", "rejected")]
        ),
        1
    );
    assert_eq!(backend.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_backend_that_stays_down_is_given_up_on_after_max_elapsed_time() {
    // Bound and released: nothing listens there.
    let address = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let telemetry = Telemetry::default();
    let mut e = exporter(
        &format!("endpoint: {address}\ntls: {{insecure: true}}\nretry_on_failure: {{initial_interval: 50ms, max_interval: 100ms, max_elapsed_time: 1s}}"),
        &telemetry,
    );
    let error = e
        .export(Arc::new(rich_batch()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not taken within retry_on_failure::max_elapsed_time (1s)"),
        "{error}"
    );
    assert_eq!(
        metric(
            &telemetry,
            "agent_otlp_profiles_dropped_batches_total",
            &[("reason", "retries_exhausted")]
        ),
        1
    );
    assert!(metric(&telemetry, "agent_exporter_retries_total", &[]) >= 3);
}

#[tokio::test]
async fn http_posts_gzipped_protobuf_and_honours_retry_after() {
    use axum::http::{HeaderMap, StatusCode};
    #[derive(Default)]
    struct Seen {
        bodies: Vec<ExportProfilesServiceRequest>,
        headers: Vec<HeaderMap>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new().route(
        "/v1development/profiles",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                let mut seen = seen.lock().unwrap();
                seen.headers.push(headers.clone());
                if seen.headers.len() == 1 {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        Vec::new(),
                    );
                }
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut plain)
                    .unwrap();
                seen.bodies
                    .push(ExportProfilesServiceRequest::decode(plain.as_slice()).unwrap());
                let answer = ExportProfilesServiceResponse::default().encode_to_vec();
                (
                    StatusCode::OK,
                    [("content-type", "application/x-protobuf")],
                    answer,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let telemetry = Telemetry::default();
    let mut e = exporter(
        &format!("endpoint: http://{address}\nprotocol: http\nheaders: {{x-api-key: k3y}}"),
        &telemetry,
    );
    let started = tokio::time::Instant::now();
    e.export(Arc::new(rich_batch())).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bodies.len(), 1);
    assert_eq!(check_request(&seen.bodies[0]), expected_totals());
    let headers = &seen.headers[1];
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["x-api-key"], "k3y");
    assert_eq!(metric(&telemetry, "agent_exporter_retries_total", &[]), 1);
}

#[tokio::test]
async fn attribute_keys_are_configurable() {
    let backend = Arc::new(Backend::default());
    let address = grpc_backend(backend.clone()).await;
    let telemetry = Telemetry::default();
    let mut e = exporter(
        &format!("endpoint: {address}\ntls: {{insecure: true}}\ncompression: none\nattributes: {{comm: process.executable.name, executable: '', node: k8s.node.name}}"),
        &telemetry,
    );
    e.export(Arc::new(rich_batch())).await.unwrap();
    let requests = backend.requests.lock().unwrap();
    let resource = requests[0].resource_profiles[0].resource.as_ref().unwrap();
    let get = |k: &str| {
        resource
            .attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
    };
    assert_eq!(get("process.executable.name"), Some(text("web")));
    assert_eq!(get("k8s.node.name"), Some(text("node-1")));
    assert_eq!(get("host.name"), None);
    assert_eq!(get("process.pid"), Some(int(100)));
    assert_eq!(
        resource
            .attributes
            .iter()
            .filter(|kv| kv.key == "process.executable.name")
            .count(),
        1
    );
}

/// A venv with OpenTelemetry's Python protos (from PyPI), made once per
/// target directory. Fails loudly: this check must not be skipped.
fn python_with_otlp_protos() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("otlp-python");
    let python = venv.join("bin/python");
    let ready = venv.join("ready-1.43");
    if !ready.exists() {
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv));
        run(std::process::Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "opentelemetry-proto>=1.43",
        ]));
        std::fs::write(&ready, "").unwrap();
    }
    python
}

#[tokio::test]
async fn an_independent_implementation_decodes_every_field() {
    let backend = Arc::new(Backend::default());
    let address = grpc_backend(backend.clone()).await;
    let telemetry = Telemetry::default();
    let mut e = exporter(
        &format!("endpoint: {address}\ntls: {{insecure: true}}"),
        &telemetry,
    );
    e.export(Arc::new(rich_batch())).await.unwrap();
    let request = backend.requests.lock().unwrap()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.bin");
    std::fs::write(&file, request.encode_to_vec()).unwrap();
    let python = tokio::task::spawn_blocking(python_with_otlp_protos)
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/decode_otlp.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["unknown"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["resources"], 2);
    assert_eq!(summary["samples"], 3);
    assert_eq!(summary["total"], 15);
    assert_eq!(
        summary["strings"],
        request.dictionary.as_ref().unwrap().string_table.len()
    );
}
