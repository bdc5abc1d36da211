//! Optional bearer-token authentication: with an API key configured, every route but
//! `/health` needs `Authorization: Bearer KEY` (a WebSocket client sends it with the upgrade
//! request). Without one the server is open, as a sidecar on a loopback address usually is.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::SharedState;

/// Routes open without the key: load balancers and orchestrators probe them.
const OPEN_ROUTES: [&str; 1] = ["/health"];

pub async fn require_key(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let Some(key) = state.api_key.as_deref() else {
        return next.run(request).await;
    };
    if OPEN_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if same_secret(token.trim().as_bytes(), key.as_bytes()) => next.run(request).await,
        found => {
            let message = if found.is_some() {
                "the API key is wrong"
            } else {
                "this server needs an API key: send `Authorization: Bearer KEY`"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares in time that depends on the lengths only (`subtle`), so response timing does not
/// reveal how much of a guess was right.
fn same_secret(presented: &[u8], key: &[u8]) -> bool {
    bool::from(presented.ct_eq(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cres", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
