//! GroupNorm as the models use it: 32 groups, statistics in f32 or wider for every dtype, and
//! the SiLU that follows most norms in the original fused into the same op.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels;

#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// f32 copies of the checkpoint's affine parameters: the affine runs in f32.
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
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
        })
    }

    /// `silu(group_norm(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }

    /// GroupNorm of a `(b*t, c, ...)` tensor with statistics joint over each sample's `frames`
    /// rows: the original's norm of the `(b, c, t, ...)` tensor, in the frames-inner layout.
    pub fn forward_frames(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let (w, b) = (&self.weight, &self.bias);
        kernels::group_norm_frames(x, frames, w, b, self.groups, self.eps, false)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}

/// The original's `normalization(channels)` / `Normalize(channels)`: 32 groups.
pub fn group_norm(vb: VarBuilder, channels: usize, eps: f64) -> Result<GroupNorm> {
    GroupNorm::new(vb, 32, channels, eps)
}
