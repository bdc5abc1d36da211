//! `POST /v1/embeddings`, OpenAI-compatible.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, Body as ErrorBody};
use super::json::ApiJson;
use super::{Limits, SharedState};
use crate::tasks::embed;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    /// A string or an array of strings.
    #[schema(value_type = Object)]
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    /// Concord extension: `false` refuses inputs longer than the model's limit instead of cutting.
    #[serde(default = "default_truncate")]
    truncate: bool,
}

fn default_truncate() -> bool {
    true
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
    /// Indices of inputs cut to the model's maximum length (absent when none were).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    truncated: Vec<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// Checks `input` and returns the texts, so no invalid request reaches the model.
pub fn validate_texts(input: Value, limits: &Limits) -> Result<Vec<String>, ApiError> {
    let texts = match input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(text),
                _ => Err(ApiError::bad_request("invalid_request", format!("input[{i}] must be a string"))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(ApiError::bad_request("invalid_request", "`input` must be a string or an array of strings")),
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("empty_input", "`input` has no texts"));
    }
    if texts.len() > limits.max_inputs {
        return Err(ApiError::invalid(
            "too_many_inputs",
            format!("{} inputs; the limit is {} per request", texts.len(), limits.max_inputs),
        ));
    }
    for (i, text) in texts.iter().enumerate() {
        if text.trim().is_empty() {
            return Err(ApiError::invalid("empty_input", format!("input[{i}] is empty")));
        }
        limits.check_chars(&format!("input[{i}]"), text)?;
    }
    Ok(texts)
}

#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsRequest,
    responses(
        (status = 200, body = EmbeddingsResponse),
        (status = 400, description = "malformed JSON or wrong types", body = ErrorBody),
        (status = 404, description = "unknown model", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "empty, too many or too long inputs", body = ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    ApiJson(request): ApiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    if let Some(format) = request.encoding_format.as_deref() {
        if format != "float" {
            return Err(ApiError::invalid(
                "unsupported_encoding_format",
                format!("encoding_format '{format}' is not supported; use 'float'"),
            ));
        }
    }
    let engine = state.engine(request.model.as_deref())?;
    let texts = validate_texts(request.input, &state.limits)?;
    let _admission = engine.admit()?;
    let result = embed::embed(engine, texts, request.truncate).await?;
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data: result
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingObject { object: "embedding", index, embedding })
            .collect(),
        model: engine.info().id.clone(),
        usage: Usage { prompt_tokens: result.prompt_tokens, total_tokens: result.prompt_tokens },
        truncated: result.truncated,
    }))
}
