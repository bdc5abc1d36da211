//! CPU fast paths for the two element-wise hot spots the profile showed (benches/RESULTS.md):
//! exact-erf GELU and softmax, both of which candle computes one scalar `expf`/`erff` call at a
//! time. Here they are branch-free polynomial approximations that LLVM vectorises, compiled for
//! AVX-512 and AVX2 and picked at run time, spread over rayon's pool in chunks of whole rows.
//! Other devices and dtypes use candle's own ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::LayerNorm;
use rayon::prelude::*;

/// Values per parallel task: enough work to outweigh handing it to another thread.
const TASK_VALUES: usize = 8192;

/// Values per task for rows of `width`: whole rows, at least one.
fn task_len(width: usize) -> usize {
    (TASK_VALUES / width).max(1) * width
}

/// Compiles `$generic` for AVX-512 and AVX2+FMA and calls the best one this CPU has.
macro_rules! dispatch {
    ($generic:ident($($arg:ident: $ty:ty),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) { $generic($($arg),*) }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) { $generic($($arg),*) }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { avx512($($arg),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { avx2($($arg),*) };
            }
        }
        $generic($($arg),*)
    }};
}
pub(crate) use dispatch;

/// `0.5·x·(1 + erf(x/√2))`; candle's `gelu_erf` elsewhere.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.apply_op1_no_bwd(&GeluErf)
    } else {
        xs.gelu_erf()
    }
}

/// Softmax over the last dimension; candle's `softmax_last_dim` elsewhere.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// `LayerNorm(x + bias + residual)`, the closing step of every BERT sub-layer, in one pass over
/// the activations instead of three parallel element-wise ops and a norm.
pub struct AddNorm {
    bias: Option<Tensor>,
    norm: LayerNorm,
    /// The same parameters as host vectors, for the fused CPU path.
    fused: Option<FusedAddNorm>,
}

impl AddNorm {
    /// `bias` is the preceding linear layer's bias, applied here instead of in the matmul.
    pub fn new(bias: Option<Tensor>, norm: LayerNorm) -> Result<Self> {
        let fused = if norm.weight().device().is_cpu() && norm.weight().dtype() == DType::F32 {
            let hidden = norm.weight().dim(0)?;
            let vector = |t: Option<&Tensor>, fill: f32| match t {
                Some(t) => t.to_vec1::<f32>(),
                None => Ok(vec![fill; hidden]),
            };
            Some(FusedAddNorm {
                bias: vector(bias.as_ref(), 0.0)?,
                gamma: vector(Some(norm.weight()), 1.0)?,
                beta: vector(norm.bias(), 0.0)?,
                eps: norm.eps() as f32,
            })
        } else {
            None
        };
        Ok(Self { bias, norm, fused })
    }

    /// `xs` (the linear output without its bias) and `residual`: `[tokens, hidden]`.
    pub fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match &self.fused {
            Some(op) if xs.dtype() == DType::F32 && residual.dtype() == DType::F32 => {
                xs.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, op)
            }
            _ => {
                let xs = match &self.bias {
                    Some(bias) => xs.broadcast_add(bias)?,
                    None => xs.clone(),
                };
                self.norm.forward(&(xs + residual)?)
            }
        }
    }
}

struct FusedAddNorm {
    bias: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

/// The partial sums and maxima below keep one accumulator per lane of a 512-bit register. A
/// plain `sum += x` loop is a chain LLVM must keep in order (float addition is not
/// associative), so it ran one scalar at a time; one accumulator per lane lets it use whole
/// vector registers.
pub(crate) use super::tiles::LANES;

/// The sum of `term(x)` over `values`.
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| term(x)).sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(lane, &x)| *lane += term(x));
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
pub(crate) fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(lane, &x)| *lane = lane.max(x));
    }
    lanes.iter().copied().fold(tail, f32::max)
}

#[inline(always)]
fn add_norm_rows_generic(xs: &[f32], residual: &[f32], dst: &mut [f32], p: &FusedAddNorm) {
    let width = p.gamma.len();
    for ((x, r), out) in xs.chunks_exact(width).zip(residual.chunks_exact(width)).zip(dst.chunks_exact_mut(width)) {
        for (((o, &x), &r), &b) in out.iter_mut().zip(x).zip(r).zip(&p.bias) {
            *o = x + r + b;
        }
        let mean = lane_sum(out, |x| x) / width as f32;
        out.iter_mut().for_each(|o| *o -= mean);
        let var = lane_sum(out, |o| o * o);
        let inv = 1.0 / (var / width as f32 + p.eps).sqrt();
        for ((o, &g), &b) in out.iter_mut().zip(&p.gamma).zip(&p.beta) {
            *o = *o * inv * g + b;
        }
    }
}

fn add_norm_rows(xs: &[f32], residual: &[f32], dst: &mut [f32], p: &FusedAddNorm) {
    dispatch!(add_norm_rows_generic(xs: &[f32], residual: &[f32], dst: &mut [f32], p: &FusedAddNorm))
}

