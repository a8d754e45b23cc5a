//! GroupNorm as the models use it: 32 groups, statistics in f32 or wider for every dtype, and
//! the SiLU that follows most norms in the original fused into the same op.
//!
//! A half-precision network keeps its residual stream in f32 (see `precision`): the norm reads
//! whichever dtype it is given and writes the network's compute dtype, the input of the
//! convolution or projection that follows, so the cast costs no pass of its own.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{self, GroupNormSpec};

#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// f32 copies of the checkpoint's affine parameters: the affine runs in f32.
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    /// The network's compute dtype (its weights'): the dtype of every result.
    compute: DType,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            // candle_nn's hints (weight 1, bias 0): random-weight models draw from them.
            weight: vb
                .get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?
                .to_dtype(DType::F32)?,
            bias: vb
                .get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?
                .to_dtype(DType::F32)?,
            groups,
            eps,
            compute: vb.dtype(),
        })
    }

    fn spec(&self, silu: bool, frames: usize, out: DType) -> GroupNormSpec {
        GroupNormSpec {
            groups: self.groups,
            eps: self.eps,
            silu,
            frames,
            out,
        }
    }

    /// `silu(group_norm(x))` in one pass, in the compute dtype.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_silu_as(x, self.compute)
    }

    /// `silu(group_norm(x))` in `out` (f32 before a convolution kept in f32).
    pub fn forward_silu_as(&self, x: &Tensor, out: DType) -> Result<Tensor> {
        kernels::group_norm_with(x, &self.weight, &self.bias, self.spec(true, 1, out))
    }

    /// GroupNorm of a `(b*t, c, ...)` tensor with statistics joint over each sample's `frames`
    /// rows: the original's norm of the `(b, c, t, ...)` tensor, in the frames-inner layout.
    pub fn forward_frames(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let spec = self.spec(false, frames, self.compute);
        kernels::group_norm_with(x, &self.weight, &self.bias, spec)
    }
}

impl Module for GroupNorm {
    /// GroupNorm in the compute dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let spec = self.spec(false, 1, self.compute);
        kernels::group_norm_with(x, &self.weight, &self.bias, spec)
    }
}

/// The original's `normalization(channels)` / `Normalize(channels)`: 32 groups.
pub fn group_norm(vb: VarBuilder, channels: usize, eps: f64) -> Result<GroupNorm> {
    GroupNorm::new(vb, 32, channels, eps)
}
