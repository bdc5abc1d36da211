//! Fine-tuned weight matrices stored as differences from the base checkpoint.
//!
//! A task model changes only a few top layers of the shared encoder, and each matrix moves a
//! little from its base value. Storing `tuned - base` in 8 bits with one scale per row costs a
//! quarter of f32 (half of f16) and, because the difference is small next to the weight, loses
//! far less than quantizing the weight itself: the rounding error is at most half a step of the
//! row's largest change. A model trained with LoRA stores its difference as two thin factors
//! instead, `up · down`, which lets it adapt every layer for a fraction of one layer's size.
//! Either way the difference is applied once, at load time, so serving costs nothing extra and
//! the committed task weights stay a few MB.

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

/// `{name}{LORA_DOWN}`: the `[rank, inputs]` factor of a low-rank difference `up · down`.
pub const LORA_DOWN: &str = ".lora_down";
/// `{name}{LORA_UP}`: the `[outputs, rank]` factor of a low-rank difference `up · down`.
pub const LORA_UP: &str = ".lora_up";

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

/// The matrix `base + up · down`, in f32.
pub fn apply_low_rank(base: &Tensor, down: &Tensor, up: &Tensor) -> Result<Tensor> {
    let ((outputs, up_rank), (down_rank, inputs)) = (up.dims2()?, down.dims2()?);
    if up_rank != down_rank || base.dims() != [outputs, inputs] {
        bail!("low-rank factors {:?} · {:?} do not fit base {:?}", up.dims(), down.dims(), base.dims());
    }
    let device = base.device();
    let to_f32 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(DType::F32)?) };
    Ok((base.to_dtype(DType::F32)? + to_f32(up)?.matmul(&to_f32(down)?)?)?)
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
            let names: Vec<String> =
                tensors.keys().filter_map(|n| n.strip_suffix(LORA_DOWN)).map(str::to_owned).collect();
            for name in names {
                let down = tensors.remove(&format!("{name}{LORA_DOWN}")).context("factor vanished")?;
                let up = tensors
                    .remove(&format!("{name}{LORA_UP}"))
                    .with_context(|| format!("{} has {name}{LORA_DOWN} but no {name}{LORA_UP}", path.display()))?;
                let original = match replaced.get(&name) {
                    Some(tensor) => tensor.clone(),
                    None => base
                        .load(&name, &Device::Cpu)
                        .with_context(|| format!("{} changes {name}, which the base lacks", path.display()))?,
                };
                let tuned = apply_low_rank(&original, &down, &up).with_context(|| format!("applying {name}"))?;
                replaced.insert(name, tuned);
            }
            if let Some(stray) = tensors.keys().find(|n| n.ends_with(LORA_UP)) {
                bail!("{} has {stray} but not its {LORA_DOWN} factor", path.display());
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
    fn a_low_rank_difference_adds_the_product_of_its_factors() -> Result<()> {
        let cpu = &Device::Cpu;
        let base = Tensor::randn(0f32, 0.05, (6, 4), cpu)?;
        let down = Tensor::randn(0f32, 0.5, (2, 4), cpu)?.to_dtype(DType::F16)?;
        let up = Tensor::randn(0f32, 0.5, (6, 2), cpu)?.to_dtype(DType::F16)?;
        let tuned = apply_low_rank(&base, &down, &up)?.to_vec2::<f32>()?;
        let (b, d, u) = (
            base.to_vec2::<f32>()?,
            down.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            up.to_dtype(DType::F32)?.to_vec2::<f32>()?,
        );
        for (i, row) in tuned.iter().enumerate() {
            for (j, got) in row.iter().enumerate() {
                let want = b[i][j] + u[i][0] * d[0][j] + u[i][1] * d[1][j];
                assert!((got - want).abs() < 1e-5, "[{i}][{j}]: {got} vs {want}");
            }
        }
        let transposed = Tensor::zeros((4, 6), DType::F32, cpu)?;
        assert!(apply_low_rank(&transposed, &down, &up).is_err());
        assert!(apply_low_rank(&base, &down, &up.narrow(1, 0, 1)?).is_err());
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