impl CustomOp2 for FusedAddNorm {
    fn name(&self) -> &'static str {
        "concord-add-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (xs, residual) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let width = self.gamma.len();
        if l1.shape() != l2.shape() || l1.shape().dims().last() != Some(&width) {
            candle_core::bail!("add-norm: shapes {:?} and {:?} do not fit hidden size {width}", l1.shape(), l2.shape());
        }
        let mut dst = vec![0f32; xs.len()];
        let chunk = task_len(width);
        dst.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(residual.par_chunks(chunk)))
            .for_each(|(dst, (xs, residual))| add_norm_rows(xs, residual, dst, self));
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// e^x for x ≤ 0 (larger inputs are clamped at 0): relative error below 3e-7.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    // x = n·ln2 + r with |r| ≤ ln2/2; e^x = 2^n · e^r.
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p =
        1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_63 + r * (0.008_333_45 + r * 0.001_394_4)))));
    // 2^n built from its exponent bits. Adding 1.5·2^23 puts the integer n + 127 (1..=127 here)
    // in the low mantissa bits; `n as i32` would do the same but its saturating semantics
    // (NaN → 0) keep LLVM from vectorising it: each lane went through a scalar compare and
    // insert, a third of the GELU and softmax time.
    let biased = (n + (127.0 + 12_582_912.0)).to_bits();
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_nonpositive(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_slice_generic(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn softmax_rows_generic(src: &[f32], dst: &mut [f32], width: usize) {
    for (row, out) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
        let max = lane_max(row);
        for (o, &x) in out.iter_mut().zip(row) {
            *o = exp_nonpositive(x - max);
        }
        let inv = 1.0 / lane_sum(out, |e| e);
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

fn gelu_slice(src: &[f32], dst: &mut [f32]) {
    dispatch!(gelu_slice_generic(src: &[f32], dst: &mut [f32]))
}

fn softmax_rows(src: &[f32], dst: &mut [f32], width: usize) {
    dispatch!(softmax_rows_generic(src: &[f32], dst: &mut [f32], width: usize))
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fast kernels need contiguous input"),
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "concord-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout)?;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(TASK_VALUES).zip(src.par_chunks(TASK_VALUES)).for_each(|(dst, src)| gelu_slice(src, dst));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "concord-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout)?;
        let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        let chunk = task_len(width);
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(dst, src)| softmax_rows(src, dst, width));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Large enough to be split into several parallel tasks, the last one shorter.
    fn sample() -> Tensor {
        let values: Vec<f32> = (0..25_000).map(|i| (i as f32 - 12_500.0) / 1_160.0).collect();
        Tensor::from_vec(values, (100, 250), &Device::Cpu).expect("tensor")
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .expect("sub")
            .abs()
            .expect("abs")
            .flatten_all()
            .expect("flat")
            .max(0)
            .expect("max")
            .to_scalar()
            .expect("scalar")
    }

    #[test]
    fn exp_holds_its_error_bound_over_the_whole_range() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (ours, exact) = (exp_nonpositive(x), (x as f64).exp());
            let error = ((ours as f64 - exact) / exact).abs();
            assert!(error < 3e-7, "e^{x}: {ours} against {exact}");
        }
        assert_eq!(exp_nonpositive(5.0), 1.0);
        assert!(exp_nonpositive(-1e9) > 0.0 && exp_nonpositive(-1e9) < 1e-37);
    }

    #[test]
    fn gelu_matches_candle_exact_erf() {
        let xs = sample();
        let diff = max_abs_diff(&gelu_erf(&xs).expect("fast"), &xs.gelu_erf().expect("candle"));
        assert!(diff < 2e-6, "max difference {diff}");
    }

    #[test]
    fn softmax_matches_candle() {
        let xs = (sample() * 7.0).expect("scale");
        let ours = softmax_last_dim(&xs).expect("fast");
        let diff = max_abs_diff(&ours, &candle_nn::ops::softmax_last_dim(&xs).expect("candle"));
        assert!(diff < 1e-6, "max difference {diff}");
        let sums: Vec<f32> = ours.sum(1).expect("sum").to_vec1().expect("vec");
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    }

    #[test]
    fn fused_add_norm_matches_the_plain_ops() {
        // The model's width, and one that leaves a tail after the vector lanes.
        for hidden in [384, 100] {
            add_norm_matches_the_plain_ops(50, hidden);
        }
    }

    fn add_norm_matches_the_plain_ops(rows: usize, hidden: usize) {
        let device = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (rows, hidden), &device).expect("xs");
        let residual = Tensor::randn(0f32, 2.0, (rows, hidden), &device).expect("residual");
        let bias = Tensor::randn(0f32, 0.5, hidden, &device).expect("bias");
        let gamma = Tensor::randn(1f32, 0.1, hidden, &device).expect("gamma");
        let beta = Tensor::randn(0f32, 0.1, hidden, &device).expect("beta");
        let norm = LayerNorm::new(gamma, beta, 1e-12);
        let fused = AddNorm::new(Some(bias.clone()), norm.clone()).expect("fused");
        let plain = norm.forward(&((xs.broadcast_add(&bias).expect("bias")) + &residual).expect("add")).expect("norm");
        let diff = max_abs_diff(&fused.forward(&xs, &residual).expect("fused forward"), &plain);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        let xs = Tensor::new(&[[-1e30f32, 0.0, 1e30, -87.5, 88.0]], &Device::Cpu).expect("tensor");
        for out in [gelu_erf(&xs).expect("gelu"), softmax_last_dim(&xs).expect("softmax")] {
            let values: Vec<f32> = out.flatten_all().expect("flat").to_vec1().expect("vec");
            assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
        }
    }
}
