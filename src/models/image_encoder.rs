//! i2v image conditioning: the OpenCLIP ViT visual tower as `FrozenOpenCLIPImageEmbedderV2`
//! runs it (weights under `embedder.model.visual.`) and [`ImageConditioner`], which chains CLIP
//! preprocessing, this tower and the Resampler into the 16 image tokens of the i2v context.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::attention::layer_norm;
use super::config::{ImageConditioningConfig, VisionEncoderConfig};
use super::image_preprocess::clip_preprocess;
use super::resampler::Resampler;
use super::text_encoder::ResidualAttentionBlock;

/// open_clip `VisionTransformer` up to the last residual block. The tower's `ln_post` and `proj`
/// are never applied by the original (it keeps every token of the last block), so they are not
/// loaded.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// `conv1.weight` (width, 3, patch, patch) flattened to (width, 3·patch²): the stride-patch
    /// convolution without bias is a matmul over non-overlapping patches.
    patch_weight: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    resblocks: Vec<ResidualAttentionBlock>,
    image_size: usize,
    patch_size: usize,
    width: usize,
}

impl VisionTransformer {
    /// `vb` points at `embedder.model.visual`.
    pub fn new(vb: VarBuilder, cfg: &VisionEncoderConfig) -> Result<Self> {
        let (p, width) = (cfg.patch_size, cfg.width);
        let grid = cfg.image_size / p;
        let patch_weight = vb
            .get((width, 3, p, p), "conv1.weight")?
            .reshape((width, 3 * p * p))?;
        let resblocks = (0..cfg.layers)
            .map(|i| {
                ResidualAttentionBlock::new(
                    vb.pp(format!("transformer.resblocks.{i}")),
                    width,
                    cfg.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_weight,
            class_embedding: vb.get(width, "class_embedding")?,
            positional_embedding: vb.get((grid * grid + 1, width), "positional_embedding")?,
            ln_pre: layer_norm(vb.pp("ln_pre"), width, 1e-5)?,
            resblocks,
            image_size: cfg.image_size,
            patch_size: p,
            width,
        })
    }

    /// Preprocessed `(b, 3, 224, 224)` to all `(b, 1 + grid², width)` tokens of the last block.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, self.image_size, self.image_size) {
            candle_core::bail!(
                "vision tower expects (b, 3, {0}, {0}), got {1:?}",
                self.image_size,
                x.dims()
            );
        }
        let (p, g) = (self.patch_size, self.image_size / self.patch_size);
        // (b, 3, g·p, g·p) -> (b, g², 3·p·p) with (c, ky, kx) inner order = conv1's weight layout.
        let patches = x
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, 3 * p * p))?;
        let tokens = patches.broadcast_matmul(&self.patch_weight.t()?)?;
        let class = self
            .class_embedding
            .reshape((1, 1, self.width))?
            .repeat((b, 1, 1))?;
        let mut x =
            Tensor::cat(&[&class, &tokens], 1)?.broadcast_add(&self.positional_embedding)?;
        x = self.ln_pre.forward(&x)?;
        for block in &self.resblocks {
            x = block.forward(&x, None)?;
        }
        Ok(x)
    }
}

/// `get_image_embeds`: image in [-1, 1] → CLIP preprocess → ViT tokens → Resampler, giving the
/// image part `(b, num_queries, context_dim)` of the i2v cross-attention context.
#[derive(Debug, Clone)]
pub struct ImageConditioner {
    pub encoder: VisionTransformer,
    pub resampler: Resampler,
    image_size: usize,
    dtype: DType,
}

impl ImageConditioner {
    /// `vb_root` is the checkpoint root (keys `embedder.model.visual.*`, `image_proj_model.*`).
    pub fn new(vb_root: VarBuilder, cfg: &ImageConditioningConfig) -> Result<Self> {
        let dtype = vb_root.dtype();
        Ok(Self {
            encoder: VisionTransformer::new(vb_root.pp("embedder.model.visual"), &cfg.vision)?,
            resampler: Resampler::new(vb_root.pp("image_proj_model"), &cfg.resampler)?,
            image_size: cfg.vision.image_size,
            dtype,
        })
    }

    /// ViT tokens of `(b, 3, H, W)` images in [-1, 1] (any size: preprocessing resizes).
    pub fn vit_tokens(&self, images_m1_1: &Tensor) -> Result<Tensor> {
        let x = clip_preprocess(images_m1_1, self.image_size)?.to_dtype(self.dtype)?;
        self.encoder.forward(&x)
    }

    /// Image tokens `(b, num_queries, context_dim)`.
    pub fn embed(&self, images_m1_1: &Tensor) -> Result<Tensor> {
        self.resampler.forward(&self.vit_tokens(images_m1_1)?)
    }

    /// Image tokens of the unconditional context: the original embeds `zeros(b, 3, 224, 224)`
    /// (a mid-grey picture after `(x + 1) / 2`) through the whole path, not zero tokens. Every
    /// row is the same, so one row is computed and repeated.
    pub fn uncond_embed(&self, batch: usize, device: &Device, dtype: DType) -> Result<Tensor> {
        let grey = Tensor::zeros((1, 3, self.image_size, self.image_size), dtype, device)?;
        self.embed(&grey)?.repeat((batch, 1, 1))
    }
}
