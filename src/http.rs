//! The local HTTP view: status page, metrics, health, the latest window's
//! profiles as pprof or flame graphs, and the agent profiling itself.
//! Read-only: it serves local data and accepts no writes.
//!
//! Any local user can reach it, so it must never take the pipeline down:
//! connections are capped (each holds a file descriptor the pipeline may
//! need) and time out, request heads are small, and the heavy answers
//! (`/query`, `/flamegraph`) run one at a time, off the runtime's threads,
//! within a time budget.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::selector::Selector;
use agent_core::config::PipelineConfig;
use agent_core::labels;
use agent_core::pprof::{to_pprof, PprofGrouping};
use agent_core::service::LatestWindows;
use agent_core::stats::{ExporterStats, ProcessorStats, ReceiverStats};
use agent_core::{ProfileBatch, Telemetry};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::self_profile;

/// What the views read.
#[derive(Clone)]
pub struct View {
    /// Metrics and readiness.
    pub telemetry: Telemetry,
    /// The latest batch of each pipeline.
    pub latest: LatestWindows,
    /// The pipelines, for the status page.
    pub pipelines: Arc<BTreeMap<String, PipelineConfig>>,
    /// When the agent started.
    pub started: std::time::Instant,
    /// Held by the heavy answer being computed ([`Self::heavy_slot`]).
    pub heavy: Arc<Semaphore>,
}

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed (after its request in flight) this long after it opened.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a request in flight may go on past the lifetime: the longest
/// answer, a 60 s self-profile, finishes.
const CONNECTION_GRACE: Duration = Duration::from_secs(75);
/// The longest request head read (hyper's buffer for it; 8 KiB at least).
const MAX_REQUEST_HEAD: usize = 16 << 10;
/// How long a heavy answer may take.
const HEAVY_BUDGET: Duration = Duration::from_secs(10);

impl View {
    /// One heavy answer at a time.
    pub fn heavy_slot() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(1))
    }

    /// Why there is nothing to show yet.
    fn no_window_yet(&self) -> String {
        format!(
            "no window has been exported yet: the agent started {} s ago, and a window is exported when it ends (`profiling_duration`, 10 s by default)",
            self.started.elapsed().as_secs()
        )
    }
}

/// Serves every route until the process exits.
pub async fn serve(listener: TcpListener, view: View) -> std::io::Result<()> {
    let refused = view.telemetry.counter(
        "http_connections_refused",
        "HTTP view connections closed unserved: more than 64 were open.",
        &[],
    );
    let app = router(view);
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (or a connection reset before
                // it was taken): accepting again at once would spin.
                warn!(error = %e, "HTTP view cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused.inc();
            // Said if the socket takes it at once, then closed.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 29\r\n\r\ntoo many connections; retry\r\n",
            );
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CONNECTION_GRACE, connection).await;
                }
            }
            drop(permit);
        });
    }
}

fn router(view: View) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthy", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/query", get(query))
        .route("/flamegraph", get(flamegraph))
        .route("/debug/pprof/profile", get(self_profile_route))
        .with_state(view)
}

/// Computes a heavy answer off the runtime's threads, one at a time (a
/// request waits for the one before), within [`HEAVY_BUDGET`] from its
/// arrival; 503 with the reason otherwise.
async fn heavy(view: &View, work: impl FnOnce() -> Response + Send + 'static) -> Response {
    let arrived = tokio::time::Instant::now();
    let Ok(Ok(permit)) =
        tokio::time::timeout(HEAVY_BUDGET, view.heavy.clone().acquire_owned()).await
    else {
        return ViewError(
            StatusCode::SERVICE_UNAVAILABLE,
            "other queries or flame graphs kept the view busy; retry in a moment".into(),
        )
        .into_response();
    };
    // The permit goes with the work: one computation at a time, even past
    // the budget.
    let task = tokio::task::spawn_blocking(move || {
        let answer = work();
        drop(permit);
        answer
    });
    match tokio::time::timeout_at(arrived + HEAVY_BUDGET, task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => ViewError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer failed".into(),
        )
        .into_response(),
        Err(_) => ViewError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the answer took longer than {} s; narrow the selector",
                HEAVY_BUDGET.as_secs()
            ),
        )
        .into_response(),
    }
}

