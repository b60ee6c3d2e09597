//! The local HTTP server: the agent's own metrics and health.

use agent_core::Telemetry;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// Serves `/metrics`, `/healthy` and `/ready` until the process exits.
pub async fn serve(listener: TcpListener, telemetry: Telemetry) -> std::io::Result<()> {
    let metrics = telemetry.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }),
        )
        .route("/healthy", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || async move {
                if telemetry.is_ready() {
                    (StatusCode::OK, "ready\n").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                }
            }),
        );
    axum::serve(listener, app).await
}
