//! The pipeline graph and its tokio runtime.
//!
//! Collector semantics: a receiver named by several pipelines is one instance
//! that fans out to all of them; processors are built per pipeline and run in
//! order; an exporter is one instance fed by every pipeline that names it,
//! behind its own bounded queue so a slow exporter never stalls the others.
//!
//! Shutdown flows with the data: receivers stop and emit their last window,
//! which closes the pipelines' inputs; pipelines finish and close the
//! exporters' queues; exporters drain their queues and flush.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{Span, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::component::*;
use crate::config::AgentConfig;
use crate::model::{is_internal_label, ProfileBatch};
use crate::registry::Registry;
use crate::stats::{ExporterStats, ProcessorStats, ReceiverStats};
use crate::telemetry::{ComponentFailure, Telemetry};

/// The latest batch each pipeline produced (after its processors) per
/// sample type (`samples/count`), for the local views.
#[derive(Clone, Default)]
pub struct LatestWindows(Arc<std::sync::RwLock<WindowsByPipeline>>);

/// Pipeline -> sample type (`samples/count`) -> latest batch.
pub type WindowsByPipeline = BTreeMap<String, BTreeMap<String, Arc<ProfileBatch>>>;

impl LatestWindows {
    /// Pipeline -> sample type -> latest batch.
    pub fn snapshot(&self) -> WindowsByPipeline {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, pipeline: &str, batch: Arc<ProfileBatch>) {
        let t = &batch.profile_type.sample_type;
        let key = format!("{}/{}", t.kind, t.unit);
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pipeline.to_owned())
            .or_default()
            .insert(key, batch);
    }
}

/// Batches a pipeline's input holds before its receivers wait.
const PIPELINE_INPUT_CAPACITY: usize = 4;

/// Why the service could not be built or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A component's factory refused to build it.
    #[error("{section}::{id}: {error}")]
    Build {
        /// `receivers`, `processors` or `exporters`.
        section: &'static str,
        /// The component id.
        id: String,
        /// The factory's error.
        error: ComponentError,
    },
    /// A component did not start (or not within [`START_TIMEOUT`]).
    #[error("{section}::{id}: cannot start: {error}")]
    Start {
        /// `receivers`, `processors` or `exporters`.
        section: &'static str,
        /// The component id.
        id: String,
        /// Why.
        error: ComponentError,
    },
    /// A receiver stopped with an error.
    #[error("receiver {id} failed: {error}")]
    ReceiverFailed {
        /// The receiver id.
        id: String,
        /// Its error.
        error: ComponentError,
    },
    /// A pipeline's or exporter's task ended while the agent ran.
    #[error("{kind} {id} stopped while the agent ran: {reason}")]
    ComponentFailed {
        /// `pipeline` or `exporter`.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Why, as far as known.
        reason: String,
    },
    /// The last window was not flushed within the shutdown timeout.
    #[error("shutdown did not finish within {0:?}; the last window may be lost")]
    ShutdownTimeout(Duration),
}

/// The exporter side of one queue, held by each pipeline naming the exporter.
#[derive(Clone)]
struct ExporterQueue {
    id: String,
    sender: mpsc::Sender<Queued>,
    block_on_overflow: bool,
    stats: ExporterStats,
}

impl ExporterQueue {
    /// Queues a batch; a full queue drops it and counts it, unless the
    /// exporter is configured to block.
    async fn offer(&self, batch: Arc<ProfileBatch>, trace: &Context) {
        let samples = batch.sample_count();
        // Counted before sending so the exporter's decrement never comes first.
        self.stats.queue_depth.inc();
        let queued = (batch, trace.clone());
        let closed = if self.block_on_overflow {
            self.sender.send(queued).await.err().map(|_| true)
        } else {
            self.sender
                .try_send(queued)
                .err()
                .map(|e| matches!(e, mpsc::error::TrySendError::Closed(_)))
        };
        if let Some(closed) = closed {
            self.stats.queue_depth.dec();
            self.stats.dropped_batches.inc();
            let dropped = self.stats.dropped_batches.get();
            self.stats.dropped_samples.inc_by(samples);
            // The first drop and then every 100th, so a dead backend does not flood the log.
            if dropped == 1 || dropped.is_multiple_of(100) {
                if closed {
                    warn!(exporter = %self.id, dropped_batches = dropped, "exporter has stopped, batch dropped");
                } else {
                    warn!(exporter = %self.id, dropped_batches = dropped, "exporter queue full, batch dropped");
                }
            }
        }
    }
}

struct PipelineRuntime {
    id: String,
    processors: Vec<(String, Box<dyn Processor>)>,
    exporters: Vec<ExporterQueue>,
    input: mpsc::Receiver<Arc<ProfileBatch>>,
    /// Per processor id.
    processor_stats: HashMap<String, ProcessorStats>,
    latest: LatestWindows,
}

/// A batch waiting for an exporter, with the trace of its window.
type Queued = (Arc<ProfileBatch>, Context);

struct ExporterRuntime {
    id: String,
    exporter: Box<dyn Exporter>,
    queue: mpsc::Receiver<Queued>,
    stats: ExporterStats,
}

/// A built pipeline graph, ready to run.
pub struct Service {
    receivers: Vec<(String, Box<dyn Receiver>, BatchSink)>,
    pipelines: Vec<PipelineRuntime>,
    exporters: Vec<ExporterRuntime>,
    telemetry: Telemetry,
    shutdown_timeout: Duration,
    latest: LatestWindows,
    /// Sets off `shutdown`, which components were built with.
    stop: Stop,
    shutdown: Shutdown,
    /// What instances of one component id share.
    #[cfg_attr(not(test), allow(dead_code))]
    shared: SharedStates,
}

