//! `metadata` processor: attaches labels to every series, once per series.
//!
//! `node` (from `service.node` / `--node`), the external labels
//! (`--metadata-external-labels`), and for relabeling the `__meta_*` labels
//! of the process (series with a `pid` label), the system and the agent.
//! Container ids come from the cgroup path; container (and pod) names from
//! the container runtime's socket, asked in the background. Thread and CPU
//! travel as sample labels (see `relabel`).

pub mod container;
mod names;
pub mod process;
pub mod runtime;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::labels;
use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Factory, FieldError, LabelUse, Processor,
    ProfileBatch, Stability, Users,
};
use serde::{Deserialize, Serialize};

/// Config of the `metadata` processor.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Labels attached to every series (`--metadata-external-labels`);
    /// a label the series already has is kept.
    pub external_labels: BTreeMap<String, String>,
    /// Re-read every process every window instead of when it execs
    /// (`--metadata-disable-caching`).
    pub disable_caching: bool,
    /// Where processes are read (the host's /proc mounted elsewhere in a container).
    pub proc_root: PathBuf,
    /// Ask container runtimes for container and pod names.
    pub container_names: bool,
    /// The runtime socket to ask (`--metadata-container-runtime-socket-path`);
    /// unset or empty: each runtime's default sockets.
    pub container_runtime_socket: Option<PathBuf>,
    /// Longest a window waits for the names of containers it sees first;
    /// later answers label later windows.
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub container_name_wait: Duration,
    /// Environment variables read from each process (as it started) into
    /// `__meta_env_var_NAME` labels (`--include-env-var`); no other part of
    /// the environment is kept.
    pub include_env_vars: Vec<String>,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            external_labels: BTreeMap::new(),
            disable_caching: false,
            proc_root: PathBuf::from("/proc"),
            container_names: true,
            container_runtime_socket: None,
            container_name_wait: Duration::from_millis(250),
            include_env_vars: Vec::new(),
        }
    }
}

use agent_core::is_label_name;

