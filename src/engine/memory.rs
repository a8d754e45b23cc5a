//! Peak memory as the program itself sees it, for `floor33 bench`.
//!
//! - Host: the kernel's high-water mark of the resident set (`VmHWM`), resettable per stage by
//!   writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0).
//! - CUDA (`cuda` builds): candle allocates every tensor with `cuMemAllocAsync` from the device's
//!   current memory pool, so the pool's `USED_MEM_HIGH` attribute is the peak of bytes held by
//!   live tensors (what `torch.cuda.max_memory_allocated` reports for PyTorch), and
//!   `RESERVED_MEM_HIGH` the peak the pool took from the driver. Neither includes the CUDA
//!   context, loaded kernels or cuBLAS workspaces; `device_used` (total − free from
//!   `cuMemGetInfo`, the whole GPU, all processes) is the figure to set beside nvidia-smi.

use candle_core::Device;

/// Peak figures of one stage, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPeaks {
    /// Peak resident set of this process.
    pub host_peak_rss: Option<u64>,
    /// Peak bytes held by tensors in the CUDA memory pool.
    pub gpu_tensors_peak: Option<u64>,
    /// Peak bytes the CUDA memory pool reserved from the driver.
    pub gpu_pool_reserved_peak: Option<u64>,
    /// Whole-device memory in use (total − free) when the stage ended.
    pub gpu_device_used: Option<u64>,
}

/// Starts a new measurement window: resets the host and GPU high-water marks where possible.
pub fn reset_peaks(device: &Device) {
    // Best effort: an older kernel or a sandbox without clear_refs keeps the process peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let _ = cuda_pool::reset(cuda);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// The peaks since the last [`reset_peaks`] (or process start).
pub fn peaks(device: &Device) -> MemoryPeaks {
    let (gpu_tensors_peak, gpu_pool_reserved_peak, gpu_device_used) = gpu_peaks(device);
    MemoryPeaks {
        host_peak_rss: host_peak_rss(),
        gpu_tensors_peak,
        gpu_pool_reserved_peak,
        gpu_device_used,
    }
}

/// (tensor peak, pool reserved peak, device in use) of a CUDA device; nothing elsewhere.
#[cfg(feature = "cuda")]
fn gpu_peaks(device: &Device) -> (Option<u64>, Option<u64>, Option<u64>) {
    let Device::Cuda(cuda) = device else {
        return (None, None, None);
    };
    let (used, reserved) = match cuda_pool::high_water(cuda) {
        Ok((used, reserved)) => (Some(used), Some(reserved)),
        Err(_) => (None, None),
    };
    (used, reserved, cuda_pool::device_used(cuda).ok())
}

#[cfg(not(feature = "cuda"))]
fn gpu_peaks(_: &Device) -> (Option<u64>, Option<u64>, Option<u64>) {
    (None, None, None)
}

/// (in use, total) bytes of the whole CUDA device `device` runs on, all processes together
/// (`cuMemGetInfo`, what nvidia-smi shows); `None` on a CPU or when the driver does not answer.
pub fn device_memory(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return cuda_pool::device_memory(cuda).ok();
    }
    let _ = device;
    None
}

/// `VmHWM` of this process in bytes.
pub fn host_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(feature = "cuda")]
mod cuda_pool {
    use candle_core::cuda_backend::cudarc::driver::{result, sys, DriverError};
    use candle_core::CudaDevice;

    fn pool(device: &CudaDevice) -> Result<sys::CUmemoryPool, DriverError> {
        let ctx = device.cuda_stream().context().clone();
        ctx.bind_to_thread()?;
        let mut pool = std::mem::MaybeUninit::uninit();
        // SAFETY: plain driver query on a device of a live context.
        unsafe { sys::cuDeviceGetMemPool(pool.as_mut_ptr(), ctx.cu_device()).result()? };
        // SAFETY: initialised by the successful call above.
        Ok(unsafe { pool.assume_init() })
    }

    fn attribute(
        pool: sys::CUmemoryPool,
        attr: sys::CUmemPool_attribute,
    ) -> Result<u64, DriverError> {
        let mut value: u64 = 0;
        // SAFETY: the *_MEM_* attributes are cuuint64_t values.
        unsafe {
            sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut _).result()?
        };
        Ok(value)
    }

    /// (peak used, peak reserved) of the device's current pool.
    pub fn high_water(device: &CudaDevice) -> Result<(u64, u64), DriverError> {
        device.cuda_stream().synchronize()?;
        let pool = pool(device)?;
        Ok((
            attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            )?,
            attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            )?,
        ))
    }

    /// Resets both high-water marks to the current values (the driver only accepts zero).
    pub fn reset(device: &CudaDevice) -> Result<(), DriverError> {
        device.cuda_stream().synchronize()?;
        let pool = pool(device)?;
        for attr in [
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            let mut zero: u64 = 0;
            // SAFETY: the *_HIGH attributes take a cuuint64_t, and zero is the documented reset.
            unsafe {
                sys::cuMemPoolSetAttribute(pool, attr, &mut zero as *mut u64 as *mut _).result()?
            };
        }
        Ok(())
    }

    pub fn device_used(device: &CudaDevice) -> Result<u64, DriverError> {
        device_memory(device).map(|(used, _)| used)
    }

    /// (total − free, total) of the device.
    pub fn device_memory(device: &CudaDevice) -> Result<(u64, u64), DriverError> {
        device.cuda_stream().context().bind_to_thread()?;
        let (free, total) = result::mem_get_info()?;
        Ok(((total - free) as u64, total as u64))
    }
}
