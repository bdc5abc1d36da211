//! Token diffs whose cost is bounded by a count of steps, not by a clock.
//!
//! Myers' algorithm (also behind patience's gaps) costs O((n + m) · d) for d edits: between two
//! long, unrelated texts that is tens of seconds. `similar`'s own guard is a deadline, which makes
//! the result depend on how busy the machine is, so the same request could get different
//! answers. Here a greedy Myers pass first checks, within [`STEP_BUDGET`] steps, that the edit
//! distance is small enough for the diff to finish in about that many steps; if so the result is
//! exactly `similar`'s. If not, the texts are matched line by line, then each changed run of
//! lines token by token within its share of the budget (in proportion to its length); a run over
//! its share is reported as replaced whole.

use std::collections::HashMap;
use std::ops::Range;

use similar::algorithms::IdentifyDistinct;
use similar::{capture_diff, Algorithm, ChangeTag, DiffOp, DiffableStr};

/// Myers steps (diagonals tried and tokens compared) a diff may spend on checking edit
/// distances, once for the whole texts and at most once more for the line-by-line fallback:
/// about 0.1 s on one core of the 2-core test machine when the check fails, and room for some
/// 4,000 edits between two texts (real edits of a document are far fewer).
pub const STEP_BUDGET: usize = 1 << 23;

/// A diff of two token sequences (slices of the texts, in order).
pub struct TokenDiff<'a> {
    pub old: Vec<&'a str>,
    pub new: Vec<&'a str>,
    pub ops: Vec<DiffOp>,
}

impl<'a> TokenDiff<'a> {
    pub fn new(algorithm: Algorithm, old: Vec<&'a str>, new: Vec<&'a str>) -> Self {
        let ops = bounded_ops(algorithm, &old, &new);
        Self { old, new, ops }
    }

    /// Characters of `old` and `new`.
    pub fn chars(algorithm: Algorithm, old: &'a str, new: &'a str) -> Self {
        Self::new(algorithm, old.tokenize_chars(), new.tokenize_chars())
    }

    /// Unicode words, spaces and punctuation (UAX #29 word boundaries).
    pub fn unicode_words(algorithm: Algorithm, old: &'a str, new: &'a str) -> Self {
        Self::new(algorithm, old.tokenize_unicode_words(), new.tokenize_unicode_words())
    }

    /// Runs of whitespace and of non-whitespace.
    pub fn words(algorithm: Algorithm, old: &'a str, new: &'a str) -> Self {
        Self::new(algorithm, old.tokenize_words(), new.tokenize_words())
    }

    /// Twice the matched tokens over all tokens, in 0..=1 (1 for two empty sequences).
    pub fn ratio(&self) -> f32 {
        similar::get_diff_ratio(&self.ops, self.old.len(), self.new.len())
    }

