//! `GET /v1/live`: a WebSocket session that mirrors one document edit by edit and pushes its
//! annotations (offending sentences, checked claims, edit intents) back, ranked for each
//! participant.
//!
//! The client (a collaboration backend) sends JSON text messages: `open` (the text and the
//! session's settings), `edit` (a participant's changes), `sources` (new sources to check
//! claims against). Concord answers `ready`, `ack` (the new version after each edit),
//! `annotations` once edits pause for the debounce interval, and `error`. A bad message gets an
//! `error` and changes nothing; the session stays open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{ApiError, Body as ErrorBody};
use super::moderate::validate_thresholds;
use super::SharedState;
use crate::runtime::{off_runtime, Admission, EngineError};
use crate::tasks::factcheck::{validate_sources, FactcheckOptions, SourceInput, MAX_TOP_K};
use crate::tasks::live::{annotate, AnnotationCache, Annotations, Change, LiveDocument, LiveModels, LiveSettings};
use crate::text::offsets::OffsetUnit;

/// Live sessions open at once; the next upgrade is refused with 429.
pub const MAX_SESSIONS: usize = 256;
/// Quiet time after an edit before annotating, unless `open` sets another.
const DEFAULT_DEBOUNCE_MS: u64 = 300;
/// Least wait before retrying a pass the engines refused as overloaded.
const OVERLOAD_RETRY: Duration = Duration::from_secs(1);
/// Longest debounce a session may ask for.
const MAX_DEBOUNCE_MS: u64 = 10_000;

/// What a client sends.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Starts (or restarts) the session on `text` at version 0. Edit annotations describe the
    /// changes since this text, so opening again (say, when the document is saved) moves that
    /// baseline.
    Open {
        #[serde(default)]
        text: String,
        /// Unit of every offset in the session, both ways (default `utf16`).
        #[serde(default)]
        offsets: OffsetUnit,
        /// Sources to check claims against; without any, claims are not checked.
        #[serde(default)]
        sources: Vec<SourceInput>,
        /// Per-category moderation thresholds in 0..1, replacing the model's defaults.
        #[serde(default)]
        thresholds: BTreeMap<String, f32>,
        /// Evidence sentences checked per claim (default 3, at most 20).
        top_k: Option<usize>,
        /// Quiet time after an edit before annotating, in milliseconds (default 300, at most 10,000).
        debounce_ms: Option<u64>,
    },
    /// One participant's changes, applied in order, all or none.
    Edit {
        participant: String,
        /// The version the changes were made against; refused with `version_conflict` if the
        /// document has moved on.
        version: Option<u64>,
        changes: Vec<Change>,
    },
    /// Replaces the sources; every claim is checked again.
    Sources { sources: Vec<SourceInput> },
}

