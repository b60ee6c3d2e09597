//! The three kinds of components, their factories, and what they are given.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::model::ProfileBatch;
use crate::stats::ReceiverStats;
use crate::telemetry::{ComponentTelemetry, Telemetry, PIPELINE_LABEL};

/// The error a component returns; components use their own typed errors.
pub type ComponentError = Box<dyn std::error::Error + Send + Sync>;

/// Receiver, processor or exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Produces batches.
    Receiver,
    /// Transforms batches, per pipeline.
    Processor,
    /// Sends batches out.
    Exporter,
}

impl Kind {
    /// Singular name (`receiver`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Receiver => "receiver",
            Kind::Processor => "processor",
            Kind::Exporter => "exporter",
        }
    }

    /// The config section listing components of this kind (`receivers`).
    pub fn section(self) -> &'static str {
        match self {
            Kind::Receiver => "receivers",
            Kind::Processor => "processors",
            Kind::Exporter => "exporters",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// How settled a component is, as in the OpenTelemetry Collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stability {
    /// Works, may change.
    Development,
    /// Feature-complete, may still change.
    Alpha,
    /// Tested in production.
    Beta,
    /// Will not change incompatibly.
    Stable,
}

impl fmt::Display for Stability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Stability::Development => "development",
            Stability::Alpha => "alpha",
            Stability::Beta => "beta",
            Stability::Stable => "stable",
        })
    }
}

/// Agent-wide settings every component may read.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Name of the node the agent runs on (`--node`).
    pub node: String,
    /// The agent's git revision (`__meta_agent_revision`).
    pub agent_revision: String,
    /// How long the agent's shutdown may take (`service::shutdown_timeout`).
    pub shutdown_timeout: std::time::Duration,
}

impl ServiceSettings {
    /// The settings of a service configured by `service`.
    pub fn new(service: &crate::config::ServiceConfig, agent_revision: &str) -> Self {
        Self {
            node: service.node.clone(),
            agent_revision: agent_revision.to_owned(),
            shutdown_timeout: service.shutdown_timeout,
        }
    }
}

/// What a factory is given to build one component instance.
#[derive(Clone)]
pub struct BuildContext {
    /// The component id, e.g. `file/debug`.
    pub id: String,
    /// The pipeline, for processors (which are built per pipeline).
    pub pipeline: Option<String>,
    /// Metrics labelled with this component.
    pub telemetry: ComponentTelemetry,
    /// Agent-wide settings.
    pub service: ServiceSettings,
    /// Resolves once the agent is stopping: an exporter retrying a batch
    /// bounds its retries from then on (`shutdown_flush_timeout`).
    pub stopping: Shutdown,
    /// State shared by every instance of one component id (see
    /// [`BuildContext::shared`]).
    pub shared: SharedStates,
}

/// Counts the started instances of a shared state, so that the first
/// start begins its work and the last shutdown ends it.
#[derive(Debug, Default)]
pub struct Users(std::sync::atomic::AtomicUsize);

