//! A live document: the text a collaboration backend mirrors into Concord edit by edit, who
//! touched which part of it, and the annotations of its current version (offending sentences,
//! checked claims, and the intent of each region edited since the session opened), each listed
//! for the participants whose edits it covers.
//!
//! The session's protocol (client and server messages, [`handle`]) lives here too, so the
//! WebSocket route and `concord live` are transports over the same session.
//!
//! Annotating again after an edit scores only the sentences, claims and edited regions whose
//! text is new to the session; the rest come from its caches, so a keystroke costs one
//! sentence, not the document.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::factcheck::{self, claim_view, validate_sources, ClaimResult, EmbeddingCache, EvidenceView};
use super::factcheck::{FactcheckOptions, SourceInput, MAX_TOP_K};
use super::factcheck::{Source, Verdict};
use super::intent::{align, IntentModel, IntentResult, Region};
use super::moderate::{Moderation, Moderator, SpanResult, Thresholds};
use super::nli::NliModel;
use super::{check_chars, InvalidRequest};
use crate::runtime::{off_runtime, Engine, EngineError};
use crate::text::offsets::{to_byte, OffsetIndex, OffsetUnit};
use crate::text::segment;

/// Most changes in one edit message.
pub const MAX_CHANGES: usize = 1_000;
/// Longest participant id, in characters.
pub const MAX_PARTICIPANT_CHARS: usize = 200;

/// What a client sends: a WebSocket message of `/v1/live`, a line of `concord live`.
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
        /// As in `/v1/moderate`: the span threshold replacing the model's.
        span_threshold: Option<f32>,
        /// As in `/v1/moderate`: the relative span threshold replacing the model's.
        span_relative_threshold: Option<f32>,
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

/// What Concord answers.
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
    pub code: &'static str,
    pub message: String,
}

impl ServerMessage {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::Error { error: LiveError { code, message: message.into() } }
    }
}

/// Quiet time after an edit before annotating, unless `open` sets another.
pub const DEFAULT_DEBOUNCE_MS: u64 = 300;
/// Longest debounce a session may ask for.
pub const MAX_DEBOUNCE_MS: u64 = 10_000;

/// What the loaded models let a session do; `open` is checked against it.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The moderation model's categories; `None` without one.
    pub moderation_categories: Option<Vec<String>>,
    /// Whether the moderation model marks spans.
    pub moderation_spans: bool,
    pub factcheck: bool,
    pub intent: bool,
    /// Longest document, in characters.
    pub max_chars: usize,
}

impl Capabilities {
    /// What a session can do with these models loaded.
    pub fn new(moderator: Option<&Moderator>, factcheck: bool, intent: bool, max_chars: usize) -> Self {
        let moderation_categories = moderator.map(|m| m.categories().map(String::from).collect());
        let moderation_spans = moderator.is_some_and(|m| m.span_decoding().is_some());
        Self { moderation_categories, moderation_spans, factcheck, intent, max_chars }
    }
}

/// An open session: the document, its settings and its caches.
pub struct LiveSession {
    pub document: LiveDocument,
    pub settings: LiveSettings,
    /// Counts `open` and `sources` messages, so a pass that started before one knows its
    /// results are stale.
    pub generation: u64,
    pub debounce: Duration,
    /// Absent while a pass has it.
    pub cache: Option<AnnotationCache>,
}

/// Reads one client message.
pub fn parse_message(text: &str) -> Result<ClientMessage, InvalidRequest> {
    serde_json::from_str(text)
        .map_err(|err| InvalidRequest::new("invalid_message", format!("not a valid message: {err}")))
}

