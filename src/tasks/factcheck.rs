//! Fact-checking a text against the sources a workspace trusts: find the check-worthy claims,
//! retrieve evidence sentences from the sources (dense embeddings plus a lexical score), run NLI
//! on each (evidence, claim) pair and aggregate the pairs into a verdict with citations.
//!
//! Source sentences are embedded once and cached by content hash, so re-checking a document on
//! every keystroke burst does not re-embed sources that did not change.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use unicode_segmentation::UnicodeSegmentation;

use serde::Deserialize;

use super::embed::embed;
use super::nli::{NliModel, NliPair, Purpose};
use super::{check_chars, InvalidRequest};
use crate::runtime::{Engine, EngineError};
use crate::text::offsets::{range_from_bytes, to_byte, OffsetUnit};
use crate::text::segment;

/// A source the caller trusts.
#[derive(Debug, Clone)]
pub struct Source {
    pub id: String,
    pub text: String,
    pub title: Option<String>,
    pub url: Option<String>,
}

/// One retrieved evidence sentence and what the NLI model says about it.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub source_id: String,
    /// Byte range into the source's text (the API converts it to the caller's unit).
    #[serde(skip)]
    pub range: Range<usize>,
    pub text: String,
    /// Retrieval score: 0.8 × cosine + 0.2 × content-word overlap.
    pub retrieval_score: f32,
    /// NLI probabilities with the evidence as premise and the claim as hypothesis.
    pub scores: BTreeMap<String, f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Supported,
    Refuted,
    NotEnoughInfo,
}

/// One claim's verdict; `range` is a byte range into the checked text.
#[derive(Debug, Clone)]
pub struct ClaimResult {
    pub index: usize,
    pub range: Range<usize>,
    pub verdict: Verdict,
    /// The probability behind the verdict: the best evidence's entailment (supported) or
    /// contradiction (refuted) probability, or for not-enough-info one minus the larger of the two.
    pub confidence: f32,
    pub evidence: Vec<Evidence>,
}

/// Retrieval and decision settings.
#[derive(Debug, Clone, Copy)]
pub struct FactcheckOptions {
    /// Evidence sentences checked per claim.
    pub top_k: usize,
}

/// Sentence embeddings of sources, by content hash, bounded in size.
pub struct EmbeddingCache {
    vectors: Mutex<HashMap<u64, Vec<f32>>>,
    capacity: usize,
}

impl EmbeddingCache {
    pub fn new(capacity: usize) -> Self {
        Self { vectors: Mutex::new(HashMap::new()), capacity }
    }

