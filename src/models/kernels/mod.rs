//! floor33's own tensor operations, as candle custom ops: each has a CPU implementation (the
//! reference, tested against candle's unfused formulation) and, in `cuda` builds, a CUDA kernel
//! from `kernels.cu` compiled at run time with NVRTC.
//!
//! They exist for two reasons: reductions of f16/bf16 tensors must run in f32 (candle's softmax
//! computes its exponentials in the storage type), and the GPU time of the UNet goes to the
//! memory-bound glue between GEMMs (GroupNorm alone is ~10 kernels in candle), so each op here
//! reads its input once or twice and writes its output once.

#[cfg(feature = "cuda")]
mod cuda;
mod group_norm;
mod softmax;

pub use group_norm::{group_norm, group_norm_frames, group_norm_with, GroupNormSpec};
pub use softmax::softmax_last_dim;