async fn metrics(State(view): State<View>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        view.telemetry.encode(),
    )
}

async fn ready(State(view): State<View>) -> Response {
    if view.telemetry.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Parameters of `/query` and `/flamegraph`.
#[derive(Deserialize)]
struct QueryParams {
    #[serde(default)]
    query: String,
    #[serde(default)]
    pipeline: Option<String>,
    /// `kind/unit`, e.g. `samples/count`.
    #[serde(default, rename = "type")]
    sample_type: Option<String>,
    #[serde(default)]
    debug: Option<u8>,
}

/// A request the view cannot answer: status and reason.
struct ViewError(StatusCode, String);

impl IntoResponse for ViewError {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn bad_request(message: String) -> Response {
    ViewError(StatusCode::BAD_REQUEST, message).into_response()
}

/// The latest batch of the asked (or first) pipeline and sample type
/// (`samples/count` by default), keeping the series the selector matches.
fn select(view: &View, params: &QueryParams) -> Result<(String, ProfileBatch), ViewError> {
    let selector =
        Selector::parse(&params.query).map_err(|e| ViewError(StatusCode::BAD_REQUEST, e))?;
    let latest = view.latest.snapshot();
    let not_found = |what: String| ViewError(StatusCode::NOT_FOUND, what);
    if let Some(p) = params
        .pipeline
        .as_ref()
        .filter(|p| !view.pipelines.contains_key(*p))
    {
        let known: Vec<&str> = view.pipelines.keys().map(String::as_str).collect();
        return Err(not_found(format!(
            "no pipeline `{p}` (pipelines: {})",
            known.join(", ")
        )));
    }
    let (pipeline, types) = match &params.pipeline {
        Some(p) => latest.get_key_value(p),
        None => latest.iter().next(),
    }
    .ok_or_else(|| not_found(view.no_window_yet()))?;
    let batch = match &params.sample_type {
        Some(t) => types
            .get(t)
            .ok_or_else(|| not_found(format!("no `{t}` profile in {pipeline}")))?,
        None => types
            .get("samples/count")
            .or_else(|| types.values().next())
            .ok_or_else(|| not_found(view.no_window_yet()))?,
    };
    let mut batch = (**batch).clone();
    batch.map_series(|labels| selector.matches(labels).then(|| labels.clone()));
    Ok((pipeline.clone(), batch))
}

async fn query(State(view): State<View>, Query(params): Query<QueryParams>) -> Response {
    let computing = view.clone();
    heavy(&view, move || query_answer(&computing, &params)).await
}

fn query_answer(view: &View, params: &QueryParams) -> Response {
    let (pipeline, batch) = match select(view, params) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if params.debug == Some(1) {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text_profile(&pipeline, &batch),
        )
            .into_response();
    }
    let profile = to_pprof(&batch, PprofGrouping::Batch).remove(0);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"profile.pb.gz\"",
            ),
        ],
        profile.gzipped,
    )
        .into_response()
}

/// A readable rendering of a batch (`/query?debug=1`).
fn text_profile(pipeline: &str, batch: &ProfileBatch) -> String {
    let pt = &batch.profile_type;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {pipeline}: {}/{} every {} {}/{}, window start {} ns, {} ns long",
        pt.sample_type.kind,
        pt.sample_type.unit,
        pt.period,
        pt.period_type.kind,
        pt.period_type.unit,
        batch.start_unix_nanos,
        batch.duration_nanos
    );
    let _ = writeln!(
        out,
        "{} samples, total {}\n",
        batch.samples.len(),
        batch.total_value()
    );
    for s in batch.resolved_samples() {
        let labels = |set: &agent_core::LabelSet| {
            set.pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "{} {} | {}",
            s.value,
            labels(&s.series),
            labels(&s.attributes)
        );
        for f in &s.frames {
            let _ = writeln!(out, "    {:#018x} {}", f.address, f.display_name());
        }
    }
    out
}

