//! The deployment files: every Kubernetes manifest is the object its kind
//! says (k8s-openapi types, nothing unknown or misspelled), the DaemonSet,
//! RBAC and ConfigMap fit together, the shipped pipeline is valid, and the
//! systemd unit's command line is.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every document of the manifests, as JSON values.
fn documents() -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    for file in ["rbac.yaml", "configmap.yaml", "daemonset.yaml"] {
        let text =
            std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes").join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            docs.push(serde_json::to_value(value).unwrap());
        }
    }
    docs
}

/// The document as `T`; fails when a field is unknown to `T` or misspelled
/// (it would not survive the round trip).
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &serde_json::Value) -> T {
    let object: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]));
    assert_eq!(
        &serde_json::to_value(&object).unwrap(),
        doc,
        "{} does not round-trip",
        doc["kind"]
    );
    object
}

fn of_kind<T: DeserializeOwned + serde::Serialize>(docs: &[serde_json::Value], kind: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    typed(doc)
}

#[test]
fn manifests_are_valid_kubernetes_objects_that_fit_together() {
    let docs = documents();
    for doc in &docs {
        match doc["kind"].as_str().unwrap() {
            "Namespace" => drop(typed::<Namespace>(doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "ConfigMap" => drop(typed::<ConfigMap>(doc)),
            "DaemonSet" => drop(typed::<DaemonSet>(doc)),
            other => panic!("unexpected kind {other}"),
        }
    }
    let ds: DaemonSet = of_kind(&docs, "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_pid, Some(true), "the agent sees every process");
    let own_bound = agent_core::config::ServiceConfig::default().shutdown_timeout;
    assert!(
        pod.termination_grace_period_seconds
            .is_some_and(|s| s > own_bound.as_secs() as i64),
        "the grace period must exceed the agent's shutdown_timeout ({own_bound:?})"
    );
    let sa: ServiceAccount = of_kind(&docs, "ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let container = &pod.containers[0];
    let security = container.security_context.clone().unwrap();
    assert_ne!(
        security.privileged,
        Some(true),
        "capabilities, not privileged"
    );
    let caps = security.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    let added = caps.add.unwrap();
    for needed in ["BPF", "PERFMON", "SYS_PTRACE"] {
        assert!(
            added.iter().any(|c| c == needed),
            "{needed} missing from {added:?}"
        );
    }
    let env = container.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName",
        "k8s_meta watches the pods of the node the agent runs on"
    );
    let mounts: Vec<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    for path in ["/etc/agent", "/run/containerd"] {
        assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }
    let cm: ConfigMap = of_kind(&docs, "ConfigMap");
    let volumes = pod.volumes.unwrap();
    assert!(volumes.iter().any(|v| v
        .config_map
        .as_ref()
        .is_some_and(|c| Some(&c.name) == cm.metadata.name.as_ref())));

    let role: ClusterRole = of_kind(&docs, "ClusterRole");
    for resource in ["pods", "nodes"] {
        let rule = role
            .rules
            .iter()
            .flatten()
            .find(|r| r.resources.iter().flatten().any(|x| x == resource))
            .unwrap_or_else(|| panic!("no rule for {resource}"));
        for verb in ["get", "list", "watch"] {
            assert!(rule.verbs.iter().any(|v| v == verb), "{verb} {resource}");
        }
    }
    let binding: ClusterRoleBinding = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (Some(&subject.name), subject.namespace.as_ref()),
        (sa.metadata.name.as_ref(), sa.metadata.namespace.as_ref())
    );
}

#[test]
fn the_shipped_pipeline_and_the_systemd_command_line_are_valid() {
    let docs = documents();
    let cm: ConfigMap = of_kind(&docs, "ConfigMap");
    let pipeline = &cm.data.unwrap()["pipeline.yaml"];
    let parsed: serde_yaml::Value = serde_yaml::from_str(pipeline).unwrap();
    assert_eq!(
        parsed["processors"]["symbolize"]["native"].as_str(),
        Some("leave"),
        "the node leaves native frames to Parca, which has the uploaded debuginfo"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["validate", "--config"])
        .arg(&file)
        .env("NODE_NAME", "node-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unit =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd/agent.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut args = exec.split_whitespace();
    assert_eq!(args.next(), Some("/usr/local/bin/agent"));
    // The unit's flags, on the repository's pipeline.
    let flags: Vec<String> = args
        .map(|a| match a.strip_prefix("--config=") {
            Some(_) => format!("--config={ROOT}/pipeline.yaml"),
            None => a.to_owned(),
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("validate")
        .args(&flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps = |key: &str| -> Vec<String> {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect()
    };
    let ds: DaemonSet = of_kind(&docs, "DaemonSet");
    let added = ds.spec.unwrap().template.spec.unwrap().containers[0]
        .security_context
        .clone()
        .unwrap()
        .capabilities
        .unwrap()
        .add
        .unwrap();
    assert_eq!(
        caps("AmbientCapabilities="),
        added,
        "the same capabilities everywhere"
    );
    assert_eq!(caps("CapabilityBoundingSet="), added);
}
