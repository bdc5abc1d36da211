//! Int8 linear layers for CPU inference (`--dtype q8`), on AVX-512 VNNI.
//!
//! Weights are quantized once at load, symmetric per output channel, and packed in the order the
//! kernel reads them; activations are quantized per token (asymmetric, so GELU's one-sided
//! outputs keep their resolution) on every call. `vpdpbusd` multiplies 64 unsigned activation
//! bytes by 64 signed weight bytes and adds them into 16 i32 lanes per instruction: four times
//! the multiply-adds of an f32 FMA, and a quarter of the weight bytes to stream.
//!
//! With `x ≈ sx·(qx − zx)` and `w ≈ sw·qw`, each output is
//! `sx·sw·(Σ qx·qw − zx·Σ qw) + bias`; the column sums `Σ qw` are computed at load.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, DType, Result, Tensor};
use rayon::prelude::*;

use super::tiles::{self, LANES};

/// Whether BERT-family encoders loaded from now on quantize their linear layers. A process-wide
/// choice made once at start-up (`--dtype q8`), so the many model-loading paths need no extra
/// parameter; encoders loaded before it is turned on stay f32.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns int8 linear layers on for encoders loaded from now on; fails on CPUs without VNNI.
pub fn enable() -> anyhow::Result<()> {
    if !supported() {
        anyhow::bail!("dtype q8 needs a CPU with AVX-512 VNNI (avx512_vnni in /proc/cpuinfo); use f32");
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// True when this CPU has the instructions the int8 kernel needs.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = x·Wᵀ + b` with `W` quantized to int8.
pub struct Int8Linear {
    outputs: usize,
    inputs: usize,
    /// `inputs` rounded up to a multiple of 4 (one `vpdpbusd` group).
    padded_inputs: usize,
    /// `[blocks][padded_inputs / 4][LANES][4]` signed bytes; padding is zero.
    packed: Vec<i8>,
    /// Per output channel (padded to whole blocks): the weight step and `Σ qw`.
    scales: Vec<f32>,
    column_sums: Vec<i32>,
    /// Zero when the layer has none.
    bias: Vec<f32>,
}

impl Int8Linear {
    /// Quantizes `weight` (`[outputs, inputs]`, as stored by PyTorch) and keeps `bias` in f32.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        if !supported() {
            bail!("int8 inference needs AVX-512 VNNI, which this CPU lacks");
        }
        let (outputs, inputs) = weight.dims2()?;
        let rows = weight.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        let padded_inputs = inputs.div_ceil(4) * 4;
        let blocks = outputs.div_ceil(LANES);
        let mut packed = vec![0i8; blocks * padded_inputs * LANES];
        let mut scales = vec![0f32; blocks * LANES];
        let mut column_sums = vec![0i32; blocks * LANES];
        for (channel, row) in rows.iter().enumerate() {
            let largest = row.iter().fold(0f32, |m, w| m.max(w.abs()));
            let step = if largest > 0.0 { largest / 127.0 } else { 1.0 };
            scales[channel] = step;
            let (block, lane) = (channel / LANES, channel % LANES);
            for (k, w) in row.iter().enumerate() {
                let q = (w / step).round().clamp(-127.0, 127.0) as i8;
                column_sums[channel] += i32::from(q);
                packed[((block * padded_inputs / 4 + k / 4) * LANES + lane) * 4 + k % 4] = q;
            }
        }
        let bias = tiles::padded_bias(bias, outputs)?;
        Ok(Self { outputs, inputs, padded_inputs, packed, scales, column_sums, bias })
    }

    /// `xs`: `[tokens, inputs]` f32 on the CPU.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        tiles::forward(self, xs)
    }
}

impl tiles::TiledLinear for Int8Linear {
    const NAME: &'static str = "int8 linear";

    fn shape(&self) -> (usize, usize) {
        (self.inputs, self.outputs)
    }

    fn run(&self, xs: &[f32], rows: usize, out: &mut [f32]) {
        let activations = quantize_rows(xs, rows, self.inputs, self.padded_inputs);
        let blocks = self.scales.len() / LANES;
        tiles::for_each_tile(rows, blocks, out, |row, rows, block, blocks, out| {
            #[cfg(target_arch = "x86_64")]
            {
                let first_column = block * LANES;
                // SAFETY: `new` refused CPUs without the kernel's features; the pointers cover
                // this tile's activation rows, weight blocks and outputs, which no other tile
                // writes.
                unsafe {
                    let tile = vnni::Tile {
                        activations: activations.values[row * self.padded_inputs..].as_ptr(),
                        stride: self.padded_inputs,
                        weights: self.packed[block * self.padded_inputs * LANES..].as_ptr(),
                        groups: self.padded_inputs / 4,
                        row_scales: &activations.scales[row..],
                        row_zeros: &activations.zeros[row..],
                        column_scales: &self.scales[first_column..],
                        column_sums: &self.column_sums[first_column..],
                        bias: &self.bias[first_column..],
                        out: out.at(row * self.outputs + first_column),
                        out_stride: self.outputs,
                        columns: (self.outputs - first_column).min(blocks * LANES),
                    };
                    use vnni::tile as kernel;
                    tiles::dispatch_tile!(kernel, rows, blocks, &tile)
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (&activations, row, rows, block, blocks, out);
                unreachable!("Int8Linear::new refuses CPUs without AVX-512 VNNI");
            }
        });
    }
}

/// Activations as unsigned bytes, `x ≈ scale·(q − zero)` per row.
struct Quantized {
    values: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

fn quantize_rows(xs: &[f32], rows: usize, inputs: usize, padded: usize) -> Quantized {
    let mut values = vec![0u8; rows * padded];
    let (scales, zeros): (Vec<f32>, Vec<i32>) = values
        .par_chunks_mut(padded)
        .zip(xs.par_chunks(inputs))
        .map(|(out, row)| {
            let (low, high) = row.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let scale = if high > low { (high - low) / 255.0 } else { 1.0 };
            let zero = (-low / scale).round().clamp(0.0, 255.0);
            let inverse = 1.0 / scale;
            // `v + 0.5` truncated rounds the non-negative `v`, and `as u8` saturates: the same
            // as round-and-clamp, in a form the compiler vectorises.
            let offset = zero + 0.5;
            for (q, &x) in out.iter_mut().zip(row) {
                *q = (x * inverse + offset) as u8;
            }
            // Padding inputs meet zero weights; reading as the zero point, they add nothing
            // once the correction is applied.
            out[inputs..].fill(zero as u8);
            (scale, zero as i32)
        })
        .unzip();
    debug_assert_eq!(scales.len(), rows);
    Quantized { values, scales, zeros }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use crate::model::tiles::{self, LANES};

    /// One micro-tile's inputs and where its outputs go.
    pub struct Tile<'a> {
        /// The tile's first activation row; rows are `stride` bytes apart.
        pub activations: *const u8,
        pub stride: usize,
        /// The tile's first packed block; blocks are `groups · 64` bytes apart.
        pub weights: *const i8,
        pub groups: usize,
        pub row_scales: &'a [f32],
        pub row_zeros: &'a [i32],
        /// From the tile's first column on.
        pub column_scales: &'a [f32],
        pub column_sums: &'a [i32],
        pub bias: &'a [f32],
        /// The tile's first output; rows are `out_stride` values apart.
        pub out: *mut f32,
        pub out_stride: usize,
        /// Valid output columns in the tile (the last block may be partly padding).
        pub columns: usize,
    }

