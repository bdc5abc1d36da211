//! `GET /v1/live`: a WebSocket session that mirrors one document edit by edit and pushes its
//! annotations (offending sentences, checked claims, edit intents) back, ranked for each
//! participant.
//!
//! The client (a collaboration backend) sends JSON text messages: `open` (the text and the
//! session's settings), `edit` (a participant's changes), `sources` (new sources to check
//! claims against). Concord answers `ready`, `ack` (the new version after each edit),
//! `annotations` once edits pause for the debounce interval, and `error`. A bad message gets an
//! `error` and changes nothing; the session stays open.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{ApiError, Body as ErrorBody};
use super::SharedState;
use crate::runtime::{off_runtime, Admission, EngineError};
use crate::tasks::live::{self, annotate, parse_message, AnnotationCache, Annotations, Capabilities, LiveModels};
use crate::tasks::live::{LiveSession, ServerMessage};

/// Live sessions open at once; the next upgrade is refused with 429.
pub const MAX_SESSIONS: usize = 256;
/// Least wait before retrying a pass the engines refused as overloaded.
const OVERLOAD_RETRY: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/v1/live",
    responses(
        (status = 101, description = "WebSocket session: JSON messages `open`, `edit`, `sources` in; `ready`, `ack`, `annotations`, `error` out"),
        (status = 400, description = "not a WebSocket upgrade request (`websocket_required`; 426 for an unsupported WebSocket version)", body = ErrorBody),
        (status = 429, description = "too many live sessions", body = ErrorBody),
        (status = 503, description = "no moderation, NLI or intent model is loaded", body = ErrorBody),
    ))]
pub async fn connect(
    State(state): State<SharedState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if state.moderator.is_none() && state.nli.is_none() && state.intent.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "live sessions annotate with the moderation, NLI or intent model; start `concord serve` with one",
        ));
    }
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "websocket_required",
            format!("/v1/live is a WebSocket endpoint: {}", rejection.body_text()),
        )
    })?;
    let permit = Arc::clone(&state.live_sessions).try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            format!("{MAX_SESSIONS} live sessions are open; close one or retry later"),
        )
    })?;
    let max_message = state.limits.max_body_bytes;
    Ok(upgrade.max_message_size(max_message).on_upgrade(move |socket| run(socket, state, permit)))
}

/// What a pass over one version hands back.
struct PassOutcome {
    cache: AnnotationCache,
    generation: u64,
    result: Result<Annotations, EngineError>,
}

/// A pass runs in its own task so the socket keeps reading edits meanwhile.
type Pass = JoinHandle<PassOutcome>;

async fn run(mut socket: WebSocket, state: SharedState, _permit: OwnedSemaphorePermit) {
    metrics::gauge!("concord_live_sessions").increment(1.0);
    serve_session(&mut socket, &state).await;
    metrics::gauge!("concord_live_sessions").decrement(1.0);
}

