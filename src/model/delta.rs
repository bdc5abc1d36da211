//! Fine-tuned weight matrices stored as int8 differences from the base checkpoint.
//!
//! A task model changes only a few top layers of the shared encoder, and each matrix moves a
//! little from its base value. Storing `tuned - base` in 8 bits with one scale per row costs a
//! quarter of f32 (half of f16) and, because the difference is small next to the weight, loses
//! far less than quantizing the weight itself: the rounding error is at most half a step of the
//! row's largest change. The committed task weights stay a few MB.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;

/// `{name}{CODES}`: the row-wise int8 codes of `tuned - base`, stored as `u8` offset by 128.
pub const CODES: &str = ".delta_q8";
/// `{name}{SCALES}`: one f32 step per row.
pub const SCALES: &str = ".delta_scale";

const OFFSET: f32 = 128.0;

/// Encodes the matrix `tuned` as its difference from `base`: `(codes, scales)`.
pub fn encode(tuned: &Tensor, base: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rows, columns) = tuned.dims2().context("only matrices are stored as deltas")?;
    if base.dims() != tuned.dims() {
        bail!("tuned {:?} and base {:?} differ in shape", tuned.dims(), base.dims());
    }
    let diff = (tuned.to_dtype(DType::F32)? - base.to_dtype(DType::F32)?)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let mut codes = Vec::with_capacity(rows * columns);
    let mut scales = Vec::with_capacity(rows);
    for row in &diff {
        let largest = row.iter().fold(0f32, |m, d| m.max(d.abs()));
        let step = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        scales.push(step);
        codes.extend(row.iter().map(|d| ((d / step).round().clamp(-127.0, 127.0) + OFFSET) as u8));
    }
    Ok((Tensor::from_vec(codes, (rows, columns), &Device::Cpu)?, Tensor::from_vec(scales, rows, &Device::Cpu)?))
}

/// The matrix `base + codes · scale`, in f32.
pub fn decode(base: &Tensor, codes: &Tensor, scales: &Tensor) -> Result<Tensor> {
    let (rows, _) = codes.dims2().context("delta codes must be a matrix")?;
    if base.dims() != codes.dims() || scales.dims() != [rows] {
        bail!("delta {:?} with {:?} scales does not fit base {:?}", codes.dims(), scales.dims(), base.dims());
    }
    let device = base.device();
    let steps = (codes.to_device(device)?.to_dtype(DType::F32)? - OFFSET as f64)?;
    let diff = steps.broadcast_mul(&scales.to_device(device)?.to_dtype(DType::F32)?.unsqueeze(1)?)?;
    Ok((base.to_dtype(DType::F32)? + diff)?)
}

/// The base checkpoint with some tensors replaced: tensors in the override files are used as
/// they are, deltas are applied to the base tensor of the same name.
pub struct Overlay {
    base: MmapedSafetensors,
    replaced: HashMap<String, Tensor>,
}

impl Overlay {
    /// Maps `base` and reads `overrides` (later files win).
    pub fn open(base: &Path, overrides: &[PathBuf]) -> Result<Self> {
        // SAFETY: the file is memory-mapped read-only; Concord never writes model files while serving.
        let base = unsafe { MmapedSafetensors::new(base) }.with_context(|| format!("mapping {}", base.display()))?;
        let mut replaced = HashMap::new();
        for path in overrides {
            let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .with_context(|| format!("reading {}", path.display()))?;
            let names: Vec<String> = tensors.keys().filter_map(|n| n.strip_suffix(CODES)).map(str::to_owned).collect();
            for name in names {
                let codes = tensors.remove(&format!("{name}{CODES}")).context("codes vanished")?;
                let scales = tensors
                    .remove(&format!("{name}{SCALES}"))
                    .with_context(|| format!("{} has {name}{CODES} but no {name}{SCALES}", path.display()))?;
                let original = base
                    .load(&name, &Device::Cpu)
                    .with_context(|| format!("{} changes {name}, which the base lacks", path.display()))?;
                let tuned = decode(&original, &codes, &scales).with_context(|| format!("applying {name}"))?;
                replaced.insert(name, tuned);
            }
            replaced.extend(tensors);
        }
        Ok(Self { base, replaced })
    }

    fn tensor(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        match self.replaced.get(name) {
            Some(tensor) => tensor.to_device(device)?.to_dtype(dtype),
            None => self.base.load(name, device)?.to_dtype(dtype),
        }
    }
}

impl SimpleBackend for Overlay {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.tensor(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.replaced.contains_key(name) || self.base.get(name).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_change_survives_the_round_trip_within_half_a_step() -> Result<()> {
        let base = Tensor::randn(0f32, 0.05, (48, 96), &Device::Cpu)?;
        let change = Tensor::randn(0f32, 0.002, (48, 96), &Device::Cpu)?;
        let tuned = (&base + &change)?;
        let (codes, scales) = encode(&tuned, &base)?;
        assert_eq!(codes.dtype(), DType::U8);
        let decoded = decode(&base, &codes, &scales)?;
        let error = (decoded - &tuned)?.abs()?.to_vec2::<f32>()?;
        let scales = scales.to_vec1::<f32>()?;
        for (row, step) in error.iter().zip(&scales) {
            assert!(row.iter().all(|e| *e <= step / 2.0 + 1e-7), "error above half a step {step}");
        }
        let largest_change = change.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scales.iter().all(|s| *s <= largest_change / 127.0 + 1e-9));
        Ok(())
    }

    #[test]
    fn an_unchanged_matrix_decodes_exactly() -> Result<()> {
        let base = Tensor::randn(0f32, 1.0, (4, 8), &Device::Cpu)?;
        let (codes, scales) = encode(&base, &base)?;
        let decoded = decode(&base, &codes, &scales)?;
        assert_eq!(decoded.to_vec2::<f32>()?, base.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_refused() -> Result<()> {
        let base = Tensor::zeros((4, 8), DType::F32, &Device::Cpu)?;
        let other = Tensor::zeros((8, 4), DType::F32, &Device::Cpu)?;
        assert!(encode(&other, &base).is_err());
        let (codes, scales) = encode(&base, &base)?;
        assert!(decode(&other, &codes, &scales).is_err());
        Ok(())
    }
}
