//! ResBlock (with the optional TemporalConvBlock), Downsample and Upsample of
//! `lvdm/modules/networks/openaimodel3d.py`. Activations are `(b*t, c, h, w)`, frames inner.
//! Inputs and outputs are the residual stream (f32 in a half-precision network, see
//! `precision`); convolutions take and give the weights' dtype.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::conv::{conv2d, Conv2d};

use super::norm::{group_norm, GroupNorm};
use super::precision::{add_to_stream, to_stream};

pub fn conv3x3(vb: VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

/// `TemporalConvBlock`: four [GroupNorm, SiLU, Conv3d (3,1,1)] stages along time, plus identity.
/// The Conv3d runs as a Conv2d with kernel (3, 1) on a `(b, c, t, h*w)` view.
#[derive(Debug, Clone)]
pub struct TemporalConvBlock {
    stages: Vec<(GroupNorm, Conv2d)>,
}

impl TemporalConvBlock {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        // conv1 is [GN, SiLU, Conv]; conv2..4 have a Dropout in between: conv index 2 or 3.
        let stages = [("conv1", 2), ("conv2", 3), ("conv3", 3), ("conv4", 3)]
            .into_iter()
            .map(|(name, conv_index)| {
                let vb = vb.pp(name);
                let norm = group_norm(vb.pp("0"), channels, 1e-5)?;
                let conv_vb = vb.pp(conv_index.to_string());
                let weight = conv_vb
                    .get((channels, channels, 3, 1, 1), "weight")?
                    .squeeze(4)?;
                let bias = conv_vb.get(channels, "bias")?;
                Ok((
                    norm,
                    Conv2d::new(weight, Some(bias), Conv2dConfig::default())?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { stages })
    }

    /// `x` is `(b*t, c, h, w)`; the block mixes neighbouring frames of each pixel.
    pub fn forward_frames(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let (bt, c, h, w) = x.dims4()?;
        let b = bt / frames;
        // The identity stays in the stream dtype; the stages compute in the weights' dtype.
        let identity = x
            .reshape((b, frames, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut y = identity.clone();
        for (norm, conv) in &self.stages {
            y = norm.forward_silu(&y)?;
            y = conv.forward(&y.pad_with_zeros(2, 1, 1)?)?;
        }
        add_to_stream(&identity, &y)?
            .transpose(1, 2)?
            .reshape((bt, c, h, w))
    }
}

/// ResBlock: GN-SiLU-conv, add the projected embedding, GN-SiLU-conv, skip; then (VC2, i2v) the
/// temporal convolution — attribute misspelt `temopral_conv` in the original, and so in the keys.
#[derive(Debug, Clone)]
pub struct ResBlock {
    in_norm: GroupNorm,
    /// `in_layers.2` without its bias, which is added together with the embedding.
    in_conv: Conv2d,
    in_bias: Tensor,
    emb_proj: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip_connection: Option<Conv2d>,
    temopral_conv: Option<TemporalConvBlock>,
}

impl ResBlock {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        emb_dim: usize,
        temporal_conv: bool,
    ) -> Result<Self> {
        let skip_connection = if cin == cout {
            None
        } else {
            Some(conv2d(
                cin,
                cout,
                1,
                Default::default(),
                vb.pp("skip_connection"),
            )?)
        };
        let temopral_conv = if temporal_conv {
            Some(TemporalConvBlock::new(vb.pp("temopral_conv"), cout)?)
        } else {
            None
        };
        let in_conv = conv3x3(vb.pp("in_layers.2"), cin, cout, 1)?;
        let in_bias = match in_conv.bias() {
            Some(bias) => bias.clone(),
            None => candle_core::bail!("in_layers.2 has no bias"),
        };
        Ok(Self {
            in_norm: group_norm(vb.pp("in_layers.0"), cin, 1e-5)?,
            in_conv: in_conv.without_bias()?,
            in_bias,
            emb_proj: candle_nn::linear(emb_dim, cout, vb.pp("emb_layers.1"))?,
            out_norm: group_norm(vb.pp("out_layers.0"), cout, 1e-5)?,
            out_conv: conv3x3(vb.pp("out_layers.3"), cout, cout, 1)?,
            skip_connection,
            temopral_conv,
        })
    }

    /// `emb` is `(b*t, emb_dim)`, already repeated per frame.
    pub fn forward(&self, x: &Tensor, emb: &Tensor, frames: usize) -> Result<Tensor> {
        let compute = self.in_conv.dtype();
        let h = self.in_conv.forward(&self.in_norm.forward_silu(x)?)?;
        // The conv bias and the projected embedding, summed on (b*t, c) and added in one pass,
        // in the stream dtype: the sum is the out norm's input, not a conv's.
        let shift = self
            .emb_proj
            .forward(&emb.silu()?)?
            .broadcast_add(&self.in_bias)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = to_stream(&h, compute)?.broadcast_add(&to_stream(&shift, compute)?)?;
        let h = self.out_conv.forward(&self.out_norm.forward_silu(&h)?)?;
        let h = match &self.skip_connection {
            Some(skip) => add_to_stream(&skip.forward(&x.to_dtype(compute)?)?, &h)?,
            None => add_to_stream(x, &h)?,
        };
        match &self.temopral_conv {
            Some(tc) => tc.forward_frames(&h, frames),
            None => Ok(h),
        }
    }
}

/// Stride-2 3×3 conv (`op`).
#[derive(Debug, Clone)]
pub struct Downsample {
    op: Conv2d,
}

impl Downsample {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            op: conv3x3(vb.pp("op"), channels, channels, 2)?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let compute = self.op.dtype();
        to_stream(&self.op.forward(&x.to_dtype(compute)?)?, compute)
    }
}

/// Nearest ×2 then 3×3 conv (`conv`).
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(vb.pp("conv"), channels, channels, 1)?,
        })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let compute = self.conv.dtype();
        // Rounded before the ×4 upsampling: the conv reads it in the compute dtype anyway.
        let up = x.to_dtype(compute)?.upsample_nearest2d(h * 2, w * 2)?;
        to_stream(&self.conv.forward(&up)?, compute)
    }
}
