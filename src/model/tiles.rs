//! The parallel driver shared by Concord's own linear-layer kernels ([`super::int8`],
//! [`super::packed`]): the output `rows × outputs` is cut into tasks of rows × blocks of 16
//! output channels, so that both a long batch and a single short sentence keep every core busy,
//! and each task into micro-tiles of at most [`TileShape`] that a kernel computes in registers.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A linear layer computed by tiles: `[rows, inputs]` f32 in, `[rows, outputs]` f32 out.
pub trait TiledLinear {
    /// For error messages.
    const NAME: &'static str;
    /// `(inputs, outputs)`.
    fn shape(&self) -> (usize, usize);
    /// Writes every one of the outputs of `xs` (`rows × inputs`, row-major) into `out`
    /// (`rows × outputs`, not initialised on entry).
    fn run(&self, xs: &[f32], rows: usize, out: &mut [MaybeUninit<f32>]);
}

/// Applies `layer` to `xs` (`[tokens, inputs]` f32 on the CPU).
pub fn forward<L: TiledLinear>(layer: &L, xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Op(layer))
}

struct Op<'a, L>(&'a L);

impl<L: TiledLinear> CustomOp1 for Op<'_, L> {
    fn name(&self) -> &'static str {
        L::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { bail!("{} expects f32 activations", L::NAME) };
        let (rows, inputs) = layout.shape().dims2()?;
        let (expected, outputs) = self.0.shape();
        if inputs != expected {
            bail!("{} expects {expected} inputs, got {inputs}", L::NAME);
        }
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("{} needs contiguous input", L::NAME) };
        // Not zeroed first: the kernels store every output (zeroing showed as 2-5 % of profiles).
        let mut out = Vec::with_capacity(rows * outputs);
        self.0.run(&data[start..end], rows, &mut out.spare_capacity_mut()[..rows * outputs]);
        // SAFETY: `run` wrote all `rows × outputs` values (the tiles cover the whole output).
        unsafe { out.set_len(rows * outputs) };
        Ok((CpuStorage::F32(out), Shape::from((rows, outputs))))
    }
}

/// `bias` as f32, padded with zeros to whole blocks of [`LANES`]; all zeros without one.
pub fn padded_bias(bias: Option<&Tensor>, outputs: usize) -> Result<Vec<f32>> {
    let mut padded = vec![0f32; outputs.div_ceil(LANES) * LANES];
    if let Some(bias) = bias {
        let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if bias.len() != outputs {
            bail!("bias has {} values for {outputs} outputs", bias.len());
        }
        padded[..outputs].copy_from_slice(&bias);
    }
    Ok(padded)
}

/// Output channels per block: one 512-bit register of 32-bit lanes.
pub const LANES: usize = 16;
/// The largest micro-tile a kernel keeps in registers: rows × blocks of [`LANES`] outputs.
#[derive(Debug, Clone, Copy)]
pub struct TileShape {
    pub rows: usize,
    pub blocks: usize,
}

/// AVX-512: 6 × 4 accumulators, 4 weight registers and a broadcast fill 29 of the 32 vector
/// registers.
pub const AVX512_TILE: TileShape = TileShape { rows: 6, blocks: 4 };
/// A multiple of every kernel's tile rows, so tasks split into whole tiles.
const TASK_ROWS: usize = 48;
const TASK_BLOCKS: usize = 4;

/// Calls `tile(first_row, rows, first_block, blocks, out)` for every micro-tile (at most
/// `shape`) of a `rows × blocks` output, in parallel.
pub fn for_each_tile(
    rows: usize,
    blocks: usize,
    shape: TileShape,
    out: &mut [MaybeUninit<f32>],
    tile: impl Fn(usize, usize, usize, usize, &Output) + Sync,
) {
    let row_tasks = rows.div_ceil(TASK_ROWS);
    let block_tasks = blocks.div_ceil(TASK_BLOCKS);
    let out = Output(out.as_mut_ptr().cast());
    (0..row_tasks * block_tasks).into_par_iter().for_each(|task| {
        let (row_task, block_task) = (task / block_tasks, task % block_tasks);
        let task_rows = row_task * TASK_ROWS..((row_task + 1) * TASK_ROWS).min(rows);
        let task_blocks = block_task * TASK_BLOCKS..((block_task + 1) * TASK_BLOCKS).min(blocks);
        let mut row = task_rows.start;
        while row < task_rows.end {
            let tile_rows = (task_rows.end - row).min(shape.rows);
            let mut block = task_blocks.start;
            while block < task_blocks.end {
                let tile_blocks = (task_blocks.end - block).min(shape.blocks);
                tile(row, tile_rows, block, tile_blocks, &out);
                block += tile_blocks;
            }
            row += tile_rows;
        }
    });
}

