//! Natural language inference: does a premise entail, contradict or say nothing about a
//! hypothesis? Concord's own model has two parts. A cross-encoder: the pair is encoded together
//! by the shared encoder with fine-tuned top layers, and a 3-way head reads the mean-pooled
//! states. And a pair head: a softmax regression over the frozen sentence encoder's embeddings
//! of premise and hypothesis and a few word-overlap features. The cross-encoder is the stronger
//! part on short pairs and fact-check evidence; the pair head generalises better to long news
//! premises (RTE). Their log-probabilities are mixed with a weight chosen on dev, one for NLI
//! pairs and one for the fact-check pipeline's (evidence, claim) pairs ([`Purpose`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use crate::model::classifier::SequenceClassifier;
use crate::model::heads::{load_head, softmax, DenseHead};
use crate::model::EmbeddingModel;
use crate::runtime::{Engine, EngineConfig, EngineError, Input, Want};
use crate::tasks::embed::{embed, shared_encoder};

/// The labels, in the order of the head's outputs.
pub const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// Where the default NLI model lives: the folder committed with the source.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/nli");

pub const CONFIG_FILE: &str = "nli.json";

/// `nli.json`: what an NLI model folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NliConfig {
    /// The encoder the fine-tuned layers ride on (folder or hub id).
    pub base_model: String,
    /// Safetensors file, relative to the folder: fine-tuned layers and the head `heads.nli`.
    pub weights: String,
    pub labels: Vec<String>,
    /// The pair head mixed with the cross-encoder; without one the cross-encoder decides alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_head: Option<PairHeadConfig>,
}

/// `nli.json`'s pair head: a softmax regression over [`pair_head_input`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairHeadConfig {
    /// Safetensors file holding `heads.pair`, relative to the folder.
    pub weights: String,
    /// The frozen sentence encoder whose embeddings the head reads (folder or hub id).
    pub encoder: String,
    /// Weight of the cross-encoder's log-probabilities in the mix; the pair head's is 1 − this.
    pub cross_encoder_weight: f32,
    /// The weight for the fact-check pipeline's (evidence, claim) pairs, chosen on fact-check dev
    /// data; without it, `cross_encoder_weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factcheck_cross_encoder_weight: Option<f32>,
}

/// What the pairs being classified are, which picks the mix weight: titled Wikipedia-style
/// evidence against a claim is a different distribution from general NLI pairs, and the pair
/// head helps one and not the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Nli,
    FactCheck,
}

/// Number of word-overlap features the pair head reads after the embeddings.
pub const LEXICAL_FEATURES: usize = 6;

/// Inputs of the pair head for a sentence encoder of `dimensions`.
pub fn pair_head_inputs(dimensions: usize) -> usize {
    4 * dimensions + LEXICAL_FEATURES
}

/// The pair head's input: `[u, v, |u − v|, u ⊙ v]` for the premise and hypothesis embeddings
/// `u`, `v` (the classic sentence-pair features), then [`lexical_features`].
pub fn pair_head_input(premise: &str, hypothesis: &str, u: &[f32], v: &[f32]) -> Vec<f32> {
    let mut input = Vec::with_capacity(pair_head_inputs(u.len()));
    input.extend_from_slice(u);
    input.extend_from_slice(v);
    input.extend(u.iter().zip(v).map(|(a, b)| (a - b).abs()));
    input.extend(u.iter().zip(v).map(|(a, b)| a * b));
    input.extend(lexical_features(premise, hypothesis));
    input
}

/// Function words left out of the overlap counts.
const STOPWORDS: [&str; 46] = [
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "with", "and", "or", "is", "are", "was", "were", "be",
    "been", "being", "it", "its", "this", "that", "these", "those", "as", "from", "has", "have", "had", "he", "she",
    "they", "his", "her", "their", "i", "you", "we", "there", "which", "who", "will", "would", "can",
];
/// Negation words; contractions ("wasn't") are caught by their ending.
const NEGATIONS: [&str; 11] =
    ["not", "no", "never", "nobody", "nothing", "none", "neither", "nor", "cannot", "without", "nowhere"];

