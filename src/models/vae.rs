//! AutoencoderKL (`lvdm/models/autoencoder.py`, `lvdm/modules/networks/ae_modules.py`): the
//! Stable Diffusion VAE layout under `first_stage_model.`. Inference only decodes, frame by
//! frame; encode is here for completeness (and for tests).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::config::VaeConfig;
use super::conv::{conv2d, Conv2d};
use super::norm::{group_norm, GroupNorm};
use super::precision::{add_to_stream, to_stream};
use super::resblock::conv3x3;

fn norm(vb: VarBuilder, channels: usize) -> Result<GroupNorm> {
    group_norm(vb, channels, 1e-6)
}

fn conv1x1(vb: VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    conv2d(cin, cout, 1, Conv2dConfig::default(), vb)
}

/// `ResnetBlock` (no time embedding): norm1-swish-conv1, norm2-swish-conv2, 1×1 `nin_shortcut`.
#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let nin_shortcut = if cin != cout {
            Some(conv1x1(vb.pp("nin_shortcut"), cin, cout)?)
        } else {
            None
        };
        Ok(Self {
            norm1: norm(vb.pp("norm1"), cin)?,
            conv1: conv3x3(vb.pp("conv1"), cin, cout, 1)?,
            norm2: norm(vb.pp("norm2"), cout)?,
            conv2: conv3x3(vb.pp("conv2"), cout, cout, 1)?,
            nin_shortcut,
        })
    }
}

impl Module for ResnetBlock {
    /// `x` is the residual stream (f32 in a half-precision decoder); so is the result.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let compute = self.conv1.dtype();
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.nin_shortcut {
            Some(conv) => add_to_stream(&conv.forward(&x.to_dtype(compute)?)?, &h),
            None => add_to_stream(x, &h),
        }
    }
}

/// Single-head spatial self-attention with 1×1 conv projections.
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            norm: norm(vb.pp("norm"), channels)?,
            q: conv1x1(vb.pp("q"), channels, channels)?,
            k: conv1x1(vb.pp("k"), channels, channels)?,
            v: conv1x1(vb.pp("v"), channels, channels)?,
            proj_out: conv1x1(vb.pp("proj_out"), channels, channels)?,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let tokens = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        };
        let q = tokens(self.q.forward(&normed)?)?;
        let k = tokens(self.k.forward(&normed)?)?;
        let v = tokens(self.v.forward(&normed)?)?;
        let out = super::attention::attention(&q, &k, &v, (c as f64).powf(-0.5))?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        add_to_stream(x, &self.proj_out.forward(&out)?)
    }
}

#[derive(Debug, Clone)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(vb.pp("block_1"), channels, channels)?,
            attn_1: AttnBlock::new(vb.pp("attn_1"), channels)?,
            block_2: ResnetBlock::new(vb.pp("block_2"), channels, channels)?,
        })
    }
}

impl Module for Mid {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)?)?)
    }
}

