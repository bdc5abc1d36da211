//! Small dense heads over encoder states, applied in plain Rust on the caller's thread: a head
//! is a few hundred multiply-adds per vector, far less than the hand-off to the model thread.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

/// `outputs = weight · inputs + bias`, with `weight` stored `[outputs, inputs]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct DenseHead {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl DenseHead {
    /// Reads `{prefix}.weight` and `{prefix}.bias` from `tensors`.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<Self> {
        let get = |name: &str| {
            tensors.get(&format!("{prefix}.{name}")).with_context(|| format!("missing tensor {prefix}.{name}"))
        };
        let weight = get("weight")?.to_dtype(DType::F32)?;
        let (outputs, inputs) = weight.dims2().with_context(|| format!("{prefix}.weight is not a matrix"))?;
        let bias = get("bias")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        ensure!(bias.len() == outputs, "{prefix}.bias has {} entries for {outputs} outputs", bias.len());
        Ok(Self { weight: weight.flatten_all()?.to_vec1()?, bias, inputs })
    }

    /// A head from a row-major `[outputs, inputs]` weight and its bias.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Result<Self> {
        ensure!(
            !bias.is_empty() && weight.len().is_multiple_of(bias.len()),
            "a {}-entry weight does not fit {} outputs",
            weight.len(),
            bias.len()
        );
        let inputs = weight.len() / bias.len();
        Ok(Self { weight, bias, inputs })
    }

    /// `{prefix}.weight` and `{prefix}.bias`, as [`Self::from_tensors`] reads them.
    pub fn to_tensors(&self, prefix: &str) -> Result<HashMap<String, Tensor>> {
        let device = candle_core::Device::Cpu;
        Ok(HashMap::from([
            (
                format!("{prefix}.weight"),
                Tensor::from_vec(self.weight.clone(), (self.outputs(), self.inputs), &device)?,
            ),
            (format!("{prefix}.bias"), Tensor::from_vec(self.bias.clone(), self.outputs(), &device)?),
        ]))
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// Logits for one input vector (which must have [`Self::inputs`] entries).
    pub fn apply(&self, input: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.inputs)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(input).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect()
    }
}

/// Loads the heads named `prefixes` from a safetensors file.
pub fn load_heads(path: &std::path::Path, prefixes: &[&str]) -> Result<Vec<DenseHead>> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    prefixes
        .iter()
        .map(|prefix| DenseHead::from_tensors(&tensors, prefix).with_context(|| format!("in {}", path.display())))
        .collect()
}

/// Loads head `prefix` from a safetensors file and checks it maps `inputs` values to `outputs`.
pub fn load_head(path: &std::path::Path, prefix: &str, outputs: usize, inputs: usize) -> Result<DenseHead> {
    let head = load_heads(path, &[prefix])?.remove(0);
    ensure!(
        head.outputs() == outputs && head.inputs() == inputs,
        "{prefix} in {} must be {outputs}×{inputs}, not {}×{}",
        path.display(),
        head.outputs(),
        head.inputs()
    );
    Ok(head)
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn round_trips_through_tensors() -> Result<()> {
        let head = DenseHead::new(vec![1.0, 2.0, 0.0, -1.0], vec![0.5, 1.0])?;
        let back = DenseHead::from_tensors(&head.to_tensors("h")?, "h")?;
        assert_eq!(back.apply(&[3.0, 4.0]), vec![11.5, -3.0]);
        assert!(DenseHead::new(vec![1.0, 2.0, 3.0], vec![0.0, 0.0]).is_err());
        Ok(())
    }

    #[test]
    fn applies_weight_rows_and_bias() -> Result<()> {
        let mut tensors = HashMap::new();
        tensors.insert("h.weight".to_string(), Tensor::new(&[[1f32, 2.0], [0.0, -1.0]], &Device::Cpu)?);
        tensors.insert("h.bias".to_string(), Tensor::new(&[0.5f32, 1.0], &Device::Cpu)?);
        let head = DenseHead::from_tensors(&tensors, "h")?;
        assert_eq!(head.apply(&[3.0, 4.0]), vec![11.5, -3.0]);
        assert!(DenseHead::from_tensors(&tensors, "missing").is_err());
        Ok(())
    }
}
