//! SpatialTransformer (per frame, cross-attends to the prompt) and TemporalTransformer (per pixel,
//! self-attends across frames) from `lvdm/modules/attention.py`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::attention::{AttentionKind, BasicTransformerBlock};
use super::norm::{group_norm, GroupNorm};
use super::precision::{add_to_stream, to_stream};

/// A projection that is a `Linear` when `use_linear` and a kernel-1 Conv1d otherwise
/// (weights `(out, in, 1)`); both act on the channel (last) dimension here.
#[derive(Debug, Clone)]
pub struct ChannelProjection(Linear);

impl ChannelProjection {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, use_linear: bool) -> Result<Self> {
        if use_linear {
            return Ok(Self(candle_nn::linear(in_dim, out_dim, vb)?));
        }
        let weight = vb.get((out_dim, in_dim, 1), "weight")?.squeeze(2)?;
        let bias = vb.get(out_dim, "bias")?;
        Ok(Self(Linear::new(weight, Some(bias))))
    }
}

impl ChannelProjection {
    /// The projection of token-major `(n, tokens, in)` input, returned channels-first
    /// `(n, out, tokens)`: W·xᵀ reads the tokens transposed in the GEMM instead of copying them.
    pub fn forward_channels_first(&self, tokens: &Tensor) -> Result<Tensor> {
        let n = tokens.dim(0)?;
        let y = self
            .0
            .weight()
            .broadcast_left(n)?
            .matmul(&tokens.transpose(1, 2)?)?;
        match self.0.bias() {
            Some(bias) => y.broadcast_add(&bias.unsqueeze(1)?),
            None => Ok(y),
        }
    }
}

impl Module for ChannelProjection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

pub struct TransformerSpec {
    pub heads: usize,
    pub dim_head: usize,
    pub depth: usize,
    pub use_linear: bool,
}

/// What both transformers share: GroupNorm (eps 1e-6), `proj_in`, the blocks, `proj_out`.
#[derive(Debug, Clone)]
struct TransformerLayers {
    norm: GroupNorm,
    proj_in: ChannelProjection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: ChannelProjection,
}

impl TransformerLayers {
    fn new(
        vb: VarBuilder,
        channels: usize,
        spec: &TransformerSpec,
        context_dim: Option<usize>,
        (self_kind, cross_kind): (AttentionKind, AttentionKind),
    ) -> Result<Self> {
        let inner = spec.heads * spec.dim_head;
        let transformer_blocks = (0..spec.depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    inner,
                    spec.heads,
                    spec.dim_head,
                    context_dim,
                    self_kind,
                    cross_kind,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: group_norm(vb.pp("norm"), channels, 1e-6)?,
            proj_in: ChannelProjection::new(vb.pp("proj_in"), channels, inner, spec.use_linear)?,
            transformer_blocks,
            proj_out: ChannelProjection::new(vb.pp("proj_out"), inner, channels, spec.use_linear)?,
        })
    }

    /// proj_in → blocks on token-major `(n, tokens, c)` input; token-major output before
    /// proj_out, in the compute dtype (the blocks' own residuals run in the stream dtype).
    fn run_blocks(&self, tokens: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let compute = tokens.dtype();
        let mut y = to_stream(&self.proj_in.forward(tokens)?, compute)?;
        for block in &self.transformer_blocks {
            y = block.forward(&y, context)?;
        }
        y.to_dtype(compute)
    }
}

/// Per-frame spatial transformer on `(b*t, c, h, w)`; residual to the input (the stream).
#[derive(Debug, Clone)]
pub struct SpatialTransformer(TransformerLayers);

impl SpatialTransformer {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        spec: &TransformerSpec,
        context_dim: usize,
        image_cross_attention: bool,
    ) -> Result<Self> {
        let cross_kind = if image_cross_attention {
            AttentionKind::ImageCrossAttention
        } else {
            AttentionKind::Plain
        };
        let kinds = (AttentionKind::Plain, cross_kind);
        Ok(Self(TransformerLayers::new(
            vb,
            channels,
            spec,
            Some(context_dim),
            kinds,
        )?))
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (bt, c, h, w) = x.dims4()?;
        // 'b c h w -> b (h w) c'
        let tokens = self
            .0
            .norm
            .forward(x)?
            .reshape((bt, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let y = self.0.run_blocks(&tokens, Some(context))?;
        // proj_out straight into 'b c (h w)': no transposed copy of the tokens.
        let y = self.0.proj_out.forward_channels_first(&y)?;
        add_to_stream(x, &y.reshape((bt, c, h, w))?)
    }
}

/// Temporal transformer on `(b, c, t, h, w)`: sequences of `t` frames per pixel, self-attention
/// only (attn2 is a second self-attention). Its GroupNorm runs on the whole 5-D tensor (joint
/// over t, h, w).
#[derive(Debug, Clone)]
pub struct TemporalTransformer(TransformerLayers);

impl TemporalTransformer {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        spec: &TransformerSpec,
        relative_position: Option<usize>,
    ) -> Result<Self> {
        let kind = match relative_position {
            Some(temporal_length) => AttentionKind::RelativePosition { temporal_length },
            None => AttentionKind::Plain,
        };
        Ok(Self(TransformerLayers::new(
            vb,
            channels,
            spec,
            None,
            (kind, kind),
        )?))
    }

    /// `x` is `(b*t, c, h, w)` with frames inner; `frames` = t.
    pub fn forward_frames(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let (bt, c, h, w) = x.dims4()?;
        let b = bt / frames;
        // The norm of 'b c t h w' computed in place of the '(b t) c h w' layout, then
        // '(b t) c h w -> (b h w) t c' (the one copy).
        let normed = self.0.norm.forward_frames(x, frames)?;
        let tokens = normed
            .reshape((b, frames, c, h * w))?
            .permute((0, 3, 1, 2))?
            .reshape((b * h * w, frames, c))?;
        let y = self.0.run_blocks(&tokens, None)?;
        let y = self.0.proj_out.forward(&y)?;
        // '(b h w) t c -> (b t) c h w'
        let y = y
            .reshape((b, h * w, frames, c))?
            .permute((0, 2, 3, 1))?
            .reshape((bt, c, h, w))?;
        add_to_stream(x, &y)
    }
}
