//! Batch evaluation on labelled JSONL files.

pub mod intent;
pub mod merge;
pub mod moderation;
pub mod nli;

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// Reads a JSONL file into rows, naming the line of the first row that does not parse.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    raw.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a valid row", path.display(), i + 1))
        })
        .collect()
}

/// Character-level similarity in 0..1 (1: identical), on whitespace-normalised text. The exact
/// diff, with no bound: with a time limit, a busy machine cut long diffs short and the reported
/// metric changed from run to run, and the step bound of the served diffs (`text::diff`) would
/// approximate the longest hunks; an evaluation can afford the exact figure.
pub fn char_similarity(a: &str, b: &str) -> f32 {
    let (a, b) = (crate::tasks::merge::normalize_ws(a), crate::tasks::merge::normalize_ws(b));
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    similar::TextDiff::configure().algorithm(similar::Algorithm::Myers).diff_chars(&a, &b).ratio()
}
