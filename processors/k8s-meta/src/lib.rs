//! `k8s_meta` processor: Kubernetes labels for processes in pods on this
//! node. It watches (list, then watch with bookmarks; relists after `410
//! Gone` or errors, with backoff) the pods whose `spec.nodeName` is this
//! node and the node object, and maps the container id the `metadata`
//! processor found in the cgroup path to its pod and container. Windows
//! never wait for the API server: a process whose pod is not known yet is
//! labeled in a later window.

pub mod labels;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use agent_core::telemetry::{ComponentTelemetry, Counter};
use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Factory, LabelUse, Processor, ProfileBatch,
    Stability, Users,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Config of the `k8s_meta` processor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct K8sMetaConfig {
    /// A kubeconfig file; unset: the in-cluster service account, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

impl ComponentConfig for K8sMetaConfig {}

/// Builds `k8s_meta` processors.
pub struct K8sMetaFactory;

impl Factory for K8sMetaFactory {
    const TYPE: &'static str = "k8s_meta";
    const STABILITY: Stability = Stability::Alpha;
    const DESCRIPTION: &'static str =
        "attaches __meta_kubernetes_* labels of the pod, container and node of each process";
    type Config = K8sMetaConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        ctx.runtime()?;
        let watches = ctx.shared(|telemetry| Watches {
            config,
            node: ctx.service.node.clone(),
            telemetry: telemetry.clone(),
            stores: Arc::new(OnceLock::new()),
            task: Mutex::new(None),
            users: Users::default(),
        });
        Ok(Box::new(K8sMeta {
            watches,
            started: false,
            unmatched: ctx.telemetry.counter(
                "k8s_meta_unmatched_series",
                "Series with a container id no known pod on this node runs.",
                &[],
            ),
        }))
    }
}

/// What the watches keep up to date.
struct Stores {
    pods: Store<Pod>,
    nodes: Store<Node>,
}

/// The watches of one `k8s_meta` id: one set, however many pipelines name
/// it; running while at least one of its instances is started.
struct Watches {
    config: K8sMetaConfig,
    node: String,
    telemetry: ComponentTelemetry,
    stores: Arc<OnceLock<Stores>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    users: Users,
}

impl Watches {
    fn start(&self) {
        if self.users.first_in() {
            let task = tokio::spawn(connect(
                self.config.clone(),
                self.node.clone(),
                self.telemetry.clone(),
                self.stores.clone(),
            ));
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
    }

    fn stop(&self) {
        if self.users.last_out() {
            self.abort();
        }
    }

    fn abort(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Watches {
    /// Where no shutdown came (a shutdown that timed out, a pipeline that
    /// panicked), the watches end with the last instance anyway.
    fn drop(&mut self) {
        self.abort();
    }
}

/// Connects to the API server and runs the watches until aborted; logs
/// once and leaves the processor passing batches through when there is no
/// cluster.
async fn connect(
    config: K8sMetaConfig,
    node: String,
    telemetry: ComponentTelemetry,
    stores: Arc<OnceLock<Stores>>,
) {
    let client = match client(&config).await {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, "k8s_meta: no Kubernetes cluster to ask; batches pass through without Kubernetes labels");
            return;
        }
    };
    let (pods, watching_pods) = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        "pods",
        &telemetry,
    );
    let (nodes, watching_nodes) = watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        "nodes",
        &telemetry,
    );
    info!(%node, "k8s_meta: watching this node's pods and the node");
    let _ = stores.set(Stores { pods, nodes });
    tokio::join!(watching_pods, watching_nodes);
}

async fn client(config: &K8sMetaConfig) -> Result<Client, String> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(kube_config).map_err(|e| e.to_string())
}

/// A store and the watch that keeps it up to date (to be run), relisting
/// with backoff after errors; failures are logged once per outage and
/// counted.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    telemetry: &ComponentTelemetry,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let errors = telemetry.counter(
        "k8s_meta_watch_errors",
        "Failed list or watch calls to the Kubernetes API server (retried with backoff).",
        &[("resource", resource)],
    );
    let events = reflector::reflector(writer, watcher(api, config).default_backoff());
    let watching = async move {
        let mut events = std::pin::pin!(events);
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(_) if std::mem::replace(&mut failing, false) => {
                    info!(resource, "k8s_meta: watching again");
                }
                Ok(_) => {}
                Err(error) => {
                    errors.inc();
                    if std::mem::replace(&mut failing, true) {
                        debug!(resource, %error, "k8s_meta: watch failed again");
                    } else {
                        warn!(resource, %error, "k8s_meta: watch failed; relisting with backoff");
                    }
                }
            }
        }
    };
    (reader, watching)
}

struct K8sMeta {
    watches: Arc<Watches>,
    started: bool,
    unmatched: Counter,
}

/// The labels the `metadata` processor puts a cgroup path's container id in.
const CONTAINER_ID_LABELS: [&str; 3] = [
    agent_core::labels::META_CONTAINERD_CONTAINER_ID,
    agent_core::labels::META_CRIO_CONTAINER_ID,
    agent_core::labels::META_DOCKER_CONTAINER_ID,
];

/// The container id the `metadata` processor found in the cgroup path.
fn container_id(set: &agent_core::LabelSet) -> Option<&str> {
    CONTAINER_ID_LABELS
        .into_iter()
        .find_map(|label| set.get(label))
}

#[agent_core::async_trait]
impl Processor for K8sMeta {
    async fn start(&mut self) -> Result<(), ComponentError> {
        if !std::mem::replace(&mut self.started, true) {
            self.watches.start();
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if std::mem::replace(&mut self.started, false) {
            self.watches.stop();
        }
        Ok(())
    }

    fn label_use(&self, name: &str) -> LabelUse {
        if CONTAINER_ID_LABELS.contains(&name) {
            LabelUse::Reads
        } else {
            LabelUse::Passes
        }
    }

    fn process(&mut self, mut batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        let Some(stores) = self.watches.stores.get() else {
            return Ok(batch);
        };
        let in_containers = batch
            .series_ids()
            .into_iter()
            .any(|id| container_id(batch.label_sets.get(id)).is_some());
        if !in_containers {
            return Ok(batch);
        }
        // Rebuilt per window from the watched pods of one node (≤ a few
        // hundred containers): cheap, and never stale.
        let pods = stores.pods.state();
        let index = labels::pod_index(pods.iter().map(|p| p.as_ref()));
        let node = stores
            .nodes
            .state()
            .first()
            .map(|n| labels::node_labels(n))
            .unwrap_or_default();
        batch.map_series(|set| {
            let Some(id) = container_id(set) else {
                return Some(set.clone());
            };
            let Some(pod) = index.get(id) else {
                self.unmatched.inc();
                return Some(set.clone());
            };
            let mut out = set.clone();
            for (k, v) in pod.iter().chain(&node) {
                out.set(k.as_str(), v.as_str());
            }
            Some(out)
        });
        Ok(batch)
    }
}