/// Applies one message to `session` (`None` until `open`) and returns the reply; a refused
/// message changes nothing.
pub fn handle(
    session: &mut Option<LiveSession>,
    message: ClientMessage,
    capabilities: &Capabilities,
) -> Result<ServerMessage, InvalidRequest> {
    match message {
        ClientMessage::Open {
            text,
            offsets,
            sources,
            thresholds,
            span_threshold,
            span_relative_threshold,
            top_k,
            debounce_ms,
        } => {
            let thresholds =
                Thresholds { categories: thresholds, span: span_threshold, span_relative: span_relative_threshold };
            let categories = capabilities.moderation_categories.as_deref().unwrap_or_default();
            thresholds.check(categories, capabilities.moderation_spans)?;
            let top_k = top_k.unwrap_or(3);
            if top_k == 0 || top_k > MAX_TOP_K {
                return Err(InvalidRequest::new("invalid_top_k", format!("`top_k` must be within 1..={MAX_TOP_K}")));
            }
            let debounce_ms = debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS);
            if debounce_ms > MAX_DEBOUNCE_MS {
                return Err(InvalidRequest::new(
                    "invalid_debounce",
                    format!("`debounce_ms` must be at most {MAX_DEBOUNCE_MS}"),
                ));
            }
            let max_chars = capabilities.max_chars;
            let sources = validate_sources(sources, max_chars)?;
            let document = LiveDocument::open(text, offsets, max_chars)?;
            let generation = session.as_ref().map_or(0, |s| s.generation + 1);
            *session = Some(LiveSession {
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
            let tasks = [
                (capabilities.moderation_categories.is_some(), "moderation"),
                (capabilities.factcheck, "factcheck"),
                (capabilities.intent, "intent"),
            ];
            let tasks = tasks.into_iter().filter_map(|(loaded, task)| loaded.then_some(task)).collect();
            Ok(ServerMessage::Ready { version: 0, offsets, tasks, max_chars })
        }
        ClientMessage::Edit { participant, version, changes } => {
            let session = session.as_mut().ok_or_else(not_open)?;
            let version = session.document.apply(&participant, version, &changes)?;
            Ok(ServerMessage::Ack { version })
        }
        ClientMessage::Sources { sources } => {
            let session = session.as_mut().ok_or_else(not_open)?;
            session.settings.sources = Arc::new(validate_sources(sources, capabilities.max_chars)?);
            session.generation += 1;
            if let Some(cache) = session.cache.as_mut() {
                cache.sources_changed();
            }
            Ok(ServerMessage::Ack { version: session.document.version() })
        }
    }
}

fn not_open() -> InvalidRequest {
    InvalidRequest::new("not_open", "send an `open` message first")
}

/// One replacement: the text between `start` and `end` (offsets in the session's unit, into the
/// text as the previous change of the same edit left it) becomes `text`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub start: usize,
    pub end: usize,
    #[serde(default)]
    pub text: String,
}

/// A stretch of the text (in bytes) and the participant who last wrote it; `None` for the text
/// the document was opened with. A zero-length run marks where a participant deleted text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    len: usize,
    author: Option<usize>,
}

/// The mirrored text, its version (one per accepted edit) and its authorship.
#[derive(Debug, Clone)]
pub struct LiveDocument {
    /// The text the document was opened with: edit annotations describe the changes since.
    baseline: Arc<str>,
    text: String,
    version: u64,
    unit: OffsetUnit,
    max_chars: usize,
    participants: Vec<String>,
    /// Cover the text in order; their lengths sum to its length in bytes.
    runs: Vec<Run>,
}

