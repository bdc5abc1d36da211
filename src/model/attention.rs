//! Self-attention on the CPU over sequences packed end to end, read straight from the fused
//! query/key/value projection.
//!
//! candle's path for this is a dozen small ops per layer: three permuted copies of q, k and v,
//! a scale, two batched matmuls, a softmax and a transposed copy back, all on one thread for a
//! single sentence while the other cores wait (7-8 % of a one-sentence profile,
//! benches/RESULTS.md). Here each parallel task takes a block of query rows of one sequence and
//! writes their context vectors, every head, straight into the `[tokens, hidden]` output.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{self, dispatch, exp_nonpositive, lane_max, lane_sum, LANES};

/// Multiply-adds per parallel task: enough to outweigh handing it to another thread, few
/// enough that one short sentence still spreads over two or more cores.
const TASK_MULTIPLY_ADDS: usize = 64 * 1024;

/// `softmax(q·kᵀ/√d)·v` per head for each sequence of `lengths` in `qkv`
/// (`[tokens, 3 · hidden]`: queries, keys, values, each `heads` blocks of `hidden / heads`).
/// Returns `[tokens, hidden]`. CPU f32 only; [`supported`] says when it applies.
pub fn packed(qkv: &Tensor, lengths: &[usize], heads: usize) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&PackedAttention { lengths: lengths.to_vec(), heads, portable: false })
}