    /// Sums `R` activation rows against `B` weight blocks and writes
    /// `row_scale · column_scale · (sum − row_zero · column_sum) + bias`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI; the pointers must cover `R` rows and `B` blocks,
    /// the slices `R` rows and `B · 16` columns, and `out` must be this thread's to write.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const R: usize, const B: usize>(tile: &Tile) {
        let mut acc = [[_mm512_setzero_si512(); B]; R];
        let block_bytes = tile.groups * 64;
        for g in 0..tile.groups {
            let mut weights = [_mm512_setzero_si512(); B];
            for (b, weight) in weights.iter_mut().enumerate() {
                *weight = _mm512_loadu_si512(tile.weights.add(b * block_bytes + g * 64).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let bytes = tile.activations.add(r * tile.stride + g * 4).cast::<i32>().read_unaligned();
                let x = _mm512_set1_epi32(bytes);
                for (acc, weight) in acc.iter_mut().zip(&weights) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, *weight);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row_scale = _mm512_set1_ps(tile.row_scales[r]);
            let row_zero = _mm512_set1_epi32(tile.row_zeros[r]);
            let out = tile.out.add(r * tile.out_stride);
            for (b, acc) in acc.iter().enumerate() {
                let column = b * LANES;
                if column >= tile.columns {
                    break;
                }
                let sums = _mm512_loadu_si512(tile.column_sums[column..].as_ptr().cast());
                let exact = _mm512_sub_epi32(*acc, _mm512_mullo_epi32(row_zero, sums));
                let scale = _mm512_mul_ps(row_scale, _mm512_loadu_ps(tile.column_scales[column..].as_ptr()));
                let bias = _mm512_loadu_ps(tile.bias[column..].as_ptr());
                let value = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, bias);
                tiles::store_lanes(out.add(column), value, tile.columns - column);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module};

    use super::*;

    fn compare(rows: usize, inputs: usize, outputs: usize, bias: bool) -> Result<()> {
        if !supported() {
            return Ok(());
        }
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.05, (outputs, inputs), &device)?;
        let bias = if bias { Some(Tensor::randn(0f32, 0.1, outputs, &device)?) } else { None };
        // GELU-like one-sided activations, the hardest case for symmetric schemes.
        let xs = Tensor::randn(0f32, 1.0, (rows, inputs), &device)?.gelu_erf()?;
        let exact = candle_nn::Linear::new(weight.clone(), bias.clone()).forward(&xs)?;
        let quantized = Int8Linear::new(&weight, bias.as_ref())?.forward(&xs)?;
        assert_eq!(quantized.dims(), exact.dims());
        let error = (&quantized - &exact)?.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        let spread = exact.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        // 8-bit steps on both sides leave about 1% rms noise on random data; a wrong index or
        // correction shows as an error the size of the output itself.
        assert!(error < 0.02 * spread, "{rows}×{inputs}→{outputs}: rms error {error} against rms {spread}");
        Ok(())
    }

    #[test]
    fn matches_the_f32_layer_on_model_shapes() -> Result<()> {
        compare(1, 384, 1152, true)?;
        compare(13, 384, 1536, true)?;
        compare(100, 1536, 384, false)
    }

    #[test]
    fn handles_ragged_shapes() -> Result<()> {
        // Rows not a multiple of the tile, inputs not a multiple of 4, outputs not of 16.
        compare(7, 30, 21, true)?;
        compare(53, 5, 100, false)
    }

    #[test]
    fn a_zero_row_gives_the_bias() -> Result<()> {
        if !supported() {
            return Ok(());
        }
        let weight = Tensor::randn(0f32, 1.0, (20, 8), &Device::Cpu)?;
        let bias = Tensor::arange(0f32, 20.0, &Device::Cpu)?;
        let out = Int8Linear::new(&weight, Some(&bias))?.forward(&Tensor::zeros((2, 8), DType::F32, &Device::Cpu)?)?;
        assert_eq!(out.to_vec2::<f32>()?[1], bias.to_vec1::<f32>()?);
        Ok(())
    }
}
