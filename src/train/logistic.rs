//! Binary logistic regression by full-batch gradient descent: deterministic (no sampling), and
//! plenty for the few hundred to few thousand examples of Concord's scorers.

/// Standardisation statistics per feature (std floored so constant features stay finite).
pub fn standardize_stats(rows: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let dims = rows.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f32;
    let mut mean = vec![0f32; dims];
    for row in rows {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / n;
        }
    }
    let mut std = vec![0f32; dims];
    for row in rows {
        for ((s, x), m) in std.iter_mut().zip(row).zip(&mean) {
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
}
