//! An f32 linear layer with its weights packed once at load, for AVX-512 or AVX2 + FMA CPUs.
//!
//! candle's matmul (the `gemm` crate) repacks the weight matrix on every call. For a batch of
//! thousands of tokens that cost is spread thin; for one short sentence (a dozen tokens) it is
//! a large share of the layer (27% of a batch-1 profile, benches/RESULTS.md). Here the weights
//! are laid out once in the order the kernel reads them, and the kernel keeps a tile of outputs
//! in registers: 6 × 64 with AVX-512's 32 registers, 6 × 16 with AVX2's 16.

use candle_core::{bail, DType, Result, Tensor};

use super::tiles::{self, TileShape, LANES};

/// The instruction set the kernel runs with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// Every kernel this CPU can run, fastest first.
    fn available() -> Vec<Self> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
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
            Self::Avx512 => tiles::AVX512_TILE,
            // 6 × 2 accumulators, 2 weight registers and a broadcast: 15 of 16 registers.
            Self::Avx2 => TileShape { rows: 6, blocks: 1 },
        }
    }
}

/// True when this CPU can run the packed kernel.
pub fn supported() -> bool {
    Isa::detect().is_some()
}

/// `y = x·Wᵀ + b` with `W` packed as `[blocks of 16 outputs][inputs][16]`.
pub struct PackedLinear {
    outputs: usize,
    inputs: usize,
    packed: Vec<f32>,
    /// Padded to whole blocks; zero when the layer has none.
    bias: Vec<f32>,
    isa: Isa,
}

impl PackedLinear {
    /// Packs `weight` (`[outputs, inputs]`, as stored by PyTorch).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let Some(isa) = Isa::detect() else { bail!("the packed f32 kernel needs AVX-512 or AVX2 with FMA") };
        Self::with_isa(weight, bias, isa)
    }

    /// `isa` must be one of [`Isa::available`].
    fn with_isa(weight: &Tensor, bias: Option<&Tensor>, isa: Isa) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        let rows = weight.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        let blocks = outputs.div_ceil(LANES);
        let mut packed = vec![0f32; blocks * inputs * LANES];
        for (channel, row) in rows.iter().enumerate() {
            let (block, lane) = (channel / LANES, channel % LANES);
            for (k, &w) in row.iter().enumerate() {
                packed[(block * inputs + k) * LANES + lane] = w;
            }
        }
        let bias = tiles::padded_bias(bias, outputs)?;
        Ok(Self { outputs, inputs, packed, bias, isa })
    }

    /// `xs`: `[tokens, inputs]` f32 on the CPU.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        tiles::forward(self, xs)
    }
}

impl tiles::TiledLinear for PackedLinear {
    const NAME: &'static str = "packed linear";

    fn shape(&self) -> (usize, usize) {
        (self.inputs, self.outputs)
    }

