//! Moderation: per-category scores for a text and the character spans that make it offensive.
//! Hugging Face sequence-classification checkpoints can replace the default model (scores only).
//!
//! The model is the shared encoder with its top layers fine-tuned (loaded as overrides of the
//! base weights) plus two heads: a sentence head with one sigmoid per category over the
//! mean-pooled states, and a token head whose positive tokens become spans. Long texts are cut
//! into windows at sentence boundaries; a text's category score is its highest window's.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::model::classifier::SequenceClassifier;
use crate::model::heads::{load_heads, sigmoid, DenseHead};
use crate::model::EmbeddingModel;
use crate::runtime::{Engine, EngineConfig, EngineError, Input, Want};
use crate::text::offsets::{self, OffsetUnit};
use crate::text::segment;

/// Where the default moderation model lives: the folder committed with the source.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/moderation");

/// The model folder's description file.
pub const CONFIG_FILE: &str = "moderation.json";

/// Longest window, in bytes, scored in one pass; about 130 tokens of English, the length the
/// default model was trained on.
pub const WINDOW_BYTES: usize = 512;

/// `moderation.json`: what a moderation model folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModerationConfig {
    /// The encoder the fine-tuned layers ride on (folder or hub id).
    pub base_model: String,
    /// Safetensors file, relative to the folder: fine-tuned layers (base names) and the heads
    /// `heads.sentence` (one row per category) and `heads.token` (one row).
    pub weights: String,
    pub categories: Vec<String>,
    /// Default decision threshold per category, calibrated on dev data.
    pub thresholds: BTreeMap<String, f32>,
    /// Token probability from which a token belongs to an offending span.
    pub span_threshold: f32,
}

/// A loaded moderation model, ready to score texts.
pub struct Moderator {
    engine: Engine,
    config: ModerationConfig,
    heads: Heads,
    id: String,
}

/// Where category scores and spans come from.
enum Heads {
    /// Concord's own: one sigmoid per category over the mean-pooled states, and a token head.
    Concord { sentence: DenseHead, token: DenseHead },
    /// A Hugging Face sequence-classification checkpoint (e.g. a toxic-bert style multi-label
    /// model): its labels are the categories, scored from the first token; no spans.
    Hub(SequenceClassifier),
}

/// A span of the input, as a byte range, with the highest token probability inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSpan {
    pub range: Range<usize>,
    pub score: f32,
}

/// One text's result as the API and the CLI report it, offsets in the caller's unit.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModerationResult {
    pub flagged: bool,
    pub categories: BTreeMap<String, bool>,
    pub category_scores: BTreeMap<String, f32>,
    pub spans: Vec<SpanResult>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SpanResult {
    pub start: usize,
    pub end: usize,
    /// The highest token probability inside the span.
    pub score: f32,
    pub text: String,
}

/// One text's moderation result; span ranges are byte offsets into the text.
#[derive(Debug, Clone)]
pub struct Moderation {
    pub flagged: bool,
    pub categories: BTreeMap<String, bool>,
    pub category_scores: BTreeMap<String, f32>,
    pub spans: Vec<ScoredSpan>,
}

impl Moderation {
    /// The result for `text` with span offsets in `unit`.
    pub fn report(self, text: &str, unit: OffsetUnit) -> ModerationResult {
        ModerationResult {
            flagged: self.flagged,
            categories: self.categories,
            category_scores: self.category_scores,
            spans: self
                .spans
                .into_iter()
                .map(|span| {
                    let [start, end] = offsets::range_from_bytes(text, span.range.clone(), unit);
                    SpanResult { start, end, score: span.score, text: text[span.range].to_string() }
                })
                .collect(),
        }
    }
}

impl ModerationConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
        for category in &config.categories {
            ensure!(
                config.thresholds.contains_key(category),
                "{} has no threshold for category '{category}'",
                path.display()
            );
        }
        Ok(config)
    }
}

