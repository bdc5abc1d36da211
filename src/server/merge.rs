//! `POST /v1/merge`: three-way merge with ranked resolutions.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, Body as ErrorBody};
use super::json::ApiJson;
use super::SharedState;
use crate::tasks::merge::{self, MergeOptions, MergeOutcome};
use crate::text::offsets::OffsetUnit;
use crate::text::segment::Granularity;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    base: String,
    ours: String,
    theirs: String,
    #[serde(default)]
    granularity: Granularity,
    #[serde(default)]
    offsets: OffsetUnit,
    /// Only resolve conflicts, never drop either side's other edits (see README).
    #[serde(default)]
    keep_clean_changes: bool,
    model: Option<String>,
}

#[utoipa::path(post, path = "/v1/merge", request_body = MergeRequest,
    responses(
        (status = 200, body = MergeOutcome),
        (status = 400, description = "malformed JSON, missing fields, unknown granularity", body = ErrorBody),
        (status = 404, description = "unknown model", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "a side is too long", body = ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    ApiJson(request): ApiJson<MergeRequest>,
) -> Result<Json<MergeOutcome>, ApiError> {
    for (name, text) in [("`base`", &request.base), ("`ours`", &request.ours), ("`theirs`", &request.theirs)] {
        state.limits.check_chars(name, text)?;
    }
    let engine = state.engine(request.model.as_deref())?;
    let _admission = engine.admit()?;
    let options = MergeOptions {
        granularity: request.granularity,
        offsets: request.offsets,
        keep_clean_changes: request.keep_clean_changes,
    };
    let outcome =
        merge::merge(engine, &state.merge_scorer, &request.base, &request.ours, &request.theirs, options).await?;
    Ok(Json(outcome))
}
