//! `POST /v1/factcheck`: claims, evidence and verdicts; JSON, or SSE with
//! `Accept: text/event-stream` (one `claim` event per decided claim, then `done`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::error::{ApiError, Body as ErrorBody};
use super::json::ApiJson;
use super::SharedState;
use crate::tasks::factcheck::{FactcheckRequest, FactcheckResponse, Totals};

#[utoipa::path(post, path = "/v1/factcheck", request_body = FactcheckRequest,
    responses(
        (status = 200, description = "JSON, or SSE events `claim` and `done` with Accept: text/event-stream", body = FactcheckResponse),
        (status = 400, description = "malformed JSON, missing fields", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "no sources, too many, a span out of range, empty text", body = ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = ErrorBody),
        (status = 503, description = "no NLI model loaded", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<FactcheckRequest>,
) -> Result<Response, ApiError> {
    let Some(nli) = state.nli.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "fact-checking needs an NLI model; start `concord serve` with --nli-model",
        ));
    };
    let job = request.validate(state.limits.max_input_chars)?;
    let admission = nli.engine().admit()?;
    let streaming =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    if !streaming {
        let embedder = state.engine(None)?;
        let results = job.check(embedder, &nli, &state.factcheck_cache).await?.collect::<Vec<_>>().await;
        let mut results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        results.sort_by_key(|r| r.index);
        let mut totals = Totals::default();
        results.iter().for_each(|r| totals.add(r.verdict));
        let claims = results.into_iter().map(|r| job.view(r)).collect();
        return Ok(
            Json(FactcheckResponse { model: nli.id().to_string(), offsets: job.unit, claims, totals }).into_response()
        );
    }
    // The work runs in its own task and feeds the response through a channel: when the client
    // goes away the channel closes, the task stops, and the claims not yet decided are dropped.
    let (sender, receiver) = mpsc::channel::<Event>(16);
    let state = Arc::clone(&state);
    tokio::spawn(async move {
        let _admission = admission;
        let Ok(embedder) = state.engine(None) else {
            return;
        };
        let mut totals = Totals::default();
        let stream = job.check(embedder, &nli, &state.factcheck_cache).await;
        let event = match stream {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(result)) => {
                        totals.add(result.verdict);
                        let event = Event::default().event("claim").json_data(job.view(result));
                        if sender.send(event.unwrap_or_default()).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(err)) => break error_event(&ApiError::from(err)),
                    None => break Event::default().event("done").json_data(&totals).unwrap_or_default(),
                }
            },
            Err(err) => error_event(&ApiError::from(err)),
        };
        let _ = sender.send(event).await;
    });
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

fn error_event(err: &ApiError) -> Event {
    Event::default()
        .event("error")
        .json_data(serde_json::json!({"error": {"code": err.code, "message": err.message}}))
        .unwrap_or_default()
}