impl Moderator {
    /// Loads `spec`: a Concord moderation folder (with `moderation.json`), or any Hugging Face
    /// sequence-classification checkpoint of the supported encoders (folder or hub id), whose
    /// `id2label` names become the categories (sigmoid per label when its `problem_type` is
    /// multi-label, else softmax; threshold 0.5; no spans).
    pub fn load(spec: &str, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let dir = Path::new(spec);
        if !dir.join(CONFIG_FILE).is_file() {
            let model = EmbeddingModel::load(spec, device, dtype)
                .with_context(|| format!("loading moderation model '{spec}'"))?;
            let classifier = SequenceClassifier::load(&model.info.path)?;
            let config = ModerationConfig {
                base_model: spec.to_string(),
                weights: String::new(),
                categories: classifier.labels.clone(),
                thresholds: classifier.labels.iter().map(|l| (l.clone(), 0.5)).collect(),
                span_threshold: 1.0,
            };
            let engine = Engine::start(model, engine)?;
            return Ok(Self { engine, config, heads: Heads::Hub(classifier), id: spec.to_string() });
        }
        let config = ModerationConfig::read(dir)?;
        let weights: PathBuf = dir.join(&config.weights);
        let model = EmbeddingModel::load_with_overrides(&config.base_model, &[weights.clone()], device, dtype)
            .with_context(|| {
                format!("loading the moderation encoder ({} + {})", config.base_model, weights.display())
            })?;
        let hidden = model.info.dimensions;
        let mut heads = load_heads(&weights, &["heads.sentence", "heads.token"])?.into_iter();
        let (Some(sentence), Some(token)) = (heads.next(), heads.next()) else {
            anyhow::bail!("{} lacks its heads", weights.display());
        };
        ensure!(
            sentence.outputs() == config.categories.len() && sentence.inputs() == hidden,
            "heads.sentence is {}×{}, expected {}×{hidden}",
            sentence.outputs(),
            sentence.inputs(),
            config.categories.len()
        );
        ensure!(token.outputs() == 1 && token.inputs() == hidden, "heads.token must be 1×{hidden}");
        let id = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let engine = Engine::start(model, engine)?;
        Ok(Self { engine, config, heads: Heads::Concord { sentence, token }, id: format!("concord/{id}") })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &ModerationConfig {
        &self.config
    }

    /// Scores `texts`. `thresholds` overrides the model's per-category defaults.
    pub async fn moderate(
        &self,
        texts: &[String],
        thresholds: &BTreeMap<String, f32>,
    ) -> Result<Vec<Moderation>, EngineError> {
        let mut windows = Vec::new();
        let mut inputs = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            for range in segment::chunks(text, WINDOW_BYTES) {
                inputs.push(Input::Text(text[range.clone()].to_string()));
                windows.push((index, range));
            }
        }
        let want = Want { normalize: false, token_states: true };
        let encoded = self.engine.encode(inputs, want, true).await?;
        let categories = &self.config.categories;
        let mut scores = vec![vec![0f32; categories.len()]; texts.len()];
        let mut spans: Vec<Vec<ScoredSpan>> = vec![Vec::new(); texts.len()];
        for ((index, range), item) in windows.into_iter().zip(encoded) {
            let states = item.token_states.unwrap_or_default();
            let (window_scores, token_head) = match &self.heads {
                Heads::Concord { sentence, token } => {
                    (sentence.apply(&item.pooled).into_iter().map(sigmoid).collect::<Vec<_>>(), token)
                }
                Heads::Hub(classifier) => {
                    let first = states.first().map_or(&[][..], Vec::as_slice);
                    for (best, p) in scores[index].iter_mut().zip(classifier.probabilities(first)) {
                        *best = best.max(p);
                    }
                    continue;
                }
            };
            for (best, p) in scores[index].iter_mut().zip(window_scores) {
                *best = best.max(p);
            }
            let probs: Vec<f32> = states.iter().map(|s| sigmoid(token_head.apply(s)[0])).collect();
            let window = &texts[index][range.clone()];
            for span in spans_from_token_probs(window, &item.tokens.offsets, &probs, self.config.span_threshold) {
                let shifted = span.range.start + range.start..span.range.end + range.start;
                spans[index].push(ScoredSpan { range: shifted, score: span.score });
            }
        }
        Ok(scores
            .into_iter()
            .zip(spans)
            .map(|(scores, spans)| {
                let mut flags = BTreeMap::new();
                let mut category_scores = BTreeMap::new();
                for (name, score) in categories.iter().zip(scores) {
                    let threshold =
                        thresholds.get(name).or_else(|| self.config.thresholds.get(name)).copied().unwrap_or(0.5);
                    flags.insert(name.clone(), score >= threshold);
                    category_scores.insert(name.clone(), score);
                }
                Moderation {
                    flagged: flags.values().any(|&f| f),
                    categories: flags,
                    category_scores,
                    spans: merge_touching(spans),
                }
            })
            .collect())
    }
}

