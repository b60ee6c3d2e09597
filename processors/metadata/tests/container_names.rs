//! Container names from runtime sockets: a Docker Engine API and a CRI
//! runtime served on unix sockets in this test, processes described by a
//! proc tree written in a temp dir.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_core::telemetry::Telemetry;
use agent_core::{BuildContext, Factory, LabelSet, Processor, ProfileBatch};
use agent_processor_metadata::runtime::cri;
use agent_processor_metadata::{MetadataConfig, MetadataFactory};
use tokio_stream::wrappers::UnixListenerStream;

const DOCKER_ID: &str = "6b9b8ad1de1c7e0c6d2a4a9f2f8ff1e5b0d5a1c3e8e3c1d39f8a7c0ffee12345";
const CRI_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const UNKNOWN_ID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A proc tree with one process per `(pid, comm, cgroup line)`.
fn proc_tree(dir: &Path, processes: &[(u32, &str, String)]) {
    let exe = std::env::current_exe().unwrap();
    for (pid, comm, cgroup) in processes {
        let p = dir.join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("stat"), format!("{pid} ({comm}) S 1 {pid} {pid} 0")).unwrap();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(p.join("cmdline"), format!("{comm}\0--serve\0")).unwrap();
        std::fs::write(p.join("cgroup"), cgroup).unwrap();
        std::os::unix::fs::symlink(&exe, p.join("exe")).unwrap();
    }
}

/// A proc tree under `dir` whose one process, nginx (4242), runs in
/// docker container [`DOCKER_ID`].
fn nginx_in_docker(dir: &Path) -> PathBuf {
    let proc_root = dir.join("proc");
    proc_tree(
        &proc_root,
        &[(
            4242,
            "nginx",
            format!("0::/system.slice/docker-{DOCKER_ID}.scope\n"),
        )],
    );
    proc_root
}

/// A window with one sample per `(pid, comm)` series.
fn window(series: &[(u32, &str)]) -> ProfileBatch {
    ProfileBatch::one_sample_per_series(
        series
            .iter()
            .map(|(pid, comm)| LabelSet::new([("pid", pid.to_string().as_str()), ("comm", comm)])),
    )
}

/// The labels of each sample's series, in sample order.
fn labels_of(batch: &ProfileBatch) -> Vec<LabelSet> {
    batch.sample_series_labels()
}

fn processor(
    proc_root: &Path,
    socket: PathBuf,
    wait: Duration,
    telemetry: &Telemetry,
) -> Box<dyn Processor> {
    let mut ctx = BuildContext::for_test("metadata");
    ctx.telemetry = telemetry.scoped(&[("component", "metadata")]);
    let config = MetadataConfig {
        proc_root: proc_root.to_owned(),
        container_runtime_socket: Some(socket),
        container_name_wait: wait,
        ..Default::default()
    };
    MetadataFactory.create(config, &ctx).unwrap()
}

/// Serves a Docker Engine API that knows [`DOCKER_ID`] as `/web`, answering
/// after `delay`.
fn docker_api(rt: &tokio::runtime::Runtime, socket: &Path, delay: Duration) {
    use axum::extract::Path as UrlPath;
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/containers/{id}/json",
        axum::routing::get(move |UrlPath(id): UrlPath<String>| async move {
            tokio::time::sleep(delay).await;
            if id != DOCKER_ID {
                return (
                    StatusCode::NOT_FOUND,
                    r#"{"message":"No such container"}"#.to_owned(),
                );
            }
            let body = serde_json::json!({
                "Id": DOCKER_ID,
                "Name": "/web",
                "Config": {"Labels": {"com.docker.compose.service": "web"}},
                "State": {"Running": true, "Pid": 4242},
            });
            (StatusCode::OK, body.to_string())
        }),
    );
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(socket).unwrap() });
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// A CRI runtime that knows [`CRI_ID`] as container `app` of pod `app-5f7c`.
struct FakeCri;

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for FakeCri {
    async fn container_status(
        &self,
        request: tonic::Request<cri::ContainerStatusRequest>,
    ) -> Result<tonic::Response<cri::ContainerStatusResponse>, tonic::Status> {
        let id = request.into_inner().container_id;
        if id != CRI_ID {
            return Err(tonic::Status::not_found(format!(
                "an error occurred when try to find container {id:?}: not found"
            )));
        }
        Ok(tonic::Response::new(cri::ContainerStatusResponse {
            status: Some(cri::ContainerStatus {
                id,
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                labels: [
                    ("io.kubernetes.container.name", "app"),
                    ("io.kubernetes.pod.name", "app-5f7c"),
                    ("io.kubernetes.pod.namespace", "shop"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            }),
        }))
    }
}

fn cri_runtime(rt: &tokio::runtime::Runtime, socket: &Path) {
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(socket).unwrap() });
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(cri::runtime_service_server::RuntimeServiceServer::new(
                FakeCri,
            ))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

fn lookups(telemetry: &Telemetry, result: &str) -> String {
    telemetry
        .value(
            "agent_metadata_container_lookups_total",
            &[("result", result)],
        )
        .to_string()
}

#[test]
fn docker_names_its_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = dir.path().join("docker.sock");
    docker_api(&rt, &socket, Duration::ZERO);
    let proc_root = dir.path().join("proc");
    proc_tree(
        &proc_root,
        &[
            (
                4242,
                "nginx",
                format!("0::/system.slice/docker-{DOCKER_ID}.scope\n"),
            ),
            (4343, "redis", format!("12:memory:/docker/{UNKNOWN_ID}\n")),
            (4444, "sshd", "0::/system.slice/sshd.service\n".to_owned()),
        ],
    );
    let telemetry = Telemetry::default();
    let mut p = processor(&proc_root, socket, Duration::from_secs(5), &telemetry);
    let out = p
        .process(window(&[(4242, "nginx"), (4343, "redis"), (4444, "sshd")]))
        .unwrap();
    let labels = labels_of(&out);
    assert_eq!(labels[0].get("__meta_docker_container_id"), Some(DOCKER_ID));
    // Named in the window that first sees it: the window waits for it.
    assert_eq!(labels[0].get("__meta_docker_container_name"), Some("web"));
    assert_eq!(labels[0].get("__meta_docker_pod_name"), None);
    // A container the runtime does not know keeps its id, gets no name.
    assert_eq!(
        labels[1].get("__meta_docker_container_id"),
        Some(UNKNOWN_ID)
    );
    assert_eq!(labels[1].get("__meta_docker_container_name"), None);
    assert_eq!(labels[2].get("__meta_docker_container_id"), None);
    assert_eq!(lookups(&telemetry, "found"), "1");
    assert_eq!(lookups(&telemetry, "not_found"), "1");

    // Cached: the next window asks nothing.
    let out = p.process(window(&[(4242, "nginx")])).unwrap();
    assert_eq!(
        labels_of(&out)[0].get("__meta_docker_container_name"),
        Some("web")
    );
    assert_eq!(lookups(&telemetry, "found"), "1");
}

