//! Three-way merge of prose with ranked resolutions.
//!
//! The merge itself is a word-level diff3 ([`crate::text::diff3`]): edits to different words
//! merge cleanly where a line-based merge conflicts. What remains is ranked by a small learned
//! scorer over encoder signals (how similar each side is to the base and to each other) and diff
//! signals (how much each side changed, whether one contains the other). The scorer is trained
//! on real documentation conflicts by `concord train merge`.

use serde::{Deserialize, Serialize};

use crate::runtime::{off_runtime, Engine, EngineError, Input, Want};
use crate::text::diff::TokenDiff;
use crate::text::diff3::{diff3, Region, RegionKind};
use crate::text::offsets::{range_from_bytes, OffsetUnit};
use crate::text::segment::Granularity;

/// Ways to resolve the whole input, as ranked alternatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The clean merge, every conflict resolved with ours.
    MergeOurs,
    /// The clean merge, every conflict resolved with theirs.
    MergeTheirs,
    /// Ours as a whole (theirs' clean changes dropped too).
    Ours,
    /// Theirs as a whole.
    Theirs,
    /// Ours followed by theirs.
    BothOursFirst,
    /// Theirs followed by ours.
    BothTheirsFirst,
    /// Neither change.
    Base,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::MergeOurs,
        Strategy::MergeTheirs,
        Strategy::Ours,
        Strategy::Theirs,
        Strategy::BothOursFirst,
        Strategy::BothTheirsFirst,
        Strategy::Base,
    ];

    /// What this strategy does to a single conflict region.
    fn conflict_side(self) -> ConflictSide {
        match self {
            Strategy::MergeOurs | Strategy::Ours => ConflictSide::Ours,
            Strategy::MergeTheirs | Strategy::Theirs => ConflictSide::Theirs,
            Strategy::BothOursFirst => ConflictSide::BothOursFirst,
            Strategy::BothTheirsFirst => ConflictSide::BothTheirsFirst,
            Strategy::Base => ConflictSide::Base,
        }
    }
}

/// How one conflict region is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictSide {
    Ours,
    Theirs,
    BothOursFirst,
    BothTheirsFirst,
    Base,
}

/// Signals about one (base, ours, theirs) triple, the scorer's input.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Signals {
    pub clean: bool,
    pub conflicts: usize,
    /// Word-level similarity (0..1) of ours to base, theirs to base, ours to theirs.
    pub ours_base_similarity: f32,
    pub theirs_base_similarity: f32,
    pub sides_similarity: f32,
    /// Encoder cosine similarities of the same pairs.
    pub ours_base_cosine: f32,
    pub theirs_base_cosine: f32,
    pub sides_cosine: f32,
    pub ours_contains_theirs: bool,
    pub theirs_contains_ours: bool,
    pub length_log_ratio: f32,
    pub base_empty: bool,
    pub conflict_fraction: f32,
}

pub const FEATURES: usize = 14;

impl Signals {
    pub fn features(&self) -> [f32; FEATURES] {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        [
            flag(self.clean),
            (1.0 + self.conflicts as f32).ln(),
            self.ours_base_similarity,
            self.theirs_base_similarity,
            self.sides_similarity,
            self.ours_base_cosine,
            self.theirs_base_cosine,
            self.sides_cosine,
            flag(self.ours_contains_theirs),
            flag(self.theirs_contains_ours),
            self.length_log_ratio,
            flag(self.base_empty),
            self.conflict_fraction,
            flag(self.ours_base_similarity < self.theirs_base_similarity),
        ]
    }
}

/// One logistic model per strategy over standardised [`Signals::features`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scorer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub weights: Vec<(Strategy, Vec<f32>, f32)>,
}

/// The scorer Concord ships: `models/merge-scorer/scorer.json`, see its model card.
const DEFAULT_SCORER: &str = include_str!("../../models/merge-scorer/scorer.json");

impl Scorer {
    pub fn default_model() -> Self {
        serde_json::from_str(DEFAULT_SCORER).expect("the shipped merge scorer is valid JSON")
    }

