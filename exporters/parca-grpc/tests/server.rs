//! The exporter against an in-process Parca server (tonic) implementing
//! ProfileStoreService and DebuginfoService, plus a local HTTP server for
//! signed-URL uploads.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::pprof::proto;
use agent_core::{
    BuildContext, BuildIdKind, Exporter, Factory, FrameType, LabelSet, Location, Mapping,
    ProfileBatch, ProfileType, Sample,
};
use agent_exporter_parca_grpc::proto::debuginfo::debuginfo_service_server::{
    DebuginfoService, DebuginfoServiceServer,
};
use agent_exporter_parca_grpc::proto::debuginfo::upload_instructions::UploadStrategy;
use agent_exporter_parca_grpc::proto::debuginfo::{
    upload_request, InitiateUploadRequest, InitiateUploadResponse, MarkUploadFinishedRequest,
    MarkUploadFinishedResponse, ShouldInitiateUploadRequest, ShouldInitiateUploadResponse,
    UploadInstructions, UploadRequest, UploadResponse,
};
use agent_exporter_parca_grpc::proto::profilestore::profile_store_service_server::{
    ProfileStoreService, ProfileStoreServiceServer,
};
use agent_exporter_parca_grpc::proto::profilestore::{WriteRawRequest, WriteRawResponse};
use agent_exporter_parca_grpc::proto::telemetry::telemetry_service_server::{
    TelemetryService, TelemetryServiceServer,
};
use agent_exporter_parca_grpc::proto::telemetry::{ReportPanicRequest, ReportPanicResponse};
use agent_exporter_parca_grpc::{panic_report, ParcaGrpcConfig, ParcaGrpcFactory, Secret};
use object::{Object, ObjectSection};
use prost::Message;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

mod support;
use support::{wait_for, LogCapture};

/// What the fake server received.
#[derive(Default)]
struct Received {
    writes: Vec<WriteRawRequest>,
    refused_writes: usize,
    should_initiate: Vec<String>,
    uploads: HashMap<String, Vec<u8>>,
    largest_chunk: usize,
    finished: Vec<String>,
    panics: Vec<ReportPanicRequest>,
}

/// A Parca server in memory.
struct FakeParca {
    token: Option<String>,
    strategy: UploadStrategy,
    signed_url_base: String,
    received: Mutex<Received>,
}

impl FakeParca {
    fn new(token: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            token: token.map(str::to_owned),
            strategy: UploadStrategy::Grpc,
            signed_url_base: String::new(),
            received: Mutex::default(),
        })
    }

    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let sent = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if sent == Some(format!("Bearer {token}").as_str()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("bad token"))
        }
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap()
    }
}

#[tonic::async_trait]
impl ProfileStoreService for FakeParca {
    async fn write_raw(
        &self,
        request: Request<WriteRawRequest>,
    ) -> Result<Response<WriteRawResponse>, Status> {
        if let Err(status) = self.check_token(&request) {
            self.received().refused_writes += 1;
            return Err(status);
        }
        self.received().writes.push(request.into_inner());
        Ok(Response::new(WriteRawResponse {}))
    }
}

