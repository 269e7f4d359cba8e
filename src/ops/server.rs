//! The loopback HTTP endpoints: `GET /metrics` (Prometheus text), `GET /healthz` (200 while the
//! process answers) and `GET /readyz` (200 or 503 with a JSON report naming what is not ready).
//!
//! No authentication: `config` only lets them listen on loopback unless the operator opts out
//! (`ops.allow_non_loopback`). Nothing here changes state.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use super::health::Readiness;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Endpoints {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The routes, ready to serve.
pub fn router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Endpoints { readiness, metrics }))
}

async fn metrics_text(State(endpoints): State<Arc<Endpoints>>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        endpoints.metrics.render(),
    )
        .into_response()
}

/// Liveness: answering at all is the whole check (the watchdog covers a stuck claim loop).
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoints): State<Arc<Endpoints>>) -> Response {
    let report = endpoints.readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
