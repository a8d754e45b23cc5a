//! The IP-Adapter style `Resampler` (`lvdm/modules/encoders/ip_resampler.py`, weights under
//! `image_proj_model.`): 16 learned latent queries cross-attend to the projected ViT tokens,
//! giving the image tokens of the i2v context.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::attention::layer_norm;
use super::config::ResamplerConfig;

/// `PerceiverAttention`: the latents attend to the image tokens and to themselves.
#[derive(Debug, Clone)]
pub struct PerceiverAttention {
    norm1: LayerNorm,
    norm2: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl PerceiverAttention {
    pub fn new(vb: VarBuilder, dim: usize, dim_head: usize, heads: usize) -> Result<Self> {
        let inner = dim_head * heads;
        Ok(Self {
            norm1: layer_norm(vb.pp("norm1"), dim, 1e-5)?,
            norm2: layer_norm(vb.pp("norm2"), dim, 1e-5)?,
            to_q: candle_nn::linear_no_bias(dim, inner, vb.pp("to_q"))?,
            to_kv: candle_nn::linear_no_bias(dim, 2 * inner, vb.pp("to_kv"))?,
            to_out: candle_nn::linear_no_bias(inner, dim, vb.pp("to_out"))?,
            heads,
            dim_head,
        })
    }

    /// `x` (b, n, dim) image features, `latents` (b, l, dim) → (b, l, dim).
    pub fn forward(&self, x: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let x = self.norm1.forward(x)?;
        let latents = self.norm2.forward(latents)?;
        let (b, l, _) = latents.dims3()?;
        let inner = self.heads * self.dim_head;
        let q = self.to_q.forward(&latents)?;
        // Keys and values come from the image tokens followed by the latents themselves.
        let kv = self.to_kv.forward(&Tensor::cat(&[&x, &latents], 1)?)?;
        let (k, v) = (kv.narrow(2, 0, inner)?, kv.narrow(2, inner, inner)?);
        let heads = |t: &Tensor| -> Result<Tensor> {
            let n = t.dim(1)?;
            t.reshape((b, n, self.heads, self.dim_head))?
                .transpose(1, 2)?
                .contiguous()
        };
        // The original scales q and k each by dim_head^-1/4 (not the product by dim_head^-1/2).
        let scale = (self.dim_head as f64).powf(-0.25);
        let q = (heads(&q)? * scale)?;
        let k = (heads(&k)? * scale)?;
        let v = heads(&v)?;
        let weight = q.matmul(&k.t()?)?;
        let dtype = weight.dtype();
        // Softmax in f32, cast back (as the original does for half-precision runs).
        let weight =
            candle_nn::ops::softmax_last_dim(&weight.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
        let out = weight.matmul(&v)?.transpose(1, 2)?.reshape((b, l, inner))?;
        self.to_out.forward(&out)
    }
}

/// `FeedForward`: LayerNorm → Linear (no bias) → exact GELU → Linear (no bias), keys `0`, `1`, `3`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            norm: layer_norm(vb.pp("0"), dim, 1e-5)?,
            fc1: candle_nn::linear_no_bias(dim, inner, vb.pp("1"))?,
            fc2: candle_nn::linear_no_bias(inner, dim, vb.pp("3"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(&self.norm.forward(x)?)?.gelu_erf()?;
        self.fc2.forward(&h)
    }
}

#[derive(Debug, Clone)]
pub struct Resampler {
    latents: Tensor,
    proj_in: Linear,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    proj_out: Linear,
    norm_out: LayerNorm,
}

impl Resampler {
    /// `vb` points at `image_proj_model`.
    pub fn new(vb: VarBuilder, cfg: &ResamplerConfig) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok((
                    PerceiverAttention::new(vb.pp("0"), cfg.dim, cfg.dim_head, cfg.heads)?,
                    FeedForward::new(vb.pp("1"), cfg.dim, cfg.ff_mult)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            latents: vb.get((1, cfg.num_queries, cfg.dim), "latents")?,
            proj_in: candle_nn::linear(cfg.embedding_dim, cfg.dim, vb.pp("proj_in"))?,
            layers,
            proj_out: candle_nn::linear(cfg.dim, cfg.output_dim, vb.pp("proj_out"))?,
            norm_out: layer_norm(vb.pp("norm_out"), cfg.output_dim, 1e-5)?,
        })
    }

    /// ViT tokens `(b, n, embedding_dim)` → image tokens `(b, num_queries, output_dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let x = self.proj_in.forward(x)?;
        let mut latents = self.latents.repeat((b, 1, 1))?;
        for (attn, ff) in &self.layers {
            latents = (attn.forward(&x, &latents)? + &latents)?;
            latents = (ff.forward(&latents)? + &latents)?;
        }
        self.norm_out.forward(&self.proj_out.forward(&latents)?)
    }
}