/// One resolution level: resnet blocks, then an optional resampling conv.
#[derive(Debug, Clone)]
struct Level {
    blocks: Vec<ResnetBlock>,
    resample: Option<Conv2d>,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let dd = &cfg.ddconfig;
        let mut down = Vec::new();
        let mut block_in = dd.ch;
        for (i, mult) in dd.ch_mult.iter().enumerate() {
            let vb_level = vb.pp(format!("down.{i}"));
            let block_out = dd.ch * mult;
            let blocks = (0..dd.num_res_blocks)
                .map(|j| {
                    let cin = if j == 0 { block_in } else { block_out };
                    ResnetBlock::new(vb_level.pp(format!("block.{j}")), cin, block_out)
                })
                .collect::<Result<_>>()?;
            block_in = block_out;
            let resample = if i + 1 != dd.ch_mult.len() {
                // pad (0,1,0,1) then 3×3 stride 2 without padding.
                let cfg = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                Some(conv2d(
                    block_in,
                    block_in,
                    3,
                    cfg,
                    vb_level.pp("downsample.conv"),
                )?)
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        let z_out = if dd.double_z {
            2 * dd.z_channels
        } else {
            dd.z_channels
        };
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), dd.in_channels, dd.ch, 1)?,
            down,
            mid: Mid::new(vb.pp("mid"), block_in)?,
            norm_out: norm(vb.pp("norm_out"), block_in)?,
            conv_out: conv3x3(vb.pp("conv_out"), block_in, z_out, 1)?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(conv) = &level.resample {
                let compute = conv.dtype();
                let padded = h.to_dtype(compute)?.pad_with_zeros(3, 0, 1)?;
                h = to_stream(&conv.forward(&padded.pad_with_zeros(2, 0, 1)?)?, compute)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// Indexed like the weights (`up.0` is the highest resolution); run from last to first.
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let dd = &cfg.ddconfig;
        let levels = dd.ch_mult.len();
        let mut block_in = dd.ch * dd.ch_mult[levels - 1];
        let conv_in = conv3x3(vb.pp("conv_in"), dd.z_channels, block_in, 1)?;
        let mid = Mid::new(vb.pp("mid"), block_in)?;
        let mut up = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let vb_level = vb.pp(format!("up.{i}"));
            let block_out = dd.ch * dd.ch_mult[i];
            let blocks = (0..=dd.num_res_blocks)
                .map(|j| {
                    let cin = if j == 0 { block_in } else { block_out };
                    ResnetBlock::new(vb_level.pp(format!("block.{j}")), cin, block_out)
                })
                .collect::<Result<_>>()?;
            block_in = block_out;
            let resample = if i != 0 {
                Some(conv3x3(
                    vb_level.pp("upsample.conv"),
                    block_in,
                    block_in,
                    1,
                )?)
            } else {
                None
            };
            up.push(Level { blocks, resample });
        }
        up.reverse();
        Ok(Self {
            conv_in: conv_in.keep_f32()?,
            mid,
            up,
            norm_out: norm(vb.pp("norm_out"), block_in)?,
            conv_out: conv3x3(vb.pp("conv_out"), block_in, dd.out_ch, 1)?.keep_f32()?,
        })
    }
}

/// f32 latents in, f32 images out; the layers in between run in the weights' dtype (the first
/// and last conv in f32, see `conv.rs`).
impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        // f32 from the latent to the first norm: the start of the residual stream.
        let mut h = self.mid.forward(&self.conv_in.forward_f32(z)?)?;
        for level in self.up.iter().rev() {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(conv) = &level.resample {
                let (_, _, height, width) = h.dims4()?;
                let compute = conv.dtype();
                let up = h
                    .to_dtype(compute)?
                    .upsample_nearest2d(height * 2, width * 2)?;
                h = to_stream(&conv.forward(&up)?, compute)?;
            }
        }
        let h = self.norm_out.forward_silu_as(&h, DType::F32)?;
        self.conv_out.forward_f32(&h)
    }
}

/// The first-stage model. `vb` points at `first_stage_model`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    scale_factor: f64,
}

/// Mean and clamped log-variance of the latent posterior, `(n, z, h, w)` each.
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let z = cfg.ddconfig.z_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv: conv1x1(vb.pp("quant_conv"), 2 * z, 2 * cfg.embed_dim)?,
            post_quant_conv: conv1x1(vb.pp("post_quant_conv"), cfg.embed_dim, z)?.keep_f32()?,
            scale_factor: cfg.scale_factor,
        })
    }

    /// Decodes one batch of latent images `(n, 4, h, w)` in the diffusion (scaled) space.
    /// Multiplies by float32(1/scale_factor), exactly as the original does. The latents are
    /// taken in f32 (whatever dtype they come in) and the images returned in f32.
    pub fn decode_latent_images(&self, z: &Tensor) -> Result<Tensor> {
        let inv = (1.0f32 / self.scale_factor as f32) as f64;
        let z = (z.to_dtype(DType::F32)? * inv)?;
        self.decoder.forward(&self.post_quant_conv.forward_f32(&z)?)
    }

    /// `decode_first_stage_2DAE`: `(b, 4, t, h, w)` latents to `(b, 3, t, H, W)` video, frame by
    /// frame so that peak memory is one frame's decoder activations.
    pub fn decode_video(&self, latents: &Tensor) -> Result<Tensor> {
        let frames = latents.dim(2)?;
        let decoded = (0..frames)
            .map(|i| self.decode_latent_images(&latents.narrow(2, i, 1)?.squeeze(2)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&decoded, 2)
    }

    /// Images `(n, 3, H, W)` in [-1, 1] to the posterior moments (unscaled).
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let moments = self.quant_conv.forward(&self.encoder.forward(x)?)?;
        let z = moments.dim(1)? / 2;
        Ok(Posterior {
            mean: moments.narrow(1, 0, z)?,
            logvar: moments.narrow(1, z, z)?.clamp(-30f32, 20f32)?,
        })
    }

    pub fn scale_factor(&self) -> f64 {
        self.scale_factor
    }
}