    /// Every token with its tag, in order; within a replaced run the deleted tokens come first.
    pub fn changes(&self) -> impl Iterator<Item = (ChangeTag, &'a str)> + '_ {
        self.ops.iter().flat_map(move |op| op.iter_changes(&self.old, &self.new).map(|c| (c.tag(), c.value())))
    }
}

/// The diff ops of `old` against `new`, within [`STEP_BUDGET`] (module docs).
pub fn bounded_ops(algorithm: Algorithm, old: &[&str], new: &[&str]) -> Vec<DiffOp> {
    if myers_steps(old, 0..old.len(), new, 0..new.len(), STEP_BUDGET).is_some() {
        return interned_ops(algorithm, old, 0..old.len(), new, 0..new.len());
    }
    line_then_token_ops(algorithm, old, new)
}

/// `similar`'s diff of the two ranges, over integer ids of the tokens (faster than comparing
/// strings, and the same result).
fn interned_ops(
    algorithm: Algorithm,
    old: &[&str],
    old_range: Range<usize>,
    new: &[&str],
    new_range: Range<usize>,
) -> Vec<DiffOp> {
    let ids = IdentifyDistinct::<u32>::new(old, old_range, new, new_range);
    capture_diff(algorithm, ids.old_lookup(), ids.old_range(), ids.new_lookup(), ids.new_range())
}

/// The steps Myers' greedy forward pass over the two ranges takes to reach their ends, or `None`
/// if that is more than `budget`. When it fits, `similar`'s diff of the ranges costs about as
/// much again.
fn myers_steps<'t>(
    old: &[&'t str],
    old_range: Range<usize>,
    new: &[&'t str],
    new_range: Range<usize>,
    budget: usize,
) -> Option<usize> {
    let mut ids: HashMap<&'t str, u32> = HashMap::new();
    let mut intern = |tokens: &[&'t str], range: Range<usize>| -> Vec<u32> {
        tokens[range]
            .iter()
            .map(|t| {
                let next = ids.len() as u32;
                *ids.entry(t).or_insert(next)
            })
            .collect()
    };
    let (a, b) = (intern(old, old_range), intern(new, new_range));
    let (n, m) = (a.len() as isize, b.len() as isize);
    let mut steps = a.len() + b.len();
    if steps > budget {
        return None;
    }
    let max_d = n + m;
    // v[k + offset]: the furthest x reached on diagonal k = x - y.
    let offset = max_d + 1;
    let mut v = vec![0isize; 2 * max_d as usize + 3];
    for d in 0..=max_d {
        let mut k = -d;
        while k <= d {
            let i = (k + offset) as usize;
            let x = if k == -d || (k != d && v[i - 1] < v[i + 1]) { v[i + 1] } else { v[i - 1] + 1 };
            let y = x - k;
            let snake = if x < n && (0..m).contains(&y) {
                a[x as usize..].iter().zip(&b[y as usize..]).take_while(|(p, q)| p == q).count()
            } else {
                0
            };
            steps += 1 + snake;
            if steps > budget {
                return None;
            }
            let x = x + snake as isize;
            v[i] = x;
            if x >= n && x - k >= m {
                return Some(steps);
            }
            k += 2;
        }
    }
    Some(steps)
}

/// Lines first (a line ends after a token holding a newline), then each changed run of lines
/// token by token within its share of [`STEP_BUDGET`]; runs over their share are replaced whole.
fn line_then_token_ops(algorithm: Algorithm, old: &[&str], new: &[&str]) -> Vec<DiffOp> {
    let (old_lines, new_lines) = (line_starts(old), line_starts(new));
    let join = |tokens: &[&str], starts: &[usize]| -> Vec<String> {
        starts.windows(2).map(|w| tokens[w[0]..w[1]].concat()).collect()
    };
    let (old_text, new_text) = (join(old, &old_lines), join(new, &new_lines));
    let old_keys: Vec<&str> = old_text.iter().map(String::as_str).collect();
    let new_keys: Vec<&str> = new_text.iter().map(String::as_str).collect();
    let total = (old.len() + new.len()) as u128;
    let share = |run: usize| (STEP_BUDGET as u128 * run as u128 / total) as usize;
    let mut ops = Vec::new();
    if myers_steps(&old_keys, 0..old_keys.len(), &new_keys, 0..new_keys.len(), STEP_BUDGET).is_none() {
        push_replaced(&mut ops, 0..old.len(), 0..new.len());
        return ops;
    }
    for op in interned_ops(Algorithm::Patience, &old_keys, 0..old_keys.len(), &new_keys, 0..new_keys.len()) {
        let (lines_old, lines_new) = (op.old_range(), op.new_range());
        let tokens_old = old_lines[lines_old.start]..old_lines[lines_old.end];
        let tokens_new = new_lines[lines_new.start]..new_lines[lines_new.end];
        if let DiffOp::Equal { .. } = op {
            push_equal(&mut ops, tokens_old.start, tokens_new.start, tokens_old.len());
        } else if myers_steps(
            old,
            tokens_old.clone(),
            new,
            tokens_new.clone(),
            share(tokens_old.len() + tokens_new.len()),
        )
        .is_some()
        {
            ops.extend(interned_ops(algorithm, old, tokens_old, new, tokens_new));
        } else {
            push_replaced(&mut ops, tokens_old, tokens_new);
        }
    }
    ops
}

/// Token indexes where lines start, with `tokens.len()` last.
fn line_starts(tokens: &[&str]) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, token) in tokens.iter().enumerate() {
        if token.contains('\n') && i + 1 < tokens.len() {
            starts.push(i + 1);
        }
    }
    starts.push(tokens.len());
    starts
}

fn push_equal(ops: &mut Vec<DiffOp>, old_index: usize, new_index: usize, len: usize) {
    if len > 0 {
        ops.push(DiffOp::Equal { old_index, new_index, len });
    }
}

