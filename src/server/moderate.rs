//! `POST /v1/moderate`: category scores and offending spans, in OpenAI's moderation shape.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::embeddings::validate_texts;
use super::error::{ApiError, Body as ErrorBody};
use super::json::ApiJson;
use super::SharedState;
use crate::tasks::moderate::{ModerationResult, Thresholds};
use crate::text::offsets::OffsetUnit;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationRequest {
    /// A string or an array of strings.
    #[schema(value_type = Object)]
    input: Value,
    /// Unit of the span offsets in the response (default `utf16`, as browser editors count).
    #[serde(default)]
    offsets: OffsetUnit,
    /// Per-category decision thresholds in 0..1, replacing the model's calibrated defaults.
    #[serde(default)]
    thresholds: BTreeMap<String, f32>,
    /// Token probability in 0..1 from which a token belongs to a span, replacing the model's
    /// `span_threshold` (`GET /info`): lower marks more.
    span_threshold: Option<f32>,
    /// Share in 0..1 of the strongest word's score in a window that a word must reach to stay
    /// in a span, replacing the model's `span_relative_threshold`; 0 keeps every word.
    span_relative_threshold: Option<f32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModerationResponse {
    model: String,
    offsets: OffsetUnit,
    results: Vec<ModerationResult>,
}

#[utoipa::path(post, path = "/v1/moderate", request_body = ModerationRequest,
    responses(
        (status = 200, body = ModerationResponse),
        (status = 400, description = "malformed JSON, wrong types, unknown `offsets` unit", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "empty, too many or too long inputs; unknown category, threshold outside 0..1, span threshold without a span model", body = ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = ErrorBody),
        (status = 503, description = "no moderation model loaded", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    ApiJson(request): ApiJson<ModerationRequest>,
) -> Result<Json<ModerationResponse>, ApiError> {
    let Some(moderator) = state.moderator.as_ref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "no moderation model is loaded; start `concord serve` with --moderation-model DIR",
        ));
    };
    let thresholds = Thresholds {
        categories: request.thresholds,
        span: request.span_threshold,
        span_relative: request.span_relative_threshold,
    };
    moderator.check_thresholds(&thresholds)?;
    let texts = validate_texts(request.input, &state.limits)?;
    let _admission = moderator.admit()?;
    let moderations = moderator.moderate(&texts, &thresholds).await?;
    Ok(Json(ModerationResponse {
        model: moderator.id().to_string(),
        offsets: request.offsets,
        results: moderations
            .into_iter()
            .zip(&texts)
            .map(|(moderation, text)| moderation.report(text, request.offsets))
            .collect(),
    }))
}
