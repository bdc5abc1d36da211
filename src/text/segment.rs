//! Splits text into the tokens a three-way merge works on. Every token is a slice of the input,
//! so concatenating them gives the input back, and offsets come for free.
//!
//! Markdown is kept intact: fenced code blocks are merged line by line, and URLs and link
//! targets are single tokens, so a word-level merge cannot splice two different links together.

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Words, whitespace runs and punctuation marks (UAX #29 word boundaries).
    #[default]
    Word,
    /// Sentences (UAX #29 sentence boundaries).
    Sentence,
    /// Whole lines, like `git merge-file`.
    Line,
}

/// Splits `text` into merge tokens; `tokens.concat() == text`.
pub fn tokens(text: &str, granularity: Granularity) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let is_fence = trimmed.starts_with("```") || trimmed.starts_with("~~~");
        if is_fence || in_fence || granularity == Granularity::Line {
            if is_fence {
                in_fence = !in_fence;
            }
            out.push(line);
            continue;
        }
        match granularity {
            Granularity::Sentence => out.extend(line.split_sentence_bounds()),
            _ => push_words(line, &mut out),
        }
    }
    out
}

/// The non-blank sentences of `text` (UAX #29 sentence boundaries), trimmed, as byte ranges.
pub fn sentence_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    text.split_sentence_bound_indices()
        .filter_map(|(start, sentence)| {
            let trimmed = sentence.trim();
            let offset = start + (sentence.len() - sentence.trim_start().len());
            (!trimmed.is_empty()).then_some(offset..offset + trimmed.len())
        })
        .collect()
}

/// Splits `text` into consecutive byte ranges of at most `max_bytes` (when possible), cut at
/// sentence boundaries, else word boundaries, else characters: models see bounded windows and
/// every offset still maps back into `text`. An empty text gives one empty range.
pub fn chunks(text: &str, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let max_bytes = max_bytes.max(4);
    let mut pieces = Vec::new();
    for (start, sentence) in text.split_sentence_bound_indices() {
        if sentence.len() <= max_bytes {
            pieces.push(start..start + sentence.len());
            continue;
        }
        for (offset, word) in sentence.split_word_bound_indices() {
            let word_start = start + offset;
            let mut at = 0;
            while at < word.len() {
                let mut end = (at + max_bytes).min(word.len());
                while !word.is_char_boundary(end) {
                    end -= 1;
                }
                pieces.push(word_start + at..word_start + end);
                at = end;
            }
        }
    }
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for piece in pieces {
        match out.last_mut() {
            Some(last) if piece.end - last.start <= max_bytes => last.end = piece.end,
            _ => out.push(piece),
        }
    }
    if out.is_empty() {
        out.push(0..0);
    }
    out
}

fn push_words<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    let mut start = 0;
    while start < line.len() {
        let rest = &line[start..];
        let first_is_space = rest.starts_with(char::is_whitespace);
        let run_len = rest.find(|c: char| c.is_whitespace() != first_is_space).unwrap_or(rest.len());
        let run = &rest[..run_len];
        if first_is_space {
            // Newlines stay separate so line structure (headings, list items) is visible to the merge.
            out.extend(run.split_inclusive('\n'));
        } else if run.contains("://") || run.contains("](") {
            out.push(run);
        } else {
            out.extend(run.split_word_bounds());
        }
        start += run_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_back_to_the_text() {
        let text = "# Title\n\nSee [the docs](https://x.org/a-b). Then run:\n```sh\nmake  all\n```\nDone, 漢字 😀!\r\n";
        for g in [Granularity::Word, Granularity::Sentence, Granularity::Line] {
            assert_eq!(tokens(text, g).concat(), text, "{g:?}");
        }
    }

    #[test]
    fn chunks_are_bounded_consecutive_and_cover_the_text() {
        let text = "First sentence here. Second one, a little longer! Third: 漢字漢字漢字漢字漢字 😀😀😀. ".repeat(20);
        for max in [8, 40, 200, 10_000] {
            let chunks = chunks(&text, max);
            assert_eq!(chunks.first().map(|c| c.start), Some(0));
            assert_eq!(chunks.last().map(|c| c.end), Some(text.len()));
            for pair in chunks.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            assert!(chunks.iter().all(|c| c.len() <= max && !c.is_empty()), "max {max}");
        }
        assert_eq!(chunks("", 100), vec![0..0]);
    }

    #[test]
    fn words_punctuation_and_spaces_are_separate() {
        assert_eq!(tokens("Hi, you  there.", Granularity::Word), vec!["Hi", ",", " ", "you", "  ", "there", "."]);
    }

    #[test]
    fn code_blocks_and_links_are_atomic() {
        let text = "```\nlet x = 1;\n```\n[a](http://b.c/d)";
        let toks = tokens(text, Granularity::Word);
        assert!(toks.contains(&"let x = 1;\n"));
        assert!(toks.contains(&"[a](http://b.c/d)"));
    }
}
