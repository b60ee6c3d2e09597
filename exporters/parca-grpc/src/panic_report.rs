//! Panic reports: when the agent panics, the tail of its stderr and a few
//! facts about the host go to `TelemetryService/ReportPanic`.

use std::collections::HashMap;
use std::time::Duration;

use tracing::warn;

use crate::config::ParcaGrpcConfig;
use crate::proto::telemetry::telemetry_service_client::TelemetryServiceClient;
use crate::proto::telemetry::ReportPanicRequest;
use crate::transport::{channel, CallMetadata};

/// How long a report may take before the panic goes on.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Facts sent with a report.
pub fn metadata(agent_revision: &str, node: &str) -> HashMap<String, String> {
    let uname = kernel_and_arch();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    HashMap::from([
        (
            "agent_version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
        ("agent_revision".to_owned(), agent_revision.to_owned()),
        ("kernel_release".to_owned(), uname.0),
        ("arch".to_owned(), uname.1),
        ("cpu_cores".to_owned(), cores.to_string()),
        ("node".to_owned(), node.to_owned()),
    ])
}

/// Kernel release and machine, as `uname -rm` prints them.
fn kernel_and_arch() -> (String, String) {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    (
        read("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH.to_owned(),
    )
}

/// Sends one report, in its own thread and runtime (the panicking thread
/// may be a runtime worker), bounded by [`REPORT_TIMEOUT`].
pub fn send_report(config: &ParcaGrpcConfig, request: ReportPanicRequest) -> Result<(), String> {
    let config = config.clone();
    // After a panic over resources, a thread may be refused: an error, not
    // a panic inside the hook (which would abort).
    let reporting = std::thread::Builder::new().spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let channel = channel(&config)?;
            let mut client = TelemetryServiceClient::with_interceptor(
                channel,
                CallMetadata::from_config(&config)?,
            );
            let mut call = tonic::Request::new(request);
            call.set_timeout(REPORT_TIMEOUT);
            tokio::time::timeout(REPORT_TIMEOUT, client.report_panic(call))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    });
    reporting
        .map_err(|e| format!("no thread to report with: {e}"))?
        .join()
        .map_err(|_| "the reporting thread panicked".to_owned())?
}

/// Makes this server the agent's panic reporter (see
/// `agent_core::panics`): each report carries the tail of stderr. False
/// when another `parca_grpc` exporter reports already.
pub fn register(config: &ParcaGrpcConfig, agent_revision: &str, node: &str) -> bool {
    let config = config.clone();
    let max_bytes = config.stderr_buffer_size_kb << 10;
    let metadata = metadata(agent_revision, node);
    let registered = agent_core::panics::set_reporter(Box::new(move |panic| {
        let mut stderr = agent_core::stderr_tail::snapshot();
        stderr.push_str(&format!("\n{panic}\n"));
        let cut = stderr.len().saturating_sub(max_bytes);
        let cut = (cut..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(0);
        let request = ReportPanicRequest {
            stderr: stderr[cut..].to_owned(),
            metadata: metadata.clone(),
        };
        if let Err(e) = send_report(&config, request) {
            warn!(error = %e, "cannot report the panic to the Parca server");
        }
    }));
    if registered {
        // Only the reporter sizes the tail it sends.
        agent_core::stderr_tail::set_capacity(max_bytes);
    }
    registered
}