impl Users {
    /// One more instance started; true for the first.
    pub fn first_in(&self) -> bool {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// One instance shut down; true for the last.
    pub fn last_out(&self) -> bool {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1
    }
}

/// State kept once per component id for the whole service, whatever the
/// number of instances built for it.
#[derive(Clone, Default)]
pub struct SharedStates(Arc<std::sync::Mutex<SharedMap>>);

type SharedMap =
    std::collections::HashMap<(String, std::any::TypeId), Arc<dyn std::any::Any + Send + Sync>>;

impl BuildContext {
    /// The state every instance of this component id shares: a processor
    /// named by several pipelines is built once per pipeline (each with
    /// its own place in its chain), but what it watches or caches of the
    /// world (Kubernetes watches, container-runtime lookups) should exist
    /// once, as the Collector's shared components do. `make` runs for the
    /// first instance, given this component's metrics without the
    /// `pipeline` label; the others get the same value.
    pub fn shared<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce(&ComponentTelemetry) -> T,
    ) -> Arc<T> {
        let key = (self.id.clone(), std::any::TypeId::of::<T>());
        let mut map = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key).or_insert_with(|| {
            Arc::new(make(&self.telemetry.without(PIPELINE_LABEL)))
                as Arc<dyn std::any::Any + Send + Sync>
        });
        entry
            .clone()
            .downcast::<T>()
            .expect("keyed by the type it holds")
    }

    /// The agent's tokio runtime, for components that spawn tasks or open
    /// connections; an error naming the component when built outside it.
    pub fn runtime(&self) -> Result<tokio::runtime::Handle, ComponentError> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| format!("{} must be built inside the agent's runtime", self.id).into())
    }

    /// The context of component `id` of kind `kind` (in `pipeline`, for
    /// a processor), its metrics labelled as [`Telemetry::component`]
    /// does; sharing nothing (the service shares its state across pipelines).
    pub fn new(
        kind: Kind,
        id: &str,
        pipeline: Option<&str>,
        telemetry: &Telemetry,
        service: ServiceSettings,
        stopping: Shutdown,
    ) -> Self {
        Self {
            id: id.to_owned(),
            pipeline: pipeline.map(str::to_owned),
            telemetry: telemetry.component(kind, id, pipeline),
            service,
            stopping,
            shared: SharedStates::default(),
        }
    }

    /// A context with fresh metrics and node `test-node`, for tests of one component.
    pub fn for_test(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            pipeline: None,
            telemetry: Telemetry::default().scoped(&[]),
            service: ServiceSettings {
                node: "test-node".to_owned(),
                agent_revision: "test-revision".to_owned(),
                shutdown_timeout: std::time::Duration::from_secs(30),
            },
            stopping: Shutdown::never(),
            shared: SharedStates::default(),
        }
    }
}

/// Signals a component that the agent is stopping, and since when.
#[derive(Clone)]
pub struct Shutdown(Option<watch::Receiver<Option<tokio::time::Instant>>>);

/// Sets off a [`Shutdown`].
pub struct Stop(watch::Sender<Option<tokio::time::Instant>>);

impl Stop {
    /// Requests shutdown, now (a second call changes nothing).
    pub fn stop(&self) {
        self.0.send_if_modified(|at| {
            let first = at.is_none();
            at.get_or_insert_with(tokio::time::Instant::now);
            first
        });
    }
}

impl Shutdown {
    /// A signal and the sender that triggers it.
    pub fn new() -> (Stop, Self) {
        let (tx, rx) = watch::channel(None);
        (Stop(tx), Self(Some(rx)))
    }

    /// A signal that never comes (a component built for a test).
    pub fn never() -> Self {
        Self(None)
    }

    /// Resolves once shutdown is requested (at once if it already was).
    pub async fn requested(&mut self) {
        match &mut self.0 {
            // An error means the sender is gone, which also means stop.
            Some(signal) => drop(signal.wait_for(Option::is_some).await),
            None => std::future::pending().await,
        }
    }

    /// True once shutdown is requested.
    pub fn is_requested(&self) -> bool {
        self.requested_at().is_some()
    }

    /// When shutdown was requested.
    pub fn requested_at(&self) -> Option<tokio::time::Instant> {
        *self.0.as_ref()?.borrow()
    }
}

/// How long an exporter may still try to deliver once the agent stops:
/// retries, waits and attempts all end `timeout` after the stop signal (its
/// moment, not when the exporter first looks), so shutdown keeps its bound
/// while a backend is down.
pub struct FlushBound {
    stopping: Shutdown,
    timeout: std::time::Duration,
}

impl FlushBound {
    /// Bounds delivery to `timeout` after the stop `ctx` signals; an error
    /// naming `key` unless that leaves the service time to finish within
    /// its own `shutdown_timeout`.
    pub fn new(
        ctx: &BuildContext,
        key: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, ComponentError> {
        let service_bound = ctx.service.shutdown_timeout;
        if timeout >= service_bound {
            return Err(format!(
                "{key} ({}) must be below service::shutdown_timeout ({}): the agent gives up at that",
                humantime::format_duration(timeout),
                humantime::format_duration(service_bound)
            )
            .into());
        }
        Ok(Self {
            stopping: ctx.stopping.clone(),
            timeout,
        })
    }

    /// How long delivery may go on after the stop.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// When delivery must end, once the stop has come.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        Some(self.stopping.requested_at()? + self.timeout)
    }

