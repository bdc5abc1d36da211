//! Int8 linear layers for CPU inference (`--dtype q8`), on AVX-512 VNNI or AVX2.
//!
//! Weights are quantized once at load, symmetric per output channel, and packed in the order the
//! kernel reads them; activations are quantized per token (asymmetric, so GELU's one-sided
//! outputs keep their resolution) on every call. `vpdpbusd` multiplies 64 unsigned activation
//! bytes by 64 signed weight bytes and adds them into 16 i32 lanes per instruction: four times
//! the multiply-adds of an f32 FMA, and a quarter of the weight bytes to stream.
//!
//! Without VNNI, AVX2's `vpmaddubsw` + `vpmaddwd` compute the same sums, but the first adds two
//! byte products into a saturating i16: 255·127·2 would overflow, so there the weights keep 7
//! bits (±63, ONNX Runtime's "reduce range" for the same instructions), which cannot. (Holding
//! only pairs of neighbours to |q₀| + |q₁| ≤ 128 was tried: 5% of the default model's pairs
//! exceed it, and the cosine to f32 dropped further.) Each channel's step is chosen to minimise
//! the squared error, clipping its few largest weights where that gives finer steps.
//!
//! With `x ≈ sx·(qx − zx)` and `w ≈ sw·qw`, each output is
//! `sx·sw·(Σ qx·qw − zx·Σ qw) + bias`; the column sums `Σ qw` are computed at load.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, DType, Result, Tensor};
use rayon::prelude::*;

use super::tiles::{self, TileShape, LANES};

/// Whether BERT-family encoders loaded from now on quantize their linear layers. A process-wide
/// choice made once at start-up (`--dtype q8`), so the many model-loading paths need no extra
/// parameter; encoders loaded before it is turned on stay f32.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns int8 linear layers on for encoders loaded from now on; fails on CPUs without the
/// instructions.
pub fn enable() -> anyhow::Result<()> {
    if !supported() {
        anyhow::bail!("dtype q8 needs a CPU with AVX-512 VNNI or AVX2; use f32");
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// True when the int8 kernel keeps 8-bit weights on this CPU (AVX2's keeps 7).
pub fn full_byte_weights() -> bool {
    Isa::detect() == Some(Isa::Vnni)
}

/// True when this CPU has the instructions an int8 kernel needs.
pub fn supported() -> bool {
    Isa::detect().is_some()
}

/// The instruction set the kernel runs with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Vnni,
    Avx2,
}

impl Isa {
    /// Every kernel this CPU can run, fastest first.
    fn available() -> Vec<Self> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                isas.push(Self::Vnni);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(Self::Avx2);
            }
        }
        isas
    }

    fn detect() -> Option<Self> {
        Self::available().first().copied()
    }

    fn tile(self) -> TileShape {
        match self {
            Self::Vnni => tiles::AVX512_TILE,
            // 4 × 2 accumulators, 2 weight registers, a broadcast, a product and the ones.
            Self::Avx2 => TileShape { rows: 4, blocks: 1 },
        }
    }

    /// The largest weight magnitude after quantization.
    fn weight_levels(self) -> f32 {
        match self {
            Self::Vnni => 127.0,
            Self::Avx2 => 63.0,
        }
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
    isa: Isa,
}