    pub fn len(&self) -> usize {
        self.vectors.lock().map_or(0, |v| v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Embeddings of `texts`, computing only those not cached.
    async fn embed(&self, engine: &Engine, texts: &[&str]) -> Result<Vec<Vec<f32>>, EngineError> {
        let keys: Vec<u64> = texts.iter().map(|t| content_hash(t)).collect();
        let missing: Vec<usize> = {
            let cached = self.vectors.lock().map_err(|_| EngineError::Stopped)?;
            let mut seen = HashSet::new();
            (0..texts.len()).filter(|&i| !cached.contains_key(&keys[i]) && seen.insert(keys[i])).collect()
        };
        if !missing.is_empty() {
            let fresh = embed(engine, missing.iter().map(|&i| texts[i].to_string()).collect(), true).await?;
            let mut cached = self.vectors.lock().map_err(|_| EngineError::Stopped)?;
            // A full cache starts over: simple, and the next request refills what it needs.
            if cached.len() + missing.len() > self.capacity {
                cached.clear();
            }
            for (&i, vector) in missing.iter().zip(fresh.vectors) {
                cached.insert(keys[i], vector);
            }
        }
        let cached = self.vectors.lock().map_err(|_| EngineError::Stopped)?;
        let mut out = Vec::with_capacity(texts.len());
        for key in &keys {
            match cached.get(key) {
                Some(vector) => out.push(vector.clone()),
                None => return Err(EngineError::Model("embedding cache lost an entry".into())),
            }
        }
        Ok(out)
    }
}

fn content_hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Words that open a greeting, thanks or sign-off rather than a statement.
const GREETINGS: [&str; 12] = [
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    "dear",
    "cheers",
    "regards",
    "welcome",
    "goodbye",
    "bye",
    "congratulations",
];

/// Verbs that open an instruction to the reader ("Click save.", "Please review.").
const IMPERATIVES: [&str; 24] = [
    "please", "let's", "click", "see", "note", "make", "add", "remove", "check", "use", "run", "read", "go", "take",
    "try", "do", "don't", "send", "call", "open", "review", "consider", "imagine", "remember",
];

/// The check-worthy sentences of `text`, as trimmed byte ranges (see [`is_claim`]).
pub fn claim_ranges(text: &str) -> Vec<Range<usize>> {
    segment::sentence_ranges(text).into_iter().filter(|r| is_claim(&text[r.clone()])).collect()
}

/// Whether a trimmed sentence is check-worthy: a statement of at least four words.
/// Rule-based, not learned: questions, greetings and imperatives are skipped.
pub fn is_claim(sentence: &str) -> bool {
    let words: Vec<&str> = sentence.unicode_words().collect();
    let first = words.first().map(|w| w.to_lowercase()).unwrap_or_default();
    let is_question = sentence.trim_end_matches(['"', '\'', ')', '”', '’']).ends_with('?');
    !(words.len() < 4
        || is_question
        || GREETINGS.contains(&first.as_str())
        || IMPERATIVES.contains(&first.as_str())
        || sentence.ends_with('!') && words.len() < 6)
}

/// A sentence of a source.
struct Passage {
    source: usize,
    range: Range<usize>,
}

fn passages(sources: &[Source]) -> Vec<Passage> {
    sources
        .iter()
        .enumerate()
        .flat_map(|(source, s)| {
            segment::sentence_ranges(&s.text)
                .into_iter()
                .filter(|range| s.text[range.clone()].unicode_words().count() >= 3)
                .map(move |range| Passage { source, range })
        })
        .collect()
}

/// Lower-cased words of three or more letters: a crude content-word filter for the lexical score.
fn content_words(text: &str) -> HashSet<String> {
    text.unicode_words().filter(|w| w.chars().count() >= 3).map(str::to_lowercase).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    dot / (norm(a) * norm(b))
}

/// The verdict for one claim from its evidence's NLI probabilities. Each evidence sentence
/// reads as its most probable label, as pair-level scores read it: the claim is supported when
/// some sentence entails it at least as strongly as any other contradicts it, refuted when some
/// sentence contradicts it and none supports it more strongly, and not decided otherwise.
pub fn decide(evidence: &[Evidence]) -> (Verdict, f32) {
    let score = |e: &Evidence, label: &str| e.scores.get(label).copied().unwrap_or(0.0);
    // The strongest probability of `label` among the sentences whose most probable label it is.
    let strongest = |label: &str| {
        evidence
            .iter()
            .filter(|e| e.scores.iter().all(|(other, &p)| other == label || p <= score(e, label)))
            .map(|e| score(e, label))
            .reduce(f32::max)
    };
    match (strongest("entailment"), strongest("contradiction")) {
        (Some(entail), contra) if entail >= contra.unwrap_or(0.0) => (Verdict::Supported, entail),
        (_, Some(contra)) => (Verdict::Refuted, contra),
        _ => {
            let best = |label: &str| evidence.iter().map(|e| score(e, label)).fold(0.0, f32::max);
            (Verdict::NotEnoughInfo, 1.0 - best("entailment").max(best("contradiction")))
        }
    }
}

/// Checks the claims at `claims` (byte ranges of `text`) against `sources`; yields each claim's
/// result as soon as it is decided (not in text order). Dropping the stream cancels the rest.
pub async fn check<'a>(
    embedder: &'a Engine,
    nli: &'a NliModel,
    cache: &'a EmbeddingCache,
    text: &'a str,
    claims: Vec<Range<usize>>,
    sources: &'a [Source],
    options: FactcheckOptions,
) -> Result<impl Stream<Item = Result<ClaimResult, EngineError>> + 'a, EngineError> {
    let passages = passages(sources);
    let passage_texts: Vec<&str> = passages.iter().map(|p| &sources[p.source].text[p.range.clone()]).collect();
    let passage_vectors = cache.embed(embedder, &passage_texts).await?;
    let retrieval = Arc::new(Retrieval {
        passage_words: passage_texts.iter().map(|t| content_words(t)).collect(),
        passage_texts: passage_texts.into_iter().map(str::to_string).collect(),
        passages,
        passage_vectors,
        top_k: options.top_k.max(1),
    });
    // The first claim is judged alone, so it streams without waiting for the others' batches;
    // the rest follow, judged together so the engine can batch them.
    let mut claims: Vec<(usize, Range<usize>)> = claims.into_iter().enumerate().collect();
    let rest = claims.split_off(claims.len().min(1));
    let context = CheckContext { embedder, nli, text, sources };
    let judge = |claims: Vec<(usize, Range<usize>)>| {
        let retrieval = Arc::clone(&retrieval);
        futures::stream::once(async move { retrieval.judge(context, claims).await }).try_flatten()
    };
    Ok(judge(claims).chain(judge(rest)).boxed())
}