impl Service {
    /// Builds every component of `config`; fails on the first component
    /// whose factory refuses. `agent_revision` is the binary's git revision.
    pub fn build(
        config: &AgentConfig,
        registry: &Registry,
        telemetry: &Telemetry,
        agent_revision: &str,
    ) -> Result<Self, ServiceError> {
        let (stop, shutdown) = Shutdown::new();
        let shared = SharedStates::default();
        let settings = ServiceSettings::new(&config.service, agent_revision);
        let build =
            |kind: Kind, id: &str, pipeline: Option<&str>| -> Result<Component, ServiceError> {
                let c = config
                    .component(kind, id)
                    .expect("validated config references configured components");
                let factory = registry
                    .get(kind, &c.id.type_name)
                    .expect("validated config names compiled-in types");
                let ctx = BuildContext {
                    shared: shared.clone(),
                    ..BuildContext::new(
                        kind,
                        id,
                        pipeline,
                        telemetry,
                        settings.clone(),
                        shutdown.clone(),
                    )
                };
                factory
                    .build(&c.config, &ctx)
                    .map_err(|error| ServiceError::Build {
                        section: kind.section(),
                        id: id.to_owned(),
                        error,
                    })
            };

        // Exporters: one instance and one queue each.
        let mut exporters = Vec::new();
        let mut queues: BTreeMap<String, ExporterQueue> = BTreeMap::new();
        for p in config.service.pipelines.values() {
            for id in &p.exporters {
                if queues.contains_key(id) {
                    continue;
                }
                let Component::Exporter(exporter) = build(Kind::Exporter, id, None)? else {
                    unreachable!("exporter factories build exporters")
                };
                let settings = config
                    .component(Kind::Exporter, id)
                    .and_then(|c| c.queue.clone())
                    .unwrap_or_default();
                let (sender, queue) = mpsc::channel(settings.queue_size);
                let stats = ExporterStats::new(telemetry, id);
                queues.insert(
                    id.clone(),
                    ExporterQueue {
                        id: id.clone(),
                        sender,
                        block_on_overflow: settings.block_on_overflow,
                        stats: stats.clone(),
                    },
                );
                exporters.push(ExporterRuntime {
                    id: id.clone(),
                    exporter,
                    queue,
                    stats,
                });
            }
        }

        // Pipelines: their own processor instances.
        let latest = LatestWindows::default();
        let mut pipelines = Vec::new();
        let mut inputs: BTreeMap<String, mpsc::Sender<Arc<ProfileBatch>>> = BTreeMap::new();
        for (pid, p) in &config.service.pipelines {
            let mut processors = Vec::new();
            for id in &p.processors {
                let Component::Processor(processor) = build(Kind::Processor, id, Some(pid))? else {
                    unreachable!("processor factories build processors")
                };
                processors.push((id.clone(), processor));
            }
            tell_what_is_read_later(&mut processors);
            let (tx, rx) = mpsc::channel(PIPELINE_INPUT_CAPACITY);
            inputs.insert(pid.clone(), tx);
            pipelines.push(PipelineRuntime {
                id: pid.clone(),
                processors,
                exporters: p.exporters.iter().map(|e| queues[e].clone()).collect(),
                input: rx,
                processor_stats: p
                    .processors
                    .iter()
                    .map(|id| (id.clone(), ProcessorStats::new(telemetry, id, pid)))
                    .collect(),
                latest: latest.clone(),
            });
        }

        // Receivers: one instance feeding every pipeline that names it.
        let mut receivers = Vec::new();
        let mut receiver_ids: Vec<&String> = config
            .service
            .pipelines
            .values()
            .flat_map(|p| &p.receivers)
            .collect();
        receiver_ids.sort();
        receiver_ids.dedup();
        for id in receiver_ids {
            let Component::Receiver(receiver) = build(Kind::Receiver, id, None)? else {
                unreachable!("receiver factories build receivers")
            };
            let targets = config
                .service
                .pipelines
                .iter()
                .filter(|(_, p)| p.receivers.contains(id))
                .map(|(pid, _)| inputs[pid].clone())
                .collect();
            let sink = BatchSink::new(targets, ReceiverStats::new(telemetry, id));
            receivers.push((id.clone(), receiver, sink));
        }
        Ok(Self {
            receivers,
            pipelines,
            exporters,
            telemetry: telemetry.clone(),
            shutdown_timeout: config.service.shutdown_timeout,
            latest,
            stop,
            shutdown,
            shared,
        })
    }

    /// The latest batch of each pipeline, updated while the service runs.
    pub fn latest_windows(&self) -> LatestWindows {
        self.latest.clone()
    }

