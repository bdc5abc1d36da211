//! Tokenisation with truncation that is reported, never silent.

use std::path::Path;

use anyhow::{anyhow, Result};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One input after tokenisation, ready to be batched.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Byte offsets into the input text for each token (`(0, 0)` for special tokens).
    pub offsets: Vec<(usize, usize)>,
    /// True when the input was longer than the model allows and its tail was cut.
    pub truncated: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    pub max_tokens: usize,
}

impl TextTokenizer {
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        // Padding happens per batch in the engine; a padded tokenizer would waste work.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        Ok(Self { inner, max_tokens })
    }

    pub fn encode(&self, text: &str) -> Result<Tokenized> {
        let encoding = self.inner.encode(text, true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(Self::convert(encoding))
    }

    /// Encodes a sentence pair (cross-encoders: premise/hypothesis, before/after).
    pub fn encode_pair(&self, first: &str, second: &str) -> Result<Tokenized> {
        let encoding = self.inner.encode((first, second), true).map_err(|e| anyhow!("tokenizing pair: {e}"))?;
        Ok(Self::convert(encoding))
    }

    fn convert(encoding: tokenizers::Encoding) -> Tokenized {
        Tokenized {
            truncated: !encoding.get_overflowing().is_empty(),
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        }
    }
}
