//! The model thread: forms batches from the queue and runs them.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;

use super::batcher::{self, BatchLimits};
use super::{Encoded, EngineConfig, WorkItem};
use crate::model::{Encoder, Pooling, Tokenized};

/// Items pulled from the queue per batching round; bounds the sorting work, not the queue.
const LOOKAHEAD: usize = 1024;

pub(super) struct Runner {
    pub encoder: Encoder,
    pub pooling: Pooling,
    pub normalize: bool,
    pub config: EngineConfig,
}

/// Per-item results of one forward pass.
pub(super) struct BatchOutput {
    pooled: Vec<Vec<f32>>,
    states: Option<Vec<Vec<Vec<f32>>>>,
}

impl Runner {
    pub fn run(self, queue: Receiver<WorkItem>) {
        let mut pending: Vec<WorkItem> = Vec::new();
        loop {
            if pending.is_empty() {
                match queue.recv() {
                    Ok(item) => pending.push(item),
                    Err(_) => return,
                }
            }
            self.gather(&queue, &mut pending);
            // A caller that went away no longer needs its answer: skip the work.
            let before = pending.len();
            pending.retain(|item| !item.reply.is_closed());
            metrics::counter!("concord_cancelled_items_total").increment((before - pending.len()) as u64);
            if pending.is_empty() {
                continue;
            }
            let lengths: Vec<usize> = pending.iter().map(|item| item.tokens.ids.len()).collect();
            let mut chosen = batcher::choose(&lengths, self.config.batch);
            chosen.sort_unstable();
            let mut batch = Vec::with_capacity(chosen.len());
            for index in chosen.into_iter().rev() {
                batch.push(pending.remove(index));
            }
            self.execute(batch);
        }
    }

    /// Adds what is already queued and, within the wait window, what arrives soon after.
    fn gather(&self, queue: &Receiver<WorkItem>, pending: &mut Vec<WorkItem>) {
        while pending.len() < LOOKAHEAD {
            match queue.try_recv() {
                Ok(item) => pending.push(item),
                Err(_) => break,
            }
        }
        let BatchLimits { max_tokens, max_items } = self.config.batch;
        // A lone request runs at once: waiting only pays when others are arriving too.
        if self.config.max_batch_wait.is_zero() || max_items <= 1 || pending.len() < 2 {
            return;
        }
        let deadline = Instant::now() + self.config.max_batch_wait;
        let padded = |p: &[WorkItem]| p.len() * p.iter().map(|i| i.tokens.ids.len()).max().unwrap_or(0);
        while pending.len() < max_items && padded(pending) < max_tokens {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match queue.recv_timeout(deadline - now) {
                Ok(item) => pending.push(item),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn execute(&self, batch: Vec<WorkItem>) {
        let token_states = batch.iter().any(|i| i.want.token_states);
        let tokens: Vec<&Tokenized> = batch.iter().map(|i| &i.tokens).collect();
        let token_count: usize = tokens.iter().map(|t| t.ids.len()).sum();
        metrics::histogram!("concord_batch_items").record(batch.len() as f64);
        metrics::counter!("concord_batch_tokens_total").increment(token_count as u64);
        let started = Instant::now();
        // Run the pass on a rayon worker: the many small parallel ops inside it then start on
        // the calling thread and wake only the other workers, instead of each op handing its
        // work from this thread to the pool and sleeping until it is done.
        let result = rayon::scope(|_| self.forward(&tokens, token_states));
        metrics::histogram!("concord_forward_duration_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(output) => {
                let mut states = output.states.map(|s| s.into_iter());
                for (item, pooled) in batch.into_iter().zip(output.pooled) {
                    let token_states = states.as_mut().and_then(|s| s.next());
                    let pooled = if item.want.normalize && self.normalize { l2_normalized(pooled) } else { pooled };
                    let encoded = Encoded {
                        pooled,
                        token_states: if item.want.token_states { token_states } else { None },
                        tokens: item.tokens,
                    };
                    let _ = item.reply.send(Ok(encoded));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "forward pass failed");
                for item in batch {
                    let _ = item.reply.send(Err(format!("{err:#}")));
                }
            }
        }
    }

    /// Runs the encoder on `batch` and pools each sequence (normalisation is per item).
    pub fn forward(&self, batch: &[&Tokenized], token_states: bool) -> Result<BatchOutput> {
        let states = self.encoder.forward(batch)?;
        let pooled = states.iter().map(|s| self.pooling.apply(s)).collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&pooled, 0)?.to_vec2::<f32>()?;
        let states = if token_states {
            Some(states.iter().map(|s| s.to_vec2::<f32>()).collect::<candle_core::Result<Vec<_>>>()?)
        } else {
            None
        };
        Ok(BatchOutput { pooled, states })
    }
}

fn l2_normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}