    /// Starts every component: exporters, then each pipeline's processors
    /// in order, then receivers, each within [`START_TIMEOUT`]. When one
    /// fails, those started are shut down again (in reverse order) and the
    /// error names it.
    async fn start(&mut self) -> Result<(), ServiceError> {
        let mut failure = None;
        let mut exporters_started = 0;
        for e in &mut self.exporters {
            if let Err(error) = bounded_start("exporters", &e.id, e.exporter.start()).await {
                failure = Some(error);
                break;
            }
            exporters_started += 1;
        }
        let mut processors_started = Vec::new();
        'pipelines: for p in &mut self.pipelines {
            let mut started = 0;
            if failure.is_none() {
                for (id, processor) in &mut p.processors {
                    if let Err(error) = bounded_start("processors", id, processor.start()).await {
                        failure = Some(error);
                        processors_started.push(started);
                        break 'pipelines;
                    }
                    started += 1;
                }
            }
            processors_started.push(started);
        }
        if failure.is_none() {
            for (id, receiver, _) in &mut self.receivers {
                if let Err(error) = bounded_start("receivers", id, receiver.start()).await {
                    failure = Some(error);
                    break;
                }
            }
        }
        let Some(failure) = failure else {
            return Ok(());
        };
        // Undo what started, newest first, within the shutdown bound.
        // Receivers that started stop when dropped (a BPF program is
        // detached with its links).
        self.receivers.clear();
        self.stop.stop();
        let undo = async {
            for (p, started) in self.pipelines.iter_mut().zip(processors_started).rev() {
                for (id, processor) in p.processors[..started].iter_mut().rev() {
                    shut_down_or_log("processor", id, processor.shutdown()).await;
                }
            }
            for e in self.exporters[..exporters_started].iter_mut().rev() {
                shut_down_or_log("exporter", &e.id, e.exporter.shutdown()).await;
            }
        };
        if tokio::time::timeout(self.shutdown_timeout, undo)
            .await
            .is_err()
        {
            error!(timeout = ?self.shutdown_timeout, "shutting down after a failed start timed out");
        }
        Err(failure)
    }

    /// Starts every component, runs until `stop` resolves or every receiver
    /// has finished, then flushes the last window through every pipeline and
    /// exporter and shuts them down: receivers, then processors, then
    /// exporters.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        self.start().await?;
        // Pipelines and exporters end when their inputs close (the
        // receivers feeding them finished); one that panics has failed:
        // shown, remembered, and the exit says so.
        let mut task_names = HashMap::new();
        let mut exporter_tasks = JoinSet::new();
        for e in self.exporters {
            let name = ("exporter", e.id.clone());
            task_names.insert(exporter_tasks.spawn(run_exporter(e)).id(), name);
        }
        let mut pipeline_tasks = JoinSet::new();
        for p in self.pipelines {
            let name = ("pipeline", p.id.clone());
            task_names.insert(pipeline_tasks.spawn(run_pipeline(p)).id(), name);
        }
        let died = |done: Result<(tokio::task::Id, ()), tokio::task::JoinError>| {
            let error = done.err()?;
            let (id, reason) = (error.id(), panic_message(error));
            let (kind, name) = task_names.get(&id).cloned().unwrap_or(("task", "?".into()));
            error!(component_kind = kind, component_id = %name, %reason, "component stopped while the agent ran");
            self.telemetry.component_failed(ComponentFailure {
                kind,
                id: name.clone(),
                reason: reason.clone(),
            });
            Some(ServiceError::ComponentFailed {
                kind,
                id: name,
                reason,
            })
        };
        let (stop_tx, shutdown) = (self.stop, self.shutdown);
        let mut receiver_tasks = JoinSet::new();
        for (id, receiver, sink) in self.receivers {
            let shutdown = shutdown.clone();
            receiver_tasks.spawn(async move { (id.clone(), receiver.run(sink, shutdown).await) });
        }
        self.telemetry.set_ready(true);
        info!(
            receivers = receiver_tasks.len(),
            pipelines = pipeline_tasks.len(),
            exporters = exporter_tasks.len(),
            "pipelines started"
        );

        let mut failure = None;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    info!("stopping: flushing the last window");
                    break;
                }
                Some(done) = exporter_tasks.join_next_with_id() => {
                    if let (None, Some(error)) = (&failure, died(done)) {
                        failure = Some(error);
                    }
                }
                Some(done) = pipeline_tasks.join_next_with_id() => {
                    if let (None, Some(error)) = (&failure, died(done)) {
                        failure = Some(error);
                    }
                }
                done = receiver_tasks.join_next() => match done {
                    None => {
                        info!("every receiver has finished");
                        break;
                    }
                    Some(Ok((id, Ok(())))) => debug!(receiver = %id, "receiver finished"),
                    Some(Ok((id, Err(error)))) => {
                        error!(receiver = %id, %error, "receiver failed; stopping");
                        failure = Some(ServiceError::ReceiverFailed { id, error });
                        break;
                    }
                    Some(Err(join)) => {
                        error!(error = %join, "receiver task panicked; stopping");
                        failure = Some(ServiceError::ReceiverFailed { id: "?".into(), error: join.to_string().into() });
                        break;
                    }
                },
            }
        }
        self.telemetry.set_ready(false);
        stop_tx.stop();
        let drain = async {
            while let Some(done) = receiver_tasks.join_next().await {
                match done {
                    Ok((id, Err(source))) => {
                        error!(receiver = %id, error = %source, "receiver failed while stopping");
                    }
                    Err(join) => {
                        error!(error = %join, "receiver task panicked while stopping");
                        failure.get_or_insert(ServiceError::ReceiverFailed {
                            id: "?".into(),
                            error: panic_message(join).into(),
                        });
                    }
                    Ok(_) => {}
                }
            }
            // A panic while flushing is a failure too.
            while let Some(done) = pipeline_tasks.join_next_with_id().await {
                if let (None, Some(error)) = (&failure, died(done)) {
                    failure = Some(error);
                }
            }
            while let Some(done) = exporter_tasks.join_next_with_id().await {
                if let (None, Some(error)) = (&failure, died(done)) {
                    failure = Some(error);
                }
            }
        };
        if tokio::time::timeout(self.shutdown_timeout, drain)
            .await
            .is_err()
        {
            error!(timeout = ?self.shutdown_timeout, "shutdown timed out");
            return Err(failure.unwrap_or(ServiceError::ShutdownTimeout(self.shutdown_timeout)));
        }
        info!("stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// Longest one component may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one component's start within [`START_TIMEOUT`].
async fn bounded_start(
    section: &'static str,
    id: &str,
    start: impl std::future::Future<Output = Result<(), ComponentError>>,
) -> Result<(), ServiceError> {
    let error = match tokio::time::timeout(START_TIMEOUT, start).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => error,
        Err(_) => format!("not started within {START_TIMEOUT:?}").into(),
    };
    Err(ServiceError::Start {
        section,
        id: id.to_owned(),
        error,
    })
}

/// Runs one component's shutdown, logging a failure (the service bounds
/// the whole drain with its shutdown timeout).
async fn shut_down_or_log(
    kind: &str,
    id: &str,
    shutdown: impl std::future::Future<Output = Result<(), ComponentError>>,
) {
    if let Err(error) = shutdown.await {
        warn!(%kind, %id, %error, "failed to shut down cleanly");
    }
}

/// The message a panic was raised with.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Why a task ended with `error`.
fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => format!("panicked: {}", panic_text(&*payload)),
        Err(error) => error.to_string(),
    }
}

/// Runs the processor chain on one batch, catching panics so a faulty
/// processor drops one batch instead of the pipeline.
fn process_chain(
    processors: &mut [(String, Box<dyn Processor>)],
    mut batch: ProfileBatch,
    trace: &Context,
) -> Result<ProfileBatch, (String, ComponentError, usize)> {
    let tracer = tracer();
    for (id, p) in processors.iter_mut() {
        let samples = batch.sample_count() as usize;
        let mut span = tracer.start_with_context(format!("process {id}"), trace);
        span.set_attribute(KeyValue::new("samples.in", samples as i64));
        let result = crate::panics::catch_counted(|| p.process(batch));
        let error: ComponentError = match result {
            Ok(Ok(b)) => {
                span.set_attribute(KeyValue::new("samples.out", b.samples.len() as i64));
                span.end();
                batch = b;
                continue;
            }
            Ok(Err(e)) => e,
            Err(panic) => format!("panicked: {}", panic_text(&*panic)).into(),
        };
        span.set_status(Status::error(error.to_string()));
        span.end();
        return Err((id.clone(), error, samples));
    }
    Ok(batch)
}

