//! OpenCLIP ViT-H/14 text tower as `FrozenOpenCLIPEmbedder(layer="penultimate")` runs it:
//! token + position embedding, every residual block but the last with a causal mask, then
//! `ln_final`; all 77 positions are the cross-attention context. Weights under
//! `cond_stage_model.model.`; each block's fused `attn.in_proj_weight` is split into q/k/v at load.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::attention::layer_norm;
use super::config::TextEncoderConfig;

/// `nn.MultiheadAttention` with a fused input projection.
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out_proj: Linear,
    heads: usize,
}

impl MultiheadAttention {
    pub fn new(vb: VarBuilder, width: usize, heads: usize) -> Result<Self> {
        let weight = vb.get((3 * width, width), "in_proj_weight")?;
        let bias = vb.get(3 * width, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                weight.narrow(0, i * width, width)?.contiguous()?,
                Some(bias.narrow(0, i * width, width)?.contiguous()?),
            ))
        };
        Ok(Self {
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out_proj: candle_nn::linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Self-attention over `(b, n, width)` with an optional additive `(n, n)` mask.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, width) = x.dims3()?;
        let d = width / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.heads, d))?
                .transpose(1, 2)?
                .reshape((b * self.heads, n, d))
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let mut scores = (q.matmul(&k.t()?)? * (d as f64).powf(-0.5))?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let out = super::kernels::softmax_last_dim(&scores)?.matmul(&v)?;
        let out = out
            .reshape((b, self.heads, n, d))?
            .transpose(1, 2)?
            .reshape((b, n, width))?;
        self.out_proj.forward(&out)
    }
}

/// Pre-LN residual block: x += attn(ln_1 x); x += mlp(ln_2 x) with exact GELU.
#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: MultiheadAttention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
}

impl ResidualAttentionBlock {
    pub fn new(vb: VarBuilder, width: usize, heads: usize) -> Result<Self> {
        let mlp = 4 * width;
        Ok(Self {
            ln_1: layer_norm(vb.pp("ln_1"), width, 1e-5)?,
            attn: MultiheadAttention::new(vb.pp("attn"), width, heads)?,
            ln_2: layer_norm(vb.pp("ln_2"), width, 1e-5)?,
            c_fc: candle_nn::linear(width, mlp, vb.pp("mlp.c_fc"))?,
            c_proj: candle_nn::linear(mlp, width, vb.pp("mlp.c_proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?.gelu_erf()?;
        x + self.c_proj.forward(&h)?
    }
}

#[derive(Debug, Clone)]
pub struct TextEncoder {
    token_embedding: Embedding,
    positional_embedding: Tensor,
    resblocks: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    context_length: usize,
}

impl TextEncoder {
    /// `vb` points at `cond_stage_model.model`. Only the blocks that run are loaded.
    pub fn new(vb: VarBuilder, cfg: &TextEncoderConfig) -> Result<Self> {
        let resblocks = (0..cfg.layers_run())
            .map(|i| {
                ResidualAttentionBlock::new(
                    vb.pp(format!("transformer.resblocks.{i}")),
                    cfg.width,
                    cfg.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            token_embedding: candle_nn::embedding(
                cfg.vocab_size,
                cfg.width,
                vb.pp("token_embedding"),
            )?,
            positional_embedding: vb
                .get((cfg.context_length, cfg.width), "positional_embedding")?,
            resblocks,
            ln_final: layer_norm(vb.pp("ln_final"), cfg.width, 1e-5)?,
            context_length: cfg.context_length,
        })
    }

    /// Token ids `(b, 77)` (u32) to the context `(b, 77, width)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.positional_embedding)?;
        let mask = causal_mask(self.context_length, x.dtype(), x.device())?;
        let mut x = x;
        for block in &self.resblocks {
            x = block.forward(&x, Some(&mask))?;
        }
        self.ln_final.forward(&x)
    }

    /// Encodes already tokenized prompts (each 77 ids).
    pub fn encode_ids(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let n = rows.len();
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (n, self.context_length), device)?;
        self.forward(&ids)
    }
}

/// -inf above the diagonal, 0 elsewhere.
fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (n, n), device)?.to_dtype(dtype)
}

/// True for the weights of the text tower's last block, which "penultimate" never runs
/// (`key` is a full checkpoint key).
pub fn is_skipped_block_key(cfg: &TextEncoderConfig, key: &str) -> bool {
    key.strip_prefix("cond_stage_model.model.transformer.resblocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|index| index.parse::<usize>().ok())
        .is_some_and(|index| index >= cfg.layers_run())
}
