//! Prometheus metrics at `GET /metrics`: HTTP requests by route and status, their latency, and
//! the engine's batches (see `runtime::worker`), so operators can see queueing and batch sizes.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::error::ApiError;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls reuse it (tests start many servers).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("concord_batch_items".to_string()), &sizes))
                .and_then(|b| b.install_recorder())
                .map_err(|err| tracing::warn!(%err, "metrics disabled: another recorder is installed"))
                .ok()
        })
        .as_ref()
}

/// Counts and times every request, labelled by its route pattern (not the raw path).
pub async fn track(request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("concord_http_requests_total", &labels).increment(1);
    metrics::histogram!("concord_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

pub async fn render() -> Response {
    match handle() {
        Some(handle) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "metrics are disabled in this process",
        )
        .into_response(),
    }
}