    /// Probability that `strategy` gives the resolution a person would commit.
    pub fn score(&self, strategy: Strategy, features: &[f32; FEATURES]) -> f32 {
        let Some((_, w, bias)) = self.weights.iter().find(|(s, _, _)| *s == strategy) else {
            return 0.0;
        };
        let z: f32 =
            features.iter().zip(&self.mean).zip(&self.std).zip(w).map(|(((x, m), s), w)| (x - m) / s * w).sum::<f32>()
                + bias;
        1.0 / (1.0 + (-z).exp())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Suggestion {
    pub text: String,
    pub strategy: ConflictSide,
    pub score: f32,
    pub rationale: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Conflict {
    pub base: String,
    pub ours: String,
    pub theirs: String,
    pub base_range: [usize; 2],
    pub ours_range: [usize; 2],
    pub theirs_range: [usize; 2],
    pub suggestions: Vec<Suggestion>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alternative {
    pub text: String,
    pub strategy: Strategy,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MergeStats {
    pub regions: usize,
    pub ours_changes: usize,
    pub theirs_changes: usize,
    pub identical_changes: usize,
    pub conflicts: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MergeOutcome {
    /// The top alternative: the clean merge when there are no conflicts.
    pub merged: String,
    pub clean: bool,
    /// Which strategy produced `merged`; null when the merge was clean.
    pub resolution: Option<Strategy>,
    pub conflicts: Vec<Conflict>,
    /// Whole-text resolutions, best first, duplicates removed.
    pub alternatives: Vec<Alternative>,
    pub signals: Signals,
    pub stats: MergeStats,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    pub granularity: Granularity,
    pub offsets: OffsetUnit,
    /// Restrict `merged` to the clean merge with conflicts resolved one way (`merge_ours` /
    /// `merge_theirs`), so no side's non-conflicting edits are ever dropped.
    pub keep_clean_changes: bool,
}

fn assemble(regions: &[Region], base: &str, ours: &str, theirs: &str, side: ConflictSide) -> String {
    let mut out = String::with_capacity(ours.len().max(theirs.len()));
    for r in regions {
        match r.kind {
            RegionKind::Unchanged => out.push_str(&base[r.base.clone()]),
            RegionKind::Ours | RegionKind::Both => out.push_str(&ours[r.ours.clone()]),
            RegionKind::Theirs => out.push_str(&theirs[r.theirs.clone()]),
            RegionKind::Conflict => out.push_str(&resolve_side(
                &base[r.base.clone()],
                &ours[r.ours.clone()],
                &theirs[r.theirs.clone()],
                side,
            )),
        }
    }
    out
}

fn resolve_side(base: &str, ours: &str, theirs: &str, side: ConflictSide) -> String {
    match side {
        ConflictSide::Ours => ours.to_string(),
        ConflictSide::Theirs => theirs.to_string(),
        ConflictSide::BothOursFirst => join_both(ours, theirs),
        ConflictSide::BothTheirsFirst => join_both(theirs, ours),
        ConflictSide::Base => base.to_string(),
    }
}

/// Concatenates two versions, with a separator when the first does not end in whitespace.
fn join_both(first: &str, second: &str) -> String {
    if first.is_empty() || first.ends_with(char::is_whitespace) || second.starts_with(char::is_whitespace) {
        format!("{first}{second}")
    } else if first.contains('\n') {
        format!("{first}\n{second}")
    } else {
        format!("{first} {second}")
    }
}

fn word_similarity(a: &str, b: &str) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    TokenDiff::words(similar::Algorithm::Patience, a, b).ratio()
}

/// Whitespace-normalised text, for comparing resolutions as people read them.
pub fn normalize_ws(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Embeds the three versions; empty ones get a zero vector (cosine 0) without a model call.
async fn embed_three(engine: &Engine, texts: [&str; 3]) -> Result<[Vec<f32>; 3], EngineError> {
    let present: Vec<usize> = (0..3).filter(|&i| !texts[i].trim().is_empty()).collect();
    let inputs = present.iter().map(|&i| Input::Text(texts[i].to_string())).collect();
    let encoded = engine.encode(inputs, Want { normalize: true, token_states: false }, true).await?;
    let mut out: [Vec<f32>; 3] = Default::default();
    for (slot, e) in present.into_iter().zip(encoded) {
        out[slot] = e.pooled;
    }
    Ok(out)
}

/// Bytes of unchanged text kept on each side of an edit, so the encoder sees it in context.
const EDIT_CONTEXT_BYTES: usize = 60;

/// The encoder reads at most this much of each edited text (about 128 tokens of prose): enough
/// for the similarity signals, and it bounds a merge's model time whatever the document size.
const SIGNAL_TEXT_BYTES: usize = 600;

/// The edited parts of each version with a little context, joined: what the encoder compares.
/// Encoding only the edits keeps long documents fast and the signal about the edits themselves.
fn edited_text(regions: &[Region], base: &str, ours: &str, theirs: &str) -> (String, String, String) {
    let mut out = (String::new(), String::new(), String::new());
    for (i, region) in regions.iter().enumerate() {
        if region.kind == RegionKind::Unchanged {
            continue;
        }
        let before = i.checked_sub(1).map(|j| &regions[j]).filter(|r| r.kind == RegionKind::Unchanged);
        let after = regions.get(i + 1).filter(|r| r.kind == RegionKind::Unchanged);
        let lead = before.map_or("", |r| tail(&base[r.base.clone()], EDIT_CONTEXT_BYTES));
        let trail = after.map_or("", |r| head(&base[r.base.clone()], EDIT_CONTEXT_BYTES));
        for (target, text) in [
            (&mut out.0, &base[region.base.clone()]),
            (&mut out.1, &ours[region.ours.clone()]),
            (&mut out.2, &theirs[region.theirs.clone()]),
        ] {
            if !target.is_empty() {
                target.push_str(" … ");
            }
            target.push_str(lead);
            target.push_str(text);
            target.push_str(trail);
        }
    }
    out
}

fn head(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Computes the scorer's signals for a triple and its diff3 regions.
pub async fn signals(
    engine: &Engine,
    base: &str,
    ours: &str,
    theirs: &str,
    regions: &[Region],
) -> Result<Signals, EngineError> {
    let (edited_base, edited_ours, edited_theirs) = edited_text(regions, base, ours, theirs);
    let [eb, eo, et] = embed_three(
        engine,
        [
            head(&edited_base, SIGNAL_TEXT_BYTES),
            head(&edited_ours, SIGNAL_TEXT_BYTES),
            head(&edited_theirs, SIGNAL_TEXT_BYTES),
        ],
    )
    .await?;
    let [ours_base_similarity, theirs_base_similarity, sides_similarity] = {
        let (base, ours, theirs) = (base.to_owned(), ours.to_owned(), theirs.to_owned());
        off_runtime(move || {
            [word_similarity(&base, &ours), word_similarity(&base, &theirs), word_similarity(&ours, &theirs)]
        })
        .await?
    };
    let conflicts: Vec<&Region> = regions.iter().filter(|r| r.kind == RegionKind::Conflict).collect();
    let conflict_bytes: usize = conflicts.iter().map(|r| r.ours.len() + r.theirs.len()).sum();
    let (no, nt) = (normalize_ws(ours), normalize_ws(theirs));
    Ok(Signals {
        clean: conflicts.is_empty(),
        conflicts: conflicts.len(),
        ours_base_similarity,
        theirs_base_similarity,
        sides_similarity,
        ours_base_cosine: cosine(&eo, &eb),
        theirs_base_cosine: cosine(&et, &eb),
        sides_cosine: cosine(&eo, &et),
        ours_contains_theirs: !nt.is_empty() && no.contains(&nt),
        theirs_contains_ours: !no.is_empty() && nt.contains(&no),
        length_log_ratio: ((ours.len() as f32 + 1.0) / (theirs.len() as f32 + 1.0)).ln(),
        base_empty: base.trim().is_empty(),
        conflict_fraction: conflict_bytes as f32 / (ours.len() + theirs.len()).max(1) as f32,
    })
}

fn rationale(side: ConflictSide, s: &Signals) -> String {
    let changed = |sim: f32| ((1.0 - sim) * 100.0).round();
    let (o, t) = (changed(s.ours_base_similarity), changed(s.theirs_base_similarity));
    match side {
        ConflictSide::Ours => format!(
            "keep ours: it rewrote {o}% of the base against {t}% for theirs; sides {:.2} similar in meaning",
            s.sides_cosine
        ),
        ConflictSide::Theirs => format!(
            "keep theirs: it rewrote {t}% of the base against {o}% for ours; sides {:.2} similar in meaning",
            s.sides_cosine
        ),
        ConflictSide::BothOursFirst | ConflictSide::BothTheirsFirst => format!(
            "keep both: the sides are {:.2} similar in meaning, so each may add something the other lacks",
            s.sides_cosine
        ),
        ConflictSide::Base => "keep the base: drop both edits".to_string(),
    }
}

/// The whole-text resolution each strategy gives, in [`Strategy::ALL`] order.
pub fn candidates(regions: &[Region], base: &str, ours: &str, theirs: &str) -> Vec<(Strategy, String)> {
    Strategy::ALL
        .iter()
        .map(|&strategy| {
            let text = match strategy {
                Strategy::MergeOurs | Strategy::MergeTheirs => {
                    assemble(regions, base, ours, theirs, strategy.conflict_side())
                }
                Strategy::Ours => ours.to_string(),
                Strategy::Theirs => theirs.to_string(),
                Strategy::BothOursFirst => join_both(ours, theirs),
                Strategy::BothTheirsFirst => join_both(theirs, ours),
                Strategy::Base => base.to_string(),
            };
            (strategy, text)
        })
        .collect()
}

/// Merges `ours` and `theirs` against `base` and ranks resolutions of what conflicts.
pub async fn merge(
    engine: &Engine,
    scorer: &Scorer,
    base: &str,
    ours: &str,
    theirs: &str,
    options: MergeOptions,
) -> Result<MergeOutcome, EngineError> {
    let regions = {
        let (base, ours, theirs) = (base.to_owned(), ours.to_owned(), theirs.to_owned());
        off_runtime(move || diff3(&base, &ours, &theirs, options.granularity)).await?
    };
    let signals = signals(engine, base, ours, theirs, &regions).await?;
    let features = signals.features();
    let count = |kind| regions.iter().filter(|r| r.kind == kind).count();
    let stats = MergeStats {
        regions: regions.len(),
        ours_changes: count(RegionKind::Ours),
        theirs_changes: count(RegionKind::Theirs),
        identical_changes: count(RegionKind::Both),
        conflicts: count(RegionKind::Conflict),
    };

    // Every strategy's text and score, computed once; everything below is derived from it.
    let scored: Vec<(Strategy, String, f32)> = candidates(&regions, base, ours, theirs)
        .into_iter()
        .map(|(strategy, text)| {
            let score = scorer.score(strategy, &features);
            (strategy, text, score)
        })
        .collect();
    let best_of = |keep: fn(Strategy) -> bool| {
        scored.iter().filter(|(s, _, _)| keep(*s)).max_by(|a, b| a.2.total_cmp(&b.2)).expect("every strategy is scored")
    };

    let mut alternatives: Vec<Alternative> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for (strategy, text, score) in &scored {
        let key = normalize_ws(text);
        match keys.iter().position(|k| *k == key) {
            // Two strategies giving the same text: one alternative, with the stronger score.
            Some(i) if *score > alternatives[i].score => {
                alternatives[i].score = *score;
                alternatives[i].strategy = *strategy;
            }
            Some(_) => {}
            None => {
                keys.push(key);
                alternatives.push(Alternative { text: text.clone(), strategy: *strategy, score: *score });
            }
        }
    }
    alternatives.sort_by(|a, b| b.score.total_cmp(&a.score));

    let clean = stats.conflicts == 0;
    let (merged, resolution) = if clean {
        // Without conflicts both merge strategies give the clean merge.
        (best_of(|s| s == Strategy::MergeOurs).1.clone(), None)
    } else if options.keep_clean_changes {
        let (strategy, text, _) = best_of(|s| matches!(s, Strategy::MergeOurs | Strategy::MergeTheirs));
        (text.clone(), Some(*strategy))
    } else {
        (alternatives[0].text.clone(), Some(alternatives[0].strategy))
    };

    // Per conflict, each side scored by the best strategy that resolves conflicts that way.
    let mut side_scores: Vec<(ConflictSide, f32)> = Vec::new();
    for (strategy, _, score) in &scored {
        let side = strategy.conflict_side();
        match side_scores.iter_mut().find(|(s, _)| *s == side) {
            Some(entry) => entry.1 = entry.1.max(*score),
            None => side_scores.push((side, *score)),
        }
    }
    side_scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    let unit = options.offsets;
    let conflicts = regions
        .iter()
        .filter(|r| r.kind == RegionKind::Conflict)
        .map(|r| {
            let (b, o, t) = (&base[r.base.clone()], &ours[r.ours.clone()], &theirs[r.theirs.clone()]);
            Conflict {
                base: b.to_string(),
                ours: o.to_string(),
                theirs: t.to_string(),
                base_range: range_from_bytes(base, r.base.clone(), unit),
                ours_range: range_from_bytes(ours, r.ours.clone(), unit),
                theirs_range: range_from_bytes(theirs, r.theirs.clone(), unit),
                suggestions: side_scores
                    .iter()
                    .map(|&(side, score)| Suggestion {
                        text: resolve_side(b, o, t, side),
                        strategy: side,
                        score,
                        rationale: rationale(side, &signals),
                    })
                    .collect(),
            }
        })
        .collect();

    Ok(MergeOutcome { merged, clean, resolution, conflicts, alternatives, signals, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_both_separates_sentences() {
        assert_eq!(join_both("One.", "Two."), "One. Two.");
        assert_eq!(join_both("One.\n", "Two.\n"), "One.\nTwo.\n");
    }

    #[test]
    fn assemble_applies_clean_changes_from_both_sides() {
        let (b, o, t) = ("a b c d", "a B c d", "a b c D");
        let regions = diff3(b, o, t, Granularity::Word);
        assert_eq!(assemble(&regions, b, o, t, ConflictSide::Ours), "a B c D");
    }
}
