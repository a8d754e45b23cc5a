//! Mixed precision as PyTorch's autocast users get it: a half-precision (f16/bf16) network
//! rounds to its compute dtype only the inputs of matmuls and convolutions, and keeps in f32
//! what accumulates over the whole network — the residual stream, the UNet's skip connections,
//! norm statistics, attention scores. An f32 (or f64) network is unchanged: every cast below is
//! then a no-op.
//!
//! Measured on the golden fixtures (CPU, `tests/golden/half.rs`): rounding the residual stream
//! at every block was most of the f16/bf16 video error.

use candle_core::{DType, Result, Tensor};

/// The dtype in which a network computing in `compute` keeps sums that run across layers.
pub fn wide(compute: DType) -> DType {
    match compute {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// `x` in the residual-stream dtype of a network computing in `compute`.
pub fn to_stream(x: &Tensor, compute: DType) -> Result<Tensor> {
    x.to_dtype(wide(compute))
}

/// `residual + update` in the stream dtype, `update` being a layer's (half) output.
pub fn add_to_stream(residual: &Tensor, update: &Tensor) -> Result<Tensor> {
    let dtype = wide(residual.dtype());
    residual.to_dtype(dtype)? + update.to_dtype(dtype)?
}