impl LiveDocument {
    /// A document at version 0 holding `text` (at most `max_chars` characters); edits count
    /// offsets in `unit`.
    pub fn open(text: String, unit: OffsetUnit, max_chars: usize) -> Result<Self, InvalidRequest> {
        check_chars("document_too_large", "the document", &text, max_chars)?;
        let runs = vec![Run { len: text.len(), author: None }];
        Ok(Self {
            baseline: Arc::from(text.as_str()),
            text,
            version: 0,
            unit,
            max_chars,
            participants: Vec::new(),
            runs,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn unit(&self) -> OffsetUnit {
        self.unit
    }

    /// Applies `changes` by `participant`, all or none, and returns the new version. With
    /// `base_version`, the edit is refused unless the document is at that version, so a
    /// backend that lost an edit finds out instead of annotating a text nobody sees.
    pub fn apply(
        &mut self,
        participant: &str,
        base_version: Option<u64>,
        changes: &[Change],
    ) -> Result<u64, InvalidRequest> {
        let id_chars = participant.chars().count();
        if participant.trim().is_empty() || id_chars > MAX_PARTICIPANT_CHARS {
            return Err(InvalidRequest::new(
                "invalid_participant",
                format!("`participant` must be a non-blank id of at most {MAX_PARTICIPANT_CHARS} characters"),
            ));
        }
        if let Some(base) = base_version.filter(|&v| v != self.version) {
            return Err(InvalidRequest::new(
                "version_conflict",
                format!("the edit is based on version {base}, but the document is at version {}", self.version),
            ));
        }
        if changes.len() > MAX_CHANGES {
            return Err(InvalidRequest::new(
                "too_many_changes",
                format!("{} changes in one edit; the limit is {MAX_CHANGES}", changes.len()),
            ));
        }
        let author = self.participants.iter().position(|p| p == participant).unwrap_or(self.participants.len());
        let (mut text, mut runs) = (self.text.clone(), self.runs.clone());
        for (i, change) in changes.iter().enumerate() {
            let start = to_byte(&text, change.start, self.unit);
            let end = to_byte(&text, change.end, self.unit);
            let (Some(start), Some(end)) = (start, end) else {
                return Err(InvalidRequest::new(
                    "invalid_change",
                    format!(
                        "changes[{i}] ({}..{}) is past the end of the text or inside a character",
                        change.start, change.end
                    ),
                ));
            };
            if start > end {
                return Err(InvalidRequest::new(
                    "invalid_change",
                    format!("changes[{i}] ends ({}) before it starts ({})", change.end, change.start),
                ));
            }
            text.replace_range(start..end, &change.text);
            runs = splice(&runs, start..end, change.text.len(), author);
        }
        check_chars("document_too_large", "the edited document", &text, self.max_chars)?;
        if author == self.participants.len() {
            self.participants.push(participant.to_string());
        }
        self.text = text;
        self.runs = runs;
        self.version += 1;
        Ok(self.version)
    }

    /// The participants whose edits wrote or deleted text within `range` (bytes, ends
    /// included, so a deletion at a sentence's end counts for that sentence), sorted.
    fn participants_in(&self, range: &Range<usize>) -> Vec<String> {
        let mut found = HashSet::new();
        let mut position = 0;
        for run in &self.runs {
            let (start, end) = (position, position + run.len);
            position = end;
            let touches = if run.len == 0 {
                range.start <= start && start <= range.end
            } else {
                start < range.end && end > range.start
            };
            if let (true, Some(author)) = (touches, run.author) {
                found.insert(author);
            }
            if start > range.end {
                break;
            }
        }
        let mut names: Vec<String> = found.into_iter().map(|a| self.participants[a].clone()).collect();
        names.sort_unstable();
        names
    }
}

/// `runs` after the bytes in `replaced` became `inserted` bytes written by `author`.
fn splice(runs: &[Run], replaced: Range<usize>, inserted: usize, author: usize) -> Vec<Run> {
    let mut before = Vec::with_capacity(runs.len() + 2);
    let mut after = Vec::new();
    let mut position = 0;
    for run in runs {
        let (start, end) = (position, position + run.len);
        position = end;
        if run.len == 0 {
            // A deletion mark survives unless the replaced text surrounded it.
            if start <= replaced.start {
                before.push(*run);
            } else if start >= replaced.end {
                after.push(*run);
            }
            continue;
        }
        if start < replaced.start {
            before.push(Run { len: end.min(replaced.start) - start, author: run.author });
        }
        if end > replaced.end {
            after.push(Run { len: end - start.max(replaced.end), author: run.author });
        }
    }
    before.push(Run { len: inserted, author: Some(author) });
    before.extend(after);
    let mut merged: Vec<Run> = Vec::with_capacity(before.len());
    for run in before {
        match merged.last_mut() {
            Some(last) if last.author == run.author => last.len += run.len,
            _ => merged.push(run),
        }
    }
    merged
}

/// How much an annotation asks for attention: `problem` (a flagged sentence, a refuted claim),
/// `warning` (a claim the sources neither support nor refute), `info` (a supported claim, an
/// edit's intent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Problem,
    Warning,
    Info,
}

/// What an annotation found.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A sentence the moderation model flags, with the words that make it so; span offsets are
    /// into the document, in the session's unit.
    Moderation { categories: BTreeMap<String, bool>, category_scores: BTreeMap<String, f32>, spans: Vec<SpanResult> },
    /// A claim checked against the session's sources, with its evidence.
    Claim { verdict: Verdict, confidence: f32, evidence: Vec<EvidenceView> },
    /// A region edited since the session opened: `op` (`replace`, `insert`, `delete`, `move`),
    /// the region's text then (`before`), and why it was edited (as `/v1/intent` reports it).
    Edit { op: &'static str, before: String, intent: String, scores: BTreeMap<String, f32>, semantic_change: f32 },
}

/// One annotation of the current text.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Annotation {
    /// The annotated sentence (an edit: the region as it is now, empty where text was
    /// deleted), offsets in the session's unit.
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub severity: Severity,
    /// What annotations of one severity are ranked by: the highest flagged category score of a
    /// moderation finding, the confidence of a claim's verdict, an edit's `semantic_change`.
    pub score: f32,
    /// Participants whose edits wrote or deleted text in the sentence; empty when it is all
    /// text the document was opened with.
    pub participants: Vec<String>,
    #[serde(flatten)]
    pub finding: Finding,
}

/// The annotations of one version, most urgent first, and for each participant the ones on
/// text they edited.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Annotations {
    pub version: u64,
    pub offsets: OffsetUnit,
    /// Ranked by severity, then score (highest first), then position.
    pub annotations: Vec<Annotation>,
    /// Every participant who has edited the document, with the indices into `annotations` of
    /// those on text they edited, in the same ranked order (an empty list clears theirs).
    pub by_participant: BTreeMap<String, Vec<usize>>,
}

