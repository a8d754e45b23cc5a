//! Launching `kernels.cu` on a CUDA device. The source is compiled once per process with NVRTC
//! (no CUDA toolkit needed at build time; libnvrtc at run time, which candle's cudarc links
//! anyway) and loaded per device through candle's custom-module cache.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Result};

const SOURCE: &str = include_str!("kernels.cu");
const MODULE: &str = "floor33_kernels";

/// PTX of [`SOURCE`], compiled on first use; a compile error is kept and reported every time.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|ptx| ptx.to_src())
            .map_err(|e| format!("compiling floor33 kernels with NVRTC: {e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Cuda(e.clone().into()))
}

fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("floor33 CUDA kernels: unsupported dtype {other:?}"),
    })
}

/// Threads per block: enough warps for the longest rows, never more than the work.
fn block_threads(len: usize) -> u32 {
    (len.div_ceil(32) * 32).clamp(32, 1024) as u32
}

pub struct GroupNormArgs<'a> {
    pub x: &'a CudaStorage,
    pub x_offsets: (usize, usize),
    pub weight: &'a CudaStorage,
    pub weight_offsets: (usize, usize),
    pub bias: &'a CudaStorage,
    pub bias_offsets: (usize, usize),
    pub samples: usize,
    pub frames: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
    /// The output dtype (f32, f16 or bf16), independent of the input's.
    pub out: DType,
}

pub fn group_norm(a: GroupNormArgs) -> Result<CudaStorage> {
    fn launch<T: CudaDType + DeviceRepr, U: CudaDType + DeviceRepr>(
        a: &GroupNormArgs,
        name: &str,
    ) -> Result<CudaStorage> {
        let dev: &CudaDevice = a.x.device();
        let x =
            a.x.as_cuda_slice::<T>()?
                .slice(a.x_offsets.0..a.x_offsets.1);
        let w = a.weight.as_cuda_slice::<f32>()?;
        let w = w.slice(a.weight_offsets.0..a.weight_offsets.1);
        let b = a.bias.as_cuda_slice::<f32>()?;
        let b = b.slice(a.bias_offsets.0..a.bias_offsets.1);
        let elements = a.x_offsets.1 - a.x_offsets.0;
        let per_group = a.channels / a.groups;
        // SAFETY: every element is written by the kernel.
        let y: CudaSlice<U> = unsafe { dev.alloc::<U>(elements)? };
        let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: ((a.samples * a.groups) as u32, 1, 1),
            block_dim: (block_threads(a.frames * per_group * a.spatial), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&y);
        builder.arg(&w);
        builder.arg(&b);
        candle_core::builder_arg!(
            builder,
            a.groups as i32,
            a.frames as i32,
            a.channels as i32,
            per_group as i32,
            a.spatial as i64,
            a.eps,
            a.silu as i32
        );
        // SAFETY: argument types and order match `group_norm_*` in kernels.cu.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
    let name = format!("group_norm_{}_{}", suffix(a.x.dtype())?, suffix(a.out)?);
    use half::{bf16, f16};
    match (a.x.dtype(), a.out) {
        (DType::F32, DType::F32) => launch::<f32, f32>(&a, &name),
        (DType::F32, DType::F16) => launch::<f32, f16>(&a, &name),
        (DType::F32, _) => launch::<f32, bf16>(&a, &name),
        (DType::F16, DType::F32) => launch::<f16, f32>(&a, &name),
        (DType::F16, DType::F16) => launch::<f16, f16>(&a, &name),
        (DType::F16, _) => launch::<f16, bf16>(&a, &name),
        (_, DType::F32) => launch::<bf16, f32>(&a, &name),
        (_, DType::F16) => launch::<bf16, f16>(&a, &name),
        _ => launch::<bf16, bf16>(&a, &name),
    }
}

pub fn softmax(x: &CudaStorage, offsets: (usize, usize), cols: usize) -> Result<CudaStorage> {
    fn launch<T: CudaDType + DeviceRepr>(
        x: &CudaStorage,
        (start, end): (usize, usize),
        cols: usize,
        name: &str,
    ) -> Result<CudaStorage> {
        let dev: &CudaDevice = x.device();
        let src = x.as_cuda_slice::<T>()?.slice(start..end);
        let elements = end - start;
        // SAFETY: every element is written by the kernel.
        let y: CudaSlice<T> = unsafe { dev.alloc::<T>(elements)? };
        let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let cfg = LaunchConfig {
            grid_dim: ((elements / cols) as u32, 1, 1),
            block_dim: (block_threads(cols).min(256), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&y);
        candle_core::builder_arg!(builder, cols as i32);
        // SAFETY: argument types and order match `softmax_*` in kernels.cu.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
    let name = format!("softmax_{}", suffix(x.dtype())?);
    match x.dtype() {
        DType::F32 => launch::<f32>(x, offsets, cols, &name),
        DType::F16 => launch::<half::f16>(x, offsets, cols, &name),
        _ => launch::<half::bf16>(x, offsets, cols, &name),
    }
}