#[tonic::async_trait]
impl DebuginfoService for FakeParca {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        self.check_token(&request)?;
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("empty stream"));
        };
        let Some(upload_request::Data::Info(info)) = first.data else {
            return Err(Status::invalid_argument("first message must be info"));
        };
        let mut data = Vec::new();
        while let Some(m) = stream.message().await? {
            match m.data {
                Some(upload_request::Data::ChunkData(chunk)) => {
                    let mut r = self.received();
                    r.largest_chunk = r.largest_chunk.max(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                _ => return Err(Status::invalid_argument("info after the first message")),
            }
        }
        let size = data.len() as u64;
        self.received().uploads.insert(info.build_id.clone(), data);
        Ok(Response::new(UploadResponse {
            build_id: info.build_id,
            size,
        }))
    }

    async fn should_initiate_upload(
        &self,
        request: Request<ShouldInitiateUploadRequest>,
    ) -> Result<Response<ShouldInitiateUploadResponse>, Status> {
        self.check_token(&request)?;
        let id = request.into_inner().build_id;
        let mut r = self.received();
        r.should_initiate.push(id.clone());
        let exists = r.uploads.contains_key(&id);
        Ok(Response::new(ShouldInitiateUploadResponse {
            should_initiate_upload: !exists,
            reason: if exists {
                "exists".into()
            } else {
                String::new()
            },
        }))
    }

    async fn initiate_upload(
        &self,
        request: Request<InitiateUploadRequest>,
    ) -> Result<Response<InitiateUploadResponse>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        Ok(Response::new(InitiateUploadResponse {
            upload_instructions: Some(UploadInstructions {
                build_id: r.build_id.clone(),
                upload_id: format!("upload-{}", r.build_id),
                upload_strategy: self.strategy.into(),
                signed_url: format!("{}/{}", self.signed_url_base, r.build_id),
                r#type: r.r#type,
            }),
        }))
    }

    async fn mark_upload_finished(
        &self,
        request: Request<MarkUploadFinishedRequest>,
    ) -> Result<Response<MarkUploadFinishedResponse>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        assert_eq!(r.upload_id, format!("upload-{}", r.build_id));
        self.received().finished.push(r.build_id);
        Ok(Response::new(MarkUploadFinishedResponse {}))
    }
}

#[tonic::async_trait]
impl TelemetryService for FakeParca {
    async fn report_panic(
        &self,
        request: Request<ReportPanicRequest>,
    ) -> Result<Response<ReportPanicResponse>, Status> {
        self.check_token(&request)?;
        self.received().panics.push(request.into_inner());
        Ok(Response::new(ReportPanicResponse {}))
    }
}

/// Serves `fake` on `listener` until the returned task is aborted.
fn serve(fake: Arc<FakeParca>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ProfileStoreServiceServer::from_arc(fake.clone()))
            .add_service(TelemetryServiceServer::from_arc(fake.clone()))
            .add_service(DebuginfoServiceServer::from_arc(fake).max_decoding_message_size(16 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    })
}

async fn start(fake: Arc<FakeParca>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve(fake, listener);
    address
}

/// This test binary's code mapping, as the receiver would report it.
fn own_mapping() -> (String, (u64, u64), u64, String) {
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap().to_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains(" r-xp ") && l.ends_with(&me))
        .expect("code mapping of this binary");
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next().unwrap().split_once('-').unwrap();
    let offset = u64::from_str_radix(fields.nth(1).unwrap(), 16).unwrap();
    let data = std::fs::read(&me).unwrap();
    let build_id = object::File::parse(&*data)
        .unwrap()
        .build_id()
        .unwrap()
        .expect("Debian's linker gives binaries a GNU build id");
    let build_id: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
    (
        me,
        (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        ),
        offset,
        build_id,
    )
}

/// A window with two series of this process, `samples` samples each, in
/// this binary's code and in the kernel.
fn batch(samples: usize, window: u64) -> ProfileBatch {
    let (path, range, offset, build_id) = own_mapping();
    let mut b = ProfileBatch::new(
        ProfileType::cpu_samples(19),
        window * 1_000_000_000,
        1_000_000_000,
    );
    let filename = b.strings.intern_str(&path);
    let build_id = b.strings.intern_str(&build_id);
    let exe = b.mappings.intern(Mapping {
        memory_start: range.0,
        memory_limit: range.1,
        file_offset: offset,
        filename,
        build_id,
        build_id_kind: BuildIdKind::Gnu,
    });
    let kernel_name = b.strings.intern_str("[kernel.kallsyms]");
    let kernel = b.mappings.intern(Mapping {
        memory_start: 0xffff_ffff_8100_0000,
        memory_limit: 0xffff_ffff_8200_0000,
        file_offset: 0,
        filename: kernel_name,
        build_id: 0,
        build_id_kind: BuildIdKind::None,
    });
    let user = b.locations.intern(Location {
        mapping: Some(exe),
        address: range.0 + 0x40,
        lines: vec![],
        frame_type: FrameType::Native,
    });
    let k = b.locations.intern(Location {
        mapping: Some(kernel),
        address: 0xffff_ffff_8100_1234,
        lines: vec![],
        frame_type: FrameType::Kernel,
    });
    let stack = b.stacks.intern(vec![k, user]);
    let pid = std::process::id().to_string();
    for comm in ["app", "worker"] {
        let series = b.label_sets.intern(LabelSet::new([
            ("comm", comm),
            ("pid", pid.as_str()),
            ("node", "n1"),
        ]));
        let thread = b.label_sets.intern(LabelSet::new([("thread_id", "7")]));
        for _ in 0..samples {
            b.samples.push(Sample {
                stack,
                series,
                attributes: thread,
                value: 1,
                timestamp_unix_nanos: None,
            });
        }
    }
    b
}

