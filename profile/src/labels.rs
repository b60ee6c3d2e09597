//! Names of the labels one component sets and another reads: spelled once,
//! so a rename cannot leave a reader behind.

/// Process id (`ebpf_cpu`; read by `metadata`, `symbolize`, the exporters
/// and the HTTP view).
pub const PID: &str = "pid";
/// Process name, as `/proc/PID/comm` has it.
pub const COMM: &str = "comm";
/// Thread id (a sample attribute).
pub const THREAD_ID: &str = "thread_id";
/// Thread name (a sample attribute).
pub const THREAD_COMM: &str = "thread_comm";
/// CPU a sample was taken on (a sample attribute).
pub const CPU: &str = "cpu";
/// Node name (`metadata`).
pub const NODE: &str = "node";
/// Process id as `metadata`'s meta label (kept when `pid` is relabeled away).
pub const META_PROCESS_PID: &str = "__meta_process_pid";
/// Container id found in a cgroup path (`metadata`), per runtime; `k8s_meta`
/// matches pods' containers by the Kubernetes runtimes' ones.
pub const META_DOCKER_CONTAINER_ID: &str = "__meta_docker_container_id";
/// See [`META_DOCKER_CONTAINER_ID`].
pub const META_CONTAINERD_CONTAINER_ID: &str = "__meta_containerd_container_id";
/// See [`META_DOCKER_CONTAINER_ID`].
pub const META_CRIO_CONTAINER_ID: &str = "__meta_crio_container_id";
/// Sample labels carrying a Go goroutine's pprof labels (`ebpf_cpu`):
/// this prefix, then the label's name made a valid label name.
pub const GO_LABEL_PREFIX: &str = "__meta_go_label_";

/// The process a series is of: its `pid`, else its `__meta_process_pid`
/// (kept by `metadata` when relabeling dropped `pid`).
pub fn series_pid(labels: &crate::model::LabelSet) -> Option<u32> {
    labels
        .get(PID)
        .or_else(|| labels.get(META_PROCESS_PID))
        .and_then(|p| p.parse().ok())
}