/// The tracer of the agent's own spans: a no-op unless the binary installed
/// a tracer provider (`service::traces`).
fn tracer() -> BoxedTracer {
    opentelemetry::global::tracer("agent")
}

/// Starts the span of one window in a pipeline, with a `collect` child for
/// the time the receiver spent gathering it; returns the window's context.
fn window_trace(pipeline: &str, batch: &ProfileBatch) -> Context {
    let tracer = tracer();
    let now = SystemTime::now();
    let duration = Duration::from_nanos(batch.duration_nanos);
    // A replayed file's window lies in the past: then collect is the window's
    // length ending now.
    let window_start = UNIX_EPOCH + Duration::from_nanos(batch.start_unix_nanos);
    let start = window_start
        .max(now.checked_sub(duration).unwrap_or(UNIX_EPOCH))
        .min(now);
    let window = tracer
        .span_builder("window")
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("pipeline", pipeline.to_owned()),
            KeyValue::new("profile.type", batch.profile_type.sample_type.kind.clone()),
            KeyValue::new("samples", batch.samples.len() as i64),
        ])
        .start(&tracer);
    let trace = Context::new().with_span(window);
    tracer
        .span_builder("collect")
        .with_start_time(start)
        .start_with_context(&tracer, &trace)
        .end_with_timestamp(now);
    trace
}

async fn run_pipeline(mut p: PipelineRuntime) {
    while let Some(batch) = p.input.recv().await {
        let trace = window_trace(&p.id, &batch);
        // Ends the window span however this iteration ends.
        let _window = WindowEnd(&trace);
        let batch = if p.processors.is_empty() {
            batch
        } else {
            // Processors mutate: take the batch, cloning only if another pipeline shares it.
            let owned = Arc::unwrap_or_clone(batch);
            let mut processors = std::mem::take(&mut p.processors);
            let chain_trace = trace.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let result = process_chain(&mut processors, owned, &chain_trace);
                (processors, result)
            })
            .await;
            let (processors, result) = joined.expect("processor panics are caught inside the task");
            p.processors = processors;
            match result {
                Ok(b) => Arc::new(b),
                Err((processor, error, samples)) => {
                    let stats = &p.processor_stats[&processor];
                    stats.errors.inc();
                    stats.dropped_samples.inc_by(samples as u64);
                    warn!(pipeline = %p.id, %processor, %error, samples, "processor failed; batch dropped");
                    continue;
                }
            }
        };
        if batch.samples.is_empty() {
            debug!(pipeline = %p.id, "empty batch not exported");
            continue;
        }
        // Internal labels (`__meta_process_cmdline`, goroutine labels
        // before relabeling) never leave, whatever the pipeline.
        let batch = if batch.has_internal_labels() {
            let mut owned = Arc::unwrap_or_clone(batch);
            owned.drop_internal_labels();
            Arc::new(owned)
        } else {
            batch
        };
        p.latest.set(&p.id, batch.clone());
        for e in &p.exporters {
            e.offer(batch.clone(), &trace).await;
        }
    }
    // The input closed: no batch comes any more. Processors end their work
    // before the exporters (whose queues close when this task ends).
    for (id, processor) in p.processors.iter_mut().rev() {
        shut_down_or_log("processor", id, processor.shutdown()).await;
    }
}

/// Tells each processor of a pipeline which labels can be read after it.
fn tell_what_is_read_later(processors: &mut [(String, Box<dyn Processor>)]) {
    for i in 0..processors.len() {
        let (head, later) = processors.split_at_mut(i + 1);
        let read_later = |name: &str| {
            for (_, p) in later.iter() {
                match p.label_use(name) {
                    LabelUse::Reads => return true,
                    LabelUse::Ends => return false,
                    LabelUse::Passes => {}
                }
            }
            // Internal labels are dropped before the exporters.
            !is_internal_label(name)
        };
        head[i].1.read_later(&read_later);
    }
}

/// Ends the window span of a context when dropped.
struct WindowEnd<'a>(&'a Context);

impl Drop for WindowEnd<'_> {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

async fn run_exporter(mut e: ExporterRuntime) {
    let stats = &e.stats;
    let tracer = tracer();
    let mut progress = Progress::new(&e.id, e.exporter.destination());
    while let Some((batch, trace)) = e.queue.recv().await {
        stats.queue_depth.dec();
        let started = Instant::now();
        let n = batch.sample_count();
        let series_count = batch.series_ids().len() as i64;
        let mut span = tracer.start_with_context(format!("export {}", e.id), &trace);
        span.set_attribute(KeyValue::new("samples", n as i64));
        match e.exporter.export(batch).await {
            Ok(()) => {
                stats.batches.inc();
                stats.samples.inc_by(n);
                stats.series.set(series_count);
                progress.exported(n, series_count);
            }
            Err(error) => {
                stats.errors.inc();
                span.set_status(Status::error(error.to_string()));
                warn!(exporter = %e.id, %error, "export failed");
                progress.failed();
            }
        }
        span.end();
        stats
            .export_duration
            .observe(started.elapsed().as_secs_f64());
    }
    shut_down_or_log("exporter", &e.id, e.exporter.shutdown()).await;
}

/// How often an exporter's progress is summed up at info level.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// What an exporter says at info level, so a user sees the agent work
/// without a line per window: the first window, a summary at most once a
/// minute, and a recovery after failures.
struct Progress<'a> {
    exporter: &'a str,
    destination: String,
    first_done: bool,
    since: Instant,
    windows: u64,
    samples: u64,
    failures: u64,
    /// Failures since the last success.
    failing: u64,
}

