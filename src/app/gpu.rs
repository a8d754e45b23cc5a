//! The GPU memory gauges (`floor33_gpu_memory_used_bytes`, `…_total_bytes`): the engine's
//! device is read once the models are loaded and then every few seconds, off the runtime. The
//! figure is the whole device's (`cuMemGetInfo`, as nvidia-smi shows it), so it includes the
//! CUDA context and other processes on the same GPU. On a CPU nothing is read and no series
//! appears (absent rather than a 0 that would read as "an empty GPU").

use std::time::Duration;

use candle_core::{Device, DeviceLocation};
use tokio::task::JoinHandle;

use crate::engine::memory::device_memory;
use crate::ops::Metrics;

/// How often the gauges are refreshed: Prometheus scrapes every 15 s by default.
const EVERY: Duration = Duration::from_secs(5);

/// Starts refreshing the gauges for `device`; `None` on a CPU (nothing to report).
pub(super) fn watch_gpu_memory(device: Device, metrics: Metrics) -> Option<JoinHandle<()>> {
    let DeviceLocation::Cuda { gpu_id } = device.location() else {
        return None;
    };
    Some(tokio::spawn(async move {
        loop {
            let read = device.clone();
            match tokio::task::spawn_blocking(move || device_memory(&read)).await {
                Ok(Some((used, total))) => metrics.set_gpu_memory(gpu_id, used, total),
                // The gauges keep their last value.
                Ok(None) => tracing::debug!(gpu_id, "GPU memory could not be read"),
                Err(e) => tracing::warn!(error = %e, "GPU memory reading failed"),
            }
            tokio::time::sleep(EVERY).await;
        }
    }))
}