    fn run(&self, xs: &[f32], rows: usize, out: &mut [std::mem::MaybeUninit<f32>]) {
        let blocks = self.bias.len() / LANES;
        tiles::for_each_tile(rows, blocks, self.isa.tile(), out, |row, rows, block, blocks, out| {
            #[cfg(target_arch = "x86_64")]
            {
                let first_column = block * LANES;
                // SAFETY: `new` chose `isa` from what this CPU has; the pointers cover this
                // tile's input rows, weight blocks and outputs, which no other tile writes.
                unsafe {
                    let tile = x86::Tile {
                        activations: xs[row * self.inputs..].as_ptr(),
                        weights: self.packed[block * self.inputs * LANES..].as_ptr(),
                        inputs: self.inputs,
                        bias: &self.bias[first_column..],
                        out: out.at(row * self.outputs + first_column),
                        out_stride: self.outputs,
                        columns: (self.outputs - first_column).min(blocks * LANES),
                    };
                    match self.isa {
                        Isa::Avx512 => {
                            use x86::avx512 as kernel;
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
                let _ = (xs, row, rows, block, blocks, out);
                unreachable!("PackedLinear::new refuses CPUs without AVX-512 or AVX2");
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::model::tiles::{self, LANES};

    pub struct Tile<'a> {
        /// The tile's first input row; rows are `inputs` values apart.
        pub activations: *const f32,
        /// The tile's first packed block; blocks are `inputs · 16` values apart.
        pub weights: *const f32,
        pub inputs: usize,
        /// From the tile's first column on.
        pub bias: &'a [f32],
        pub out: *mut f32,
        pub out_stride: usize,
        /// Valid output columns in the tile (the last block may be partly padding).
        pub columns: usize,
    }

    /// `R` rows × `B` blocks of `x·Wᵀ + b`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; the pointers must cover `R` rows and `B` blocks, and `out`
    /// must be this thread's to write.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512<const R: usize, const B: usize>(tile: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        let block_values = tile.inputs * LANES;
        for k in 0..tile.inputs {
            let mut weights = [_mm512_setzero_ps(); B];
            for (b, weight) in weights.iter_mut().enumerate() {
                *weight = _mm512_loadu_ps(tile.weights.add(b * block_values + k * LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*tile.activations.add(r * tile.inputs + k));
                for (acc, weight) in acc.iter_mut().zip(&weights) {
                    *acc = _mm512_fmadd_ps(x, *weight, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let out = tile.out.add(r * tile.out_stride);
            for (b, acc) in acc.iter().enumerate() {
                let column = b * LANES;
                if column >= tile.columns {
                    break;
                }
                let value = _mm512_add_ps(*acc, _mm512_loadu_ps(tile.bias[column..].as_ptr()));
                tiles::store_lanes(out.add(column), value, tile.columns - column);
            }
        }
    }

    /// `R` rows × one block of `x·Wᵀ + b`, each block as two 8-lane halves.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the pointers must cover `R` rows and one block, and
    /// `out` must be this thread's to write.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<const R: usize>(tile: &Tile) {
        const HALF: usize = LANES / 2;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for k in 0..tile.inputs {
            let low = _mm256_loadu_ps(tile.weights.add(k * LANES));
            let high = _mm256_loadu_ps(tile.weights.add(k * LANES + HALF));
            for (r, [acc_low, acc_high]) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*tile.activations.add(r * tile.inputs + k));
                *acc_low = _mm256_fmadd_ps(x, low, *acc_low);
                *acc_high = _mm256_fmadd_ps(x, high, *acc_high);
            }
        }
        let bias = [_mm256_loadu_ps(tile.bias.as_ptr()), _mm256_loadu_ps(tile.bias[HALF..].as_ptr())];
        for (r, halves) in acc.iter().enumerate() {
            let mut values = [0f32; LANES];
            _mm256_storeu_ps(values.as_mut_ptr(), _mm256_add_ps(halves[0], bias[0]));
            _mm256_storeu_ps(values[HALF..].as_mut_ptr(), _mm256_add_ps(halves[1], bias[1]));
            let valid = tile.columns.min(LANES);
            std::ptr::copy_nonoverlapping(values.as_ptr(), tile.out.add(r * tile.out_stride), valid);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module};

    use super::*;

    /// Checks every kernel this CPU can run against candle's Linear.
    fn compare(rows: usize, inputs: usize, outputs: usize, bias: bool) -> Result<()> {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.05, (outputs, inputs), &device)?;
        let bias = if bias { Some(Tensor::randn(0f32, 0.1, outputs, &device)?) } else { None };
        let xs = Tensor::randn(0f32, 1.0, (rows, inputs), &device)?;
        let exact = candle_nn::Linear::new(weight.clone(), bias.clone()).forward(&xs)?;
        for isa in Isa::available() {
            let packed = PackedLinear::with_isa(&weight, bias.as_ref(), isa)?.forward(&xs)?;
            assert_eq!(packed.dims(), exact.dims());
            // Only the order of the additions differs.
            let error = (&packed - &exact)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(error < 1e-4, "{isa:?} {rows}×{inputs}→{outputs}: max error {error}");
        }
        Ok(())
    }

    #[test]
    fn matches_candles_linear_on_model_shapes() -> Result<()> {
        compare(1, 384, 1152, true)?;
        compare(13, 384, 1536, true)?;
        compare(40, 1536, 384, false)
    }

    #[test]
    fn handles_ragged_shapes() -> Result<()> {
        compare(7, 30, 21, true)?;
        compare(53, 5, 100, false)
    }
}
