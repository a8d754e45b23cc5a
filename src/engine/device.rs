//! Choosing the compute device and dtype: f16 on a GPU, f32 on a CPU, either overridable.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// `auto` (CUDA when built with it and present, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn select_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").unwrap_or("0").parse()?;
            if !candle_core::utils::cuda_is_available() {
                bail!("this build has no CUDA support: rebuild with `--features cuda`");
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        other => bail!("unknown device `{other}` (use auto, cpu, cuda or cuda:N)"),
    }
}

/// `auto` (f16 on GPU, f32 on CPU), `f32`, `f16` or `bf16`.
pub fn select_dtype(spec: &str, device: &Device) -> Result<DType> {
    Ok(match spec {
        "auto" if device.is_cpu() => DType::F32,
        "auto" => DType::F16,
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" if device.is_cpu() => bail!(
            "bf16 on the CPU is slower and less exact than f32 (a CPU has no bf16 arithmetic, so every convolution would run widened to f32); use f32"
        ),
        "bf16" => DType::BF16,
        other => bail!("unknown dtype `{other}` (use auto, f32, f16 or bf16)"),
    })
}