/// Word overlap between premise and hypothesis, which sentence embeddings blur: the share of
/// the hypothesis's content words found in the premise, the Jaccard overlap of both sides'
/// content words, whether exactly one side is negated, whether the hypothesis has a number the
/// premise lacks, and the log word count of each side.
pub fn lexical_features(premise: &str, hypothesis: &str) -> [f32; LEXICAL_FEATURES] {
    // Typographic apostrophes (common in web text) read as plain ones, so "wasn’t" is negated.
    let words =
        |text: &str| -> Vec<String> { text.unicode_words().map(|w| w.to_lowercase().replace('’', "'")).collect() };
    let (premise_words, hypothesis_words) = (words(premise), words(hypothesis));
    let premise_set: HashSet<&str> = premise_words.iter().map(String::as_str).collect();
    fn content(words: &[String]) -> HashSet<&str> {
        words.iter().map(String::as_str).filter(|w| !STOPWORDS.contains(w)).collect()
    }
    let (premise_content, hypothesis_content) = (content(&premise_words), content(&hypothesis_words));
    let covered = hypothesis_content.iter().filter(|w| premise_set.contains(*w)).count();
    let coverage = covered as f32 / hypothesis_content.len().max(1) as f32;
    let shared = premise_content.intersection(&hypothesis_content).count();
    let union = premise_content.union(&hypothesis_content).count();
    let jaccard = shared as f32 / union.max(1) as f32;
    let negated = |words: &[String]| words.iter().any(|w| NEGATIONS.contains(&w.as_str()) || w.ends_with("n't"));
    let negation_mismatch = negated(&premise_words) != negated(&hypothesis_words);
    let new_number =
        hypothesis_content.iter().any(|w| w.bytes().any(|b| b.is_ascii_digit()) && !premise_set.contains(w));
    let log_len = |words: &[String]| (words.len() as f32).ln_1p();
    [
        coverage,
        jaccard,
        f32::from(u8::from(negation_mismatch)),
        f32::from(u8::from(new_number)),
        log_len(&premise_words),
        log_len(&hypothesis_words),
    ]
}

/// Mixes two probability vectors in log space, `cross_encoder_weight` on the first, and
/// renormalises. Probabilities are floored at 1e-6 so one confident zero cannot veto.
pub fn mix(cross_encoder: [f32; 3], pair: [f32; 3], cross_encoder_weight: f32) -> [f32; 3] {
    let w = cross_encoder_weight;
    let logits: Vec<f32> =
        cross_encoder.iter().zip(&pair).map(|(c, p)| w * c.max(1e-6).ln() + (1.0 - w) * p.max(1e-6).ln()).collect();
    let p = softmax(&logits);
    [p[0], p[1], p[2]]
}

/// One pair to classify. `title` names where the premise comes from (a source's or a Wikipedia
/// article's title): the cross-encoder reads it before the premise, so pronouns in the premise
/// get a referent ("It was completed in 1889"); the pair head reads the premise alone, since
/// title words would only blur its overlap features and embeddings.
#[derive(Debug, Clone)]
pub struct NliPair {
    pub premise: String,
    pub hypothesis: String,
    pub title: Option<String>,
}

impl NliPair {
    pub fn new(premise: String, hypothesis: String) -> Self {
        Self { premise, hypothesis, title: None }
    }

    /// The premise as the cross-encoder reads it (see [`titled_premise`]).
    pub fn titled_premise(&self) -> String {
        titled_premise(self.title.as_deref(), &self.premise)
    }
}

/// A premise as the cross-encoder reads it: "Title. Premise" when there is a title.
pub fn titled_premise(title: Option<&str>, premise: &str) -> String {
    match title {
        Some(title) if !title.trim().is_empty() => format!("{title}. {premise}"),
        _ => premise.to_string(),
    }
}