/// Turns per-token probabilities into spans of `text`: runs of consecutive tokens at or above
/// `threshold` (the gaps between them included), widened to whole words, since annotators mark
/// words and the tokenizer cuts them into pieces. Special tokens (`(0, 0)` offsets) end a run.
pub fn spans_from_token_probs(
    text: &str,
    offsets: &[(usize, usize)],
    probs: &[f32],
    threshold: f32,
) -> Vec<ScoredSpan> {
    let mut spans = Vec::new();
    let mut current: Option<ScoredSpan> = None;
    for (&(start, end), &p) in offsets.iter().zip(probs) {
        let special = end <= start;
        if !special && p >= threshold {
            match current.as_mut() {
                Some(span) => {
                    span.range.end = end;
                    span.score = span.score.max(p);
                }
                None => current = Some(ScoredSpan { range: start..end, score: p }),
            }
        } else if let Some(span) = current.take() {
            spans.push(span);
        }
    }
    spans.extend(current);
    let widened = spans
        .into_iter()
        .filter(|s| s.range.end <= text.len())
        .map(|s| ScoredSpan { range: widen_to_words(text, s.range), score: s.score })
        .collect();
    merge_touching(widened)
}

fn widen_to_words(text: &str, range: Range<usize>) -> Range<usize> {
    let is_word = |c: char| c.is_alphanumeric() || c == '\'';
    let start = text[..range.start]
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_word(c))
        .last()
        .map_or(range.start, |(i, _)| i);
    let end = range.end
        + text[range.end..].char_indices().find(|&(_, c)| !is_word(c)).map_or(text.len() - range.end, |(i, _)| i);
    start..end
}

/// Sorts spans and joins those that overlap or touch.
fn merge_touching(mut spans: Vec<ScoredSpan>) -> Vec<ScoredSpan> {
    spans.sort_by_key(|s| s.range.start);
    let mut out: Vec<ScoredSpan> = Vec::new();
    for span in spans {
        match out.last_mut() {
            Some(last) if span.range.start <= last.range.end => {
                last.range.end = last.range.end.max(span.range.end);
                last.score = last.score.max(span.score);
            }
            _ => out.push(span),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_tokens_form_one_span_widened_to_words() {
        let text = "you are a complete idiot, friend";
        // Tokens: you, are, a, complete, id, ##iot, ",", friend; [CLS]/[SEP] as (0,0).
        let offsets = [(0, 0), (0, 3), (4, 7), (8, 9), (10, 18), (19, 21), (21, 24), (24, 25), (26, 32), (0, 0)];
        let probs = [0.9, 0.1, 0.1, 0.2, 0.7, 0.9, 0.3, 0.1, 0.1, 0.9];
        let spans = spans_from_token_probs(text, &offsets, &probs, 0.5);
        assert_eq!(spans.len(), 1);
        assert_eq!(&text[spans[0].range.clone()], "complete idiot");
        assert_eq!(spans[0].score, 0.9);
    }

    #[test]
    fn separate_runs_stay_separate_and_nothing_above_threshold_gives_no_span() {
        let text = "bad words and bad words";
        let offsets = [(0, 3), (4, 9), (10, 13), (14, 17), (18, 23)];
        let spans = spans_from_token_probs(text, &offsets, &[0.8, 0.1, 0.1, 0.8, 0.1], 0.5);
        assert_eq!(spans.iter().map(|s| &text[s.range.clone()]).collect::<Vec<_>>(), vec!["bad", "bad"]);
        assert!(spans_from_token_probs(text, &offsets, &[0.1; 5], 0.5).is_empty());
    }

    #[test]
    fn widening_respects_multibyte_text() {
        let text = "só idiotas 😀 aqui";
        let start = text.find("idi").unwrap_or(0);
        let range = widen_to_words(text, start + 1..start + 3);
        assert_eq!(&text[range], "idiotas");
    }
}