/// What every claim of one request is checked with: the models, the request's text and its
/// sources.
#[derive(Clone, Copy)]
struct CheckContext<'a> {
    embedder: &'a Engine,
    nli: &'a NliModel,
    text: &'a str,
    sources: &'a [Source],
}

/// Source sentences with their embeddings and content words, shared by every claim's future.
struct Retrieval {
    passages: Vec<Passage>,
    passage_texts: Vec<String>,
    passage_vectors: Vec<Vec<f32>>,
    passage_words: Vec<HashSet<String>>,
    top_k: usize,
}

impl Retrieval {
    /// Embeds `claims`, retrieves their evidence and returns one future per claim (run together).
    async fn judge<'a>(
        self: Arc<Self>,
        context: CheckContext<'a>,
        claims: Vec<(usize, Range<usize>)>,
    ) -> Result<FuturesUnordered<impl std::future::Future<Output = Result<ClaimResult, EngineError>> + 'a>, EngineError>
    {
        let CheckContext { embedder, nli, text, sources } = context;
        let claim_texts: Vec<String> = claims.iter().map(|(_, r)| text[r.clone()].to_string()).collect();
        let claim_vectors =
            if claims.is_empty() { Vec::new() } else { embed(embedder, claim_texts.clone(), true).await?.vectors };
        Ok(claims
            .into_iter()
            .zip(claim_texts)
            .zip(claim_vectors)
            .map(|(((index, range), claim), vector)| {
                let ((candidates, pairs), embedded) = self.evidence_for(&claim, &vector, sources);
                async move {
                    // The NLI pair head reads the same encoder's embeddings as retrieval, of the
                    // untitled passage and the claim: reuse them.
                    let verdicts = if nli.pair_encoder().is_some_and(|e| e.info().id == embedder.info().id) {
                        nli.classify_embedded(pairs, &embedded, Purpose::FactCheck).await?
                    } else {
                        nli.classify(pairs, Purpose::FactCheck).await?
                    };
                    let evidence: Vec<Evidence> = candidates
                        .into_iter()
                        .zip(verdicts)
                        .map(|(evidence, verdict)| Evidence { scores: verdict.scores, ..evidence })
                        .collect();
                    let (verdict, confidence) = decide(&evidence);
                    Ok(ClaimResult { index, range, verdict, confidence, evidence })
                }
            })
            .collect())
    }

    /// The `top_k` evidence sentences for a claim, the (evidence, claim) pairs the NLI model reads
    /// for them, and each pair's embeddings (passage, claim) from retrieval.
    fn evidence_for(&self, claim: &str, vector: &[f32], sources: &[Source]) -> EvidencePairs {
        let words = content_words(claim);
        let mut ranked: Vec<(usize, f32)> = self
            .passage_vectors
            .iter()
            .zip(&self.passage_words)
            .enumerate()
            .map(|(i, (pv, pw))| {
                let overlap =
                    if words.is_empty() { 0.0 } else { words.intersection(pw).count() as f32 / words.len() as f32 };
                (i, 0.8 * cosine(vector, pv) + 0.2 * overlap)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(self.top_k);
        ranked
            .iter()
            .map(|&(i, retrieval_score)| {
                let source = &sources[self.passages[i].source];
                let evidence = Evidence {
                    source_id: source.id.clone(),
                    range: self.passages[i].range.clone(),
                    text: self.passage_texts[i].clone(),
                    retrieval_score,
                    scores: BTreeMap::new(),
                };
                let pair = NliPair {
                    premise: self.passage_texts[i].clone(),
                    hypothesis: claim.to_string(),
                    title: source.title.clone(),
                };
                ((evidence, pair), (self.passage_vectors[i].clone(), vector.to_vec()))
            })
            .unzip()
    }
}

/// A claim's evidence, its NLI pairs and their embeddings, in the same order.
type EvidencePairs = ((Vec<Evidence>, Vec<NliPair>), Vec<(Vec<f32>, Vec<f32>)>);

// The request and response of `/v1/factcheck` and `concord factcheck`.

/// Most sources per request.
pub const MAX_SOURCES: usize = 1000;
/// Most evidence sentences per claim.
pub const MAX_TOP_K: usize = 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FactcheckRequest {
    text: String,
    sources: Vec<SourceInput>,
    /// Check exactly these ranges of `text` instead of finding claims.
    spans: Option<Vec<SpanInput>>,
    #[serde(default)]
    offsets: OffsetUnit,
    /// Evidence sentences checked per claim (default 3, at most 20).
    top_k: Option<usize>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    id: String,
    text: String,
    title: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanInput {
    start: usize,
    end: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClaimView {
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub verdict: Verdict,
    pub confidence: f32,
    pub evidence: Vec<EvidenceView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvidenceView {
    source_id: String,
    /// The source's title and URL, when the request gave them: what a citation shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Offsets into the source's text, in the request's unit.
    start: usize,
    end: usize,
    text: String,
    retrieval_score: f32,
    scores: std::collections::BTreeMap<String, f32>,
}

#[derive(Serialize, Default, utoipa::ToSchema)]
pub struct Totals {
    claims: usize,
    supported: usize,
    refuted: usize,
    not_enough_info: usize,
}

impl Totals {
    pub fn add(&mut self, verdict: Verdict) {
        self.claims += 1;
        match verdict {
            Verdict::Supported => self.supported += 1,
            Verdict::Refuted => self.refuted += 1,
            Verdict::NotEnoughInfo => self.not_enough_info += 1,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FactcheckResponse {
    pub model: String,
    pub offsets: OffsetUnit,
    pub claims: Vec<ClaimView>,
    pub totals: Totals,
}

/// A validated request, owned, so a streaming response can outlive the handler.
pub struct Job {
    pub text: String,
    pub sources: Vec<Source>,
    pub claims: Vec<Range<usize>>,
    pub unit: OffsetUnit,
    pub options: FactcheckOptions,
}

impl Job {
    /// Checks this job's claims; see [`check`].
    pub async fn check<'a>(
        &'a self,
        embedder: &'a Engine,
        nli: &'a NliModel,
        cache: &'a EmbeddingCache,
    ) -> Result<impl Stream<Item = Result<ClaimResult, EngineError>> + 'a, EngineError> {
        check(embedder, nli, cache, &self.text, self.claims.clone(), &self.sources, self.options).await
    }

    pub fn view(&self, result: ClaimResult) -> ClaimView {
        let [start, end] = range_from_bytes(&self.text, result.range.clone(), self.unit);
        claim_view(&self.text[result.range.clone()], [start, end], result, &self.sources, self.unit)
    }
}

/// A claim's result as the API reports it: `claim` is its text and `offsets` its range in the
/// caller's unit; evidence offsets are converted into `unit` within each cited source.
pub fn claim_view(
    claim: &str,
    offsets: [usize; 2],
    result: ClaimResult,
    sources: &[Source],
    unit: OffsetUnit,
) -> ClaimView {
    let [start, end] = offsets;
    ClaimView {
        start,
        end,
        text: claim.to_string(),
        verdict: result.verdict,
        confidence: result.confidence,
        evidence: result
            .evidence
            .into_iter()
            .map(|e| {
                let source = sources.iter().find(|s| s.id == e.source_id);
                let [start, end] = range_from_bytes(source.map_or("", |s| s.text.as_str()), e.range.clone(), unit);
                EvidenceView {
                    source_id: e.source_id,
                    title: source.and_then(|s| s.title.clone()),
                    url: source.and_then(|s| s.url.clone()),
                    start,
                    end,
                    text: e.text,
                    retrieval_score: e.retrieval_score,
                    scores: e.scores,
                }
            })
            .collect(),
    }
}

impl FactcheckRequest {
    /// Checks the request (each text at most `max_chars` characters) and resolves the claims
    /// to check.
    pub fn validate(self, max_chars: usize) -> Result<Job, InvalidRequest> {
        let request = self;
        if request.text.trim().is_empty() {
            return Err(InvalidRequest::new("empty_input", "`text` is empty"));
        }
        check_chars("input_too_large", "`text`", &request.text, max_chars)?;
        if request.sources.is_empty() {
            return Err(InvalidRequest::new(
                "no_sources",
                "`sources` is empty: give at least one source to check against",
            ));
        }
        let sources = validate_sources(request.sources, max_chars)?;
        let top_k = request.top_k.unwrap_or(3);
        if top_k == 0 || top_k > MAX_TOP_K {
            return Err(InvalidRequest::new("invalid_top_k", format!("`top_k` must be within 1..={MAX_TOP_K}")));
        }
        let claims = match &request.spans {
            Some(spans) => spans
                .iter()
                .enumerate()
                .map(|(i, span)| {
                    let start = to_byte(&request.text, span.start, request.offsets);
                    let end = to_byte(&request.text, span.end, request.offsets);
                    match (start, end) {
                        (Some(start), Some(end)) if start < end => Ok(start..end),
                        _ => Err(InvalidRequest::new(
                            "invalid_span",
                            format!(
                                "spans[{i}] ({}..{}) is empty, reversed, past the end of `text` or inside a character",
                                span.start, span.end
                            ),
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => claim_ranges(&request.text),
        };
        Ok(Job { text: request.text, sources, claims, unit: request.offsets, options: FactcheckOptions { top_k } })
    }
}

/// Checks sources (at most [`MAX_SOURCES`], unique ids, each text at most `max_chars`
/// characters) and takes them over.
pub fn validate_sources(sources: Vec<SourceInput>, max_chars: usize) -> Result<Vec<Source>, InvalidRequest> {
    if sources.len() > MAX_SOURCES {
        return Err(InvalidRequest::new(
            "too_many_sources",
            format!("{} sources; the limit is {MAX_SOURCES} per request", sources.len()),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for (i, source) in sources.iter().enumerate() {
        if !ids.insert(source.id.as_str()) {
            return Err(InvalidRequest::new(
                "duplicate_source_id",
                format!("sources[{i}].id '{}' is used twice", source.id),
            ));
        }
        check_chars("input_too_large", &format!("sources[{i}].text"), &source.text, max_chars)?;
    }
    Ok(sources.into_iter().map(|s| Source { id: s.id, text: s.text, title: s.title, url: s.url }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_greetings_and_imperatives_are_not_claims() {
        let text = "Hi team, thanks for the notes! The Eiffel Tower is 330 metres tall. Is it in Paris? \
                    Please check the figures. Sea levels rose by 20 cm since 1900.";
        let claims: Vec<&str> = claim_ranges(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(claims, vec!["The Eiffel Tower is 330 metres tall.", "Sea levels rose by 20 cm since 1900."]);
    }

    fn evidence(entail: f32, contra: f32) -> Evidence {
        let scores = [("entailment", entail), ("neutral", 1.0 - entail - contra), ("contradiction", contra)]
            .into_iter()
            .map(|(l, p)| (l.to_string(), p))
            .collect();
        Evidence { source_id: "s".into(), range: 0..1, text: "x".into(), retrieval_score: 1.0, scores }
    }

    #[test]
    fn verdicts_follow_the_strongest_evidence() {
        assert_eq!(decide(&[evidence(0.1, 0.1), evidence(0.8, 0.1)]), (Verdict::Supported, 0.8));
        assert_eq!(decide(&[evidence(0.2, 0.7)]), (Verdict::Refuted, 0.7));
        // A sentence whose most probable label is entailment supports, even under 0.5.
        assert_eq!(decide(&[evidence(0.49, 0.04)]), (Verdict::Supported, 0.49));
        // Support and contradiction in different sentences: the stronger decides.
        assert_eq!(decide(&[evidence(0.6, 0.1), evidence(0.1, 0.8)]), (Verdict::Refuted, 0.8));
        assert_eq!(decide(&[evidence(0.8, 0.1), evidence(0.1, 0.6)]), (Verdict::Supported, 0.8));
        // Neutral is the most probable label of each sentence: not decided.
        let (verdict, confidence) = decide(&[evidence(0.3, 0.2), evidence(0.1, 0.4)]);
        assert_eq!(verdict, Verdict::NotEnoughInfo);
        assert!((confidence - 0.6).abs() < 1e-6);
        assert_eq!(decide(&[]).0, Verdict::NotEnoughInfo);
    }
}