    /// Resolves once the agent is stopping and `timeout` has passed since
    /// (at once if the signal's sender is gone without a stop).
    pub async fn expired(&mut self) {
        self.stopping.requested().await;
        if let Some(deadline) = self.deadline() {
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Whether the time to deliver has run out.
    pub fn has_expired(&self) -> bool {
        self.deadline()
            .is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
    }
}

/// Where a receiver sends its batches: every pipeline that names it.
#[derive(Clone)]
pub struct BatchSink {
    pipelines: Vec<mpsc::Sender<Arc<ProfileBatch>>>,
    stats: ReceiverStats,
}

impl BatchSink {
    pub(crate) fn new(
        pipelines: Vec<mpsc::Sender<Arc<ProfileBatch>>>,
        stats: ReceiverStats,
    ) -> Self {
        Self { pipelines, stats }
    }

    /// A sink feeding the given channels, for testing receivers alone.
    pub fn for_test(pipelines: Vec<mpsc::Sender<Arc<ProfileBatch>>>) -> Self {
        Self::new(pipelines, ReceiverStats::new(&Telemetry::default(), "test"))
    }

    /// Sends a batch to every pipeline, waiting while a pipeline's input is
    /// full (pipelines only run processors; exporters have their own queues).
    pub async fn send(&self, batch: ProfileBatch) {
        self.stats.batches.inc();
        self.stats.samples.inc_by(batch.sample_count());
        self.stats.sample_rows.inc_by(batch.samples.len() as u64);
        self.stats.series.set(batch.series_ids().len() as i64);
        let batch = Arc::new(batch);
        for p in &self.pipelines {
            // A closed pipeline: shutdown, or its task died (shown as a failure).
            let _ = p.send(batch.clone()).await;
        }
    }
}

/// A source of batches.
#[async_trait::async_trait]
pub trait Receiver: Send {
    /// Begins what needs the agent running (a BPF program attached, a
    /// connection opened); called once, after every exporter and processor
    /// has started. An error fails the agent's start, naming this receiver.
    async fn start(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Produces batches into `sink` until it runs out of input or `shutdown`
    /// is requested; then emits what it holds (the last window) and returns.
    async fn run(
        self: Box<Self>,
        sink: BatchSink,
        shutdown: Shutdown,
    ) -> Result<(), ComponentError>;
}

/// What a processor does with one label of the batches it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelUse {
    /// It may read the label (the default: a processor that does not say).
    Reads,
    /// It does not read it and leaves it for the processors after it.
    Passes,
    /// It does not read it and removes it (`relabel` and internal labels).
    Ends,
}

/// A transformation of batches; one instance per pipeline, called in order.
/// What it watches or caches of the world is shared across its instances
/// ([`BuildContext::shared`]).
#[async_trait::async_trait]
pub trait Processor: Send {
    /// Begins background work (watches, lookups); called once before the
    /// first batch, after the exporters have started. An error fails the
    /// agent's start, naming this processor.
    async fn start(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Ends background work; called once after the last batch, before the
    /// exporters shut down.
    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Transforms one batch. An error drops the batch (it is counted).
    fn process(&mut self, batch: ProfileBatch) -> Result<ProfileBatch, ComponentError>;

    /// What this processor does with label `name`, so the processors before
    /// it can leave out labels nobody reads. Unknown processors may read any.
    fn label_use(&self, name: &str) -> LabelUse {
        let _ = name;
        LabelUse::Reads
    }

    /// Called once before the first batch with whether a label this
    /// processor sets can be read after it: by a later processor of its
    /// pipeline or, for labels that are not internal, by its exporters.
    fn read_later(&mut self, read_later: &dyn Fn(&str) -> bool) {
        let _ = read_later;
    }
}

/// A destination of batches; one instance shared by every pipeline naming it.
#[async_trait::async_trait]
pub trait Exporter: Send {
    /// Begins background work (a writer task, uploads); called once before
    /// the first batch, exporters first of all components. An error fails
    /// the agent's start, naming this exporter.
    async fn start(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Sends one batch. An error is counted and logged; the batch is not retried
    /// here (exporters that retry do it themselves, within their own buffer).
    async fn export(&mut self, batch: Arc<ProfileBatch>) -> Result<(), ComponentError>;

    /// Flushes what is buffered; called once after the last batch.
    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Where batches go (a directory, an endpoint), for the progress log.
    fn destination(&self) -> String {
        String::new()
    }
}

/// A built component of any kind.
pub enum Component {
    /// A receiver.
    Receiver(Box<dyn Receiver>),
    /// A processor.
    Processor(Box<dyn Processor>),
    /// An exporter.
    Exporter(Box<dyn Exporter>),
}

/// What a factory's `create` returns: a boxed receiver, processor or exporter.
pub trait IntoComponent {
    /// The kind this is.
    const KIND: Kind;
    /// Wraps it.
    fn into_component(self) -> Component;
}

impl IntoComponent for Box<dyn Receiver> {
    const KIND: Kind = Kind::Receiver;
    fn into_component(self) -> Component {
        Component::Receiver(self)
    }
}

impl IntoComponent for Box<dyn Processor> {
    const KIND: Kind = Kind::Processor;
    fn into_component(self) -> Component {
        Component::Processor(self)
    }
}

impl IntoComponent for Box<dyn Exporter> {
    const KIND: Kind = Kind::Exporter;
    fn into_component(self) -> Component {
        Component::Exporter(self)
    }
}

/// A problem with one config value, beyond its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path below the component, `::`-separated (`retention::max_files`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// A component's typed config. Unknown keys must be refused
/// (`#[serde(deny_unknown_fields)]`) and missing keys defaulted
/// (`#[serde(default)]`).
pub trait ComponentConfig:
    Serialize + DeserializeOwned + schemars::JsonSchema + Default + Clone + Send + Sync + 'static
{
    /// Keys renamed since they were first accepted, `(old, new)` as `::`
    /// paths: an old key still works (moved to its new place before the
    /// config is read); both given is an error naming the old one.
    const RENAMED_KEYS: &'static [(&'static str, &'static str)] = &[];

    /// Checks what types cannot (ranges, combinations); all problems at once.
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }
}

/// Builds components of one type from their typed config.
pub trait Factory: Send + Sync + 'static {
    /// The type name used in configs (`file`, `ebpf_cpu`).
    const TYPE: &'static str;
    /// How settled the component is.
    const STABILITY: Stability;
    /// One-line description for `agent components`.
    const DESCRIPTION: &'static str;
    /// The typed config.
    type Config: ComponentConfig;
    /// `Box<dyn Receiver>`, `Box<dyn Processor>` or `Box<dyn Exporter>`.
    type Output: IntoComponent;
    /// Builds one instance and checks what can be checked before anything
    /// runs (unreadable paths, missing privileges); work that runs — tasks,
    /// threads, attached programs, connections — begins in the component's
    /// `start`, and ends in its `shutdown`.
    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_flush_bound_runs_out_its_timeout_after_the_stop() {
        let (stop, stopping) = Shutdown::new();
        let ctx = BuildContext {
            stopping,
            ..BuildContext::for_test("exporter")
        };
        let too_long = FlushBound::new(&ctx, "shutdown_flush_timeout", Duration::from_secs(30));
        assert_eq!(
            too_long.err().unwrap().to_string(),
            "shutdown_flush_timeout (30s) must be below service::shutdown_timeout (30s): the agent gives up at that"
        );
        let mut bound = FlushBound::new(&ctx, "t", Duration::from_millis(200)).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), bound.expired()).await;
        assert!(early.is_err(), "ran out before any stop");
        assert!(!bound.has_expired());
        stop.stop();
        let stopped = std::time::Instant::now();
        // Looked at late: the time still counts from the stop.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!bound.has_expired());
        bound.expired().await;
        let took = stopped.elapsed();
        assert!((190..2000).contains(&took.as_millis()), "{took:?}");
        assert!(bound.has_expired());
    }
}
