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
use crate::tasks::moderate::ModerationResult;
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
        (status = 422, description = "empty, too many or too long inputs; unknown category or threshold outside 0..1", body = ErrorBody),
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
    moderator.check_thresholds(&request.thresholds)?;
    let texts = validate_texts(request.input, &state.limits)?;
    let _admission = moderator.admit()?;
    let moderations = moderator.moderate(&texts, &request.thresholds).await?;
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
