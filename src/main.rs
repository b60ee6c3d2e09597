//! `agent`: runs profiling pipelines of receivers, processors and exporters.

mod cli;
mod components;
mod http;
mod selector;
mod self_profile;
mod self_traces;

use std::net::SocketAddr;
use std::process::ExitCode;

use agent_core::config::{self, AgentConfig};
use agent_core::service::Service;
use agent_core::{Kind, Registry, Telemetry};
use anyhow::{anyhow, Context};
use tracing::{error, info, warn};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Counts heap bytes per thread: components that hold memory to a limit
/// (`symbolize`'s `memory_limit`) measure what they keep with it.
#[global_allocator]
static ALLOCATOR: agent_heap_meter::CountingAllocator = agent_heap_meter::CountingAllocator;
use tracing_subscriber::Layer;

use cli::{Action, Cli, Logging};

/// The pipeline that runs without `--config`.
const EMBEDDED_PIPELINE: &str = include_str!("../pipeline.yaml");

fn init_logging(logging: &Logging) {
    let level = match logging.level.as_str() {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        _ => LevelFilter::INFO,
    };
    let layer = if logging.json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(agent_core::stderr_tail::StderrTail::default)
            .boxed()
    } else {
        tracing_logfmt::builder()
            .layer()
            .with_writer(agent_core::stderr_tail::StderrTail::default)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(level))
        .init();
}

/// Reads `--config` (or the embedded pipeline) and validates it with the flags applied.
fn load_config(cli: &Cli, registry: &Registry) -> anyhow::Result<(String, AgentConfig)> {
    let (name, text) = match &cli.config {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?,
        ),
        None => ("embedded pipeline.yaml".to_owned(), embedded_pipeline(cli)?),
    };
    config::load(&text, &cli.overrides, registry, &|name| {
        std::env::var(name).ok()
    })
    .map(|config| (name.clone(), config))
    .map_err(|errors| {
        let problems: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        anyhow!("{name} is invalid:\n  {}", problems.join("\n  "))
    })
}

/// The embedded pipeline, shipping to a Parca server as Parca Agent does
/// when `--remote-store-address` (or `--offline-mode-storage-path`) is
/// given: then `parca_grpc` replaces the `file` exporter, unless
/// `--local-store-directory` asks for files too.
fn embedded_pipeline(cli: &Cli) -> anyhow::Result<String> {
    let given = |flag: &str| cli.overrides.iter().any(|o| o.flag == flag);
    if !given("--remote-store-address") && !given("--offline-mode-storage-path") {
        return Ok(EMBEDDED_PIPELINE.to_owned());
    }
    let mut root: serde_yaml::Value = serde_yaml::from_str(EMBEDDED_PIPELINE)?;
    root["exporters"]["parca_grpc"] = serde_yaml::Value::Mapping(Default::default());
    let exporters = &mut root["service"]["pipelines"]["profiles"]["exporters"];
    let mut list: Vec<String> = serde_yaml::from_value(exporters.clone())?;
    if !given("--local-store-directory") {
        list.retain(|e| e != "file");
        if let Some(m) = root["exporters"].as_mapping_mut() {
            m.remove("file");
        }
    }
    list.push("parca_grpc".to_owned());
    root["service"]["pipelines"]["profiles"]["exporters"] = serde_yaml::to_value(list)?;
    Ok(serde_yaml::to_string(&root)?)
}

fn list_components(registry: &Registry) {
    for kind in [Kind::Receiver, Kind::Processor, Kind::Exporter] {
        for f in registry.factories().filter(|f| f.kind() == kind) {
            println!(
                "{:<10} {:<14} {:<12} {}",
                kind,
                f.type_name(),
                f.stability(),
                f.description()
            );
        }
    }
}

/// The runtime `builder` makes with every driver on; `None` (said on
/// stderr) when it cannot be made.
fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "stop requested");
    // A second signal means: stop now, without flushing.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        error!("second stop signal: exiting without flushing");
        std::process::exit(130);
    });
}

