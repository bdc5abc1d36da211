//! Device and dtype selection. CPU runs f32, or int8 linear layers with `q8`; half precision is
//! offered where kernels exist (CUDA, Metal), because candle's CPU f16/bf16 matmuls are slower
//! than f32 on the CPUs we target.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda`, `cuda:N` or `metal` into a device.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "metal" => Ok(Device::new_metal(0)?),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Device::new_cuda(ordinal)?),
            _ => bail!("unknown device '{other}': use cpu, cuda, cuda:N or metal"),
        },
    }
}

/// Parses `f32`, `f16`, `bf16` or `q8`, refusing half precision on the CPU. `q8` (CPU only)
/// keeps f32 activations and turns on int8 linear layers ([`super::int8`]) for BERT-family
/// encoders loaded afterwards.
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType> {
    let dtype = match spec {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "q8" if device.is_cpu() => {
            super::int8::enable()?;
            return Ok(DType::F32);
        }
        "q8" => bail!("dtype q8 is for the CPU; GPUs run f16 or bf16"),
        other => bail!("unknown dtype '{other}': use f32, q8 (CPU), f16 or bf16 (GPU)"),
    };
    if dtype != DType::F32 && device.is_cpu() {
        bail!("dtype {spec} needs a GPU device (--device cuda or metal); the CPU runs f32");
    }
    Ok(dtype)
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}
