//! Logistic and softmax regression by full-batch optimisation: deterministic (no sampling), and
//! plenty for the few hundred to few ten thousand examples of Concord's scorers and heads.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

use crate::model::heads::DenseHead;

/// Full-batch Adam steps per softmax fit: the problem is convex and small.
const SOFTMAX_STEPS: usize = 600;
const SOFTMAX_LEARNING_RATE: f32 = 0.05;

/// What a softmax regression is fitted to, one row of `classes` values per example.
pub enum Targets {
    /// Each row is one class's weight (the example's share of the mean loss) and zeros: the
    /// loss is the weighted cross-entropy.
    Weighted(Vec<f32>),
    /// Each row of `mask` marks with 1 the classes the example allows (one for a plain label,
    /// several for a coarser one such as RTE's `not_entailment`): the loss is the mean of
    /// −log Σ_allowed p, each example's term scaled by its entry in `weights` (mean 1).
    Allowed { mask: Vec<f32>, weights: Vec<f32> },
}

impl Targets {
    /// The loss's gradient with respect to one example's logits `z`, whose softmax is `p`;
    /// `row` is the example's row of targets and `n` the number of examples.
    fn logit_gradient(&self, row: usize, z: &[f32], p: &[f32], n: usize, out: &mut [f32]) {
        let classes = z.len();
        match self {
            Targets::Weighted(t) => {
                let t = &t[row * classes..(row + 1) * classes];
                let total: f32 = t.iter().sum();
                for c in 0..classes {
                    out[c] = p[c] * total - t[c];
                }
            }
            Targets::Allowed { mask, weights } => {
                // p minus the softmax over the allowed classes only, taken in log space so a
                // confidently wrong example cannot divide by zero.
                let mask = &mask[row * classes..(row + 1) * classes];
                let scale = weights[row] / n as f32;
                let top = (0..classes).filter(|&c| mask[c] > 0.0).map(|c| z[c]).fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..classes).filter(|&c| mask[c] > 0.0).map(|c| (z[c] - top).exp()).sum();
                let log_total = top + sum.ln();
                for c in 0..classes {
                    let q = if mask[c] > 0.0 { (z[c] - log_total).exp() } else { 0.0 };
                    out[c] = (p[c] - q) * scale;
                }
            }
        }
    }
}

/// Adam (no weight decay) over one flat parameter vector.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
}

impl Adam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPSILON: f32 = 1e-8;

    fn new(parameters: usize) -> Self {
        Self { m: vec![0.0; parameters], v: vec![0.0; parameters], step: 0 }
    }

    fn update(&mut self, parameters: &mut [f32], gradient: &[f32], rate: f32) {
        self.step += 1;
        let (correct_m, correct_v) = (1.0 - Self::BETA1.powi(self.step), 1.0 - Self::BETA2.powi(self.step));
        for (((p, g), m), v) in parameters.iter_mut().zip(gradient).zip(&mut self.m).zip(&mut self.v) {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p -= rate * (*m / correct_m) / ((*v / correct_v).sqrt() + Self::EPSILON);
        }
    }
}

/// Softmax regression over `rows` with L2 penalty `l2` on the weights. Inputs from
/// `scaled_from` on are standardised, those before are not (coordinates of unit embeddings are
/// small, so the penalty holds them back more than a few hand-made features, which
/// cross-validation prefers). The head returned reads raw inputs: the standardisation is folded in.
///
/// The gradient is written out rather than left to autograd, which would copy the transposed
/// inputs (tens of megabytes) on every step; here they are laid out once.
pub fn fit_softmax(
    rows: &[&[f32]],
    scaled_from: usize,
    targets: Targets,
    classes: usize,
    l2: f32,
) -> Result<DenseHead> {
    ensure!(!rows.is_empty() && classes > 0, "no examples to fit");
    let (n, inputs) = (rows.len(), rows[0].len());
    let (mut mean, mut std) = standardize_stats(rows);
    mean[..scaled_from.min(inputs)].fill(0.0);
    std[..scaled_from.min(inputs)].fill(1.0);
    let standardized: Vec<f32> =
        rows.iter().flat_map(|r| r.iter().zip(&mean).zip(&std).map(|((x, m), s)| (x - m) / s)).collect();
    let device = Device::Cpu;
    let x = Tensor::from_vec(standardized, (n, inputs), &device)?;
    let x_t = x.t()?.contiguous()?;
    // Weights `[inputs, classes]` row-major, then the biases.
    let mut parameters = vec![0f32; inputs * classes + classes];
    let mut adam = Adam::new(parameters.len());
    let mut gradient = vec![0f32; parameters.len()];
    let mut logit_gradients = vec![0f32; n * classes];
    for _ in 0..SOFTMAX_STEPS {
        let (weight, bias) = parameters.split_at(inputs * classes);
        let logits =
            x.matmul(&Tensor::from_slice(weight, (inputs, classes), &device)?)?.flatten_all()?.to_vec1::<f32>()?;
        for (row, (z, g)) in logits.chunks(classes).zip(logit_gradients.chunks_mut(classes)).enumerate() {
            let z: Vec<f32> = z.iter().zip(bias).map(|(z, b)| z + b).collect();
            let p = crate::model::heads::softmax(&z);
            targets.logit_gradient(row, &z, &p, n, g);
        }
        let g = Tensor::from_slice(&logit_gradients, (n, classes), &device)?;
        let weight_gradient = x_t.matmul(&g)?.flatten_all()?.to_vec1::<f32>()?;
        for ((out, g), w) in gradient.iter_mut().zip(&weight_gradient).zip(weight) {
            *out = g + 2.0 * l2 * w;
        }
        for c in 0..classes {
            gradient[inputs * classes + c] = logit_gradients.iter().skip(c).step_by(classes).sum();
        }
        adam.update(&mut parameters, &gradient, SOFTMAX_LEARNING_RATE);
    }
    let (weight, bias) = parameters.split_at(inputs * classes);
    let mut bias = bias.to_vec();
    let mut raw_weight = Vec::with_capacity(classes * inputs);
    for (c, b) in bias.iter_mut().enumerate() {
        for ((i, m), s) in mean.iter().enumerate().zip(&std) {
            let w = weight[i * classes + c];
            raw_weight.push(w / s);
            *b -= w * m / s;
        }
    }
    DenseHead::new(raw_weight, bias)
}

