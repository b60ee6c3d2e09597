//! The processor against a local HTTP server speaking the Kubernetes API:
//! list and watch of pods and nodes with resourceVersions, bookmarks, and a
//! `410 Gone` that forces a relist; and against a server that is down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::{BuildContext, Factory, LabelSet, Processor, ProfileBatch};
use agent_processor_k8s_meta::{K8sMetaConfig, K8sMetaFactory};
use axum::body::Body;
use axum::extract::{Query, State};
use serde_json::{json, Value};

const NODE: &str = "test-node";
const WEB_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const INIT_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const LATE_ID: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const RELISTED_ID: &str = "4444444444444444444444444444444444444444444444444444444444444444";

/// A pod as the API server returns it, with one container (and optionally
/// an init container).
fn pod(name: &str, rv: u64, container_id: &str, init_id: Option<&str>) -> Value {
    let mut status = json!({
        "phase": "Running",
        "hostIP": "10.0.0.7",
        "podIP": "10.244.1.23",
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "containerStatuses": [{
            "name": "app",
            "image": "registry.example/shop/web:1.4.2",
            "imageID": "registry.example/shop/web@sha256:abcd",
            "containerID": format!("containerd://{container_id}"),
            "ready": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-21T10:00:00Z"}},
        }],
    });
    if let Some(init) = init_id {
        status["initContainerStatuses"] = json!([{
            "name": "migrate",
            "image": "registry.example/shop/migrate:1.4.2",
            "imageID": "",
            "containerID": format!("containerd://{init}"),
            "ready": false,
            "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-21T09:59:00Z"}},
        }]);
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("uid-{name}"),
            "resourceVersion": rv.to_string(),
            "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "7d4b9c"},
            "annotations": {"prometheus.io/scrape": "true"},
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7d4b9c",
                "uid": "rs-uid",
                "controller": true,
            }],
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "app", "image": "registry.example/shop/web:1.4.2"}],
        },
        "status": status,
    })
}

fn node_object(rv: u64) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": NODE,
            "uid": "node-uid",
            "resourceVersion": rv.to_string(),
            "labels": {"topology.kubernetes.io/zone": "eu-west-1a", "kubernetes.io/os": "linux"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
    })
}

fn list(kind: &str, rv: u64, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

/// What the fake API server has seen.
#[derive(Default)]
struct Seen {
    pod_lists: usize,
    pod_watches: Vec<HashMap<String, String>>,
}

type Shared = Arc<Mutex<Seen>>;

/// A watch response: these events, one JSON object per line, then the
/// connection stays open (as a watch does until its timeout).
fn watch_body(events: Vec<Value>) -> Body {
    let lines = events
        .into_iter()
        .map(|e| Ok::<_, std::io::Error>(format!("{e}\n")));
    let open = futures_util::stream::pending();
    Body::from_stream(futures_util::stream::StreamExt::chain(
        futures_util::stream::iter(lines),
        open,
    ))
}

async fn pods(
    State(seen): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=test-node")
    );
    let mut seen = seen.lock().unwrap();
    if q.get("watch").map(String::as_str) != Some("true") {
        seen.pod_lists += 1;
        // After the 410, the relist knows a pod the first list did not.
        let body = if seen.pod_lists == 1 {
            list(
                "PodList",
                10,
                vec![pod("web-7d4b9c-x2x9q", 10, WEB_ID, Some(INIT_ID))],
            )
        } else {
            list(
                "PodList",
                20,
                vec![
                    pod("web-7d4b9c-x2x9q", 10, WEB_ID, Some(INIT_ID)),
                    pod("web-7d4b9c-late", 12, LATE_ID, None),
                    pod("web-7d4b9c-relisted", 19, RELISTED_ID, None),
                ],
            )
        };
        return json_response(Body::from(body.to_string()));
    }
    seen.pod_watches.push(q.clone());
    let events = if seen.pod_watches.len() == 1 {
        vec![
            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "11"}}}),
            json!({"type": "ADDED", "object": pod("web-7d4b9c-late", 12, LATE_ID, None)}),
            json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 12 (15)", "reason": "Expired", "code": 410,
            }}),
        ]
    } else {
        vec![
            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "21"}}}),
        ]
    };
    json_response(watch_body(events))
}