/// What a session annotates with.
#[derive(Clone, Copy)]
pub struct LiveModels<'a> {
    pub embedder: &'a Engine,
    pub moderator: Option<&'a Moderator>,
    pub nli: Option<&'a NliModel>,
    pub intent: Option<&'a IntentModel>,
    /// Source sentence embeddings, shared with `/v1/factcheck`.
    pub source_cache: &'a EmbeddingCache,
}

/// A session's settings.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Moderation thresholds (per category, and for the spans) replacing the model's defaults.
    pub thresholds: Thresholds,
    /// Claims are checked only when there are sources.
    pub sources: Arc<Vec<Source>>,
    pub factcheck: FactcheckOptions,
}

/// Results for texts the session has seen, by text: a sentence's moderation, a claim's verdict
/// against the current sources. After each pass it keeps only what the current text holds.
#[derive(Default)]
pub struct AnnotationCache {
    moderation: HashMap<String, Moderation>,
    claims: HashMap<String, ClaimResult>,
    /// By the region's text then and now.
    intents: HashMap<(String, String), IntentResult>,
}

impl AnnotationCache {
    /// Forgets the claims' verdicts, which the new sources may change.
    pub fn sources_changed(&mut self) {
        self.claims.clear();
    }
}

/// Annotates `document` with `models`, scoring only what `cache` lacks.
pub async fn annotate(
    document: &LiveDocument,
    settings: &LiveSettings,
    models: LiveModels<'_>,
    cache: &mut AnnotationCache,
) -> Result<Annotations, EngineError> {
    let text = document.text();
    let all_sentences = segment::sentence_ranges(text);
    let claims: Vec<Range<usize>> = match models.nli {
        Some(_) if !settings.sources.is_empty() => {
            all_sentences.iter().filter(|r| factcheck::is_claim(&text[(*r).clone()])).cloned().collect()
        }
        _ => Vec::new(),
    };
    let sentences = if models.moderator.is_some() { all_sentences } else { Vec::new() };
    let (moderations, verdicts, edits) = futures::try_join!(
        moderate_new(models.moderator, text, &sentences, &settings.thresholds, &mut cache.moderation),
        check_new(&models, text, &claims, settings, &mut cache.claims),
        classify_new(models.intent, document, &mut cache.intents),
    )?;
    let index = OffsetIndex::new(text, document.unit());
    let mut annotations = Vec::new();
    for (range, moderation) in sentences.iter().zip(moderations) {
        if let Some(annotation) = moderation_annotation(document, &index, range, moderation) {
            annotations.push(annotation);
        }
    }
    for (range, result) in claims.iter().zip(verdicts) {
        let [start, end] = index.range(range.clone());
        let view = claim_view(&text[range.clone()], [start, end], result, &settings.sources, document.unit());
        let severity = match view.verdict {
            Verdict::Refuted => Severity::Problem,
            Verdict::NotEnoughInfo => Severity::Warning,
            Verdict::Supported => Severity::Info,
        };
        annotations.push(Annotation {
            start,
            end,
            text: view.text,
            severity,
            score: view.confidence,
            participants: document.participants_in(range),
            finding: Finding::Claim { verdict: view.verdict, confidence: view.confidence, evidence: view.evidence },
        });
    }
    for (region, (before, result)) in edits {
        let range = region.after.clone();
        let [start, end] = index.range(range.clone());
        annotations.push(Annotation {
            start,
            end,
            text: text[range.clone()].to_string(),
            severity: Severity::Info,
            score: result.semantic_change,
            participants: document.participants_in(&range),
            finding: Finding::Edit {
                op: region.op,
                before,
                intent: result.intent,
                scores: result.scores,
                semantic_change: result.semantic_change,
            },
        });
    }
    annotations
        .sort_by(|a, b| a.severity.cmp(&b.severity).then(b.score.total_cmp(&a.score)).then(a.start.cmp(&b.start)));
    let mut by_participant: BTreeMap<String, Vec<usize>> =
        document.participants.iter().map(|p| (p.clone(), Vec::new())).collect();
    for (i, annotation) in annotations.iter().enumerate() {
        for participant in &annotation.participants {
            by_participant.entry(participant.clone()).or_default().push(i);
        }
    }
    Ok(Annotations { version: document.version(), offsets: document.unit(), annotations, by_participant })
}

