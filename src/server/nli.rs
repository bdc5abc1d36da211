//! `POST /v1/nli`: entailment, neutral or contradiction for premise–hypothesis pairs.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Body as ErrorBody};
use super::json::ApiJson;
use super::SharedState;
use crate::tasks::nli::{NliPair, NliResult, Purpose};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NliRequest {
    pairs: Vec<Pair>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    premise: String,
    hypothesis: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NliResponse {
    model: String,
    results: Vec<NliResult>,
}

#[utoipa::path(post, path = "/v1/nli", request_body = NliRequest,
    responses(
        (status = 200, body = NliResponse),
        (status = 400, description = "malformed JSON, missing fields", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "no pairs, too many, or an empty or too long side", body = ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = ErrorBody),
        (status = 503, description = "no NLI model loaded", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    ApiJson(request): ApiJson<NliRequest>,
) -> Result<Json<NliResponse>, ApiError> {
    let Some(model) = state.nli.as_ref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "no NLI model is loaded; start `concord serve` with --nli-model DIR",
        ));
    };
    if request.pairs.is_empty() {
        return Err(ApiError::invalid("empty_input", "`pairs` is empty"));
    }
    if request.pairs.len() > state.limits.max_inputs {
        return Err(ApiError::invalid(
            "too_many_inputs",
            format!("{} pairs; the limit is {} per request", request.pairs.len(), state.limits.max_inputs),
        ));
    }
    for (i, pair) in request.pairs.iter().enumerate() {
        for (side, text) in [("premise", &pair.premise), ("hypothesis", &pair.hypothesis)] {
            if text.trim().is_empty() {
                return Err(ApiError::invalid("empty_input", format!("pairs[{i}].{side} is empty")));
            }
            state.limits.check_chars(&format!("pairs[{i}].{side}"), text)?;
        }
    }
    let _admission = model.engine().admit()?;
    let pairs = request.pairs.into_iter().map(|p| NliPair::new(p.premise, p.hypothesis)).collect();
    let results = model.classify(pairs, Purpose::Nli).await?;
    Ok(Json(NliResponse { model: model.id().to_string(), results }))
}