async fn nodes(Query(q): Query<HashMap<String, String>>) -> axum::response::Response {
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some("metadata.name=test-node")
    );
    if q.get("watch").map(String::as_str) != Some("true") {
        return json_response(Body::from(
            list("NodeList", 5, vec![node_object(5)]).to_string(),
        ));
    }
    json_response(watch_body(vec![]))
}

fn json_response(body: Body) -> axum::response::Response {
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\n\
             users:\n- name: agent\n  user: {{token: t0ken}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// Built and started, as the service does.
fn processor(rt: &tokio::runtime::Runtime, kubeconfig: PathBuf) -> Box<dyn Processor> {
    let mut ctx = BuildContext::for_test("k8s_meta");
    ctx.service.node = NODE.into();
    started(rt, kubeconfig, &ctx)
}

fn started(
    rt: &tokio::runtime::Runtime,
    kubeconfig: PathBuf,
    ctx: &BuildContext,
) -> Box<dyn Processor> {
    let _guard = rt.enter();
    let mut processor = K8sMetaFactory
        .create(
            K8sMetaConfig {
                kubeconfig: Some(kubeconfig),
            },
            ctx,
        )
        .unwrap();
    rt.block_on(processor.start()).unwrap();
    processor
}

/// A window with one series per container id (as `metadata` labels them).
fn window(ids: &[&str]) -> ProfileBatch {
    ProfileBatch::one_sample_per_series(ids.iter().enumerate().map(|(i, id)| {
        LabelSet::new([
            ("pid", (100 + i).to_string().as_str()),
            ("__meta_containerd_container_id", id),
        ])
    }))
}

fn labels(batch: &ProfileBatch) -> Vec<LabelSet> {
    batch.sample_series_labels()
}

/// The fake API server, serving on a free port.
fn fake_api(rt: &tokio::runtime::Runtime) -> (SocketAddr, Shared) {
    let seen = Shared::default();
    let app = axum::Router::new()
        .route("/api/v1/pods", axum::routing::get(pods))
        .route("/api/v1/nodes", axum::routing::get(nodes))
        .with_state(seen.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, seen)
}

/// `k8s_meta` named by two pipelines is two processors with one set of
/// watches: the API server sees one list and one watch per resource (plus
/// the relist its 410 forces), and both label from the same stores.
#[test]
fn two_pipelines_share_one_set_of_watches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (address, seen) = fake_api(&rt);
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &format!("http://{address}"));
    let mut ctx = BuildContext::for_test("k8s_meta");
    ctx.service.node = NODE.into();
    let mut first = started(
        &rt,
        config.clone(),
        &BuildContext {
            pipeline: Some("profiles/a".into()),
            ..ctx.clone()
        },
    );
    let mut second = started(
        &rt,
        config,
        &BuildContext {
            pipeline: Some("profiles/b".into()),
            ..ctx
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let named = |p: &mut Box<dyn Processor>| {
        labels(&p.process(window(&[RELISTED_ID])).unwrap())[0]
            .get("__meta_kubernetes_pod_name")
            .map(str::to_owned)
    };
    while named(&mut first).is_none() {
        assert!(Instant::now() < deadline, "never labelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(named(&mut second).as_deref(), Some("web-7d4b9c-relisted"));
    std::thread::sleep(Duration::from_millis(300));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            (seen.pod_lists, seen.pod_watches.len()),
            (2, 2),
            "one list and watch, one relist after the 410 and its watch: one set"
        );
    }
    rt.block_on(first.shutdown()).unwrap();
    rt.block_on(second.shutdown()).unwrap();
}

#[test]
fn pods_and_the_node_label_processes_through_watches_and_relists() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (address, seen) = fake_api(&rt);
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(&rt, kubeconfig(dir.path(), &format!("http://{address}")));

    // Windows go on while the watches catch up; the relist after the 410
    // brings the pod only it knows.
    let ids = [WEB_ID, INIT_ID, LATE_ID, RELISTED_ID, "ffff"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = labels(&p.process(window(&ids)).unwrap());
        if out[3].get("__meta_kubernetes_pod_name").is_some()
            && out[0]
                .get("__meta_kubernetes_node_label_topology_kubernetes_io_zone")
                .is_some()
        {
            break out;
        }
        assert!(Instant::now() < deadline, "never labeled: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let web = &out[0];
    let expected = [
        ("__meta_kubernetes_namespace", "shop"),
        ("__meta_kubernetes_pod_name", "web-7d4b9c-x2x9q"),
        ("__meta_kubernetes_pod_uid", "uid-web-7d4b9c-x2x9q"),
        ("__meta_kubernetes_pod_ip", "10.244.1.23"),
        ("__meta_kubernetes_pod_host_ip", "10.0.0.7"),
        ("__meta_kubernetes_pod_phase", "Running"),
        ("__meta_kubernetes_pod_ready", "true"),
        ("__meta_kubernetes_node_name", NODE),
        ("__meta_kubernetes_pod_controller_kind", "ReplicaSet"),
        ("__meta_kubernetes_pod_controller_name", "web-7d4b9c"),
        ("__meta_kubernetes_pod_container_name", "app"),
        (
            "__meta_kubernetes_pod_container_id",
            &format!("containerd://{WEB_ID}"),
        ),
        (
            "__meta_kubernetes_pod_container_image",
            "registry.example/shop/web:1.4.2",
        ),
        ("__meta_kubernetes_pod_container_init", "false"),
        ("__meta_kubernetes_pod_label_app_kubernetes_io_name", "web"),
        (
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
            "true",
        ),
        ("__meta_kubernetes_pod_label_pod_template_hash", "7d4b9c"),
        (
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
            "true",
        ),
        (
            "__meta_kubernetes_pod_annotationpresent_prometheus_io_scrape",
            "true",
        ),
        (
            "__meta_kubernetes_node_label_topology_kubernetes_io_zone",
            "eu-west-1a",
        ),
        (
            "__meta_kubernetes_node_labelpresent_kubernetes_io_os",
            "true",
        ),
        (
            "__meta_kubernetes_node_annotation_node_alpha_kubernetes_io_ttl",
            "0",
        ),
        (
            "__meta_kubernetes_node_annotationpresent_node_alpha_kubernetes_io_ttl",
            "true",
        ),
    ];
    for (k, v) in expected {
        assert_eq!(web.get(k), Some(v), "{k} in {web:?}");
    }
    // The init container of the same pod.
    assert_eq!(
        out[1].get("__meta_kubernetes_pod_container_name"),
        Some("migrate")
    );
    assert_eq!(
        out[1].get("__meta_kubernetes_pod_container_init"),
        Some("true")
    );
    // Added by the watch, and known only to the relist.
    assert_eq!(
        out[2].get("__meta_kubernetes_pod_name"),
        Some("web-7d4b9c-late")
    );
    assert_eq!(
        out[3].get("__meta_kubernetes_pod_name"),
        Some("web-7d4b9c-relisted")
    );
    // A container of no pod here keeps its labels and gets none.
    assert_eq!(out[4].get("__meta_kubernetes_pod_name"), None);
    assert_eq!(out[4].get("pid"), Some("104"));

    let seen = seen.lock().unwrap();
    assert!(seen.pod_lists >= 2, "the 410 forced a relist");
    let first_watch = &seen.pod_watches[0];
    assert_eq!(
        first_watch.get("resourceVersion").map(String::as_str),
        Some("10")
    );
    assert_eq!(
        first_watch.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        seen.pod_watches[1]
            .get("resourceVersion")
            .map(String::as_str),
        Some("20"),
        "watching resumes from the relist's resourceVersion"
    );
}

#[test]
fn without_a_reachable_cluster_batches_pass_through() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on, and a kubeconfig that does not exist.
    let closed = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .local_addr()
        .unwrap();
    for kubeconfig in [
        kubeconfig(dir.path(), &format!("http://{closed}")),
        dir.path().join("missing-kubeconfig"),
    ] {
        let mut p = processor(&rt, kubeconfig);
        for _ in 0..3 {
            let started = Instant::now();
            let batch = window(&[WEB_ID]);
            let before = labels(&batch);
            let out = p.process(batch).unwrap();
            assert_eq!(labels(&out), before);
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "never waits for the API"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