/// Each sentence's moderation, scoring the sentences `cache` lacks; `cache` keeps just these.
async fn moderate_new(
    moderator: Option<&Moderator>,
    text: &str,
    sentences: &[Range<usize>],
    thresholds: &Thresholds,
    cache: &mut HashMap<String, Moderation>,
) -> Result<Vec<Moderation>, EngineError> {
    let Some(moderator) = moderator else {
        return Ok(Vec::new());
    };
    let wanted: Vec<&str> = sentences.iter().map(|r| &text[r.clone()]).collect();
    let mut missing: Vec<String> = wanted.iter().filter(|s| !cache.contains_key(**s)).map(|s| s.to_string()).collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        let scored = moderator.moderate(&missing, thresholds).await?;
        cache.extend(missing.into_iter().zip(scored));
    }
    let keep: HashSet<&str> = wanted.iter().copied().collect();
    cache.retain(|sentence, _| keep.contains(sentence.as_str()));
    wanted
        .iter()
        .map(|s| cache.get(*s).cloned().ok_or_else(|| EngineError::Model("moderation cache lost a sentence".into())))
        .collect()
}

/// Each claim's verdict, checking the claims `cache` lacks; `cache` keeps just these.
async fn check_new(
    models: &LiveModels<'_>,
    text: &str,
    claims: &[Range<usize>],
    settings: &LiveSettings,
    cache: &mut HashMap<String, ClaimResult>,
) -> Result<Vec<ClaimResult>, EngineError> {
    let Some(nli) = models.nli.filter(|_| !claims.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut seen = HashSet::new();
    let missing: Vec<Range<usize>> = claims
        .iter()
        .filter(|r| !cache.contains_key(&text[(*r).clone()]) && seen.insert(&text[(*r).clone()]))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let stream = factcheck::check(
            models.embedder,
            nli,
            models.source_cache,
            text,
            missing,
            &settings.sources,
            settings.factcheck,
        )
        .await?;
        let results: Vec<ClaimResult> = stream.try_collect().await?;
        cache.extend(results.into_iter().map(|r| (text[r.range.clone()].to_string(), r)));
    }
    let keep: HashSet<&str> = claims.iter().map(|r| &text[r.clone()]).collect();
    cache.retain(|claim, _| keep.contains(claim.as_str()));
    claims
        .iter()
        .map(|r| {
            cache.get(&text[r.clone()]).cloned().ok_or_else(|| EngineError::Model("claim cache lost a claim".into()))
        })
        .collect()
}

