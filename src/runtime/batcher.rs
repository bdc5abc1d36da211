//! Which queued items run together. Pure logic, so it is tested without a model.
//!
//! A batch costs `items × longest item` tokens once padded, so the batcher groups items of similar
//! length under a token budget. The oldest waiting item is always in the next batch, so nothing
//! starves behind a stream of better-fitting newcomers.

/// Limits on one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Padded tokens per batch (`items × longest`).
    pub max_tokens: usize,
    /// Items per batch; 1 turns batching off.
    pub max_items: usize,
}

/// Picks the batch from `lengths` (token count of each pending item, in arrival order, so index 0
/// is the oldest). Returns the chosen indices sorted by length; always contains index 0.
pub fn choose(lengths: &[usize], limits: BatchLimits) -> Vec<usize> {
    if lengths.is_empty() {
        return Vec::new();
    }
    let mut by_length: Vec<usize> = (0..lengths.len()).collect();
    by_length.sort_by_key(|&i| (lengths[i], i));
    let anchor = by_length.iter().position(|&i| i == 0).unwrap_or(0);
    let (mut lo, mut hi) = (anchor, anchor + 1);
    let mut longest = lengths[0];
    let fits = |count: usize, longest: usize| count <= limits.max_items.max(1) && count * longest <= limits.max_tokens;
    loop {
        let count = hi - lo;
        let up =
            (hi < by_length.len()).then(|| lengths[by_length[hi]]).filter(|&len| fits(count + 1, longest.max(len)));
        let down = (lo > 0).then(|| lengths[by_length[lo - 1]]).filter(|_| fits(count + 1, longest));
        // Padding a neighbour adds: a shorter one pads itself up, a longer one pads everyone.
        let waste_up = up.map(|len| (len - longest) * count);
        let waste_down = down.map(|len| longest - len);
        match (waste_down, waste_up) {
            (Some(d), Some(u)) if d <= u => lo -= 1,
            (Some(_), None) => lo -= 1,
            (_, Some(_)) => {
                longest = longest.max(lengths[by_length[hi]]);
                hi += 1;
            }
            (None, None) => break,
        }
    }
    by_length[lo..hi].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: BatchLimits = BatchLimits { max_tokens: 10_000, max_items: 64 };

    #[test]
    fn everything_fits_when_budget_allows() {
        let picked = choose(&[5, 9, 3], ROOMY);
        assert_eq!(picked, vec![2, 0, 1]);
    }

    #[test]
    fn oldest_item_is_always_taken_even_if_over_budget() {
        let picked = choose(&[500, 4, 4], BatchLimits { max_tokens: 100, max_items: 8 });
        assert_eq!(picked, vec![0]);
    }

    #[test]
    fn budget_counts_padding() {
        // 3 items of longest 10 = 30 padded tokens; a fourth would make 4 × 40 = 160 > 50.
        let picked = choose(&[10, 10, 10, 40], BatchLimits { max_tokens: 50, max_items: 8 });
        assert_eq!(picked, vec![0, 1, 2]);
    }

    #[test]
    fn similar_lengths_are_grouped() {
        let lengths = [20, 3, 21, 2, 19, 22];
        let picked = choose(&lengths, BatchLimits { max_tokens: 88, max_items: 8 });
        let mut chosen: Vec<usize> = picked.iter().map(|&i| lengths[i]).collect();
        chosen.sort();
        assert_eq!(chosen, vec![19, 20, 21, 22]);
    }

    #[test]
    fn batch_size_one_disables_batching() {
        let picked = choose(&[4, 4, 4], BatchLimits { max_tokens: 10_000, max_items: 1 });
        assert_eq!(picked, vec![0]);
    }
}