async fn serve_session(socket: &mut WebSocket, state: &SharedState) {
    let capabilities = Arc::new(Capabilities::new(
        state.moderator.as_deref(),
        state.nli.is_some(),
        state.intent.is_some(),
        state.limits.max_input_chars,
    ));
    let mut session: Option<LiveSession> = None;
    let mut due: Option<Instant> = None;
    let mut pass: Option<Pass> = None;
    loop {
        let idle = pass.is_none();
        let wait = async {
            match due {
                Some(at) if idle => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let finished = async {
            match pass.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        };
        let reply = tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => match handle(&capabilities, &mut session, text.as_str()).await {
                    Ok(reply) => {
                        due = session.as_ref().map(|s| Instant::now() + s.debounce);
                        Some(reply)
                    }
                    Err(err) => Some(error(&err)),
                },
                Some(Ok(Message::Binary(_))) => {
                    Some(error(&ApiError::bad_request("unsupported_message", "send JSON text messages, not binary ones")))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            () = wait => {
                due = None;
                match session.as_mut().map(|s| start_pass(state, s)) {
                    Some(Ok(started)) => {
                        pass = Some(started);
                        None
                    }
                    Some(Err(err)) => {
                        // Overloaded: say so and try again after another interval (at least
                        // a second, so a zero debounce does not spin).
                        due = session.as_ref().map(|s| Instant::now() + s.debounce.max(OVERLOAD_RETRY));
                        Some(error(&err))
                    }
                    None => None,
                }
            }
            joined = finished => {
                pass = None;
                match joined {
                    Ok(outcome) => finish_pass(&mut session, outcome),
                    Err(err) => Some(error(&ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "model_error",
                        format!("annotating failed: {err}"),
                    ))),
                }
            }
        };
        if let Some(reply) = reply {
            if send(socket, &reply).await.is_err() {
                break;
            }
        }
    }
    if let Some(pass) = pass {
        pass.abort();
    }
}

/// Parses and applies one client message on the blocking pool (a long text with many
/// changes takes a while to convert and apply) and returns the reply.
async fn handle(
    capabilities: &Arc<Capabilities>,
    session: &mut Option<LiveSession>,
    text: &str,
) -> Result<ServerMessage, ApiError> {
    let message = parse_message(text)?;
    let (mut taken, capabilities) = (session.take(), Arc::clone(capabilities));
    let (back, reply) = off_runtime(move || {
        let reply = live::handle(&mut taken, message, &capabilities);
        (taken, reply)
    })
    .await?;
    *session = back;
    Ok(reply?)
}

/// Starts annotating the session's current version, under the models' admission control.
fn start_pass(state: &SharedState, session: &mut LiveSession) -> Result<Pass, ApiError> {
    let mut admissions: Vec<Admission> = Vec::new();
    if let Some(moderator) = state.moderator.as_deref() {
        admissions.extend(moderator.admit()?);
    }
    if let Some(nli) = state.nli.as_deref() {
        admissions.push(nli.engine().admit()?);
    }
    if let Some(intent) = state.intent.as_deref() {
        admissions.push(intent.engine().admit()?);
    }
    let mut cache = session.cache.take().unwrap_or_default();
    let (state, document, settings) = (Arc::clone(state), session.document.clone(), session.settings.clone());
    let generation = session.generation;
    Ok(tokio::spawn(async move {
        let _admissions = admissions;
        let result = match state.engine(None) {
            Ok(embedder) => {
                let models = LiveModels {
                    embedder,
                    moderator: state.moderator.as_deref(),
                    nli: state.nli.as_deref(),
                    intent: state.intent.as_deref(),
                    source_cache: &state.factcheck_cache,
                };
                let started = std::time::Instant::now();
                let result = annotate(&document, &settings, models, &mut cache).await;
                metrics::histogram!("concord_live_pass_duration_seconds").record(started.elapsed().as_secs_f64());
                result
            }
            Err(_) => Err(EngineError::Stopped),
        };
        PassOutcome { cache, generation, result }
    }))
}

/// Takes a pass's cache back and returns its annotations if they are still the latest.
fn finish_pass(session: &mut Option<LiveSession>, outcome: PassOutcome) -> Option<ServerMessage> {
    let session = session.as_mut()?;
    let PassOutcome { mut cache, generation, result } = outcome;
    if generation != session.generation {
        // New sources since the pass started: its sentences still count, its claims do not.
        // After a new `open` the session already has a fresh cache (other thresholds, other
        // sources), and this one is dropped.
        if session.cache.is_none() {
            cache.sources_changed();
            session.cache = Some(cache);
        }
        return None;
    }
    session.cache = Some(cache);
    match result {
        Ok(annotations) if annotations.version == session.document.version() => {
            Some(ServerMessage::Annotations(annotations))
        }
        // A newer edit is waiting for its own pass.
        Ok(_) => None,
        Err(err) => Some(error(&ApiError::from(err))),
    }
}

fn error(err: &ApiError) -> ServerMessage {
    ServerMessage::error(err.code, err.message.clone())
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let json = serde_json::to_string(message)
        .unwrap_or_else(|err| format!(r#"{{"type":"error","error":{{"code":"internal","message":"{err}"}}}}"#));
    socket.send(Message::Text(json.into())).await
}