impl<'a> Progress<'a> {
    fn new(exporter: &'a str, destination: String) -> Self {
        Self {
            exporter,
            destination,
            first_done: false,
            since: Instant::now(),
            windows: 0,
            samples: 0,
            failures: 0,
            failing: 0,
        }
    }

    fn exported(&mut self, samples: u64, series: i64) {
        if !self.first_done {
            self.first_done = true;
            self.since = Instant::now();
            info!(exporter = %self.exporter, destination = %self.destination, samples, series, "first window exported");
            return;
        }
        if self.failing > 0 {
            info!(exporter = %self.exporter, failures = self.failing, "exporting again");
            self.failing = 0;
        }
        self.windows += 1;
        self.samples += samples;
        self.summarize();
    }

    fn failed(&mut self) {
        self.failures += 1;
        self.failing += 1;
        self.summarize();
    }

    fn summarize(&mut self) {
        if self.since.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        info!(
            exporter = %self.exporter,
            windows = self.windows,
            samples = self.samples,
            failures = self.failures,
            "exported in the last minute"
        );
        (self.windows, self.samples, self.failures) = (0, 0, 0);
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::model::{LabelSet, ProfileType, Sample};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    fn batch(n: i64) -> ProfileBatch {
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
        let stack = b.stacks.intern(vec![]);
        let series = b.label_sets.intern(LabelSet::new([
            ("n", n.to_string()),
            ("__meta_process_cmdline", "app --token s3cret".into()),
        ]));
        let attributes = b.label_sets.intern(LabelSet::new([
            ("thread_id", "7"),
            ("__meta_go_label_handler", "checkout"),
        ]));
        b.samples.push(Sample {
            stack,
            series,
            attributes,
            value: n,
            timestamp_unix_nanos: None,
        });
        b
    }

    #[derive(Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct CountConfig {
        batches: i64,
        wait_for_shutdown: bool,
    }
    impl ComponentConfig for CountConfig {}

    /// Emits `batches` batches, then (optionally) one more at shutdown.
    struct Counting(CountConfig);
    #[async_trait::async_trait]
    impl Receiver for Counting {
        async fn run(
            self: Box<Self>,
            sink: BatchSink,
            mut shutdown: Shutdown,
        ) -> Result<(), ComponentError> {
            for i in 1..=self.0.batches {
                sink.send(batch(i)).await;
            }
            if self.0.wait_for_shutdown {
                shutdown.requested().await;
                sink.send(batch(1000)).await;
            }
            Ok(())
        }
    }
    struct CountingFactory;
    impl Factory for CountingFactory {
        const TYPE: &'static str = "counting";
        const STABILITY: Stability = Stability::Development;
        const DESCRIPTION: &'static str = "test receiver";
        type Config = CountConfig;
        type Output = Box<dyn Receiver>;
        fn create(&self, c: CountConfig, _: &BuildContext) -> Result<Self::Output, ComponentError> {
            Ok(Box::new(Counting(c)))
        }
    }

    #[derive(Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct NoConfig {}
    impl ComponentConfig for NoConfig {}

    /// Doubles values; fails on value 3, panics on value 4; counts its instances.
    struct Doubler;
    impl Processor for Doubler {
        fn process(&mut self, mut b: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
            match b.samples[0].value {
                3 => return Err("three".into()),
                4 => panic!("four"),
                _ => {}
            }
            for s in &mut b.samples {
                s.value *= 2;
            }
            Ok(b)
        }
    }
    struct DoublerFactory(Arc<Mutex<usize>>);
    impl Factory for DoublerFactory {
        const TYPE: &'static str = "doubler";
        const STABILITY: Stability = Stability::Development;
        const DESCRIPTION: &'static str = "test processor";
        type Config = NoConfig;
        type Output = Box<dyn Processor>;
        fn create(&self, _: NoConfig, _: &BuildContext) -> Result<Self::Output, ComponentError> {
            *self.0.lock().unwrap() += 1;
            Ok(Box::new(Doubler))
        }
    }

    /// Records values and label names; a `gate` exporter waits for the
    /// notify before each batch.
    #[derive(Clone, Default)]
    struct Sink {
        values: Arc<Mutex<Vec<i64>>>,
        label_names: Arc<Mutex<BTreeSet<String>>>,
        gate: Option<Arc<Notify>>,
        /// Panics on a batch of this value.
        panic_on: Option<i64>,
    }
    #[async_trait::async_trait]
    impl Exporter for Sink {
        async fn export(&mut self, b: Arc<ProfileBatch>) -> Result<(), ComponentError> {
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            if self.panic_on == Some(b.samples[0].value) {
                panic!("sink broke on {}", b.samples[0].value);
            }
            self.values.lock().unwrap().push(b.samples[0].value);
            let sample = &b.samples[0];
            for id in [sample.series, sample.attributes] {
                let names = b.labels(id).pairs().iter().map(|(k, _)| k.clone());
                self.label_names.lock().unwrap().extend(names);
            }
            Ok(())
        }
    }
    struct SinkFactory(BTreeMap<String, Sink>);
    impl Factory for SinkFactory {
        const TYPE: &'static str = "sink";
        const STABILITY: Stability = Stability::Development;
        const DESCRIPTION: &'static str = "test exporter";
        type Config = NoConfig;
        type Output = Box<dyn Exporter>;
        fn create(&self, _: NoConfig, ctx: &BuildContext) -> Result<Self::Output, ComponentError> {
            Ok(Box::new(self.0.get(&ctx.id).cloned().unwrap_or_default()))
        }
    }

    fn registry(sinks: &[(&str, Sink)], doublers: Arc<Mutex<usize>>) -> Registry {
        let mut r = Registry::default();
        r.register(CountingFactory);
        r.register(DoublerFactory(doublers));
        r.register(SinkFactory(
            sinks
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ));
        r
    }