impl ComponentConfig for MetadataConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = self
            .external_labels
            .keys()
            .filter(|k| !is_label_name(k))
            .map(|k| {
                FieldError::new(
                    &format!("external_labels::{k}"),
                    "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                )
            })
            .collect();
        if self
            .container_runtime_socket
            .as_ref()
            .is_some_and(|s| !s.as_os_str().is_empty() && !s.is_absolute())
        {
            errors.push(FieldError::new(
                "container_runtime_socket",
                "must be an absolute path (the runtime's unix socket)",
            ));
        }
        for (i, name) in self.include_env_vars.iter().enumerate() {
            if !is_label_name(name) {
                errors.push(FieldError::new(
                    &format!("include_env_vars::{i}"),
                    format!("`{name}` cannot be part of a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                ));
            }
        }
        if self.container_name_wait > Duration::from_secs(10) {
            errors.push(FieldError::new(
                "container_name_wait",
                "at most 10s: a window must not wait longer for container names",
            ));
        }
        errors
    }
}

/// Builds `metadata` processors.
pub struct MetadataFactory;

impl Factory for MetadataFactory {
    const TYPE: &'static str = "metadata";
    const STABILITY: Stability = Stability::Development;
    const DESCRIPTION: &'static str = "attaches node, external, process, system and agent labels";
    type Config = MetadataConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        let mut fixed = vec![(
            "__meta_agent_revision".to_owned(),
            ctx.service.agent_revision.clone(),
        )];
        fixed.extend(system_labels());
        Ok(Box::new(Metadata {
            node: ctx.service.node.clone(),
            external_labels: config.external_labels,
            fixed,
            proc_root: config.proc_root,
            cache: (!config.disable_caching).then(HashMap::new),
            wanted: process::Wanted {
                cmdline: true,
                env_vars: config.include_env_vars.clone(),
            },
            env_vars: config.include_env_vars,
            names: config.container_names.then(|| {
                ctx.shared(|telemetry| SharedNames {
                    names: Mutex::new(names::ContainerNames::new(
                        names::NamesConfig {
                            socket: config
                                .container_runtime_socket
                                .filter(|s| !s.as_os_str().is_empty()),
                            wait: config.container_name_wait,
                        },
                        telemetry,
                    )),
                    users: Users::default(),
                })
            }),
            started: false,
        }))
    }
}

/// `__meta_system_kernel_release` and `__meta_system_kernel_machine` (uname).
fn system_labels() -> Vec<(String, String)> {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Vec::new();
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    vec![
        ("__meta_system_kernel_release".into(), text(&u.release)),
        ("__meta_system_kernel_machine".into(), text(&u.machine)),
    ]
}

struct Metadata {
    node: String,
    external_labels: BTreeMap<String, String>,
    /// Agent and system labels, the same for every series.
    fixed: Vec<(String, String)>,
    proc_root: PathBuf,
    /// Process labels by pid; `None` when caching is off.
    cache: Option<HashMap<u32, process::ProcessLabels>>,
    /// Container names, shared by this id's instances in every pipeline;
    /// `None` when runtimes are not asked.
    names: Option<Arc<SharedNames>>,
    started: bool,
    /// What is read only when asked, and only when something after this
    /// processor can read it (command lines and environments carry
    /// secrets): the command line, the named environment variables.
    wanted: process::Wanted,
    /// The environment variables the config names.
    env_vars: Vec<String>,
}

/// The container names one `metadata` id asks runtimes for: one cache and
/// one lookup thread, however many pipelines name it.
struct SharedNames {
    names: Mutex<names::ContainerNames>,
    users: Users,
}

/// The container-id label of a label set, as `(label, id)`.
fn container_of(set: &agent_core::LabelSet) -> Option<(String, String)> {
    set.pairs()
        .iter()
        .find(|(k, _)| k.starts_with("__meta_") && k.ends_with("_container_id"))
        .cloned()
}

impl Metadata {
    /// The process's labels: cached until its executable changes (exec).
    /// `None` when the process is unknown, or when the series names another
    /// command (a reused pid, or profiles from another machine).
    fn process_labels(
        &mut self,
        pid: u32,
        series_comm: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        let exe = process::exe_link(&self.proc_root, pid);
        let read = match &mut self.cache {
            None => process::read(&self.proc_root, pid, exe, &self.wanted)?,
            Some(cache) => match (cache.get(&pid), exe) {
                (Some(cached), Some(exe)) if cached.exe == exe => cached.clone(),
                // Gone: what was read while it ran still describes its samples.
                (Some(cached), None) => cached.clone(),
                (_, exe) => {
                    let read = process::read(&self.proc_root, pid, exe, &self.wanted)?;
                    cache.insert(pid, read.clone());
                    read
                }
            },
        };
        match series_comm {
            Some(comm) if comm != read.comm => None,
            _ => Some(read.labels),
        }
    }
}

#[agent_core::async_trait]
impl Processor for Metadata {
    async fn start(&mut self) -> Result<(), ComponentError> {
        if let Some(shared) = &self.names {
            if !std::mem::replace(&mut self.started, true) {
                // The lookup thread itself starts with the first container seen.
                shared.users.first_in();
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if let Some(shared) = &self.names {
            if std::mem::replace(&mut self.started, false) && shared.users.last_out() {
                shared
                    .names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stop();
            }
        }
        Ok(())
    }

    fn label_use(&self, name: &str) -> LabelUse {
        match name {
            labels::PID | labels::COMM => LabelUse::Reads,
            _ => LabelUse::Passes,
        }
    }

    fn read_later(&mut self, read_later: &dyn Fn(&str) -> bool) {
        self.wanted.cmdline = read_later(process::CMDLINE_LABEL);
        let (read, unread): (Vec<String>, Vec<String>) = self
            .env_vars
            .iter()
            .cloned()
            .partition(|name| read_later(&format!("{}{name}", process::ENV_VAR_PREFIX)));
        if !unread.is_empty() {
            tracing::warn!(
                variables = ?unread,
                "include_env_vars: not read, no processor after metadata reads their __meta_env_var_* labels (add a relabel rule that does)"
            );
        }
        self.wanted.env_vars = read;
    }

    fn process(&mut self, mut batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        let mut seen = HashSet::new();
        batch.map_series(|set| {
            let mut out = set.clone();
            out.set(labels::NODE, self.node.as_str());
            for (k, v) in &self.external_labels {
                if set.get(k).is_none() {
                    out.set(k.as_str(), v.as_str());
                }
            }
            for (k, v) in &self.fixed {
                out.set(k.as_str(), v.as_str());
            }
            if let Some(pid) = set.get(labels::PID).and_then(|p| p.parse::<u32>().ok()) {
                seen.insert(pid);
                for (k, v) in self
                    .process_labels(pid, set.get(labels::COMM))
                    .unwrap_or_default()
                {
                    out.set(k, v);
                }
            }
            Some(out)
        });
        // Forget processes that are gone and were not in this window.
        if let Some(cache) = &mut self.cache {
            let root = &self.proc_root;
            cache.retain(|pid, _| seen.contains(pid) || root.join(pid.to_string()).exists());
        }
        if let Some(shared) = &self.names {
            // Names are asked for all of the window's containers at once, so
            // the window waits (boundedly) once, not once per container.
            let containers: HashSet<_> = batch
                .series_ids()
                .into_iter()
                .filter_map(|id| container_of(batch.label_sets.get(id)))
                .collect();
            if !containers.is_empty() {
                // Held while this window waits (at most container_name_wait):
                // another pipeline's window waits for the same answers.
                let mut names = shared.names.lock().unwrap_or_else(|e| e.into_inner());
                names.resolve(&containers);
                batch.map_series(|set| {
                    let mut out = set.clone();
                    if let Some((_, id)) = container_of(set) {
                        for (k, v) in names.labels(&id) {
                            out.set(k.as_str(), v.as_str());
                        }
                    }
                    Some(out)
                });
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{LabelSet, ProfileType, Sample};

    /// Adds one sample of `series` (value 1, empty stack) to `b`.
    fn push_sample(b: &mut ProfileBatch, series: agent_core::LabelSetId) {
        let stack = b.stacks.intern(vec![]);
        b.samples.push(Sample {
            stack,
            series,
            attributes: 0,
            value: 1,
            timestamp_unix_nanos: None,
        });
    }

    #[test]
    fn attaches_node_and_external_labels_without_overriding() {
        let config = MetadataConfig {
            external_labels: [("region".into(), "eu".into()), ("comm".into(), "x".into())].into(),
            ..Default::default()
        };
        let mut p = MetadataFactory
            .create(config, &BuildContext::for_test("metadata"))
            .unwrap();
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
        let series = b.label_sets.intern(LabelSet::new([("comm", "nginx")]));
        push_sample(&mut b, series);
        let b = p.process(b).unwrap();
        let labels = b.labels(b.samples[0].series);
        assert_eq!(labels.get("node"), Some("test-node"));
        assert_eq!(labels.get("region"), Some("eu"));
        assert_eq!(labels.get("comm"), Some("nginx"));
        assert_eq!(labels.get("__meta_agent_revision"), Some("test-revision"));
        assert!(labels
            .get("__meta_system_kernel_release")
            .is_some_and(|r| !r.is_empty()));
        assert!(
            labels.get("__meta_process_pid").is_none(),
            "no pid label, no process labels"
        );
    }

    #[test]
    fn process_labels_for_series_with_a_pid_cached_or_not() {
        for disable_caching in [false, true] {
            let config = MetadataConfig {
                disable_caching,
                ..Default::default()
            };
            let mut p = MetadataFactory
                .create(config, &BuildContext::for_test("metadata"))
                .unwrap();
            for _ in 0..2 {
                let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
                let me = std::process::id().to_string();
                let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
                let series = b.label_sets.intern(LabelSet::new([
                    ("pid", me.as_str()),
                    ("comm", comm.trim_end()),
                ]));
                let foreign = b
                    .label_sets
                    .intern(LabelSet::new([("pid", me.as_str()), ("comm", "elsewhere")]));
                push_sample(&mut b, foreign);
                push_sample(&mut b, series);
                let b = p.process(b).unwrap();
                // A series naming another command is not this process.
                assert!(b
                    .labels(b.samples[0].series)
                    .get("__meta_process_pid")
                    .is_none());
                let labels = b.labels(b.samples[1].series);
                assert_eq!(labels.get("__meta_process_pid"), Some(me.as_str()));
                assert!(labels.get("__meta_process_executable_name").is_some());
                assert!(labels
                    .get("__meta_process_executable_build_id")
                    .is_some_and(|id| id.len() >= 16));
            }
        }
    }

    #[test]
    fn the_command_line_is_read_only_when_read_later() {
        for read_later in [false, true] {
            let mut p = MetadataFactory
                .create(
                    MetadataConfig::default(),
                    &BuildContext::for_test("metadata"),
                )
                .unwrap();
            p.read_later(&|name| read_later && name == process::CMDLINE_LABEL);
            let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
            let me = std::process::id().to_string();
            let series = b.label_sets.intern(LabelSet::new([("pid", me.as_str())]));
            push_sample(&mut b, series);
            let b = p.process(b).unwrap();
            let labels = b.labels(b.samples[0].series);
            assert_eq!(labels.get("__meta_process_pid"), Some(me.as_str()));
            assert_eq!(labels.get(process::CMDLINE_LABEL).is_some(), read_later);
        }
    }

    #[test]
    fn invalid_label_names_are_refused() {
        let config = MetadataConfig {
            external_labels: [("1bad".into(), "v".into()), ("ok_name".into(), "v".into())].into(),
            ..Default::default()
        };
        let errors = config.validate();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "external_labels::1bad");
    }
}
