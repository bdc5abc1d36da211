//! The HTTP API (axum): thin handlers over the task functions.

mod auth;
mod embeddings;
pub mod error;
mod factcheck;
mod intent;
mod json;
mod live;
mod merge;
mod metrics;
mod moderate;
mod nli;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::trace::TraceLayer;

use crate::model::ModelInfo;
use crate::runtime::{Engine, Models};
use crate::tasks::factcheck::EmbeddingCache;
use crate::tasks::intent::IntentModel;
use crate::tasks::merge::Scorer;
use crate::tasks::moderate::Moderator;
use crate::tasks::nli::NliModel;

/// Source sentences whose embeddings `/v1/factcheck` keeps (about 1.5 KB each).
const FACTCHECK_CACHE_SENTENCES: usize = 100_000;
use error::ApiError;

/// Request size limits, enforced before any model work.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_inputs: usize,
    pub max_input_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_body_bytes: 2 * 1024 * 1024, max_inputs: 2048, max_input_chars: 100_000 }
    }
}

pub struct AppState {
    pub models: Models,
    pub limits: Limits,
    pub merge_scorer: Scorer,
    /// The moderation model; `/v1/moderate` answers 503 without one.
    pub moderator: Option<Arc<Moderator>>,
    /// The NLI model; `/v1/nli` and `/v1/factcheck` answer 503 without one.
    pub nli: Option<Arc<NliModel>>,
    /// The edit-intent model; `/v1/intent` answers 503 without one.
    pub intent: Option<Arc<IntentModel>>,
    /// Source sentence embeddings for `/v1/factcheck` and live sessions, by content hash.
    pub factcheck_cache: EmbeddingCache,
    /// Places for open `/v1/live` sessions.
    pub live_sessions: Arc<tokio::sync::Semaphore>,
    /// With a key, every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
}

impl AppState {
    /// State with Concord's shipped merge scorer and no moderation model.
    pub fn new(models: Models, limits: Limits) -> Self {
        Self {
            models,
            limits,
            merge_scorer: Scorer::default_model(),
            moderator: None,
            nli: None,
            intent: None,
            factcheck_cache: EmbeddingCache::new(FACTCHECK_CACHE_SENTENCES),
            live_sessions: Arc::new(tokio::sync::Semaphore::new(live::MAX_SESSIONS)),
            api_key: None,
        }
    }

    /// Requires `key` as a bearer token on every route but `/health`.
    pub fn with_api_key(self, key: String) -> Self {
        Self { api_key: Some(key), ..self }
    }

    pub fn with_moderator(self, moderator: Arc<Moderator>) -> Self {
        Self { moderator: Some(moderator), ..self }
    }

    pub fn with_nli(self, nli: Arc<NliModel>) -> Self {
        Self { nli: Some(nli), ..self }
    }

    pub fn with_intent(self, intent: Arc<IntentModel>) -> Self {
        Self { intent: Some(intent), ..self }
    }

    /// The engine a request names (the default when it names none), or 404.
    pub fn engine(&self, model: Option<&str>) -> Result<&Engine, ApiError> {
        self.models.get(model).ok_or_else(|| {
            ApiError::not_found(
                "model_not_found",
                format!("model '{}' is not loaded; GET /info lists the models", model.unwrap_or("")),
            )
        })
    }
}

impl Limits {
    /// Refuses a text over `max_input_chars`; `name` says which field it was.
    pub fn check_chars(&self, name: &str, text: &str) -> Result<(), ApiError> {
        Ok(crate::tasks::check_chars("input_too_large", name, text, self.max_input_chars)?)
    }
}

pub type SharedState = Arc<AppState>;

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let state = Arc::new(state);
    metrics::handle();
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/merge", post(merge::create))
        .route("/v1/moderate", post(moderate::create))
        .route("/v1/nli", post(nli::create))
        .route("/v1/factcheck", post(factcheck::create))
        .route("/v1/intent", post(intent::create))
        .route("/v1/live", get(live::connect))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), auth::require_key))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until SIGINT/SIGTERM, then finishes the requests in flight.
pub async fn serve(state: AppState, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "concord is serving");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Models are loaded and warmed before the listener opens, so answering means ready.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Info {
    name: &'static str,
    version: &'static str,
    default_model: String,
    models: Vec<ModelInfo>,
    /// The moderation model, when one is loaded.
    moderation: Option<ModerationInfo>,
    /// The NLI model's id, when one is loaded.
    nli: Option<String>,
    /// The intent model's id, when one is loaded.
    intent: Option<String>,
    limits: Limits,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModerationInfo {
    id: String,
    /// The models behind it (one unless a setup file mixes several).
    models: Vec<String>,
    categories: Vec<String>,
    thresholds: std::collections::BTreeMap<String, f32>,
    /// Token probability from which a token is part of a span; absent when no model marks spans.
    span_threshold: Option<f32>,
    /// Share of the strongest word's score in a window that another word of a span must reach
    /// to be kept.
    span_relative_threshold: Option<f32>,
}

#[utoipa::path(get, path = "/info", responses((status = 200, body = Info)))]
async fn info(State(state): State<SharedState>) -> Json<Info> {
    Json(Info {
        name: "concord",
        version: env!("CARGO_PKG_VERSION"),
        default_model: state.models.default_engine().info().id.clone(),
        models: state.models.all().iter().map(|e| e.info().clone()).collect(),
        moderation: state.moderator.as_ref().map(|m| {
            let spans = m.span_decoding();
            ModerationInfo {
                id: m.id().to_string(),
                models: m.models(),
                categories: m.categories().map(String::from).collect(),
                thresholds: m.thresholds(),
                span_threshold: spans.map(|d| d.threshold),
                span_relative_threshold: spans.map(|d| d.relative),
            }
        }),
        nli: state.nli.as_ref().map(|m| m.id().to_string()),
        intent: state.intent.as_ref().map(|m| m.id().to_string()),
        limits: state.limits,
    })
}

/// The OpenAPI 3 document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Concord", description = "Local transformer models for collaborative editors"),
    paths(
        health,
        info,
        embeddings::create,
        merge::create,
        moderate::create,
        nli::create,
        factcheck::create,
        intent::create,
        live::connect
    ),
    components(schemas(crate::tasks::live::ClientMessage, crate::tasks::live::ServerMessage))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route; see GET /info and the README for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that HTTP method",
    )
}