    fn sorted(s: &Sink) -> Vec<i64> {
        let mut v = s.values.lock().unwrap().clone();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exporter_that_dies_is_shown_and_fails_the_exit() {
        let fine = Sink::default();
        let broken = Sink {
            panic_on: Some(2),
            ..Default::default()
        };
        let r = registry(
            &[("sink/fine", fine.clone()), ("sink/broken", broken)],
            Default::default(),
        );
        let yaml = r#"
receivers: {counting: {batches: 5, wait_for_shutdown: true}}
exporters: {sink/fine: {}, sink/broken: {}}
service:
  pipelines:
    profiles: {receivers: [counting], exporters: [sink/fine, sink/broken]}
"#;
        let config = load(yaml, &[], &r, &|_| None).unwrap();
        let telemetry = Telemetry::default();
        let service = Service::build(&config, &r, &telemetry, "test").unwrap();
        let watched = telemetry.clone();
        let stop = async move {
            while fine.values.lock().unwrap().len() < 5 || watched.failures().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(!watched.is_ready(), "ready with a dead exporter");
        };
        let error = service.run(stop).await.unwrap_err().to_string();
        assert_eq!(
            error,
            "exporter sink/broken stopped while the agent ran: panicked: sink broke on 2"
        );
        let failures = telemetry.failures();
        assert_eq!(
            (failures[0].kind, failures[0].id.as_str()),
            ("exporter", "sink/broken")
        );
        assert!(telemetry.encode().contains(
            "agent_component_failures_total{component_id=\"sink/broken\",component_kind=\"exporter\"} 1"
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_exporter_neither_stalls_the_other_nor_loses_count() {
        let fast = Sink::default();
        let gate = Arc::new(Notify::new());
        let blocked = Sink {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let r = registry(
            &[
                ("sink/fast", fast.clone()),
                ("sink/blocked", blocked.clone()),
            ],
            Default::default(),
        );
        let yaml = r#"
receivers: {counting: {batches: 50}}
exporters:
  sink/fast: {sending_queue: {queue_size: 64}}
  sink/blocked: {sending_queue: {queue_size: 2}}
service:
  pipelines:
    profiles: {receivers: [counting], exporters: [sink/fast, sink/blocked]}
"#;
        let config = load(yaml, &[], &r, &|_| None).unwrap();
        let telemetry = Telemetry::default();
        let service = Service::build(&config, &r, &telemetry, "test").unwrap();
        let fast_values = fast.values.clone();
        let release = tokio::spawn(async move {
            // Open the gate only once the fast exporter has everything.
            while fast_values.lock().unwrap().len() < 50 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            loop {
                gate.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        service.run(std::future::pending()).await.unwrap();
        release.abort();
        assert_eq!(sorted(&fast), (1..=50).collect::<Vec<_>>());
        let metrics = telemetry.encode();
        let dropped: u64 = metrics
            .lines()
            .find(|l| {
                l.starts_with("agent_exporter_dropped_batches_total{exporter=\"sink/blocked\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("dropped counter exported");
        let delivered = blocked.values.lock().unwrap().len() as u64;
        assert_eq!(dropped + delivered, 50, "{metrics}");
        // At most one batch in export and two queued got through.
        assert!((1..=3).contains(&delivered), "delivered {delivered}");
        assert!(!metrics.contains("agent_exporter_dropped_batches_total{exporter=\"sink/fast\"} 1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_on_overflow_waits_instead_of_dropping() {
        let gate = Arc::new(Notify::new());
        let slow = Sink {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let r = registry(&[("sink", slow.clone())], Default::default());
        let yaml = r#"
receivers: {counting: {batches: 20}}
exporters: {sink: {sending_queue: {queue_size: 1, block_on_overflow: true}}}
service: {pipelines: {profiles: {receivers: [counting], exporters: [sink]}}}
"#;
        let config = load(yaml, &[], &r, &|_| None).unwrap();
        let telemetry = Telemetry::default();
        let service = Service::build(&config, &r, &telemetry, "test").unwrap();
        let release = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                gate.notify_one();
            }
        });
        service.run(std::future::pending()).await.unwrap();
        release.abort();
        assert_eq!(sorted(&slow), (1..=20).collect::<Vec<_>>());
        assert!(!telemetry
            .encode()
            .contains("agent_exporter_dropped_batches_total{exporter=\"sink\"} 1"));
    }

    #[tokio::test]
    async fn fan_out_builds_processors_per_pipeline_and_survives_processor_failures() {
        let a = Sink::default();
        let b = Sink::default();
        let instances = Arc::new(Mutex::new(0));
        let r = registry(
            &[("sink/a", a.clone()), ("sink/b", b.clone())],
            instances.clone(),
        );
        let yaml = r#"
receivers: {counting: {batches: 5}}
processors: {doubler: {}}
exporters: {sink/a: {}, sink/b: {}}
service:
  pipelines:
    profiles/doubled: {receivers: [counting], processors: [doubler], exporters: [sink/a]}
    profiles/raw: {receivers: [counting], exporters: [sink/b]}
"#;
        let config = load(yaml, &[], &r, &|_| None).unwrap();
        let telemetry = Telemetry::default();
        Service::build(&config, &r, &telemetry, "test")
            .unwrap()
            .run(std::future::pending())
            .await
            .unwrap();
        assert_eq!(*instances.lock().unwrap(), 1);
        // 3 failed with an error, 4 panicked: both dropped, the pipeline went on.
        assert_eq!(sorted(&a), vec![2, 4, 10]);
        assert_eq!(sorted(&b), vec![1, 2, 3, 4, 5]);
        let metrics = telemetry.encode();
        assert!(metrics.contains(
            "agent_processor_errors_total{pipeline=\"profiles/doubled\",processor=\"doubler\"} 2"
        ), "{metrics}");
    }

    #[tokio::test]
    async fn stopping_flushes_the_last_window() {
        let out = Sink::default();
        let r = registry(&[("sink", out.clone())], Default::default());
        let yaml = r#"
receivers: {counting: {batches: 2, wait_for_shutdown: true}}
exporters: {sink: {}}
service: {pipelines: {profiles: {receivers: [counting], exporters: [sink]}}}
"#;
        let config = load(yaml, &[], &r, &|_| None).unwrap();
        let service = Service::build(&config, &r, &Telemetry::default(), "test").unwrap();
        service
            .run(tokio::time::sleep(Duration::from_millis(50)))
            .await
            .unwrap();
        assert_eq!(sorted(&out), vec![1, 2, 1000]);
        // No relabel in this pipeline: internal labels are dropped anyway.
        let names: Vec<String> = out.label_names.lock().unwrap().iter().cloned().collect();
        assert_eq!(names, ["n", "thread_id"]);
    }

    /// Components that write what happens to them in one log.
    mod lifecycle {
        use super::*;

        type Log = Arc<Mutex<Vec<String>>>;

        #[derive(Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields, default)]
        struct LoggedConfig {
            fail_start: bool,
        }
        impl ComponentConfig for LoggedConfig {}

        /// Logs `start <id>`, `shutdown <id>`; fails its start when told.
        struct Logged {
            id: String,
            log: Log,
            fail_start: bool,
            /// What every instance of this id shares.
            shared: Arc<Mutex<usize>>,
        }
        impl Logged {
            fn note(&self, what: &str) {
                self.log.lock().unwrap().push(format!("{what} {}", self.id));
            }
            fn start(&self) -> Result<(), ComponentError> {
                self.note("start");
                if self.fail_start {
                    return Err("no such device".into());
                }
                Ok(())
            }
        }
        #[async_trait::async_trait]
        impl Receiver for Logged {
            async fn start(&mut self) -> Result<(), ComponentError> {
                Logged::start(self)
            }
            async fn run(
                self: Box<Self>,
                sink: BatchSink,
                mut shutdown: Shutdown,
            ) -> Result<(), ComponentError> {
                sink.send(batch(1)).await;
                shutdown.requested().await;
                self.note("stopped");
                Ok(())
            }
        }
        #[async_trait::async_trait]
        impl Processor for Logged {
            async fn start(&mut self) -> Result<(), ComponentError> {
                Logged::start(self)
            }
            async fn shutdown(&mut self) -> Result<(), ComponentError> {
                self.note("shutdown");
                Ok(())
            }
            fn process(&mut self, b: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
                *self.shared.lock().unwrap() += 1;
                Ok(b)
            }
        }
        #[async_trait::async_trait]
        impl Exporter for Logged {
            async fn start(&mut self) -> Result<(), ComponentError> {
                Logged::start(self)
            }
            async fn export(&mut self, _: Arc<ProfileBatch>) -> Result<(), ComponentError> {
                Ok(())
            }
            async fn shutdown(&mut self) -> Result<(), ComponentError> {
                self.note("shutdown");
                Ok(())
            }
        }

        struct LoggedFactory<const KIND: u8>(Log);
        impl<const KIND: u8> LoggedFactory<KIND> {
            fn logged(&self, c: LoggedConfig, ctx: &BuildContext) -> Box<Logged> {
                self.0.lock().unwrap().push(format!("build {}", ctx.id));
                Box::new(Logged {
                    id: ctx.id.clone(),
                    log: self.0.clone(),
                    fail_start: c.fail_start,
                    shared: ctx.shared(|_| Mutex::new(0)),
                })
            }
        }
        macro_rules! logged_factory {
            ($kind:literal, $type:literal, $output:ty) => {
                impl Factory for LoggedFactory<$kind> {
                    const TYPE: &'static str = $type;
                    const STABILITY: Stability = Stability::Development;
                    const DESCRIPTION: &'static str = "test component";
                    type Config = LoggedConfig;
                    type Output = $output;
                    fn create(
                        &self,
                        c: LoggedConfig,
                        ctx: &BuildContext,
                    ) -> Result<Self::Output, ComponentError> {
                        Ok(self.logged(c, ctx))
                    }
                }
            };
        }
        logged_factory!(0, "logged_receiver", Box<dyn Receiver>);
        logged_factory!(1, "logged_processor", Box<dyn Processor>);
        logged_factory!(2, "logged_exporter", Box<dyn Exporter>);

        fn service(yaml: &str, log: &Log) -> Service {
            let mut r = Registry::default();
            r.register(LoggedFactory::<0>(log.clone()));
            r.register(LoggedFactory::<1>(log.clone()));
            r.register(LoggedFactory::<2>(log.clone()));
            let config = load(yaml, &[], &r, &|_| None).unwrap();
            Service::build(&config, &r, &Telemetry::default(), "test").unwrap()
        }

        const TWO_PIPELINES: &str = r#"
receivers: {logged_receiver: {}}
processors: {logged_processor: {}}
exporters: {logged_exporter: {}}
service:
  pipelines:
    profiles/a: {receivers: [logged_receiver], processors: [logged_processor], exporters: [logged_exporter]}
    profiles/b: {receivers: [logged_receiver], processors: [logged_processor], exporters: [logged_exporter]}
"#;

        #[tokio::test]
        async fn building_starts_nothing_and_components_start_and_stop_in_order() {
            let log = Log::default();
            let service = service(TWO_PIPELINES, &log);
            assert_eq!(
                std::mem::take(&mut *log.lock().unwrap()),
                [
                    "build logged_exporter",
                    "build logged_processor",
                    "build logged_processor",
                    "build logged_receiver",
                ],
                "building starts nothing"
            );
            service
                .run(tokio::time::sleep(Duration::from_millis(100)))
                .await
                .unwrap();
            let log = log.lock().unwrap().clone();
            assert_eq!(
                log,
                [
                    "start logged_exporter",
                    "start logged_processor",
                    "start logged_processor",
                    "start logged_receiver",
                    "stopped logged_receiver",
                    "shutdown logged_processor",
                    "shutdown logged_processor",
                    "shutdown logged_exporter",
                ]
            );
        }

        #[tokio::test]
        async fn a_processor_in_two_pipelines_is_two_instances_with_one_shared_state() {
            let log = Log::default();
            let service = service(TWO_PIPELINES, &log);
            let instances: Vec<usize> = service
                .pipelines
                .iter()
                .map(|p| p.processors.len())
                .collect();
            assert_eq!(instances, [1, 1], "one instance per pipeline");
            // The state made at build; both instances count into it.
            let probe = BuildContext {
                shared: service.shared.clone(),
                ..BuildContext::for_test("logged_processor")
            };
            let state = probe.shared(|_| Mutex::new(usize::MAX));
            service
                .run(tokio::time::sleep(Duration::from_millis(100)))
                .await
                .unwrap();
            assert_eq!(*state.lock().unwrap(), 2, "one batch through each pipeline");
        }

        /// Runs `yaml`, which fails to start: the error, and what happened
        /// after the builds.
        async fn failed_start(yaml: &str) -> (String, Vec<String>) {
            let log = Log::default();
            let service = service(yaml, &log);
            let error = service.run(std::future::pending()).await.unwrap_err();
            let log = log.lock().unwrap().clone();
            let after_build = log
                .into_iter()
                .filter(|l| !l.starts_with("build "))
                .collect();
            (error.to_string(), after_build)
        }

        #[tokio::test]
        async fn a_component_that_cannot_start_fails_the_start_naming_it_and_what_started_stops() {
            // A processor partway through the second pipeline.
            let (error, log) = failed_start(
                r#"
receivers: {logged_receiver: {}}
processors: {logged_processor: {}, logged_processor/b: {fail_start: true}}
exporters: {logged_exporter: {}}
service:
  pipelines:
    profiles/a: {receivers: [logged_receiver], processors: [logged_processor], exporters: [logged_exporter]}
    profiles/b: {receivers: [logged_receiver], processors: [logged_processor, logged_processor/b], exporters: [logged_exporter]}
"#,
            )
            .await;
            assert_eq!(
                error,
                "processors::logged_processor/b: cannot start: no such device"
            );
            assert_eq!(
                log,
                [
                    "start logged_exporter",
                    "start logged_processor",
                    "start logged_processor",
                    "start logged_processor/b",
                    "shutdown logged_processor",
                    "shutdown logged_processor",
                    "shutdown logged_exporter",
                ],
                "the receiver never started; what started was stopped, newest first"
            );
            // A receiver: everything else had started and stops.
            let (error, log) = failed_start(&TWO_PIPELINES.replace(
                "receivers: {logged_receiver: {}}",
                "receivers: {logged_receiver: {fail_start: true}}",
            ))
            .await;
            assert_eq!(
                error,
                "receivers::logged_receiver: cannot start: no such device"
            );
            assert_eq!(
                log,
                [
                    "start logged_exporter",
                    "start logged_processor",
                    "start logged_processor",
                    "start logged_receiver",
                    "shutdown logged_processor",
                    "shutdown logged_processor",
                    "shutdown logged_exporter",
                ]
            );
        }
    }

    #[test]
    fn config_errors_name_their_paths_and_come_all_at_once() {
        let mut r = registry(&[], Default::default());
        r.absent(
            Kind::Processor,
            "k8s_meta",
            "built without Cargo feature `processor-k8s-meta`",
        );
        let yaml = r#"
receivers:
  counting: {batches: "many"}
  countng/x: {}
processors: {doubler: {extra: 1}, k8s_meta: {}}
exporters: {sink: {sending_queue: {queue_size: 0}}}
extensions: {}
service:
  pipelines:
    profiles: {receivers: [countin], exporters: [sink, sink]}
    traces: {receivers: [counting], exporters: [doubler]}
"#;
        let errors = load(yaml, &[], &r, &|_| None).err().unwrap().to_string();
        for expected in [
            "extensions: unknown top-level key `extensions`",
            "receivers::counting::batches: invalid type: string \"many\", expected i64",
            "receivers::countng/x: unknown receiver type `countng`; did you mean `counting`?",
            "processors::doubler::extra: unknown field `extra`",
            "processors::k8s_meta: processor type `k8s_meta` is not in this build (built without Cargo feature `processor-k8s-meta`)",
            "exporters::sink::sending_queue::queue_size: must be between 1 and 65536 (is 0)",
            "service::pipelines::profiles::receivers: `countin` is not configured under `receivers`; did you mean `counting`?",
            "service::pipelines::profiles::exporters: `sink` is listed twice",
            "service::pipelines::traces: `traces` is not a pipeline id",
            "service::pipelines::traces::exporters: `doubler` is not configured under `exporters`; `doubler` is configured as a processor",
        ] {
            assert!(errors.contains(expected), "missing `{expected}` in:\n{errors}");
        }
    }

    /// Says `Reads`/`Ends` for the labels it lists, else its `rest`; keeps
    /// what it was told is read later of `__meta_x` and `plain`.
    struct Uses {
        listed: Vec<(&'static str, LabelUse)>,
        rest: LabelUse,
        told: Arc<Mutex<Vec<(bool, bool)>>>,
    }
    impl Processor for Uses {
        fn process(&mut self, b: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
            Ok(b)
        }
        fn label_use(&self, name: &str) -> LabelUse {
            self.listed
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(self.rest, |(_, u)| *u)
        }
        fn read_later(&mut self, read_later: &dyn Fn(&str) -> bool) {
            self.told
                .lock()
                .unwrap()
                .push((read_later("__meta_x"), read_later("plain")));
        }
    }

    #[test]
    fn processors_are_told_which_labels_are_read_after_them() {
        use LabelUse::*;
        let told = Arc::new(Mutex::new(Vec::new()));
        let p = |listed: Vec<(&'static str, LabelUse)>, rest| {
            let processor: Box<dyn Processor> = Box::new(Uses {
                listed,
                rest,
                told: told.clone(),
            });
            ("p".to_owned(), processor)
        };
        let first_told = |mut chain: Vec<(String, Box<dyn Processor>)>| {
            told.lock().unwrap().clear();
            tell_what_is_read_later(&mut chain);
            told.lock().unwrap()[0]
        };
        // Alone: internal labels never reach an exporter, others do.
        assert_eq!(first_told(vec![p(vec![], Passes)]), (false, true));
        // A later reader, even past one that passes labels on.
        let reader = || p(vec![("__meta_x", Reads)], Passes);
        assert_eq!(
            first_told(vec![p(vec![], Passes), p(vec![], Passes), reader()]),
            (true, true)
        );
        // Not past one that removes it (relabel with internal labels).
        let ender = p(vec![("__meta_x", Ends)], Passes);
        assert_eq!(
            first_told(vec![p(vec![], Passes), ender, reader()]),
            (false, true)
        );
        // A processor that does not say may read anything.
        let unknown: Box<dyn Processor> = Box::new(Doubler);
        assert_eq!(
            first_told(vec![p(vec![], Passes), ("d".into(), unknown)]),
            (true, true)
        );
    }
}