/// The same attention with candle's ops, for devices [`packed`] does not cover (GPUs): one
/// batched attention per run of equal lengths (the batcher sorts by length, so most batches are
/// a few runs).
pub fn with_candle_ops(qkv: &Tensor, lengths: &[usize], heads: usize) -> Result<Tensor> {
    let (_, width) = qkv.dims2()?;
    let hidden = width / 3;
    let head_dim = hidden / heads.max(1);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut contexts = Vec::new();
    let mut start = 0;
    for (length, count) in equal_length_runs(lengths) {
        let tokens = length * count;
        let run =
            qkv.narrow(0, start, tokens)?.reshape((count, length, 3, heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let q = (run.get(0)? * scale)?.contiguous()?;
        let k = run.get(1)?.contiguous()?;
        let v = run.get(2)?.contiguous()?;
        let probs = kernels::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        contexts.push(probs.matmul(&v)?.transpose(1, 2)?.reshape((tokens, hidden))?);
        start += tokens;
    }
    if contexts.len() == 1 {
        Ok(contexts.remove(0))
    } else {
        Tensor::cat(&contexts, 0)
    }
}

/// `(length, count)` for each run of consecutive equal lengths.
fn equal_length_runs(lengths: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &length in lengths {
        match runs.last_mut() {
            Some((l, count)) if *l == length => *count += 1,
            _ => runs.push((length, 1)),
        }
    }
    runs
}

/// True when [`packed`] can run on `xs`.
pub fn supported(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

struct PackedAttention {
    lengths: Vec<usize>,
    heads: usize,
    /// Skip the AVX-512 kernel even where the CPU has it, so tests cover the portable one.
    portable: bool,
}

/// A block of query rows of one sequence, and the output rows it writes.
struct Task<'a> {
    /// The sequence's rows of q, k, v.
    tokens: &'a [f32],
    /// Its keys, as [`transpose_keys`] lays them out.
    keys: &'a [f32],
    /// The block's first query, counted from the sequence's start.
    first_query: usize,
    out: &'a mut [f32],
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "concord-packed-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { bail!("attention expects f32 activations") };
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("attention needs contiguous input") };
        let qkv = &data[start..end];
        let (tokens, width) = layout.shape().dims2()?;
        let hidden = width / 3;
        if width % 3 != 0 || self.heads == 0 || hidden % self.heads != 0 {
            bail!("attention: {width} values per token do not split into q, k, v of {} heads", self.heads);
        }
        if self.lengths.iter().sum::<usize>() != tokens {
            bail!("attention: sequence lengths {:?} do not add up to {tokens} tokens", self.lengths);
        }
        let heads = Heads { hidden, head_dim: hidden / self.heads };
        // Each sequence's keys, transposed once for all its query blocks.
        let mut keys = vec![0f32; self.lengths.iter().map(|&len| padded(len) * hidden).sum()];
        let mut sequences = Vec::with_capacity(self.lengths.len());
        let (mut rest, mut sequence_start) = (keys.as_mut_slice(), 0);
        for &len in &self.lengths {
            let (keys, tail) = std::mem::take(&mut rest).split_at_mut(padded(len) * hidden);
            let tokens = &qkv[sequence_start * width..(sequence_start + len) * width];
            sequences.push((tokens, keys));
            rest = tail;
            sequence_start += len;
        }
        sequences.par_iter_mut().for_each(|(tokens, keys)| transpose_keys(tokens, &heads, keys));

        let mut out = vec![0f32; tokens * hidden];
        let mut tasks = Vec::new();
        let mut rest = out.as_mut_slice();
        for &(tokens, ref keys) in &sequences {
            let len = tokens.len() / width;
            // At least four: the AVX-512 kernel computes four queries at a time.
            let rows_per_task = TASK_MULTIPLY_ADDS.div_ceil(2 * len * hidden).max(4);
            let mut first_query = 0;
            while first_query < len {
                let rows = rows_per_task.min(len - first_query);
                let (block, tail) = std::mem::take(&mut rest).split_at_mut(rows * hidden);
                tasks.push(Task { tokens, keys: &keys[..], first_query, out: block });
                rest = tail;
                first_query += rows;
            }
        }
        tasks.into_par_iter().for_each(|task| attend(&heads, task, self.portable));
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

/// Keys per head are stored for whole blocks of 32 tokens (two vectors of [`LANES`]), the
/// padding zero, so the score loops run on full vectors.
fn padded(len: usize) -> usize {
    len.next_multiple_of(2 * LANES)
}

/// The width of a token's hidden state and of one head's share of it.
#[derive(Clone, Copy)]
struct Heads {
    hidden: usize,
    head_dim: usize,
}

/// `keys`: `[head][head_dim][padded(len)]` from the key part of `tokens` (`len` rows of q, k, v).
fn transpose_keys(tokens: &[f32], heads: &Heads, keys: &mut [f32]) {
    let Heads { hidden, .. } = *heads;
    let stride = keys.len() / hidden;
    for (j, token) in tokens.chunks_exact(3 * hidden).enumerate() {
        for (channel, &k) in token[hidden..2 * hidden].iter().enumerate() {
            keys[channel * stride + j] = k;
        }
    }
}

// `portable` only chooses between kernels where there is an AVX-512 one.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn attend(heads: &Heads, task: Task, portable: bool) {
    #[cfg(target_arch = "x86_64")]
    if !portable && std::arch::is_x86_feature_detected!("avx512f") {
        let mut scores = vec![0f32; x86::QUERY_ROWS * task.keys.len() / heads.hidden];
        // SAFETY: the CPU has AVX-512 F; `scores` has `QUERY_ROWS` rows of `padded(len)`.
        return unsafe { x86::attend_rows(heads, task, &mut scores) };
    }
    let mut scores = vec![0f32; task.keys.len() / heads.hidden];
    attend_rows(heads, task, &mut scores)
}

fn attend_rows(heads: &Heads, task: Task, scores: &mut [f32]) {
    dispatch!(attend_rows_generic(heads: &Heads, task: Task, scores: &mut [f32]))
}

/// For each head and query: scores as `head_dim` vector-wide multiply-adds over the transposed
/// keys (instead of one dot product per key, each ending in a horizontal sum), softmax over the
/// real keys, then the weighted sum of value rows.
#[inline(always)]
fn attend_rows_generic(heads: &Heads, task: Task, scores: &mut [f32]) {
    let Heads { hidden, head_dim } = *heads;
    let Task { tokens, keys, first_query, out } = task;
    let row_width = 3 * hidden;
    let stride = scores.len();
    let len = tokens.len() / row_width;
    let scale = 1.0 / (head_dim as f32).sqrt();
    for head in (0..hidden).step_by(head_dim) {
        let head_keys = &keys[head * stride..(head + head_dim) * stride];
        for (i, out_row) in out.chunks_exact_mut(hidden).enumerate() {
            let query = &tokens[(first_query + i) * row_width + head..][..head_dim];
            // Accumulated in locals: LLVM cannot tell that `scores` and `keys` do not overlap,
            // and kept each store in place, one lane at a time.
            for (block, scores) in scores.as_chunks_mut::<LANES>().0.iter_mut().enumerate() {
                let mut sums = [0f32; LANES];
                for (&q, keys) in query.iter().zip(head_keys.chunks_exact(stride)) {
                    let keys = &keys.as_chunks::<LANES>().0[block];
                    sums.iter_mut().zip(keys).for_each(|(s, &k)| *s += q * k);
                }
                *scores = sums;
            }
            let scores = &mut scores[..len];
            let inv = 1.0 / softmax_numerators(scores, scale);
            let values = |offset: usize| tokens.chunks_exact(row_width).map(move |t| &t[2 * hidden + head + offset..]);
            let (blocks, tail) = out_row[head..head + head_dim].as_chunks_mut::<LANES>();
            for (block, context) in blocks.iter_mut().enumerate() {
                let mut sums = [0f32; LANES];
                for (&p, value) in scores.iter().zip(values(block * LANES)) {
                    let value = &value[..LANES];
                    for lane in 0..LANES {
                        sums[lane] += p * value[lane];
                    }
                }
                *context = sums.map(|s| s * inv);
            }
            let tail_start = head_dim - tail.len();
            for (offset, context) in (tail_start..).zip(tail) {
                *context = inv * scores.iter().zip(values(offset)).map(|(&p, value)| p * value[0]).sum::<f32>();
            }
        }
    }
}

/// Turns raw scores `q·k` into softmax numerators `e^(scale·s − max)`, in place, and returns
/// their sum (the rows are normalised when the weighted values are).
#[inline(always)]
fn softmax_numerators(scores: &mut [f32], scale: f32) -> f32 {
    let max = lane_max(scores) * scale;
    scores.iter_mut().for_each(|s| *s = exp_nonpositive(*s * scale - max));
    lane_sum(scores, |e| e)
}

/// AVX-512: [`x86::QUERY_ROWS`] queries at a time, so each key or value vector loaded serves
/// all of them, with every sum in a register and enough independent sums to keep both FMA units
/// busy (the generic loops above are chains of dependent additions).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{softmax_numerators, Heads, Task, LANES};
    use crate::model::tiles::lane_mask;

    pub const QUERY_ROWS: usize = 4;

    /// # Safety
    /// The CPU must have AVX-512 F; `scores` must hold `QUERY_ROWS` rows of `padded(len)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attend_rows(heads: &Heads, task: Task, scores: &mut [f32]) {
        let Task { tokens, keys, first_query, out } = task;
        let hidden = heads.hidden;
        let stride = scores.len() / QUERY_ROWS;
        for head in (0..hidden).step_by(heads.head_dim) {
            let group = Group { heads, tokens, keys: &keys[head * stride..], head, stride };
            for (block, out) in out.chunks_mut(QUERY_ROWS * hidden).enumerate() {
                let first = first_query + block * QUERY_ROWS;
                match out.len() / hidden {
                    1 => group.attend::<1>(first, out, scores),
                    2 => group.attend::<2>(first, out, scores),
                    3 => group.attend::<3>(first, out, scores),
                    _ => group.attend::<QUERY_ROWS>(first, out, scores),
                }
            }
        }
    }

    /// One head of one sequence.
    struct Group<'a> {
        heads: &'a Heads,
        tokens: &'a [f32],
        /// This head's keys, `[head_dim][stride]`, and what follows.
        keys: &'a [f32],
        head: usize,
        stride: usize,
    }

    impl Group<'_> {
        /// Queries `first..first + R` of this head into `out` (`R` rows of `hidden`).
        #[target_feature(enable = "avx512f")]
        unsafe fn attend<const R: usize>(&self, first: usize, out: &mut [f32], scores: &mut [f32]) {
            let Heads { hidden, head_dim } = *self.heads;
            let (row_width, stride) = (3 * hidden, self.stride);
            let len = self.tokens.len() / row_width;
            let tokens = self.tokens.as_ptr();
            let query = |r: usize, d: usize| *tokens.add((first + r) * row_width + self.head + d);
            // Scores, 32 keys at a time; the padding keys are zero and score 0.
            for block in (0..stride).step_by(2 * LANES) {
                let mut sums = [[_mm512_setzero_ps(); 2]; R];
                for d in 0..head_dim {
                    let keys = self.keys.as_ptr().add(d * stride + block);
                    let (low, high) = (_mm512_loadu_ps(keys), _mm512_loadu_ps(keys.add(LANES)));
                    for (r, sums) in sums.iter_mut().enumerate() {
                        let q = _mm512_set1_ps(query(r, d));
                        sums[0] = _mm512_fmadd_ps(q, low, sums[0]);
                        sums[1] = _mm512_fmadd_ps(q, high, sums[1]);
                    }
                }
                for (r, sums) in sums.iter().enumerate() {
                    let at = scores.as_mut_ptr().add(r * stride + block);
                    _mm512_storeu_ps(at, sums[0]);
                    _mm512_storeu_ps(at.add(LANES), sums[1]);
                }
            }
            let scale = 1.0 / (head_dim as f32).sqrt();
            let mut inverse_sums = [0f32; R];
            for (r, inverse) in inverse_sums.iter_mut().enumerate() {
                *inverse = 1.0 / softmax_numerators(&mut scores[r * stride..][..len], scale);
            }
            // Context, 16 channels at a time, with even and odd keys in separate sums.
            let values = tokens.add(2 * hidden + self.head);
            for channel in (0..head_dim).step_by(LANES) {
                let lanes = lane_mask(head_dim - channel);
                let value = |j: usize| _mm512_maskz_loadu_ps(lanes, values.add(j * row_width + channel));
                let mut sums = [[_mm512_setzero_ps(); 2]; R];
                for j in (0..len - len % 2).step_by(2) {
                    let (even, odd) = (value(j), value(j + 1));
                    for (r, sums) in sums.iter_mut().enumerate() {
                        let p = scores.as_ptr().add(r * stride + j);
                        sums[0] = _mm512_fmadd_ps(_mm512_set1_ps(*p), even, sums[0]);
                        sums[1] = _mm512_fmadd_ps(_mm512_set1_ps(*p.add(1)), odd, sums[1]);
                    }
                }
                if len % 2 == 1 {
                    let last = value(len - 1);
                    for (r, sums) in sums.iter_mut().enumerate() {
                        let p = _mm512_set1_ps(scores[r * stride + len - 1]);
                        sums[0] = _mm512_fmadd_ps(p, last, sums[0]);
                    }
                }
                for (r, (sums, inverse)) in sums.iter().zip(inverse_sums).enumerate() {
                    let context = _mm512_mul_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_set1_ps(inverse));
                    let at = out.as_mut_ptr().add(r * hidden + self.head + channel);
                    _mm512_mask_storeu_ps(at, lanes, context);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn matches_candles_ops_on_packed_sequences() -> Result<()> {
        // MiniLM's shape (12 heads of 32), one whose head size leaves a vector tail and a
        // BERT-base-like one; one token, odd and even lengths (the AVX-512 kernel sums odd and
        // even keys apart), one long enough to be split into several tasks, and runs of equal
        // lengths, which candle's path batches together.
        for (heads, head_dim) in [(12, 32), (3, 20), (2, 64)] {
            let lengths = [1, 7, 30, 30, 200, 2, 33, 33];
            let tokens: usize = lengths.iter().sum();
            let qkv = Tensor::randn(0f32, 2.0, (tokens, 3 * heads * head_dim), &Device::Cpu)?;
            let expected = with_candle_ops(&qkv, &lengths, heads)?;
            for portable in [false, true] {
                let op = PackedAttention { lengths: lengths.to_vec(), heads, portable };
                let ours = qkv.apply_op1_no_bwd(&op)?;
                let diff = (&ours - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
                // Values are about 2 in size; only the order of the additions differs.
                assert!(diff < 1e-4, "{heads} heads of {head_dim}, portable {portable}: max difference {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn runs_group_consecutive_equal_lengths() {
        assert_eq!(equal_length_runs(&[3, 3, 5, 5, 5, 3]), vec![(3, 2), (5, 3), (3, 1)]);
        assert!(equal_length_runs(&[]).is_empty());
    }

    #[test]
    fn rejects_lengths_that_do_not_cover_the_tokens() -> Result<()> {
        let qkv = Tensor::zeros((5, 36), DType::F32, &Device::Cpu)?;
        assert!(packed(&qkv, &[2, 2], 3).is_err());
        assert!(packed(&qkv, &[5], 5).is_err());
        Ok(())
    }
}
