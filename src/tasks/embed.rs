//! Sentence embeddings: the simplest task, and the one every other pipeline builds on.

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::model::EmbeddingModel;
use crate::runtime::{Engine, EngineConfig, EngineError, Input, Want};

/// The engine of sentence encoder `id`: one of `running` when one of them is that model (the
/// server's embedding engine, usually), so its weights are loaded once; else a new one.
pub fn shared_encoder(
    running: &[Engine],
    id: &str,
    device: &Device,
    dtype: DType,
    config: EngineConfig,
) -> Result<Engine> {
    if let Some(shared) = running.iter().find(|e| e.info().id == id) {
        return Ok(shared.clone());
    }
    let model =
        EmbeddingModel::load(id, device, dtype).with_context(|| format!("loading the sentence encoder {id}"))?;
    Engine::start(model, config)
}

/// Embeddings for a list of texts, in input order.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model saw, special tokens included, summed over inputs.
    pub prompt_tokens: usize,
    /// Indices of inputs cut to the model's maximum length.
    pub truncated: Vec<usize>,
}

/// Embeds `texts` with `engine`; with `truncate` false, an over-long input is an error.
pub async fn embed(engine: &Engine, texts: Vec<String>, truncate: bool) -> Result<Embeddings, EngineError> {
    let inputs = texts.into_iter().map(Input::Text).collect();
    let want = Want { normalize: true, token_states: false };
    let encoded = engine.encode(inputs, want, truncate).await?;
    let prompt_tokens = encoded.iter().map(|e| e.tokens.ids.len()).sum();
    let truncated = encoded.iter().enumerate().filter(|(_, e)| e.tokens.truncated).map(|(i, _)| i).collect();
    Ok(Embeddings { vectors: encoded.into_iter().map(|e| e.pooled).collect(), prompt_tokens, truncated })
}
