//! `POST /v1/intent`: why edits were made and how far they moved the meaning, for a list of
//! sentence edits or for two versions of a whole document.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Body as ErrorBody};
use super::json::ApiJson;
use super::SharedState;
use crate::tasks::intent::{DocumentEdit, IntentResult};
use crate::text::offsets::OffsetUnit;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentRequest {
    /// Sentence-level edits; or give `before_doc` and `after_doc` instead.
    edits: Option<Vec<EditInput>>,
    before_doc: Option<String>,
    after_doc: Option<String>,
    /// Unit of every offset in the response (default `utf16`).
    #[serde(default)]
    offsets: OffsetUnit,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditInput {
    before: String,
    after: String,
    /// Surrounding text; size-checked, not used by the default model.
    context: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IntentResponse {
    model: String,
    offsets: OffsetUnit,
    /// Per input edit, for `edits` requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Vec<IntentResult>>,
    /// Every edited region, for document requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    edits: Option<Vec<DocumentEdit>>,
}

#[utoipa::path(post, path = "/v1/intent", request_body = IntentRequest,
    responses(
        (status = 200, body = IntentResponse),
        (status = 400, description = "malformed JSON; both or neither of `edits` and the documents", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "no edits, too many, an unchanged edit, or a side over the size limit", body = ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = ErrorBody),
        (status = 503, description = "no intent model loaded", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    ApiJson(request): ApiJson<IntentRequest>,
) -> Result<Json<IntentResponse>, ApiError> {
    let Some(model) = state.intent.as_ref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "no intent model is loaded; start `concord serve` with --intent-model DIR",
        ));
    };
    let unit = request.offsets;
    match (request.edits, request.before_doc, request.after_doc) {
        (Some(edits), None, None) => {
            if edits.is_empty() {
                return Err(ApiError::invalid("empty_input", "`edits` is empty"));
            }
            if edits.len() > state.limits.max_inputs {
                return Err(ApiError::invalid(
                    "too_many_inputs",
                    format!("{} edits; the limit is {} per request", edits.len(), state.limits.max_inputs),
                ));
            }
            for (i, edit) in edits.iter().enumerate() {
                state.limits.check_chars(&format!("edits[{i}].before"), &edit.before)?;
                state.limits.check_chars(&format!("edits[{i}].after"), &edit.after)?;
                if let Some(context) = &edit.context {
                    state.limits.check_chars(&format!("edits[{i}].context"), context)?;
                }
                if edit.before == edit.after {
                    return Err(ApiError::invalid(
                        "no_change",
                        format!("edits[{i}]: `before` and `after` are identical"),
                    ));
                }
            }
            let _admission = model.engine().admit()?;
            let pairs: Vec<(String, String)> = edits.into_iter().map(|e| (e.before, e.after)).collect();
            let results = model
                .classify(&pairs)
                .await?
                .into_iter()
                .zip(&pairs)
                .map(|(mut r, (before, after))| {
                    r.diff = r.diff.in_unit(before, after, unit);
                    r
                })
                .collect();
            Ok(Json(IntentResponse {
                model: model.id().to_string(),
                offsets: unit,
                results: Some(results),
                edits: None,
            }))
        }
        (None, Some(before), Some(after)) => {
            state.limits.check_chars("`before_doc`", &before)?;
            state.limits.check_chars("`after_doc`", &after)?;
            let _admission = model.engine().admit()?;
            let edits = model.classify_document(&before, &after, unit).await?;
            Ok(Json(IntentResponse { model: model.id().to_string(), offsets: unit, results: None, edits: Some(edits) }))
        }
        _ => Err(ApiError::bad_request("invalid_request", "give either `edits` or both `before_doc` and `after_doc`")),
    }
}
