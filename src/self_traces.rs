//! The agent's own traces (`service::traces`, `--otlp-address`): core's
//! spans (a window, collect, each processor, each export) go to an
//! OpenTelemetry tracer provider whose batch exporter sends them over OTLP
//! through opentelemetry-otlp — on the agent's rustls/tokio connections, so
//! no second TLS stack or HTTP client comes with it.

use std::time::Duration;

use agent_core::config::{TraceProtocol, TracesConfig};
use anyhow::{anyhow, Context as _};
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{info, warn};

/// Bound of one export of spans.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The installed tracer provider; flush it with [`SelfTraces::shutdown`].
pub struct SelfTraces(SdkTracerProvider);

/// Installs the global tracer provider `config` asks for; `None` when traces
/// are off. Must run inside the agent's tokio runtime.
pub fn install(config: &TracesConfig, node: &str) -> anyhow::Result<Option<SelfTraces>> {
    let endpoint = config.endpoint.trim();
    if endpoint.is_empty() {
        return Ok(None);
    }
    let context = || format!("service::traces::endpoint `{}`", config.endpoint);
    let exporter = match config.protocol {
        TraceProtocol::Grpc => {
            // host:port is plaintext, like Parca Agent's OTLP client.
            let target = agent_net::Target::parse(endpoint, true)
                .map_err(|e| anyhow!(e))
                .with_context(context)?;
            let channel = agent_net::grpc_channel(&target, &agent_net::TlsClient::default())
                .map_err(|e| anyhow!(e))
                .with_context(context)?;
            SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
        TraceProtocol::Http => SpanExporter::builder()
            .with_http()
            .with_http_client(Http1Client(tokio::runtime::Handle::current()))
            .with_endpoint(traces_url(endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .with_context(context)?;
    let resource = Resource::builder()
        .with_service_name("agent")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", node.to_owned()),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    info!(endpoint, protocol = ?config.protocol, "sending the agent's own traces");
    Ok(Some(SelfTraces(provider)))
}

impl SelfTraces {
    /// Sends the spans still buffered and stops the provider.
    pub async fn shutdown(self) {
        let provider = self.0;
        // The SDK's shutdown blocks until its export thread is done.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the agent's own traces were not all sent"),
            Err(e) => warn!(error = %e, "stopping the agent's own traces failed"),
        }
    }
}

/// The OTLP/HTTP traces URL of an endpoint: `host:port` or a base URL get
/// `/v1/traces`; a URL that already ends with it is kept.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    };
    if base.ends_with("/v1/traces") {
        base
    } else {
        format!("{base}/v1/traces")
    }
}

/// OTLP/HTTP requests through `agent-net`, run on the agent's runtime: the
/// SDK exports from its own thread, which has none.
#[derive(Debug)]
struct Http1Client(tokio::runtime::Handle);

#[async_trait::async_trait]
impl HttpClient for Http1Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let answer = self.0.spawn(async move {
            tokio::time::timeout(
                EXPORT_TIMEOUT,
                agent_net::http1_request(request, &agent_net::TlsClient::default()),
            )
            .await
        });
        match answer.await? {
            Ok(result) => result.map_err(HttpError::from),
            Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_become_trace_urls() {
        assert_eq!(
            traces_url("collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otlp.example/"),
            "https://otlp.example/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
