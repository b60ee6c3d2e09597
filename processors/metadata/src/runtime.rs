//! Asks a container runtime about one container over its unix socket: the
//! Docker Engine API (docker, podman) or the Kubernetes CRI (containerd,
//! CRI-O).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;

/// The CRI subset in `proto/runtime/v1/cri.proto`.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// The API a runtime speaks on its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `GET /containers/{id}/json` (Docker Engine API; podman serves it too).
    Docker,
    /// `runtime.v1.RuntimeService/ContainerStatus`.
    Cri,
}

/// The runtime behind a container-id label, and where it listens by default.
pub struct Runtime {
    pub api: Api,
    pub default_sockets: &'static [&'static str],
}

/// The runtime to ask about containers found under `id_label`, if any
/// (BuildKit and LXC have no API that names containers).
pub fn runtime_for(id_label: &str) -> Option<Runtime> {
    let (api, default_sockets): (Api, &'static [&'static str]) = match id_label {
        "__meta_docker_container_id" => {
            (Api::Docker, &["/var/run/docker.sock", "/run/docker.sock"])
        }
        "__meta_podman_container_id" => (
            Api::Docker,
            &["/run/podman/podman.sock", "/var/run/podman/podman.sock"],
        ),
        "__meta_containerd_container_id" => (
            Api::Cri,
            &[
                "/run/containerd/containerd.sock",
                "/var/run/containerd/containerd.sock",
                "/run/k3s/containerd/containerd.sock",
            ],
        ),
        "__meta_crio_container_id" => (
            Api::Cri,
            &["/var/run/crio/crio.sock", "/run/crio/crio.sock"],
        ),
        _ => return None,
    };
    Some(Runtime {
        api,
        default_sockets,
    })
}

/// What a runtime says about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The container's name (for Kubernetes pods: the pod spec's container name).
    pub name: String,
    /// The pod, when Kubernetes started the container.
    pub pod_name: Option<String>,
}

impl ContainerInfo {
    /// The name labels that go beside `id_label`: `__meta_docker_container_id`
    /// gives `__meta_docker_container_name` and `__meta_docker_pod_name`.
    pub fn labels(&self, id_label: &str) -> Vec<(String, String)> {
        let prefix = id_label.trim_end_matches("container_id");
        let mut labels = Vec::new();
        if !self.name.is_empty() {
            labels.push((format!("{prefix}container_name"), self.name.clone()));
        }
        if let Some(pod) = self.pod_name.as_ref().filter(|p| !p.is_empty()) {
            labels.push((format!("{prefix}pod_name"), pod.clone()));
        }
        labels
    }

    /// Kubernetes' container and pod labels (set by the kubelet on CRI and
    /// cri-dockerd containers) win over the runtime's own name.
    fn from_labels(runtime_name: &str, labels: &HashMap<String, String>) -> Self {
        Self {
            name: labels
                .get("io.kubernetes.container.name")
                .map_or(runtime_name, String::as_str)
                .to_owned(),
            pod_name: labels.get("io.kubernetes.pod.name").cloned(),
        }
    }
}

/// Why a runtime did not name a container.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot reach {socket}: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("the runtime does not know the container")]
    NotFound,
    #[error("unexpected answer: {0}")]
    Failed(String),
}

impl LookupError {
    /// The `result` label of the lookup counter.
    pub fn kind(&self) -> &'static str {
        match self {
            LookupError::Unreachable { .. } => "unreachable",
            LookupError::NotFound => "not_found",
            LookupError::Failed(_) => "failed",
        }
    }

    fn unreachable(socket: &Path, reason: impl ToString) -> Self {
        LookupError::Unreachable {
            socket: socket.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Asks the runtime listening on `socket` about container `id`.
pub async fn lookup(api: Api, socket: &Path, id: &str) -> Result<ContainerInfo, LookupError> {
    match api {
        Api::Docker => docker_inspect(socket, id).await,
        Api::Cri => cri_status(socket, id).await,
    }
}

#[derive(Deserialize)]
struct DockerInspect {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Option<DockerConfig>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

async fn docker_inspect(socket: &Path, id: &str) -> Result<ContainerInfo, LookupError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| LookupError::unreachable(socket, e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| LookupError::unreachable(socket, e))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("/containers/{id}/json"))
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| LookupError::Failed(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| LookupError::Failed(e.to_string()))?;
    let status = response.status();
    if status == hyper::StatusCode::NOT_FOUND {
        return Err(LookupError::NotFound);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| LookupError::Failed(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(LookupError::Failed(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let inspect: DockerInspect =
        serde_json::from_slice(&body).map_err(|e| LookupError::Failed(e.to_string()))?;
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    // Docker names carry a leading slash ("/web").
    Ok(ContainerInfo::from_labels(
        inspect.name.trim_start_matches('/'),
        &labels,
    ))
}

async fn cri_status(socket: &Path, id: &str) -> Result<ContainerInfo, LookupError> {
    let path = socket.to_owned();
    // The URI is required by tonic but unused: every connection is the socket.
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| LookupError::unreachable(socket, error_chain(&e)))?;
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(channel);
    let answer = client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await;
    match answer {
        Ok(response) => {
            let status = response.into_inner().status.unwrap_or_default();
            let name = status.metadata.map(|m| m.name).unwrap_or_default();
            Ok(ContainerInfo::from_labels(&name, &status.labels))
        }
        Err(status) if status.code() == tonic::Code::NotFound => Err(LookupError::NotFound),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            Err(LookupError::unreachable(socket, status.message()))
        }
        Err(status) => Err(LookupError::Failed(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}

/// An error with its causes, for tonic's terse transport errors.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_labels_sit_beside_the_id_label() {
        let info = ContainerInfo {
            name: "web".into(),
            pod_name: Some("web-7d4b9c".into()),
        };
        assert_eq!(
            info.labels("__meta_containerd_container_id"),
            vec![
                ("__meta_containerd_container_name".into(), "web".into()),
                ("__meta_containerd_pod_name".into(), "web-7d4b9c".into()),
            ]
        );
        let plain = ContainerInfo {
            name: "db".into(),
            pod_name: None,
        };
        assert_eq!(
            plain.labels("__meta_docker_container_id"),
            vec![("__meta_docker_container_name".into(), "db".into())]
        );
        assert!(ContainerInfo::default()
            .labels("__meta_docker_container_id")
            .is_empty());
    }

    #[test]
    fn kubernetes_labels_name_the_container_and_pod() {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.container.name".into(), "app".into()),
            ("io.kubernetes.pod.name".into(), "app-0".into()),
        ]
        .into();
        let info = ContainerInfo::from_labels("k8s_app_app-0_default_uid_0", &labels);
        assert_eq!(info.name, "app");
        assert_eq!(info.pod_name.as_deref(), Some("app-0"));
        let info = ContainerInfo::from_labels("web", &HashMap::new());
        assert_eq!((info.name.as_str(), info.pod_name), ("web", None));
    }

    #[test]
    fn runtimes_by_id_label() {
        let api = |label| runtime_for(label).map(|r| r.api);
        assert_eq!(api("__meta_docker_container_id"), Some(Api::Docker));
        assert_eq!(api("__meta_podman_container_id"), Some(Api::Docker));
        assert_eq!(api("__meta_containerd_container_id"), Some(Api::Cri));
        assert_eq!(api("__meta_crio_container_id"), Some(Api::Cri));
        assert_eq!(api("__meta_lxc_container_id"), None);
        assert_eq!(api("__meta_docker_build_kit_container_id"), None);
    }
}
