//! Every error the API returns: JSON `{"error":{"code","message"}}` with the matching status.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::runtime::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    retry_after_s: Option<u64>,
}

/// The error body every route returns.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
pub struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub struct Detail<'a> {
    /// Stable and machine-readable: `invalid_json`, `empty_input`, `overloaded`, ...
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_s: None }
    }

    /// 400: the request is not what the API accepts (syntax, types, missing fields).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: well-formed, but a value is out of bounds (empty input, too many inputs, …).
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = Body { error: Detail { code: self.code, message: &self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::tasks::InvalidRequest> for ApiError {
    fn from(err: crate::tasks::InvalidRequest) -> Self {
        Self::invalid(err.code, err.message)
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        match err {
            EngineError::Overloaded(_) => {
                Self { retry_after_s: Some(1), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message) }
            }
            EngineError::TooLong { .. } => Self::invalid("input_too_long", message),
            EngineError::Tokenizer(_) => Self::invalid("invalid_input", message),
            EngineError::Model(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", message),
            EngineError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = rejection.body_text();
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("invalid_json", message),
            JsonRejection::JsonDataError(_) => Self::bad_request("invalid_request", message),
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(status, "payload_too_large", "request body is larger than the server's limit")
            }
            _ => Self::bad_request("invalid_body", message),
        }
    }
}