/// One pair's verdict.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NliResult {
    pub label: String,
    /// Probability of each label; they sum to 1.
    pub scores: BTreeMap<String, f32>,
}

impl NliResult {
    /// Probabilities in [`LABELS`] order.
    pub fn probabilities(&self) -> [f32; 3] {
        LABELS.map(|l| self.scores.get(l).copied().unwrap_or(0.0))
    }
}

/// How pooled or first-token states become label probabilities.
enum Head {
    /// Concord's own: a 3-way softmax over the mean-pooled states.
    Concord(DenseHead),
    /// A Hugging Face sequence-classification head; `order[i]` is the [`LABELS`] index of its
    /// output `i`.
    Hub { classifier: SequenceClassifier, order: Vec<usize> },
}

/// A loaded pair head with the sentence encoder it reads.
struct PairHead {
    head: DenseHead,
    encoder: Engine,
    cross_encoder_weight: f32,
    factcheck_cross_encoder_weight: f32,
}

/// A loaded NLI model, ready to classify pairs.
pub struct NliModel {
    engine: Engine,
    head: Head,
    pair: Option<PairHead>,
    id: String,
}

impl NliModel {
    /// Loads `spec`: a Concord NLI folder (with `nli.json`; its pair head's sentence encoder
    /// runs on one of `running` when one of them is that model), or any Hugging Face NLI
    /// cross-encoder (folder or hub id) of the supported encoders, its labels read from
    /// `id2label`.
    pub fn load(spec: &str, running: &[Engine], device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let dir = Path::new(spec);
        if dir.join(CONFIG_FILE).is_file() {
            return Self::load_concord(dir, running, device, dtype, engine);
        }
        let model = EmbeddingModel::load(spec, device, dtype).with_context(|| format!("loading NLI model '{spec}'"))?;
        let classifier = SequenceClassifier::load(&model.info.path)?;
        let order = classifier
            .labels
            .iter()
            .map(|label| {
                LABELS
                    .iter()
                    .position(|l| l.eq_ignore_ascii_case(label))
                    .with_context(|| format!("'{spec}' has label '{label}'; an NLI model needs {LABELS:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(order.contains(&0), "'{spec}' has no entailment label");
        Ok(Self {
            engine: Engine::start(model, engine)?,
            head: Head::Hub { classifier, order },
            pair: None,
            id: spec.to_string(),
        })
    }

    fn load_concord(
        dir: &Path,
        running: &[Engine],
        device: &Device,
        dtype: DType,
        engine: EngineConfig,
    ) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: NliConfig = serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(config.labels == LABELS, "{} must list the labels {LABELS:?}", path.display());
        let weights = dir.join(&config.weights);
        let model =
            EmbeddingModel::load_with_overrides(&config.base_model, std::slice::from_ref(&weights), device, dtype)
                .with_context(|| format!("loading the NLI encoder ({} + {})", config.base_model, weights.display()))?;
        let head = load_head(&weights, "heads.nli", LABELS.len(), model.info.dimensions)?;
        let pair = match &config.pair_head {
            Some(pair) => Some(PairHead::load(dir, pair, running, device, dtype, engine.clone())?),
            None => None,
        };
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            engine: Engine::start(model, engine)?,
            head: Head::Concord(head),
            pair,
            id: format!("concord/{name}"),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The sentence encoder of the pair head, if the model has one: callers that already hold
    /// its embeddings of premises and hypotheses pass them to [`Self::classify_embedded`].
    pub fn pair_encoder(&self) -> Option<&Engine> {
        self.pair.as_ref().map(|p| &p.encoder)
    }

    /// Classifies `(premise, hypothesis)` pairs; over-long pairs are cut (longest side first).
    pub async fn classify(&self, pairs: Vec<NliPair>, purpose: Purpose) -> Result<Vec<NliResult>, EngineError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let cross = self.cross_encoder_probabilities(&pairs);
        let (cross, vectors) = match &self.pair {
            Some(pair) => {
                let (cross, vectors) = futures::try_join!(cross, embed_pairs(&pair.encoder, &pairs))?;
                (cross, Some(vectors))
            }
            None => (cross.await?, None),
        };
        Ok(self.finish(&pairs, cross, vectors.as_deref(), purpose))
    }

    /// [`Self::classify`] with the pair encoder's (normalised) embeddings of each pair's
    /// premise and hypothesis already at hand.
    pub async fn classify_embedded(
        &self,
        pairs: Vec<NliPair>,
        vectors: &[(Vec<f32>, Vec<f32>)],
        purpose: Purpose,
    ) -> Result<Vec<NliResult>, EngineError> {
        if vectors.len() != pairs.len() {
            return Err(EngineError::Model(format!("{} embeddings for {} pairs", vectors.len(), pairs.len())));
        }
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let cross = self.cross_encoder_probabilities(&pairs).await?;
        Ok(self.finish(&pairs, cross, Some(vectors), purpose))
    }

    fn finish(
        &self,
        pairs: &[NliPair],
        cross: Vec<[f32; 3]>,
        vectors: Option<&[(Vec<f32>, Vec<f32>)]>,
        purpose: Purpose,
    ) -> Vec<NliResult> {
        let mixed: Vec<[f32; 3]> = match (&self.pair, vectors) {
            (Some(pair), Some(vectors)) => {
                let weight = match purpose {
                    Purpose::Nli => pair.cross_encoder_weight,
                    Purpose::FactCheck => pair.factcheck_cross_encoder_weight,
                };
                cross
                    .iter()
                    .zip(pairs.iter().zip(vectors))
                    .map(|(&c, (nli_pair, (u, v)))| {
                        let input = pair_head_input(&nli_pair.premise, &nli_pair.hypothesis, u, v);
                        let p = softmax(&pair.head.apply(&input));
                        mix(c, [p[0], p[1], p[2]], weight)
                    })
                    .collect()
            }
            _ => cross,
        };
        mixed
            .into_iter()
            .map(|probs| {
                let best = (0..3).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap_or(0);
                NliResult {
                    label: LABELS[best].to_string(),
                    scores: LABELS.iter().zip(probs).map(|(l, p)| (l.to_string(), p)).collect(),
                }
            })
            .collect()
    }

    /// The cross-encoder's probabilities alone, in [`LABELS`] order.
    pub async fn cross_encoder_probabilities(&self, pairs: &[NliPair]) -> Result<Vec<[f32; 3]>, EngineError> {
        let inputs = pairs.iter().map(|pair| Input::Pair(pair.titled_premise(), pair.hypothesis.clone())).collect();
        let want = Want { normalize: false, token_states: matches!(self.head, Head::Hub { .. }) };
        let encoded = self.engine.encode(inputs, want, true).await?;
        Ok(encoded
            .iter()
            .map(|item| match &self.head {
                Head::Concord(head) => {
                    let p = softmax(&head.apply(&item.pooled));
                    [p[0], p[1], p[2]]
                }
                Head::Hub { classifier, order } => {
                    let first = item.token_states.as_ref().and_then(|s| s.first()).map_or(&[][..], Vec::as_slice);
                    let mut p = [0f32; 3];
                    for (&index, prob) in order.iter().zip(classifier.probabilities(first)) {
                        p[index] = prob;
                    }
                    p
                }
            })
            .collect())
    }
}

impl PairHead {
    fn load(
        dir: &Path,
        config: &PairHeadConfig,
        running: &[Engine],
        device: &Device,
        dtype: DType,
        engine: EngineConfig,
    ) -> Result<Self> {
        let factcheck_cross_encoder_weight =
            config.factcheck_cross_encoder_weight.unwrap_or(config.cross_encoder_weight);
        for (name, weight) in [
            ("cross_encoder_weight", config.cross_encoder_weight),
            ("factcheck_cross_encoder_weight", factcheck_cross_encoder_weight),
        ] {
            ensure!((0.0..=1.0).contains(&weight), "the pair head's {name} must be within 0..=1");
        }
        let encoder = shared_encoder(running, &config.encoder, device, dtype, engine)?;
        let weights = dir.join(&config.weights);
        let head = load_head(&weights, "heads.pair", LABELS.len(), pair_head_inputs(encoder.info().dimensions))?;
        Ok(Self { head, encoder, cross_encoder_weight: config.cross_encoder_weight, factcheck_cross_encoder_weight })
    }
}

/// Embeds each pair's premise and hypothesis with `encoder` (normalised), every distinct text
/// once.
pub async fn embed_pairs(encoder: &Engine, pairs: &[NliPair]) -> Result<Vec<(Vec<f32>, Vec<f32>)>, EngineError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut texts = Vec::new();
    let mut slots = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let mut slot = [0; 2];
        for (side, text) in [pair.premise.as_str(), pair.hypothesis.as_str()].into_iter().enumerate() {
            slot[side] = *index.entry(text).or_insert_with(|| {
                texts.push(text.to_string());
                texts.len() - 1
            });
        }
        slots.push((slot[0], slot[1]));
    }
    let vectors = embed(encoder, texts, true).await?.vectors;
    Ok(slots.into_iter().map(|(p, h)| (vectors[p].clone(), vectors[h].clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_features_measure_overlap_negation_and_numbers() {
        let [coverage, jaccard, negation, number, premise_len, hypothesis_len] =
            lexical_features("The tower was completed in 1889 in Paris.", "The tower wasn’t completed in 1890.");
        // Content words of the hypothesis: tower, wasn't, completed, 1890; two are in the premise.
        // The typographic apostrophe still marks a negation.
        assert!((coverage - 0.5).abs() < 1e-6, "{coverage}");
        // Premise: tower, completed, 1889, paris; union with the hypothesis has six words.
        assert!((jaccard - 2.0 / 6.0).abs() < 1e-6, "{jaccard}");
        assert_eq!((negation, number), (1.0, 1.0));
        assert!((premise_len - 8f32.ln_1p()).abs() < 1e-6 && (hypothesis_len - 6f32.ln_1p()).abs() < 1e-6);
        let same = lexical_features("No dogs run.", "No dogs run.");
        assert_eq!(same[..4], [1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn only_the_cross_encoder_premise_carries_the_title() {
        let mut pair = NliPair::new("It was completed in 1889.".into(), "The tower opened in 1889.".into());
        assert_eq!(pair.titled_premise(), "It was completed in 1889.");
        pair.title = Some(" ".into());
        assert_eq!(pair.titled_premise(), "It was completed in 1889.", "a blank title adds nothing");
        pair.title = Some("Eiffel Tower".into());
        assert_eq!(pair.titled_premise(), "Eiffel Tower. It was completed in 1889.");
        assert_eq!(pair.premise, "It was completed in 1889.");
    }

    #[test]
    fn mix_weights_the_two_models_in_log_space() {
        let (cross, pair) = ([0.7, 0.2, 0.1], [0.1, 0.3, 0.6]);
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(mix(cross, pair, 1.0), cross) && close(mix(cross, pair, 0.0), pair));
        let half = mix(cross, pair, 0.5);
        let geometric: Vec<f32> = cross.iter().zip(&pair).map(|(c, p)| (c * p).sqrt()).collect();
        let total: f32 = geometric.iter().sum();
        assert!(close(half, [geometric[0] / total, geometric[1] / total, geometric[2] / total]), "{half:?}");
        // A zero from one model is floored, not a veto.
        assert!(mix([0.0, 0.5, 0.5], [1.0, 0.0, 0.0], 0.5)[0] > 0.0);
    }
}