/// Folded stacks (root first), one line per distinct stack, prefixed by the process.
fn folded(batch: &ProfileBatch) -> Vec<String> {
    let mut counts: HashMap<String, i64> = HashMap::new();
    for s in batch.resolved_samples() {
        let process = match (s.series.get(labels::COMM), s.series.get(labels::PID)) {
            (Some(c), Some(p)) => format!("{c} ({p})"),
            (Some(c), None) => c.to_owned(),
            _ => "all".to_owned(),
        };
        let mut line = process.replace(';', ":");
        for f in s.frames.iter().rev() {
            // Inlined functions become frames of their own, outermost first.
            if f.lines.len() > 1 {
                for l in f.lines.iter().rev() {
                    line.push(';');
                    line.push_str(&l.function.replace(';', ":"));
                }
            } else {
                line.push(';');
                line.push_str(&f.display_name().replace(';', ":"));
            }
        }
        *counts.entry(line).or_default() += s.value;
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    lines.sort();
    lines
}

async fn flamegraph(State(view): State<View>, Query(params): Query<QueryParams>) -> Response {
    let computing = view.clone();
    heavy(&view, move || flamegraph_answer(&computing, &params)).await
}

fn flamegraph_answer(view: &View, params: &QueryParams) -> Response {
    let (pipeline, batch) = match select(view, params) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let lines = folded(&batch);
    if lines.is_empty() {
        return (StatusCode::NOT_FOUND, "no samples match\n").into_response();
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!(
        "{pipeline} {}",
        if params.query.is_empty() {
            "{}"
        } else {
            &params.query
        }
    );
    options.count_name = batch.profile_type.sample_type.kind.clone();
    let mut svg = Vec::new();
    match inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
    {
        Ok(()) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("flame graph failed: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ProfileParams {
    #[serde(default = "default_seconds")]
    seconds: u64,
}

fn default_seconds() -> u64 {
    10
}

async fn self_profile_route(Query(params): Query<ProfileParams>) -> Response {
    if !(1..=60).contains(&params.seconds) {
        return bad_request("seconds must be between 1 and 60".into());
    }
    match self_profile::profile(std::time::Duration::from_secs(params.seconds)).await {
        Ok(gzipped) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"agent.pb.gz\"",
                ),
            ],
            gzipped,
        )
            .into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// `s` with its first letter upper-cased (a reason, as a sentence).
fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Percent-encodes a query parameter value.
fn url_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn status_page(State(view): State<View>) -> Html<String> {
    let failures = view.telemetry.failures();
    let state = if !failures.is_empty() {
        "failing"
    } else if view.telemetry.is_ready() {
        "running"
    } else {
        "starting or stopping"
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>agent</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}\
         th{{background:#f3f3f3}} code{{font-size:12px}} .n{{text-align:right}}\
         </style></head><body><h1>agent {}</h1><p>State: <b id=state>{state}</b> · \
         <a href=/metrics>metrics</a> · <a href=/healthy>healthy</a> · <a href=/ready>ready</a></p>\
         <h2>Pipelines</h2><table id=pipelines><tr><th>pipeline</th><th>component</th><th>counters</th></tr>",
        esc(crate::cli::VERSION)
    );
    if !failures.is_empty() {
        // Before the pipelines: what stopped working comes first.
        let pipelines_start = html.rfind("<h2>Pipelines</h2>").unwrap_or(html.len());
        let mut table = String::from(
            "<h2>Failed components</h2><table id=failures><tr><th>component</th><th>why</th></tr>",
        );
        for f in &failures {
            let _ = write!(
                table,
                "<tr><td>{} {}</td><td><code>{}</code></td></tr>",
                f.kind,
                esc(&f.id),
                esc(&f.reason)
            );
        }
        table.push_str("</table>");
        html.insert_str(pipelines_start, &table);
    }
    for (pid, p) in view.pipelines.iter() {
        let mut rows = Vec::new();
        for r in &p.receivers {
            let s = ReceiverStats::new(&view.telemetry, r);
            rows.push((
                format!("receiver {r}"),
                format!("batches {} · samples {}", s.batches.get(), s.samples.get()),
            ));
        }
        for proc_id in &p.processors {
            let s = ProcessorStats::new(&view.telemetry, proc_id, pid);
            rows.push((
                format!("processor {proc_id}"),
                format!(
                    "errors {} · dropped samples {}",
                    s.errors.get(),
                    s.dropped_samples.get()
                ),
            ));
        }
        for e in &p.exporters {
            let s = ExporterStats::new(&view.telemetry, e);
            rows.push((
                format!("exporter {e}"),
                format!(
                    "batches {} · samples {} · errors {} · dropped batches {} · queued {}",
                    s.batches.get(),
                    s.samples.get(),
                    s.errors.get(),
                    s.dropped_batches.get(),
                    s.queue_depth.get()
                ),
            ));
        }
        for (i, (component, counters)) in rows.iter().enumerate() {
            let first = if i == 0 {
                format!("<td rowspan={}>{}</td>", rows.len(), esc(pid))
            } else {
                String::new()
            };
            let _ = write!(
                html,
                "<tr>{first}<td>{}</td><td>{}</td></tr>",
                esc(component),
                esc(counters)
            );
        }
    }
    html.push_str("</table><h2>Processes in the last window</h2>");
    let latest = view.latest.snapshot();
    if latest.is_empty() {
        let _ = write!(
            html,
            "<p id=processes>{}.</p>",
            esc(&capitalized(&view.no_window_yet()))
        );
    }
    // Every profile of each pipeline (CPU samples first, off-CPU time...).
    let profiles = latest.iter().flat_map(|(pipeline, types)| {
        let cpu_first = |(t, _): &(&String, _)| (t.as_str() != "samples/count", t.to_string());
        let mut types: Vec<_> = types.iter().collect();
        types.sort_by_key(cpu_first);
        types.into_iter().map(move |(t, b)| (pipeline, t, b))
    });
    for (i, (pipeline, sample_type, batch)) in profiles.enumerate() {
        let mut totals: HashMap<u32, i64> = HashMap::new();
        for s in &batch.samples {
            *totals.entry(s.series).or_default() += s.value;
        }
        let mut series: Vec<(u32, i64)> = totals.into_iter().collect();
        series.sort_by_key(|(id, total)| (-total, *id));
        let _ = write!(
            html,
            "<h3>{} — {} series, {} {}</h3><table{}><tr><th class=n>{}</th><th>labels</th><th>profile</th></tr>",
            esc(pipeline),
            series.len(),
            batch.total_value(),
            esc(sample_type),
            if i == 0 { " id=processes" } else { "" },
            esc(sample_type)
        );
        for (id, total) in series.iter().take(500) {
            let series_labels = batch.labels(*id);
            let selector = match series_labels.get(labels::PID) {
                Some(pid) => format!("{{{}=\"{pid}\"}}", labels::PID),
                None => format!(
                    "{{{}}}",
                    series_labels
                        .pairs()
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            let q = format!(
                "query={}&amp;pipeline={}&amp;type={}",
                url_value(&selector),
                url_value(pipeline),
                url_value(sample_type)
            );
            let text = series_labels
                .pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = write!(
                html,
                "<tr><td class=n>{total}</td><td><code>{}</code></td><td><a href=\"/flamegraph?{q}\">flame graph</a> · \
                 <a href=\"/query?{q}&amp;debug=1\">text</a> · <a href=\"/query?{q}\">pprof</a></td></tr>",
                esc(&text)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</body></html>");
    Html(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(url_value("{pid=\"1\"}"), "%7Bpid%3D%221%22%7D");
    }
}