/// Standardisation statistics per feature (std floored so constant features stay finite).
pub fn standardize_stats<R: AsRef<[f32]>>(rows: &[R]) -> (Vec<f32>, Vec<f32>) {
    let dims = rows.first().map_or(0, |r| r.as_ref().len());
    let n = rows.len().max(1) as f32;
    let mut mean = vec![0f32; dims];
    for row in rows {
        for (m, x) in mean.iter_mut().zip(row.as_ref()) {
            *m += x / n;
        }
    }
    let mut std = vec![0f32; dims];
    for row in rows {
        for ((s, x), m) in std.iter_mut().zip(row.as_ref()).zip(&mean) {
            *s += (x - m).powi(2) / n;
        }
    }
    (mean, std.into_iter().map(|v| v.sqrt().max(1e-3)).collect())
}

/// Fits weights and bias on standardised `rows` with labels in {0, 1} and L2 penalty `l2`.
pub fn fit(rows: &[Vec<f32>], labels: &[f32], l2: f32, iterations: usize) -> (Vec<f32>, f32) {
    let dims = rows.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f32;
    let (mut w, mut b) = (vec![0f32; dims], 0f32);
    let rate = 0.5;
    for _ in 0..iterations {
        let mut grad_w = vec![0f32; dims];
        let mut grad_b = 0f32;
        for (row, &y) in rows.iter().zip(labels) {
            let z: f32 = row.iter().zip(&w).map(|(x, w)| x * w).sum::<f32>() + b;
            let error = 1.0 / (1.0 + (-z).exp()) - y;
            for (g, x) in grad_w.iter_mut().zip(row) {
                *g += error * x / n;
            }
            grad_b += error / n;
        }
        for (wi, g) in w.iter_mut().zip(&grad_w) {
            *wi -= rate * (g + l2 * *wi);
        }
        b -= rate * grad_b;
    }
    (w, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_separable_rule() {
        let rows: Vec<Vec<f32>> = (0..40).map(|i| vec![(i as f32 - 20.0) / 10.0]).collect();
        let labels: Vec<f32> = (0..40).map(|i| if i >= 20 { 1.0 } else { 0.0 }).collect();
        let (w, b) = fit(&rows, &labels, 0.0, 500);
        assert!(w[0] > 1.0, "weight {w:?}");
        let predict = |x: f32| 1.0 / (1.0 + (-(x * w[0] + b)).exp());
        assert!(predict(1.5) > 0.8 && predict(-1.5) < 0.2);
    }

    /// Rows with a coarse label (classes 1 or 2) teach the model their total; rows with a fine
    /// one tell 1 from 2.
    #[test]
    fn allowed_sets_train_the_probability_of_the_set() -> anyhow::Result<()> {
        let mut rows = Vec::new();
        let mut mask = Vec::new();
        for i in 0..90 {
            let class = i % 3;
            rows.push(vec![if class == 0 { 1.0 } else { -1.0 }, if class == 2 { 1.0 } else { -1.0 }]);
            let allowed = match (class, i % 2) {
                (0, _) => [1.0, 0.0, 0.0],
                (_, 0) => [0.0, 1.0, 1.0],
                (c, _) => [0.0, if c == 1 { 1.0 } else { 0.0 }, if c == 2 { 1.0 } else { 0.0 }],
            };
            mask.extend(allowed);
        }
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let weights = vec![1.0; rows.len()];
        let head = fit_softmax(&refs, 0, Targets::Allowed { mask, weights }, 3, 1e-4)?;
        let p = |x: [f32; 2]| crate::model::heads::softmax(&head.apply(&x));
        let (zero, one, two) = (p([1.0, -1.0]), p([-1.0, -1.0]), p([-1.0, 1.0]));
        assert!(zero[0] > 0.9 && one[1] > 0.8 && two[2] > 0.8, "{zero:?} {one:?} {two:?}");
        Ok(())
    }
}
