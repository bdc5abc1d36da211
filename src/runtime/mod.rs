//! The inference engine: one per loaded model.
//!
//! Requests are tokenised on the caller's side (tokio's blocking pool), queued, grouped into
//! batches by a token budget and run on a dedicated OS thread, so model execution never blocks
//! the async runtime. Admission control bounds the work in flight; a request whose caller went
//! away is dropped from the queue before it costs a forward pass.

mod batcher;
mod registry;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use batcher::BatchLimits;
pub use registry::Models;

use crate::model::{EmbeddingModel, ModelInfo, TextTokenizer, Tokenized};

/// Pins candle's CPU thread count for the process, once, before any thread starts.
///
/// Without `RAYON_NUM_THREADS`, candle re-reads `/proc/cpuinfo` on every matmul to count cores
/// (about 40 file reads per forward pass, measurable at batch 1). Call it first thing in `main`,
/// while the process is single-threaded; an explicit setting wins.
pub fn pin_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

/// Runs CPU-bound task work (diffs of long texts) on tokio's blocking pool, so it does not hold
/// an async worker thread that other requests need while it runs (up to about a second for the
/// longest inputs the size limits allow).
pub async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| EngineError::Model(format!("background task failed: {e}")))
}

/// How the engine batches and admits work.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub batch: BatchLimits,
    /// How long the first item of a batch may wait for company. Zero: run what is queued now.
    pub max_batch_wait: Duration,
    /// Requests admitted at once; the next one is refused as overloaded.
    pub max_concurrent_requests: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            batch: BatchLimits { max_tokens: 16_384, max_items: 64 },
            max_batch_wait: Duration::from_millis(2),
            max_concurrent_requests: 512,
        }
    }
}

/// What a caller gets back for one input.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The pooled sentence vector (L2-normalised when asked and the model calls for it).
    pub pooled: Vec<f32>,
    /// Every token's hidden state, `tokens × hidden`, when asked for.
    pub token_states: Option<Vec<Vec<f32>>>,
    pub tokens: Tokenized,
}

/// What to compute for a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Apply the model's L2 normalisation to the pooled vector.
    pub normalize: bool,
    pub token_states: bool,
}

/// One piece of text to encode: a single text or a pair for cross-encoders.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Pair(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("too many requests in flight ({0}); retry shortly")]
    Overloaded(usize),
    #[error("input {index} is longer than the model's limit of {max} tokens")]
    TooLong { index: usize, max: usize },
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("model failed: {0}")]
    Model(String),
    #[error("the engine has stopped")]
    Stopped,
}

struct WorkItem {
    tokens: Tokenized,
    want: Want,
    reply: oneshot::Sender<Result<Encoded, String>>,
}

/// A cheap, cloneable handle to one model's engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    info: ModelInfo,
    tokenizer: Arc<TextTokenizer>,
    queue: std::sync::mpsc::Sender<WorkItem>,
    admission: Arc<Semaphore>,
    max_concurrent: usize,
}

/// Holds a request's place under admission control until it is dropped.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Engine {
    /// Moves `model` onto its worker thread, warms it up and returns the handle.
    pub fn start(model: EmbeddingModel, config: EngineConfig) -> Result<Self> {
        let EmbeddingModel { encoder, tokenizer, pooling, normalize, info } = model;
        let tokenizer = Arc::new(tokenizer);
        let warmup = tokenizer.encode("Concord warms up its encoder before serving.")?;
        let (queue, receiver) = std::sync::mpsc::channel();
        let runner = worker::Runner { encoder, pooling, normalize, config: config.clone() };
        runner.forward(&[&warmup], false)?;
        std::thread::Builder::new().name(format!("concord-model-{}", info.id)).spawn(move || runner.run(receiver))?;
        Ok(Self {
            inner: Arc::new(Inner {
                info,
                tokenizer,
                queue,
                admission: Arc::new(Semaphore::new(config.max_concurrent_requests)),
                max_concurrent: config.max_concurrent_requests,
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.inner.tokenizer
    }

    /// Takes a place under admission control, or fails at once when the engine is full.
    pub fn admit(&self) -> Result<Admission, EngineError> {
        Arc::clone(&self.inner.admission)
            .try_acquire_owned()
            .map(|permit| Admission { _permit: permit })
            .map_err(|_| EngineError::Overloaded(self.inner.max_concurrent))
    }

    /// Tokenises `inputs` off the async runtime. With `truncate` false, over-long inputs fail.
    pub async fn tokenize(&self, inputs: Vec<Input>, truncate: bool) -> Result<Vec<Tokenized>, EngineError> {
        let tokenizer = Arc::clone(&self.inner.tokenizer);
        let tokenized = tokio::task::spawn_blocking(move || {
            inputs
                .iter()
                .map(|input| match input {
                    Input::Text(text) => tokenizer.encode(text),
                    Input::Pair(a, b) => tokenizer.encode_pair(a, b),
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        if !truncate {
            if let Some(index) = tokenized.iter().position(|t| t.truncated) {
                return Err(EngineError::TooLong { index, max: self.inner.tokenizer.max_tokens });
            }
        }
        Ok(tokenized)
    }

    /// Runs already tokenised inputs through the model; results keep the input order.
    pub async fn encode_tokens(&self, tokens: Vec<Tokenized>, want: Want) -> Result<Vec<Encoded>, EngineError> {
        let mut replies = Vec::with_capacity(tokens.len());
        for tokens in tokens {
            let (reply, receiver) = oneshot::channel();
            self.inner.queue.send(WorkItem { tokens, want, reply }).map_err(|_| EngineError::Stopped)?;
            replies.push(receiver);
        }
        let mut out = Vec::with_capacity(replies.len());
        for receiver in replies {
            match receiver.await {
                Ok(Ok(encoded)) => out.push(encoded),
                Ok(Err(message)) => return Err(EngineError::Model(message)),
                Err(_) => return Err(EngineError::Stopped),
            }
        }
        Ok(out)
    }

    /// Tokenises and encodes `inputs` (no admission check: callers hold an [`Admission`]).
    pub async fn encode(&self, inputs: Vec<Input>, want: Want, truncate: bool) -> Result<Vec<Encoded>, EngineError> {
        let tokens = self.tokenize(inputs, truncate).await?;
        self.encode_tokens(tokens, want).await
    }
}