fn push_replaced(ops: &mut Vec<DiffOp>, old: Range<usize>, new: Range<usize>) {
    match (old.is_empty(), new.is_empty()) {
        (true, true) => {}
        (false, true) => ops.push(DiffOp::Delete { old_index: old.start, old_len: old.len(), new_index: new.start }),
        (true, false) => ops.push(DiffOp::Insert { old_index: old.start, new_index: new.start, new_len: new.len() }),
        (false, false) => ops.push(DiffOp::Replace {
            old_index: old.start,
            old_len: old.len(),
            new_index: new.start,
            new_len: new.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use similar::TextDiff;

    fn rebuilt(diff: &TokenDiff<'_>) -> (String, String) {
        let (mut old, mut new) = (String::new(), String::new());
        for (tag, value) in diff.changes() {
            if tag != ChangeTag::Insert {
                old.push_str(value);
            }
            if tag != ChangeTag::Delete {
                new.push_str(value);
            }
        }
        (old, new)
    }

    /// Words from a small vocabulary, so two texts share many tokens but few unique anchors:
    /// the costly case for Myers and patience.
    fn babble(seed: u64, words: usize, line_every: usize) -> String {
        let vocabulary = ["alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "theta", "iota", "rho"];
        let mut state = seed;
        let mut out = String::new();
        for i in 0..words {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.push_str(vocabulary[(state >> 33) as usize % vocabulary.len()]);
            out.push(if (i + 1) % line_every == 0 { '\n' } else { ' ' });
        }
        out
    }

    #[test]
    fn inside_the_bound_the_diff_is_similars() {
        let pairs = [
            ("The cat sat on the mat.", "The black cat sat on a mat!"),
            ("", "added"),
            ("removed", ""),
            ("naïve café 😀 日本語", "naive cafe 😀 日本"),
        ];
        let (long_old, long_new) = (babble(1, 800, 12), babble(2, 800, 12));
        for (old, new) in pairs.into_iter().chain([(long_old.as_str(), long_new.as_str())]) {
            for algorithm in [Algorithm::Myers, Algorithm::Patience] {
                let ours = TokenDiff::unicode_words(algorithm, old, new);
                let theirs = TextDiff::configure().algorithm(algorithm).diff_unicode_words(old, new);
                let expected: Vec<(ChangeTag, &str)> =
                    theirs.iter_all_changes().map(|c| (c.tag(), c.value())).collect();
                assert_eq!(ours.changes().collect::<Vec<_>>(), expected, "{old:?} → {new:?}");
                assert_eq!(ours.ratio(), theirs.ratio());
                let chars = TokenDiff::chars(algorithm, old, new);
                assert_eq!(chars.ratio(), TextDiff::configure().algorithm(algorithm).diff_chars(old, new).ratio());
                let words = TokenDiff::words(algorithm, old, new);
                assert_eq!(words.ratio(), TextDiff::configure().algorithm(algorithm).diff_words(old, new).ratio());
            }
        }
    }

    #[test]
    fn far_apart_edits_in_a_long_text_are_diffed_exactly() {
        let text = babble(3, 12_000, 10);
        let old = format!("Start here.\n{text}End here.\n");
        let new = format!("Start there.\n{text}End there.\n");
        let ours = TokenDiff::unicode_words(Algorithm::Patience, &old, &new);
        let theirs = TextDiff::configure().algorithm(Algorithm::Patience).diff_unicode_words(&old, &new);
        assert_eq!(ours.ratio(), theirs.ratio());
        let changed: Vec<&str> = ours.changes().filter(|(tag, _)| *tag != ChangeTag::Equal).map(|(_, v)| v).collect();
        assert_eq!(changed, ["here", "there", "here", "there"]);
    }

    fn words(text: &str) -> Vec<&str> {
        unicode_segmentation::UnicodeSegmentation::split_word_bounds(text).collect()
    }

    #[test]
    fn over_the_budget_lines_are_matched_first_and_an_unrelated_block_is_replaced_whole() {
        // Small edits around two long unrelated blocks: the whole diff is over the budget, so the
        // lines are matched first; the small edits stay exact and the blocks are replaced whole.
        let text = babble(6, 2_000, 10);
        let (block_old, block_new) = (babble(7, 6_000, 10), babble(8, 6_000, 10));
        let old = format!("Start here.\n{text}{block_old}An unchanged line.\nEnd here.\n");
        let new = format!("Start there.\n{text}{block_new}An unchanged line.\nEnd there.\n");
        let (old_words, new_words) = (words(&old), words(&new));
        assert_eq!(myers_steps(&old_words, 0..old_words.len(), &new_words, 0..new_words.len(), STEP_BUDGET), None);
        let diff = TokenDiff::unicode_words(Algorithm::Patience, &old, &new);
        assert_eq!(rebuilt(&diff), (old.clone(), new.clone()));
        let changed: Vec<&str> = diff.changes().filter(|(tag, _)| *tag != ChangeTag::Equal).map(|(_, v)| v).collect();
        let expected_old: Vec<&str> = words(&block_old);
        let expected_new: Vec<&str> = words(&block_new);
        let expected: Vec<&str> =
            ["here", "there"].into_iter().chain(expected_old).chain(expected_new).chain(["here", "there"]).collect();
        let first_difference = changed.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!((changed.len(), first_difference), (expected.len(), None));
    }

    #[test]
    fn unrelated_long_texts_are_replaced_whole_and_the_same_every_time() {
        // One line each, unrelated: over the budget, and no line matches.
        let (old, new) = (babble(4, 20_000, usize::MAX), babble(5, 20_000, usize::MAX));
        let first = TokenDiff::words(Algorithm::Myers, &old, &new);
        assert_eq!(rebuilt(&first), (old.clone(), new.clone()));
        assert_eq!(first.ratio(), 0.0);
        let again = TokenDiff::words(Algorithm::Myers, &old, &new);
        assert_eq!(first.ops, again.ops);
    }

    #[test]
    fn the_edit_distance_check_agrees_with_the_edit_distance() {
        let cases = [("abc", "abc", 0), ("abc", "abd", 2), ("", "abc", 3), ("kitten", "sitting", 5)];
        for (old, new, distance) in cases {
            let (a, b) = (old.tokenize_chars(), new.tokenize_chars());
            let cost = |budget: usize| myers_steps(&a, 0..a.len(), &b, 0..b.len(), budget);
            let used = cost(usize::MAX).expect("unbounded budget fits");
            assert!(used >= a.len() + b.len() + distance, "{old} → {new}: {used} steps");
            assert_eq!(cost(used), Some(used));
            assert_eq!(cost(used - 1), None);
        }
    }
}