/// What Concord sends.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The session is open at `version` 0; `tasks` lists what it annotates (`moderation`,
    /// `factcheck`, `intent`, as the loaded models allow).
    Ready { version: u64, offsets: OffsetUnit, tasks: Vec<&'static str>, max_chars: usize },
    /// An edit was applied; the document is now at `version`.
    Ack { version: u64 },
    /// The annotations of `version`, the latest when they were sent.
    Annotations(Annotations),
    /// A message was refused (nothing changed) or annotating failed (it is retried after the
    /// next edit); the session stays open. `error` is shaped like the HTTP API's error body.
    Error { error: LiveError },
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LiveError {
    /// Stable and machine-readable, as in the HTTP API's errors.
    code: &'static str,
    message: String,
}

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

/// An open session: the document, its settings and its caches.
struct Session {
    document: LiveDocument,
    settings: LiveSettings,
    /// Counts `open` and `sources` messages, so a pass that started before one knows its
    /// results are stale.
    generation: u64,
    debounce: Duration,
    /// Absent while a pass has it.
    cache: Option<AnnotationCache>,
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
    let mut session: Option<Session> = None;
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
                Some(Ok(Message::Text(text))) => match handle(state, &mut session, text.as_str()).await {
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

/// Applies one client message to the session and returns the reply.
async fn handle(state: &SharedState, session: &mut Option<Session>, text: &str) -> Result<ServerMessage, ApiError> {
    let message: ClientMessage = serde_json::from_str(text)
        .map_err(|err| ApiError::bad_request("invalid_message", format!("not a valid message: {err}")))?;
    match message {
        ClientMessage::Open { text, offsets, sources, thresholds, top_k, debounce_ms } => {
            match state.moderator.as_deref() {
                Some(moderator) => validate_thresholds(moderator, &thresholds)?,
                None if !thresholds.is_empty() => {
                    return Err(ApiError::invalid(
                        "unknown_category",
                        "`thresholds` needs a moderation model, and this server has none",
                    ))
                }
                None => {}
            }
            let top_k = top_k.unwrap_or(3);
            if top_k == 0 || top_k > MAX_TOP_K {
                return Err(ApiError::invalid("invalid_top_k", format!("`top_k` must be within 1..={MAX_TOP_K}")));
            }
            let debounce_ms = debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS);
            if debounce_ms > MAX_DEBOUNCE_MS {
                return Err(ApiError::invalid(
                    "invalid_debounce",
                    format!("`debounce_ms` must be at most {MAX_DEBOUNCE_MS}"),
                ));
            }
            let max_chars = state.limits.max_input_chars;
            let sources = validate_sources(sources, max_chars)?;
            let document = LiveDocument::open(text, offsets, max_chars)?;
            let generation = session.as_ref().map_or(0, |s| s.generation + 1);
            *session = Some(Session {
                document,
                generation,
                settings: LiveSettings {
                    thresholds,
                    sources: Arc::new(sources),
                    factcheck: FactcheckOptions { top_k },
                },
                debounce: Duration::from_millis(debounce_ms),
                cache: Some(AnnotationCache::default()),
            });
            let mut tasks = Vec::new();
            if state.moderator.is_some() {
                tasks.push("moderation");
            }
            if state.nli.is_some() {
                tasks.push("factcheck");
            }
            if state.intent.is_some() {
                tasks.push("intent");
            }
            Ok(ServerMessage::Ready { version: 0, offsets, tasks, max_chars })
        }
        ClientMessage::Edit { participant, version, changes } => {
            let session = session.as_mut().ok_or_else(not_open)?;
            // Up to a thousand changes over a long text take a while to convert and apply:
            // off the async workers, which serve the other sessions and requests.
            let mut document = session.document.clone();
            let (document, applied) = off_runtime(move || {
                let applied = document.apply(&participant, version, &changes);
                (document, applied)
            })
            .await?;
            let version = applied?;
            session.document = document;
            Ok(ServerMessage::Ack { version })
        }
        ClientMessage::Sources { sources } => {
            let session = session.as_mut().ok_or_else(not_open)?;
            session.settings.sources = Arc::new(validate_sources(sources, state.limits.max_input_chars)?);
            session.generation += 1;
            if let Some(cache) = session.cache.as_mut() {
                cache.sources_changed();
            }
            Ok(ServerMessage::Ack { version: session.document.version() })
        }
    }
}

fn not_open() -> ApiError {
    ApiError::bad_request("not_open", "send an `open` message first")
}

/// Starts annotating the session's current version, under the models' admission control.
fn start_pass(state: &SharedState, session: &mut Session) -> Result<Pass, ApiError> {
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
fn finish_pass(session: &mut Option<Session>, outcome: PassOutcome) -> Option<ServerMessage> {
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
    ServerMessage::Error { error: LiveError { code: err.code, message: err.message.clone() } }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let json = serde_json::to_string(message)
        .unwrap_or_else(|err| format!(r#"{{"type":"error","error":{{"code":"internal","message":"{err}"}}}}"#));
    socket.send(Message::Text(json.into())).await
}
