//! `parca_grpc` exporter: profiles to a Parca server with
//! `ProfileStoreService/WriteRaw` (one gzipped pprof per series and window,
//! batched, buffered and retried), debuginfo upload through
//! `DebuginfoService`, and panic reports to `TelemetryService`; or, in
//! offline mode, windows kept on disk for a later upload.

pub mod config;
pub mod debuginfo;
pub mod offline;
pub mod panic_report;
pub mod profiles;
pub mod proto;
pub mod strip;
pub mod transport;
pub mod writer;

use std::sync::{Arc, Mutex};

use agent_core::{BuildContext, ComponentError, Exporter, Factory, ProfileBatch, Stability};
use agent_exporter_helper::Delivery;
use agent_object_files::ObjectLocator;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::debug;

pub use config::{OfflineMode, ParcaGrpcConfig, Secret};

use crate::profiles::{encode_batch, ExecutableInfos};
use crate::proto::debuginfo::debuginfo_service_client::DebuginfoServiceClient;
use crate::proto::profilestore::profile_store_service_client::ProfileStoreServiceClient;
use crate::transport::CallMetadata;
use crate::writer::{Buffer, WriterMetrics, WriterSettings};

/// A channel that sends the headers and the bearer token with every call.
pub type AuthChannel = InterceptedService<Channel, CallMetadata>;

/// The clients of one server, sharing one connection.
#[derive(Clone)]
pub struct ParcaClients {
    /// ProfileStoreService.
    pub profiles: ProfileStoreServiceClient<AuthChannel>,
    /// DebuginfoService.
    pub debuginfo: DebuginfoServiceClient<AuthChannel>,
}

impl ParcaClients {
    /// Clients of the server `config` names (connects on first use).
    pub fn new(config: &ParcaGrpcConfig) -> Result<Self, String> {
        let channel = transport::channel(config)?;
        let intercepted = InterceptedService::new(channel, CallMetadata::from_config(config)?);
        Ok(Self {
            profiles: ProfileStoreServiceClient::new(intercepted.clone()),
            debuginfo: DebuginfoServiceClient::new(intercepted).max_decoding_message_size(64 << 20),
        })
    }
}

/// Builds `parca_grpc` exporters.
pub struct ParcaGrpcFactory;

impl Factory for ParcaGrpcFactory {
    const TYPE: &'static str = "parca_grpc";
    const STABILITY: Stability = Stability::Alpha;
    const DESCRIPTION: &'static str =
        "sends profiles to a Parca server (WriteRaw), uploads debuginfo, reports panics";
    type Config = ParcaGrpcConfig;
    type Output = Box<dyn Exporter>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        ctx.runtime()?;
        let locator = ObjectLocator {
            proc_root: config.proc_root.clone(),
            debug_dirs: config.debuginfo_directories.clone(),
        };
        let unreadable = ctx.telemetry.counter(
            "parca_grpc_executable_info_failures",
            "Object files whose executable info could not be read (process gone, file replaced).",
            &[],
        );
        let infos = ExecutableInfos::new(locator.clone(), unreadable);
        if let Some(dir) = &config.offline_mode.storage_path {
            // What the upload will use is checked now, not days later.
            if !config.address.trim().is_empty() {
                ParcaClients::new(&config).map_err(|reason| agent_net::SetupError {
                    target: config.address.redacted(),
                    reason,
                })?;
            }
            return Ok(Box::new(offline::OfflineExporter::new(
                dir.clone(),
                &config,
                infos,
                ctx,
            )));
        }
        let clients = ParcaClients::new(&config).map_err(|reason| agent_net::SetupError {
            target: config.address.redacted(),
            reason,
        })?;
        let metrics = WriterMetrics::new(&ctx.telemetry);
        let buffer = Arc::new(Mutex::new(Buffer::new(
            config.buffer_bytes,
            metrics.clone(),
        )));
        let (stop, stopped) = watch::channel(false);
        let settings = WriterSettings {
            interval: config.batch_write_interval,
            max_request_bytes: config.max_request_bytes,
            rpc_logging: config.rpc_logging,
        };
        let delivery = Delivery::new(
            ctx,
            config.address.redacted(),
            config.retry_on_failure.clone(),
            config.rpc_unary_timeout,
            config.shutdown_flush_timeout,
        )?;
        let uploader = (!config.debuginfo_upload_disable).then(|| debuginfo::UploaderSettings {
            locator: locator.clone(),
            temp_dir: config.debuginfo_temp_dir.clone(),
            strip: config.debuginfo_strip,
            compress: config.debuginfo_compress,
            max_parallel: config.debuginfo_upload_max_parallel,
            timeout: config.debuginfo_upload_timeout,
            cache_duration: config.debuginfo_upload_cache_duration,
            rpc_logging: config.rpc_logging,
            insecure_skip_verify: config.tls.insecure_skip_verify,
        });
        let startup = Startup {
            writer: Box::pin(writer::run(
                buffer.clone(),
                clients.clone(),
                settings,
                metrics,
                stopped,
                delivery,
            )),
            uploader,
            clients,
            telemetry: ctx.telemetry.clone(),
            panic_reports: (!config.panic_reporting_disable).then(|| {
                (
                    config.clone(),
                    ctx.service.agent_revision.clone(),
                    ctx.service.node.clone(),
                )
            }),
            id: ctx.id.clone(),
        };
        Ok(Box::new(ParcaGrpcExporter {
            address: config.address.redacted(),
            buffer,
            infos,
            startup: Some(Box::new(startup)),
            uploads: None,
            stop,
            writer: None,
            flush_timeout: config.shutdown_flush_timeout,
        }))
    }
}