async fn run(config: AgentConfig, registry: Registry) -> anyhow::Result<()> {
    let telemetry = Telemetry::default().with_process_metrics();
    let address: SocketAddr = config.service.http_address.parse()?;
    if !address.ip().is_loopback() {
        warn!(%address, "the HTTP server listens beyond loopback; it serves profiling data of this node");
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("cannot listen on {address} (service::http_address, --http-address)")
        })?;
    info!(address = %listener.local_addr()?, "HTTP server listening");
    let service = Service::build(&config, &registry, &telemetry, env!("AGENT_GIT_REVISION"))?;
    let view = http::View {
        telemetry: telemetry.clone(),
        latest: service.latest_windows(),
        pipelines: std::sync::Arc::new(config.service.pipelines.clone()),
        started: std::time::Instant::now(),
        heavy: http::View::heavy_slot(),
    };
    tokio::spawn(async move {
        if let Err(e) = http::serve(listener, view).await {
            error!(error = %e, "HTTP server stopped");
        }
    });
    let traces = self_traces::install(&config.service.traces, &config.service.node)?;
    let result = service.run(shutdown_signal()).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result?;
    Ok(())
}

/// `--offline-mode-upload`: sends every offline `parca_grpc` store to its
/// server; exit 0 only when each store was sent whole.
#[cfg(feature = "exporter-parca-grpc")]
fn offline_upload(config: &AgentConfig) -> ExitCode {
    use agent_core::{BuildContext, ServiceSettings, Shutdown};
    use agent_exporter_parca_grpc::{offline, ParcaGrpcConfig};
    let stores: Vec<(String, &ParcaGrpcConfig)> = config
        .components
        .iter()
        .filter(|c| c.kind == Kind::Exporter)
        .filter_map(|c| Some((c.id.to_string(), c.config.typed::<ParcaGrpcConfig>()?)))
        .filter(|(_, p)| p.offline_mode.storage_path.is_some())
        .collect();
    if stores.is_empty() {
        eprintln!("error: --offline-mode-upload: no parca_grpc exporter has offline_mode::storage_path (--offline-mode-storage-path)");
        return ExitCode::FAILURE;
    }
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let telemetry = Telemetry::default();
    let mut whole = true;
    runtime.block_on(async {
        let (stop, stopping) = Shutdown::new();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.stop();
        });
        for (id, store) in stores {
            let settings = ServiceSettings::new(&config.service, env!("AGENT_GIT_REVISION"));
            let ctx = BuildContext::new(Kind::Exporter, &id, None, &telemetry, settings, stopping.clone());
            let dir = store.offline_mode.storage_path.as_deref().unwrap_or_else(|| "".as_ref());
            match offline::upload(store, &ctx).await {
                Ok(done) => {
                    info!(exporter = %id, store = %dir.display(), sent = done.sent, refused = done.refused,
                        unreadable = done.unreadable, torn_bytes = done.torn_bytes, segments_sent = done.segments_done,
                        segments_left = done.segments_left, "offline upload finished");
                    if done.segments_left > 0 {
                        error!(exporter = %id, store = %dir.display(), segments_left = done.segments_left,
                            "offline upload incomplete: run it again once the server takes requests");
                        whole = false;
                    }
                }
                Err(e) => {
                    error!(exporter = %id, "offline upload failed: {e}");
                    eprintln!("error: {id}: {e}");
                    whole = false;
                }
            }
        }
    });
    if whole {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(not(feature = "exporter-parca-grpc"))]
fn offline_upload(_config: &AgentConfig) -> ExitCode {
    eprintln!("error: --offline-mode-upload needs the parca_grpc exporter (built without Cargo feature `exporter-parca-grpc`)");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    agent_heap_meter::return_freed_memory();
    let cli = cli::from_matches(&cli::command().get_matches());
    init_logging(&cli.logging);
    // One hook for the process; a parca_grpc exporter may report through it.
    agent_core::panics::install_hook();
    for notice in &cli.notices {
        info!("{notice}");
    }
    let registry = components::registry();
    match cli.action {
        Action::Components => {
            list_components(&registry);
            return ExitCode::SUCCESS;
        }
        Action::Schema => {
            let schema = agent_core::schema::pipeline_schema(&registry);
            println!("{schema:#}");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let (name, config) = match load_config(&cli, &registry) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for w in &config.warnings {
        warn!("{w}");
    }
    match cli.action {
        Action::Validate => {
            println!(
                "{name} is valid: {} pipeline(s), {} component(s)",
                config.service.pipelines.len(),
                config.components.len()
            );
            ExitCode::SUCCESS
        }
        Action::PrintConfig => match serde_yaml::to_string(&config.effective()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot print config: {e}");
                ExitCode::FAILURE
            }
        },
        Action::Run => {
            let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_multi_thread()) else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(run(config, registry)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Action::OfflineUpload => offline_upload(&config),
        Action::Components | Action::Schema => unreachable!("handled above"),
    }
}