/// The regions edited since the document opened, each with its text then and its intent,
/// classifying the (then, now) pairs `cache` lacks; `cache` keeps just these.
async fn classify_new(
    intent: Option<&IntentModel>,
    document: &LiveDocument,
    cache: &mut HashMap<(String, String), IntentResult>,
) -> Result<Vec<(Region, (String, IntentResult))>, EngineError> {
    let Some(intent) = intent else {
        return Ok(Vec::new());
    };
    let (baseline, text) = (Arc::clone(&document.baseline), document.text.clone());
    let regions = off_runtime(move || align(&baseline, &text)).await?;
    let pairs: Vec<(String, String)> = regions
        .iter()
        .map(|r| (document.baseline[r.before.clone()].to_string(), document.text[r.after.clone()].to_string()))
        .collect();
    let mut missing: Vec<(String, String)> = pairs.iter().filter(|p| !cache.contains_key(*p)).cloned().collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        let results = intent.classify(&missing).await?;
        cache.extend(missing.into_iter().zip(results));
    }
    let keep: HashSet<&(String, String)> = pairs.iter().collect();
    cache.retain(|pair, _| keep.contains(pair));
    regions
        .into_iter()
        .zip(pairs)
        .map(|(region, pair)| match cache.get(&pair) {
            Some(result) => Ok((region, (pair.0, result.clone()))),
            None => Err(EngineError::Model("intent cache lost an edit".into())),
        })
        .collect()
}