impl Int8Linear {
    /// Quantizes `weight` (`[outputs, inputs]`, as stored by PyTorch) and keeps `bias` in f32.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let Some(isa) = Isa::detect() else { bail!("int8 inference needs AVX-512 VNNI or AVX2") };
        Self::with_isa(weight, bias, isa)
    }

    /// `isa` must be one of [`Isa::available`].
    fn with_isa(weight: &Tensor, bias: Option<&Tensor>, isa: Isa) -> Result<Self> {
        let levels = isa.weight_levels();
        let (outputs, inputs) = weight.dims2()?;
        let rows = weight.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        let padded_inputs = inputs.div_ceil(4) * 4;
        let blocks = outputs.div_ceil(LANES);
        let mut packed = vec![0i8; blocks * padded_inputs * LANES];
        let mut scales = vec![0f32; blocks * LANES];
        let mut column_sums = vec![0i32; blocks * LANES];
        // The step search costs a few passes over each row: rows in parallel keep loading fast.
        let steps: Vec<f32> = rows.par_iter().map(|row| weight_step(row, levels)).collect();
        for (channel, (row, &step)) in rows.iter().zip(&steps).enumerate() {
            scales[channel] = step;
            let (block, lane) = (channel / LANES, channel % LANES);
            for (k, w) in row.iter().enumerate() {
                let q = (w / step).round().clamp(-levels, levels) as i8;
                column_sums[channel] += i32::from(q);
                packed[((block * padded_inputs / 4 + k / 4) * LANES + lane) * 4 + k % 4] = q;
            }
        }
        let bias = tiles::padded_bias(bias, outputs)?;
        Ok(Self { outputs, inputs, padded_inputs, packed, scales, column_sums, bias, isa })
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

    fn run(&self, xs: &[f32], rows: usize, out: &mut [std::mem::MaybeUninit<f32>]) {
        let activations = quantize_rows(xs, rows, self.inputs, self.padded_inputs);
        let blocks = self.scales.len() / LANES;
        tiles::for_each_tile(rows, blocks, self.isa.tile(), out, |row, rows, block, blocks, out| {
            #[cfg(target_arch = "x86_64")]
            {
                let first_column = block * LANES;
                // SAFETY: `new` chose `isa` from what this CPU has; the pointers cover this
                // tile's activation rows, weight blocks and outputs, which no other tile writes.
                unsafe {
                    let tile = x86::Tile {
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
                    match self.isa {
                        Isa::Vnni => {
                            use x86::vnni as kernel;
                            tiles::dispatch_tile!(kernel, rows, blocks, &tile)
                        }
                        Isa::Avx2 => {
                            use x86::avx2 as kernel;
                            tiles::dispatch_rows!(kernel, rows, &tile)
                        }
                    }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (&activations, row, rows, block, blocks, out);
                unreachable!("Int8Linear::new refuses CPUs without AVX-512 VNNI or AVX2");
            }
        });
    }
}

/// The quantization step of one output channel's weights: the one, among steps that map
/// the largest weight or a clipped fraction of it to `levels`, with the least squared error.
/// Clipping the few largest weights buys finer steps for all the others.
fn weight_step(row: &[f32], levels: f32) -> f32 {
    let largest = row.iter().fold(0f32, |m, w| m.max(w.abs()));
    if largest == 0.0 {
        return 1.0;
    }
    // Adding and subtracting 1.5·2²³ rounds to an integer without a libm call, so the search
    // vectorises (it differs from `round` only at exact halves, which barely move the error).
    const ROUND: f32 = 12_582_912.0;
    let squared_error = |step: f32| -> f32 {
        let inverse = 1.0 / step;
        row.iter()
            .map(|w| {
                let q = ((w * inverse + ROUND) - ROUND).clamp(-levels, levels);
                (w - q * step).powi(2)
            })
            .sum()
    };
    (0..=20)
        .map(|i| largest * (1.0 - 0.02 * i as f32) / levels)
        .min_by(|a, b| squared_error(*a).total_cmp(&squared_error(*b)))
        .unwrap_or(largest / levels)
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
mod x86 {
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
    pub unsafe fn vnni<const R: usize, const B: usize>(tile: &Tile) {
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

    /// [`vnni`] for `R` rows and one block, as two 8-lane halves, with `vpmaddubsw` (pairs of
    /// byte products into i16; the 7-bit weights keep them from saturating) and `vpmaddwd`
    /// (pairs of those into i32).
    ///
    /// # Safety
    /// The CPU must have AVX2; the pointers must cover `R` rows and one block, the slices `R`
    /// rows and 16 columns, and `out` must be this thread's to write.
    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2<const R: usize>(tile: &Tile) {
        const HALF: usize = LANES / 2;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..tile.groups {
            let low = _mm256_loadu_si256(tile.weights.add(g * 64).cast());
            let high = _mm256_loadu_si256(tile.weights.add(g * 64 + 32).cast());
            for (r, [acc_low, acc_high]) in acc.iter_mut().enumerate() {
                let bytes = tile.activations.add(r * tile.stride + g * 4).cast::<i32>().read_unaligned();
                let x = _mm256_set1_epi32(bytes);
                *acc_low = _mm256_add_epi32(*acc_low, _mm256_madd_epi16(_mm256_maddubs_epi16(x, low), ones));
                *acc_high = _mm256_add_epi32(*acc_high, _mm256_madd_epi16(_mm256_maddubs_epi16(x, high), ones));
            }
        }
        let valid = tile.columns.min(LANES);
        for (r, halves) in acc.iter().enumerate() {
            let row_scale = _mm256_set1_ps(tile.row_scales[r]);
            let row_zero = _mm256_set1_epi32(tile.row_zeros[r]);
            let mut values = [0f32; LANES];
            for (h, acc) in halves.iter().enumerate() {
                let column = h * HALF;
                let sums = _mm256_loadu_si256(tile.column_sums[column..].as_ptr().cast());
                let exact = _mm256_sub_epi32(*acc, _mm256_mullo_epi32(row_zero, sums));
                let scale = _mm256_mul_ps(row_scale, _mm256_loadu_ps(tile.column_scales[column..].as_ptr()));
                let bias = _mm256_loadu_ps(tile.bias[column..].as_ptr());
                let value = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), scale), bias);
                _mm256_storeu_ps(values[column..].as_mut_ptr(), value);
            }
            std::ptr::copy_nonoverlapping(values.as_ptr(), tile.out.add(r * tile.out_stride), valid);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module};

    use super::*;

    /// Checks every kernel this CPU can run against candle's f32 Linear.
    fn compare(rows: usize, inputs: usize, outputs: usize, bias: bool) -> Result<()> {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.05, (outputs, inputs), &device)?;
        let bias = if bias { Some(Tensor::randn(0f32, 0.1, outputs, &device)?) } else { None };
        // GELU-like one-sided activations, the hardest case for symmetric schemes.
        let xs = Tensor::randn(0f32, 1.0, (rows, inputs), &device)?.gelu_erf()?;
        let exact = candle_nn::Linear::new(weight.clone(), bias.clone()).forward(&xs)?;
        let spread = exact.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        for isa in Isa::available() {
            let quantized = Int8Linear::with_isa(&weight, bias.as_ref(), isa)?.forward(&xs)?;
            assert_eq!(quantized.dims(), exact.dims());
            let error = (&quantized - &exact)?.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
            // 8-bit steps (7 for AVX2's weights) leave 1-2% rms noise on random data; a wrong
            // index or correction shows as an error the size of the output itself.
            assert!(error < 0.02 * spread, "{isa:?} {rows}×{inputs}→{outputs}: rms error {error} against rms {spread}");
        }
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
        let weight = Tensor::randn(0f32, 1.0, (20, 8), &Device::Cpu)?;
        let bias = Tensor::arange(0f32, 20.0, &Device::Cpu)?;
        let zeros = Tensor::zeros((2, 8), DType::F32, &Device::Cpu)?;
        for isa in Isa::available() {
            let out = Int8Linear::with_isa(&weight, Some(&bias), isa)?.forward(&zeros)?;
            assert_eq!(out.to_vec2::<f32>()?[1], bias.to_vec1::<f32>()?, "{isa:?}");
        }
        Ok(())
    }
}