/// The output buffer, shared by the parallel tasks; each writes only its own tiles.
pub struct Output(*mut f32);

impl Output {
    /// Where output `index` (row-major) lives.
    ///
    /// # Safety
    /// `index` must be inside the buffer given to [`for_each_tile`], in the calling tile.
    pub unsafe fn at(&self, index: usize) -> *mut f32 {
        self.0.add(index)
    }
}

// SAFETY: the tiles are disjoint rectangles of the buffer, which outlives the parallel loop.
unsafe impl Sync for Output {}

/// Stores the first `valid` (at most [`LANES`]) lanes of `value` at `out`: the last block of a
/// layer may be partly padding.
///
/// # Safety
/// The CPU must have AVX-512 F, and `out` must have `valid` values to write.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn store_lanes(out: *mut f32, value: std::arch::x86_64::__m512, valid: usize) {
    std::arch::x86_64::_mm512_mask_storeu_ps(out, lane_mask(valid), value);
}

/// The first `valid` lanes of a vector (all of them from [`LANES`] on), as a load/store mask.
#[cfg(target_arch = "x86_64")]
pub fn lane_mask(valid: usize) -> std::arch::x86_64::__mmask16 {
    if valid >= LANES {
        0xffff
    } else {
        (1u16 << valid) - 1
    }
}

/// Calls the const-generic kernel `$kernel::<R, B>($tile)` for the run-time tile shape.
macro_rules! dispatch_tile {
    ($kernel:ident, $rows:expr, $blocks:expr, $tile:expr) => {
        match ($rows, $blocks) {
            (1, 1) => $kernel::<1, 1>($tile),
            (1, 2) => $kernel::<1, 2>($tile),
            (1, 3) => $kernel::<1, 3>($tile),
            (1, 4) => $kernel::<1, 4>($tile),
            (2, 1) => $kernel::<2, 1>($tile),
            (2, 2) => $kernel::<2, 2>($tile),
            (2, 3) => $kernel::<2, 3>($tile),
            (2, 4) => $kernel::<2, 4>($tile),
            (3, 1) => $kernel::<3, 1>($tile),
            (3, 2) => $kernel::<3, 2>($tile),
            (3, 3) => $kernel::<3, 3>($tile),
            (3, 4) => $kernel::<3, 4>($tile),
            (4, 1) => $kernel::<4, 1>($tile),
            (4, 2) => $kernel::<4, 2>($tile),
            (4, 3) => $kernel::<4, 3>($tile),
            (4, 4) => $kernel::<4, 4>($tile),
            (5, 1) => $kernel::<5, 1>($tile),
            (5, 2) => $kernel::<5, 2>($tile),
            (5, 3) => $kernel::<5, 3>($tile),
            (5, 4) => $kernel::<5, 4>($tile),
            (6, 1) => $kernel::<6, 1>($tile),
            (6, 2) => $kernel::<6, 2>($tile),
            (6, 3) => $kernel::<6, 3>($tile),
            (6, 4) => $kernel::<6, 4>($tile),
            (rows, blocks) => unreachable!("no micro-tile of {rows} × {blocks}"),
        }
    };
}
pub(crate) use dispatch_tile;

/// Calls the const-generic one-block kernel `$kernel::<R>($tile)` for the run-time number of rows.
macro_rules! dispatch_rows {
    ($kernel:ident, $rows:expr, $tile:expr) => {
        match $rows {
            1 => $kernel::<1>($tile),
            2 => $kernel::<2>($tile),
            3 => $kernel::<3>($tile),
            4 => $kernel::<4>($tile),
            5 => $kernel::<5>($tile),
            6 => $kernel::<6>($tile),
            rows => unreachable!("no micro-tile of {rows} rows"),
        }
    };
}
pub(crate) use dispatch_rows;
