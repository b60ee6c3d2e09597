//! Container names by container id. Runtimes are asked from a background
//! thread, so a slow or absent runtime holds a window up for at most
//! `wait`; an answer that comes later labels later windows.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent_core::telemetry::{ComponentTelemetry, Counter};

use crate::runtime::{self, Api, LookupError};

/// Longest a single lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// When a container the runtime could not name is asked about again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Containers not seen for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How container names are found.
pub struct NamesConfig {
    /// Socket used for every runtime instead of its default sockets.
    pub socket: Option<PathBuf>,
    /// Longest a window waits for containers it is the first to see.
    pub wait: Duration,
}

enum State {
    Pending,
    Named(Vec<(String, String)>),
    Unnamed { retry_at: Instant },
}

struct Entry {
    state: State,
    seen: Instant,
}

struct Request {
    api: Api,
    socket: PathBuf,
    id_label: String,
    id: String,
}

type Answer = (String, String, Result<runtime::ContainerInfo, LookupError>);

/// The background thread running lookups on its own small runtime.
struct Worker {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    answers: mpsc::Receiver<Answer>,
}

impl Worker {
    fn start() -> std::io::Result<Self> {
        let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let (reply, answers) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("container-names".into())
            .spawn(move || {
                // Ends when the processor (the sender) is dropped.
                runtime.block_on(async move {
                    while let Some(request) = incoming.recv().await {
                        let reply = reply.clone();
                        tokio::spawn(async move {
                            let Request {
                                api,
                                socket,
                                id_label,
                                id,
                            } = request;
                            let result = tokio::time::timeout(
                                LOOKUP_TIMEOUT,
                                runtime::lookup(api, &socket, &id),
                            )
                            .await
                            .unwrap_or_else(|_| {
                                Err(LookupError::Failed(format!(
                                    "no answer within {LOOKUP_TIMEOUT:?}"
                                )))
                            });
                            let _ = reply.send((id_label, id, result));
                        });
                    }
                });
            })?;
        Ok(Self { requests, answers })
    }
}

/// Lookup outcomes, by `result` label.
struct Metrics {
    found: Counter,
    not_found: Counter,
    unreachable: Counter,
    failed: Counter,
}

impl Metrics {
    fn new(telemetry: &ComponentTelemetry) -> Self {
        let counter = |result| {
            telemetry.counter(
                "metadata_container_lookups",
                "Container runtime lookups of container names, by result.",
                &[("result", result)],
            )
        };
        Self {
            found: counter("found"),
            not_found: counter("not_found"),
            unreachable: counter("unreachable"),
            failed: counter("failed"),
        }
    }

    fn count(&self, result: &Result<runtime::ContainerInfo, LookupError>) {
        match result.as_ref().map_err(LookupError::kind) {
            Ok(_) => self.found.inc(),
            Err("not_found") => self.not_found.inc(),
            Err("unreachable") => self.unreachable.inc(),
            Err(_) => self.failed.inc(),
        }
    }
}

/// Name labels of containers, cached by container id.
pub struct ContainerNames {
    config: NamesConfig,
    entries: HashMap<String, Entry>,
    worker: Option<Worker>,
    metrics: Metrics,
    /// Sockets whose failure was logged already (logged once, then debug).
    reported: HashSet<PathBuf>,
}

impl ContainerNames {
    pub fn new(config: NamesConfig, telemetry: &ComponentTelemetry) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            worker: None,
            metrics: Metrics::new(telemetry),
            reported: HashSet::new(),
        }
    }

    /// Ends the lookup thread (a later lookup would start it again).
    pub fn stop(&mut self) {
        self.worker = None;
    }

    /// The name labels of container `id`, once its runtime has named it.
    pub fn labels(&self, id: &str) -> &[(String, String)] {
        match self.entries.get(id).map(|e| &e.state) {
            Some(State::Named(labels)) => labels,
            _ => &[],
        }
    }

    /// Asks about the `(id label, id)` containers not known yet and waits up
    /// to the configured time for those answers.
    pub fn resolve(&mut self, containers: &HashSet<(String, String)>) {
        self.take_answers();
        let now = Instant::now();
        let mut asked = HashSet::new();
        for (id_label, id) in containers {
            let due = match self.entries.get_mut(id) {
                Some(entry) => {
                    entry.seen = now;
                    matches!(entry.state, State::Unnamed { retry_at } if retry_at <= now)
                }
                None => true,
            };
            if due {
                let state = if self.ask(id_label, id) {
                    asked.insert(id.clone());
                    State::Pending
                } else {
                    State::Unnamed {
                        retry_at: now + RETRY_AFTER,
                    }
                };
                self.entries.insert(id.clone(), Entry { state, seen: now });
            }
        }
        self.wait_for(asked, now + self.config.wait);
        self.entries
            .retain(|_, e| now.duration_since(e.seen) < FORGET_AFTER);
    }

    /// Sends a lookup to the worker; false when there is no runtime to ask.
    fn ask(&mut self, id_label: &str, id: &str) -> bool {
        let Some(runtime) = runtime::runtime_for(id_label) else {
            return false;
        };
        let socket = match &self.config.socket {
            Some(socket) => socket.clone(),
            None => match runtime
                .default_sockets
                .iter()
                .map(Path::new)
                .find(|s| s.exists())
            {
                Some(socket) => socket.to_owned(),
                None => {
                    self.metrics.unreachable.inc();
                    return false;
                }
            },
        };
        if self.worker.is_none() {
            match Worker::start() {
                Ok(worker) => self.worker = Some(worker),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the container name lookup thread");
                    return false;
                }
            }
        }
        let request = Request {
            api: runtime.api,
            socket,
            id_label: id_label.to_owned(),
            id: id.to_owned(),
        };
        self.worker
            .as_ref()
            .is_some_and(|w| w.requests.send(request).is_ok())
    }

    /// Applies answers that have arrived, without waiting.
    fn take_answers(&mut self) {
        while let Some(answer) = self.worker.as_ref().and_then(|w| w.answers.try_recv().ok()) {
            self.apply(answer);
        }
    }

    /// Applies answers until every id in `asked` has one or `deadline` passes.
    fn wait_for(&mut self, mut asked: HashSet<String>, deadline: Instant) {
        while !asked.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(answer) = self
                .worker
                .as_ref()
                .and_then(|w| w.answers.recv_timeout(left).ok())
            else {
                return;
            };
            asked.remove(&answer.1);
            self.apply(answer);
        }
    }

    fn apply(&mut self, (id_label, id, result): Answer) {
        self.metrics.count(&result);
        let state = match result {
            Ok(info) => State::Named(info.labels(&id_label)),
            Err(error) => {
                match &error {
                    LookupError::Unreachable { socket, .. }
                        if self.reported.insert(socket.clone()) =>
                    {
                        tracing::info!(%error, "container names from this runtime are left out until it answers");
                    }
                    _ => tracing::debug!(%error, container = %id, "container not named"),
                }
                State::Unnamed {
                    retry_at: Instant::now() + RETRY_AFTER,
                }
            }
        };
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = state;
        }
    }
}
