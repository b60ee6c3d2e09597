//! The `__meta_kubernetes_*` labels of a container in a pod, and of a node,
//! with names sanitized as Prometheus does.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};

/// A label name from a Kubernetes key: every character outside
/// `[a-zA-Z0-9_]` becomes `_` (Prometheus's `SanitizeLabelName`).
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<prefix>label_<k>`, `<prefix>labelpresent_<k>` and the same for
/// annotations.
fn map_labels(
    prefix: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    out: &mut Vec<(String, String)>,
) {
    for (kind, map) in [("label", labels), ("annotation", annotations)] {
        for (key, value) in map.into_iter().flatten() {
            let key = sanitize(key);
            out.push((format!("{prefix}{kind}_{key}"), value.clone()));
            out.push((format!("{prefix}{kind}present_{key}"), "true".to_owned()));
        }
    }
}

/// The node's labels: `__meta_kubernetes_node_label_*`,
/// `…_node_labelpresent_*`, `…_node_annotation_*`, `…_node_annotationpresent_*`
/// (`…_node_name` comes from the pod's `spec.nodeName`).
pub fn node_labels(node: &Node) -> Vec<(String, String)> {
    let mut out = Vec::new();
    map_labels(
        "__meta_kubernetes_node_",
        node.metadata.labels.as_ref(),
        node.metadata.annotations.as_ref(),
        &mut out,
    );
    out
}

/// The container id without its runtime scheme (`containerd://…`), as it
/// appears in cgroup paths.
pub fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, bare)| bare)
}

/// Labels by bare container id, for every container of every pod.
pub fn pod_index<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
) -> HashMap<String, Vec<(String, String)>> {
    let mut index = HashMap::new();
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        let pod_labels = pod_labels(pod);
        let containers = [
            (status.container_statuses.as_ref(), false),
            (status.init_container_statuses.as_ref(), true),
            (status.ephemeral_container_statuses.as_ref(), false),
        ];
        for (statuses, init) in containers {
            for container in statuses.into_iter().flatten() {
                let Some(id) = container
                    .container_id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                else {
                    continue;
                };
                let mut labels = pod_labels.clone();
                labels.extend(container_labels(container, id, init));
                index.insert(bare_container_id(id).to_owned(), labels);
            }
        }
    }
    index
}

fn container_labels(c: &ContainerStatus, id: &str, init: bool) -> Vec<(String, String)> {
    vec![
        (
            "__meta_kubernetes_pod_container_name".into(),
            c.name.clone(),
        ),
        ("__meta_kubernetes_pod_container_id".into(), id.to_owned()),
        (
            "__meta_kubernetes_pod_container_image".into(),
            c.image.clone(),
        ),
        (
            "__meta_kubernetes_pod_container_init".into(),
            init.to_string(),
        ),
    ]
}

/// The pod-level labels every container of `pod` shares.
fn pod_labels(pod: &Pod) -> Vec<(String, String)> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let mut out = Vec::new();
    let mut push = |name: &str, value: Option<&String>| {
        if let Some(value) = value {
            out.push((format!("__meta_kubernetes_{name}"), value.clone()));
        }
    };
    push("namespace", meta.namespace.as_ref());
    push("pod_name", meta.name.as_ref());
    push("pod_uid", meta.uid.as_ref());
    push("pod_ip", status.and_then(|s| s.pod_ip.as_ref()));
    push("pod_host_ip", status.and_then(|s| s.host_ip.as_ref()));
    push("pod_phase", status.and_then(|s| s.phase.as_ref()));
    push("node_name", spec.and_then(|s| s.node_name.as_ref()));
    // Prometheus: the Ready condition's status, lowercased; unknown without one.
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map_or_else(|| "unknown".to_owned(), |c| c.status.to_lowercase());
    out.push(("__meta_kubernetes_pod_ready".into(), ready));
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        out.push((
            "__meta_kubernetes_pod_controller_kind".into(),
            owner.kind.clone(),
        ));
        out.push((
            "__meta_kubernetes_pod_controller_name".into(),
            owner.name.clone(),
        ));
    }
    map_labels(
        "__meta_kubernetes_pod_",
        meta.labels.as_ref(),
        meta.annotations.as_ref(),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_like_prometheus() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("team-owner"), "team_owner");
        assert_eq!(sanitize("ok_Name9"), "ok_Name9");
    }

    #[test]
    fn container_ids_lose_their_scheme() {
        assert_eq!(bare_container_id("containerd://abc"), "abc");
        assert_eq!(bare_container_id("cri-o://abc"), "abc");
        assert_eq!(bare_container_id("abc"), "abc");
    }
}