#[test]
fn cri_runtimes_name_containers_and_pods() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = dir.path().join("containerd.sock");
    cri_runtime(&rt, &socket);
    let proc_root = dir.path().join("proc");
    let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b3c2f0e_8d2e_4a49_9d4a_0c7f3d1f2b1a.slice";
    proc_tree(
        &proc_root,
        &[
            (
                5151,
                "app",
                format!("0::/{pod}/cri-containerd-{CRI_ID}.scope\n"),
            ),
            (
                5252,
                "sidecar",
                format!("0::/{pod}/cri-containerd-{UNKNOWN_ID}.scope\n"),
            ),
        ],
    );
    let telemetry = Telemetry::default();
    let mut p = processor(&proc_root, socket, Duration::from_secs(5), &telemetry);
    let out = p
        .process(window(&[(5151, "app"), (5252, "sidecar")]))
        .unwrap();
    let labels = labels_of(&out);
    assert_eq!(
        labels[0].get("__meta_containerd_container_id"),
        Some(CRI_ID)
    );
    assert_eq!(
        labels[0].get("__meta_containerd_container_name"),
        Some("app")
    );
    assert_eq!(
        labels[0].get("__meta_containerd_pod_name"),
        Some("app-5f7c")
    );
    assert_eq!(labels[1].get("__meta_containerd_container_name"), None);
    assert_eq!(lookups(&telemetry, "found"), "1");
    assert_eq!(lookups(&telemetry, "not_found"), "1");
}

#[test]
fn a_runtime_that_is_down_leaves_names_out_without_holding_windows() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = nginx_in_docker(dir.path());
    let telemetry = Telemetry::default();
    // Nothing listens on this path.
    let socket = dir.path().join("absent.sock");
    let mut p = processor(&proc_root, socket, Duration::from_secs(5), &telemetry);
    let started = Instant::now();
    let out = p.process(window(&[(4242, "nginx")])).unwrap();
    let labels = labels_of(&out);
    assert_eq!(labels[0].get("__meta_docker_container_id"), Some(DOCKER_ID));
    assert_eq!(labels[0].get("__meta_docker_container_name"), None);
    assert_eq!(labels[0].get("__meta_process_pid"), Some("4242"));
    assert_eq!(lookups(&telemetry, "unreachable"), "1");
    // A refused connection answers at once: the 5 s wait is not used up.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Not asked again in the next window (retried after a minute).
    p.process(window(&[(4242, "nginx")])).unwrap();
    assert_eq!(lookups(&telemetry, "unreachable"), "1");
}

#[test]
fn a_slow_runtime_names_the_container_in_a_later_window() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = dir.path().join("docker.sock");
    docker_api(&rt, &socket, Duration::from_millis(800));
    let proc_root = nginx_in_docker(dir.path());
    let telemetry = Telemetry::default();
    let mut p = processor(&proc_root, socket, Duration::from_millis(50), &telemetry);
    let out = p.process(window(&[(4242, "nginx")])).unwrap();
    assert_eq!(
        labels_of(&out)[0].get("__meta_docker_container_name"),
        None,
        "the window does not wait longer than container_name_wait"
    );
    // The answer arrives in the background and labels a later window.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let out = p.process(window(&[(4242, "nginx")])).unwrap();
        if labels_of(&out)[0].get("__meta_docker_container_name") == Some("web") {
            break;
        }
        assert!(Instant::now() < deadline, "never named");
    }
    assert_eq!(lookups(&telemetry, "found"), "1");
}