fn config(address: SocketAddr, temp: &std::path::Path) -> ParcaGrpcConfig {
    ParcaGrpcConfig {
        address: agent_core::Endpoint(format!("http://{address}")),
        batch_write_interval: Duration::from_millis(200),
        debuginfo_temp_dir: temp.to_owned(),
        debuginfo_directories: vec![],
        ..Default::default()
    }
}

/// Built and started, as the service does.
async fn exporter(config: ParcaGrpcConfig) -> Box<dyn Exporter> {
    let mut exporter = ParcaGrpcFactory
        .create(config, &BuildContext::for_test("parca_grpc"))
        .unwrap();
    exporter.start().await.unwrap();
    exporter
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Exports one window and waits until `build_id`'s upload is finished.
async fn upload_one_window(mut exporter: Box<dyn Exporter>, fake: &FakeParca, build_id: &str) {
    exporter.export(Arc::new(batch(1, 1))).await.unwrap();
    let finished = || fake.received().finished.iter().any(|f| f == build_id);
    assert!(wait_for(Duration::from_secs(60), finished).await);
    exporter.shutdown().await.unwrap();
}

fn samples_received(fake: &FakeParca) -> i64 {
    fake.received()
        .writes
        .iter()
        .flat_map(|w| &w.series)
        .flat_map(|s| &s.samples)
        .map(|raw| {
            let p = proto::Profile::decode(&*gunzip(&raw.raw_profile)).unwrap();
            p.sample.iter().map(|s| s.value[0]).sum::<i64>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_and_labels_arrive_in_profiles_that_obey_the_servers_rules() {
    let fake = FakeParca::new(Some("right"));
    let address = start(fake.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let mut exporter = exporter(ParcaGrpcConfig {
        bearer_token: Secret("right".into()),
        debuginfo_upload_disable: true,
        ..config(address, temp.path())
    })
    .await;
    exporter.export(Arc::new(batch(5, 1))).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !fake
            .received()
            .writes
            .is_empty())
        .await
    );
    exporter.shutdown().await.unwrap();

    let received = fake.received();
    let series: Vec<_> = received.writes.iter().flat_map(|w| &w.series).collect();
    assert_eq!(series.len(), 2, "one per label set");
    let (_, range, offset, _) = own_mapping();
    let text = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let info = agent_object_files::elf_info(&text).unwrap();
    let text_segment = info
        .text_segment()
        .map(|s| (s.file_offset, s.vaddr))
        .unwrap();
    let mut comms = Vec::new();
    for s in series {
        let labels: HashMap<&str, &str> = s
            .labels
            .as_ref()
            .unwrap()
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels["__name__"], "parca_agent_cpu");
        assert_eq!(labels["node"], "n1");
        comms.push(labels["comm"].to_owned());
        assert_eq!(s.samples.len(), 1, "one profile per window");
        let raw = &s.samples[0];
        let p = proto::Profile::decode(&*gunzip(&raw.raw_profile)).unwrap();
        // The server's rules: "" first, ids 1..n in order, references valid.
        assert_eq!(p.string_table[0], "");
        for (i, m) in p.mapping.iter().enumerate() {
            assert_eq!(m.id, i as u64 + 1);
        }
        for (i, l) in p.location.iter().enumerate() {
            assert_eq!(l.id, i as u64 + 1);
            assert!(l.mapping_id >= 1 && l.mapping_id as usize <= p.mapping.len());
        }
        for (i, f) in p.function.iter().enumerate() {
            assert_eq!(f.id, i as u64 + 1);
        }
        assert_eq!(p.sample.iter().map(|s| s.value[0]).sum::<i64>(), 5);
        let thread = p
            .string_table
            .iter()
            .position(|s| s == "thread_id")
            .unwrap() as i64;
        assert!(p
            .sample
            .iter()
            .all(|s| s.label.iter().any(|l| l.key == thread)));
        // One executable_info per mapping, in mapping order.
        assert_eq!(raw.executable_info.len(), p.mapping.len());
        for (m, info) in p.mapping.iter().zip(&raw.executable_info) {
            let name = &p.string_table[m.filename as usize];
            if name == "[kernel.kallsyms]" {
                assert_eq!(info.elf_type, 0);
                assert!(info.load_segment.is_none());
            } else {
                assert_eq!(
                    (m.memory_start, m.memory_limit, m.file_offset),
                    (range.0, range.1, offset)
                );
                assert_eq!(
                    info.elf_type,
                    u32::from(object::elf::ET_DYN.0),
                    "Rust test binaries are PIE"
                );
                let seg = info.load_segment.as_ref().unwrap();
                assert_eq!((seg.offset, seg.vaddr), text_segment);
            }
        }
    }
    comms.sort();
    assert_eq!(comms, ["app", "worker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_reported_once_and_nothing_is_lost_once_fixed() {
    let fake = FakeParca::new(Some("right"));
    let address = start(fake.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let token_file = temp.path().join("token");
    std::fs::write(&token_file, "wrong").unwrap();
    let logs = LogCapture::install();
    let mut exporter = exporter(ParcaGrpcConfig {
        bearer_token_file: Some(token_file.clone()),
        debuginfo_upload_disable: true,
        ..config(address, temp.path())
    })
    .await;
    for window in 0..5 {
        exporter.export(Arc::new(batch(3, window))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fake.received().refused_writes >= 3, "it kept trying");
    assert!(fake.received().writes.is_empty());
    let reports = logs.count("refuses our credentials");
    assert_eq!(reports, 1, "reported once, not per attempt");
    assert!(!logs.contains("wrong"), "the token never appears in logs");

    // A fixed token file is picked up; what waited is delivered.
    std::fs::write(&token_file, "right\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&token_file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || samples_received(&fake)
            == 5 * 2 * 3)
        .await
    );
    exporter.shutdown().await.unwrap();
    // Only this test's exporter (others may recover in parallel).
    let recovered = logs
        .text()
        .lines()
        .filter(|l| l.contains("delivering again") && l.contains(&address.to_string()))
        .count();
    assert_eq!(recovered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_for_30s_loses_nothing_within_the_buffer() {
    // Reserve a port, then leave it closed: connections are refused.
    let address = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let temp = tempfile::tempdir().unwrap();
    let mut exporter = exporter(ParcaGrpcConfig {
        batch_write_interval: Duration::from_secs(1),
        rpc_unary_timeout: Duration::from_secs(5),
        debuginfo_upload_disable: true,
        ..config(address, temp.path())
    })
    .await;
    let down = Instant::now();
    let mut window = 0;
    while down.elapsed() < Duration::from_secs(30) {
        exporter.export(Arc::new(batch(4, window))).await.unwrap();
        window += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fake = FakeParca::new(None);
    serve(fake.clone(), TcpListener::bind(address).await.unwrap());
    let expected = window as i64 * 2 * 4;
    assert!(
        wait_for(Duration::from_secs(40), || samples_received(&fake)
            == expected)
        .await,
        "got {} of {expected} samples",
        samples_received(&fake)
    );
    exporter.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debuginfo_is_uploaded_in_chunks_that_reassemble_byte_exactly() {
    let fake = FakeParca::new(None);
    let address = start(fake.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let (path, _, _, build_id) = own_mapping();
    let original = std::fs::read(&path).unwrap();
    assert!(
        original.len() > 8 << 20,
        "a debug test binary spans several chunks"
    );
    let exporter = exporter(ParcaGrpcConfig {
        debuginfo_strip: false,
        ..config(address, temp.path())
    })
    .await;
    upload_one_window(exporter, &fake, &build_id).await;
    let received = fake.received();
    let uploaded = &received.uploads[&build_id];
    assert!(
        uploaded == &original,
        "{} vs {} bytes",
        uploaded.len(),
        original.len()
    );
    assert_eq!(received.largest_chunk, 8 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripped_upload_keeps_symbols_and_dwarf_and_a_restart_does_not_upload_again() {
    let fake = FakeParca::new(None);
    let address = start(fake.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let (path, _, _, build_id) = own_mapping();
    let original = std::fs::read(&path).unwrap();
    let first = exporter(config(address, temp.path())).await;
    upload_one_window(first, &fake, &build_id).await;
    {
        let received = fake.received();
        let stripped = &received.uploads[&build_id];
        // Smaller by at least the code left out (DWARF dominates a debug build).
        let code = object::File::parse(&*original)
            .unwrap()
            .section_by_name(".text")
            .unwrap()
            .size() as usize;
        assert!(
            stripped.len() + code * 9 / 10 < original.len(),
            "{} vs {} bytes, .text {code}",
            stripped.len(),
            original.len()
        );
        let elf = object::File::parse(&**stripped).unwrap();
        assert_eq!(
            elf.build_id()
                .unwrap()
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
            Some(build_id.clone())
        );
        for section in [".symtab", ".strtab", ".debug_info", ".debug_line"] {
            assert!(
                elf.section_by_name(section).is_some_and(|s| s.size() > 0),
                "{section} kept"
            );
        }
        assert!(elf
            .section_by_name(".text")
            .unwrap()
            .data()
            .unwrap()
            .is_empty());
        assert_eq!(received.should_initiate.len(), 1);
    }
    // A new exporter with the same temp dir: the record says done.
    let mut second = exporter(config(address, temp.path())).await;
    second.export(Arc::new(batch(1, 2))).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || fake.received().writes.len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.shutdown().await.unwrap();
    assert_eq!(
        fake.received().should_initiate.len(),
        1,
        "not asked again within the cache duration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_upload_is_a_put_of_the_file() {
    let puts: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_address = http.local_addr().unwrap();
    let stored = puts.clone();
    let app = axum::Router::new()
        .route(
            "/bucket/{id}",
            axum::routing::put(
                move |axum::extract::Path(id): axum::extract::Path<String>,
                      body: axum::body::Bytes| {
                    let stored = stored.clone();
                    async move {
                        stored.lock().unwrap().insert(id, body.to_vec());
                        "ok"
                    }
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
    let fake = Arc::new(FakeParca {
        token: None,
        strategy: UploadStrategy::SignedUrl,
        signed_url_base: format!("http://{http_address}/bucket"),
        received: Mutex::default(),
    });
    let address = start(fake.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let (path, _, _, build_id) = own_mapping();
    let exporter = exporter(ParcaGrpcConfig {
        debuginfo_strip: false,
        ..config(address, temp.path())
    })
    .await;
    upload_one_window(exporter, &fake, &build_id).await;
    let original = std::fs::read(&path).unwrap();
    assert!(
        puts.lock().unwrap()[&build_id] == original,
        "PUT body is the file"
    );
    assert!(
        fake.received().uploads.is_empty(),
        "not through the gRPC stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_report_carries_the_stderr_tail_and_host_facts() {
    let fake = FakeParca::new(Some("right"));
    let address = start(fake.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let config = ParcaGrpcConfig {
        bearer_token: Secret("right".into()),
        ..config(address, temp.path())
    };
    let request = ReportPanicRequest {
        stderr: "level=info msg=started\npanicked at src/x.rs:1:1".into(),
        metadata: panic_report::metadata("abc123", "node-1"),
    };
    tokio::task::spawn_blocking(move || panic_report::send_report(&config, request))
        .await
        .unwrap()
        .unwrap();
    let received = fake.received();
    let report = &received.panics[0];
    assert!(report.stderr.ends_with("panicked at src/x.rs:1:1"));
    assert_eq!(report.metadata["agent_revision"], "abc123");
    assert_eq!(report.metadata["node"], "node-1");
    assert!(report.metadata["cpu_cores"].parse::<usize>().unwrap() >= 1);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(report.metadata["kernel_release"], release.trim());
}