/// The annotation of one sentence's moderation, when it flags the sentence. Spans in sentences
/// no category flags are left out: on their own they are the span head's guesses (a single
/// short sentence gets more of them than a paragraph).
fn moderation_annotation(
    document: &LiveDocument,
    index: &OffsetIndex,
    range: &Range<usize>,
    moderation: Moderation,
) -> Option<Annotation> {
    if !moderation.flagged {
        return None;
    }
    let text = document.text();
    let score = moderation
        .categories
        .iter()
        .filter(|(_, &flagged)| flagged)
        .filter_map(|(name, _)| moderation.category_scores.get(name).copied())
        .fold(0.0, f32::max);
    let spans = moderation
        .spans
        .iter()
        .map(|span| {
            let bytes = range.start + span.range.start..range.start + span.range.end;
            let [start, end] = index.range(bytes.clone());
            SpanResult { start, end, score: span.score, text: text[bytes].to_string() }
        })
        .collect();
    let [start, end] = index.range(range.clone());
    Some(Annotation {
        start,
        end,
        text: text[range.clone()].to_string(),
        severity: Severity::Problem,
        score,
        participants: document.participants_in(range),
        finding: Finding::Moderation {
            categories: moderation.categories,
            category_scores: moderation.category_scores,
            spans,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(start: usize, end: usize, text: &str) -> Change {
        Change { start, end, text: text.to_string() }
    }

    fn document(text: &str) -> LiveDocument {
        LiveDocument::open(text.to_string(), OffsetUnit::Utf16, 1000).expect("opens")
    }

    /// Every run covers text, in order, and their lengths add up to the text's.
    fn assert_runs_cover(doc: &LiveDocument) {
        assert_eq!(doc.runs.iter().map(|r| r.len).sum::<usize>(), doc.text.len(), "{:?}", doc.runs);
        assert!(doc.runs.windows(2).all(|w| w[0].author != w[1].author), "runs are merged: {:?}", doc.runs);
    }

    #[test]
    fn without_a_moderation_model_open_refuses_moderation_thresholds() {
        let capabilities = Capabilities::new(None, false, false, 1000);
        let open =
            |extra: &str| parse_message(&format!(r#"{{"type": "open", "text": "Hi", {extra}}}"#)).expect("parses");
        let mut session = None;
        for (extra, code) in [
            (r#""thresholds": {"offensive": 0.5}"#, "unknown_category"),
            (r#""span_threshold": 0.5"#, "invalid_threshold"),
        ] {
            let Err(refused) = handle(&mut session, open(extra), &capabilities) else {
                panic!("{extra} opened a session without a moderation model");
            };
            assert_eq!(refused.code, code, "{extra}");
        }
        assert!(session.is_none());
        assert!(handle(&mut session, open(r#""top_k": 3"#), &capabilities).is_ok());
        assert!(session.is_some());
    }

    #[test]
    fn edits_apply_in_order_in_utf16_units() {
        let mut doc = document("Hi 😀 there.");
        // "😀" is two UTF-16 units: "there" starts at 6.
        let version = doc.apply("alice", Some(0), &[change(6, 11, "world"), change(0, 2, "Hello")]).expect("applies");
        assert_eq!((doc.text(), version), ("Hello 😀 world.", 1));
        assert_runs_cover(&doc);
    }

    #[test]
    fn a_bad_change_leaves_the_document_as_it_was() {
        let mut doc = document("Hi 😀 there.");
        for changes in [
            vec![change(0, 2, "Yo"), change(4, 5, "")], // inside the emoji's surrogate pair
            vec![change(5, 3, "")],
            vec![change(0, 99, "")],
        ] {
            let err = doc.apply("alice", None, &changes).expect_err("refused");
            assert_eq!(err.code, "invalid_change");
        }
        assert_eq!((doc.text(), doc.version()), ("Hi 😀 there.", 0));
        let err = doc.apply("alice", Some(3), &[change(0, 0, "x")]).expect_err("stale version");
        assert_eq!(err.code, "version_conflict");
        assert_eq!(doc.apply(" ", None, &[]).expect_err("blank id").code, "invalid_participant");
        let err = doc.apply("alice", None, &[change(0, 0, &"x".repeat(1000))]).expect_err("too large");
        assert_eq!(err.code, "document_too_large");
        assert!(doc.participants.is_empty(), "a refused edit adds no participant");
    }

    #[test]
    fn authorship_follows_inserts_and_deletions() {
        let mut doc = document("One fish. Two fish. Red fish swim.");
        doc.apply("alice", None, &[change(4, 8, "cat")]).expect("alice edits the first sentence");
        // Deleting " swim" leaves only a mark where it was, in the third sentence.
        doc.apply("bob", None, &[change(27, 32, "")]).expect("bob deletes in the third");
        assert_eq!(doc.text(), "One cat. Two fish. Red fish.");
        assert_runs_cover(&doc);
        let sentences = segment::sentence_ranges(doc.text());
        let who: Vec<Vec<String>> = sentences.iter().map(|r| doc.participants_in(r)).collect();
        assert_eq!(who, vec![vec!["alice".to_string()], vec![], vec!["bob".to_string()]]);
        // Rewriting all of alice's word removes her from that sentence.
        doc.apply("bob", None, &[change(4, 7, "dog")]).expect("bob rewrites it");
        assert_eq!(doc.participants_in(&sentences[0]), vec!["bob".to_string()]);
        assert_runs_cover(&doc);
    }

    #[test]
    fn splice_keeps_marks_outside_the_replaced_text() {
        let runs = [Run { len: 3, author: None }, Run { len: 0, author: Some(1) }, Run { len: 3, author: None }];
        // Replacing bytes 1..2 keeps the mark at 3.
        let kept = splice(&runs, 1..2, 1, 0);
        assert!(kept.contains(&Run { len: 0, author: Some(1) }), "{kept:?}");
        // Replacing 2..4 covers it.
        let covered = splice(&runs, 2..4, 2, 0);
        assert!(!covered.iter().any(|r| r.author == Some(1)), "{covered:?}");
        assert_eq!(covered.iter().map(|r| r.len).sum::<usize>(), 6);
    }
}
