//! HTTP (axum): one module per provider dialect, all over the same `Engine`, plus `/metrics` and
//! `/healthz`.
//!
//! Handlers translate and nothing more; a request that does not fit a dialect gets that dialect's
//! error shape with a 4xx status, never a 500 or a panic. Unknown paths and wrong methods too.

pub mod mcn;
pub mod voicepassword;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::engine::Engine;

#[derive(Clone)]
struct MetricsState {
    engine: Engine,
    prometheus: Option<PrometheusHandle>,
}

/// The whole HTTP surface.
pub fn router(
    engine: Engine,
    prometheus: Option<PrometheusHandle>,
    max_body_bytes: usize,
) -> Router {
    let voicepassword = Router::new()
        .route(
            "/api/voice-password/send/",
            post(voicepassword::send).fallback(voicepassword::method_not_allowed),
        )
        .route(
            "/api/voice-password/send",
            post(voicepassword::send).fallback(voicepassword::method_not_allowed),
        )
        .route(
            "/api/voice-password/get/",
            post(voicepassword::get).fallback(voicepassword::method_not_allowed),
        )
        .route(
            "/api/voice-password/get",
            post(voicepassword::get).fallback(voicepassword::method_not_allowed),
        )
        .with_state(engine.clone());
    let mcn = Router::new()
        .route(
            "/api/protected/api/auth/passwordcall",
            post(mcn::passwordcall).fallback(mcn::method_not_allowed),
        )
        .route("/api/protected/{*rest}", any(mcn::unknown))
        .with_state(engine.clone());
    let ops = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(MetricsState { engine, prometheus });
    Router::new()
        .merge(voicepassword)
        .merge(mcn)
        .merge(ops)
        .fallback(voicepassword::unknown)
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

/// The request body as a JSON object, for every dialect. The providers' clients send JSON under
/// whatever type their HTTP library defaults to (`curl -d` says form-urlencoded), so the body
/// decides; only a multipart body cannot be JSON. `None` for anything else, an oversized body
/// included.
fn json_object(
    headers: &axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let multipart = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|ct| ct.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/"));
    if multipart {
        return None;
    }
    match serde_json::from_slice(&body.ok()?) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

async fn metrics(State(s): State<MetricsState>) -> Response {
    s.engine.record_pool_metrics();
    match &s.prometheus {
        Some(h) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}