/// What `start` begins: the writer task, the debuginfo uploader, the
/// panic reports.
struct Startup {
    writer: WriterFuture,
    uploader: Option<debuginfo::UploaderSettings>,
    clients: ParcaClients,
    telemetry: agent_core::telemetry::ComponentTelemetry,
    /// The config, revision and node panic reports carry.
    panic_reports: Option<(ParcaGrpcConfig, String, String)>,
    id: String,
}

/// The writer task's future, as built before start.
type WriterFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The exporter: encodes each window into the buffer; a task writes it.
pub struct ParcaGrpcExporter {
    /// The Parca server, as shown (a password redacted).
    address: String,
    buffer: Arc<Mutex<Buffer>>,
    infos: ExecutableInfos,
    /// Until started.
    startup: Option<Box<Startup>>,
    uploads: Option<debuginfo::Uploads>,
    stop: watch::Sender<bool>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// How long uploads in flight may finish at shutdown.
    flush_timeout: std::time::Duration,
}

#[async_trait::async_trait]
impl Exporter for ParcaGrpcExporter {
    fn destination(&self) -> String {
        self.address.clone()
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        let Some(startup) = self.startup.take() else {
            return Err("started twice".into());
        };
        let Startup {
            writer,
            uploader,
            clients,
            telemetry,
            panic_reports,
            id,
        } = *startup;
        self.writer = Some(tokio::spawn(writer));
        self.uploads = uploader.map(|s| debuginfo::Uploader::start(s, clients, &telemetry));
        if let Some((config, revision, node)) = panic_reports {
            if !panic_report::register(&config, &revision, &node) {
                tracing::info!(exporter = %id, "panics are reported by another parca_grpc exporter");
            }
        }
        Ok(())
    }

    async fn export(&mut self, batch: Arc<ProfileBatch>) -> Result<(), ComponentError> {
        if self.startup.is_some() {
            return Err("exported to before it was started".into());
        }
        if self.writer.as_ref().is_none_or(|w| w.is_finished()) {
            if let Some(writer) = self.writer.take() {
                panic_as_own(writer.await);
            }
            return Err("the writer task has stopped".into());
        }
        let (series, candidates) = encode_batch(&batch, &mut self.infos);
        debug!(series = series.len(), "parca_grpc: window buffered");
        self.buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(series);
        if let Some(uploads) = &self.uploads {
            for c in candidates {
                uploads.offer(c);
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        // The last write and the uploads in flight go on side by side,
        // both within shutdown_flush_timeout.
        let _ = self.stop.send(true);
        let uploads = async {
            if let Some(uploads) = self.uploads.take() {
                uploads.finish(self.flush_timeout).await;
            }
        };
        let writer = async {
            if let Some(writer) = self.writer.take() {
                panic_as_own(writer.await);
            }
        };
        tokio::join!(uploads, writer);
        Ok(())
    }
}

/// The writer task ends only when told to stop: a panic in it is this
/// exporter's, raised again here (the service then shows the exporter as
/// failed and the agent exits 1).
fn panic_as_own(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
