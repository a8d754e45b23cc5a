//! `lvdm/modules/attention.py`: CrossAttention (with the relative-position and image-token
//! variants), the GEGLU feed-forward and BasicTransformerBlock.
//!
//! Attention never materialises the whole token×token matrix: at 576×1024 the first level has
//! 9216 tokens per frame and a full matrix would need 27 GB. [`attention`] walks over blocks of
//! batch rows and queries so that each score block stays under [`attention_block_elements`].
//!
//! For f16/bf16 tensors the scores and the softmax are computed in f32 (q and k are widened,
//! which costs n·d conversions, not n·m), and the probabilities are rounded once before the
//! product with v, whose GEMM accumulates in f32.

use candle_core::{DType, Module, Result, Tensor, D};

use super::kernels;
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// Upper bound on the elements of one score block (batch rows × queries × keys): 2^28 on a
/// GPU (512 MB in f16), 2^24 on a CPU where smaller blocks stay in cache.
pub fn attention_block_elements(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        1 << 24
    } else {
        1 << 28
    }
}

/// The dtype scores and softmax are computed in for activations of `dtype`.
fn score_dtype(dtype: DType) -> DType {
    super::precision::wide(dtype)
}

/// softmax(q kᵀ · scale) v over the last two dims of (B, N, D) tensors, in blocks.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_blocked(q, k, v, scale, attention_block_elements(q.device()))
}

/// [`attention`] with an explicit block budget (in score elements).
pub fn attention_blocked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    block_elements: usize,
) -> Result<Tensor> {
    let (batch, n_q, _) = q.dims3()?;
    let n_k = k.dim(1)?;
    let scores = score_dtype(q.dtype());
    let kt = k.to_dtype(scores)?.t()?;
    // Scaling q (n·d values) instead of the scores (n·m values) saves a full pass over them.
    let q = &(q.to_dtype(scores)? * scale)?;
    let per_batch_row = n_q * n_k;
    if batch * per_batch_row <= block_elements {
        return attention_block(q, &kt, v);
    }
    // Prefer whole batch rows (fewer, larger matmuls); split queries only when one row is too big.
    let batch_step = (block_elements / per_batch_row).max(1);
    let query_step = if per_batch_row <= block_elements {
        n_q
    } else {
        (block_elements / n_k).max(1)
    };
    let mut rows = Vec::with_capacity(batch.div_ceil(batch_step));
    for b0 in (0..batch).step_by(batch_step) {
        let bn = batch_step.min(batch - b0);
        let (qb, ktb, vb) = (
            q.narrow(0, b0, bn)?,
            kt.narrow(0, b0, bn)?,
            v.narrow(0, b0, bn)?,
        );
        if query_step == n_q {
            rows.push(attention_block(&qb, &ktb, &vb)?);
            continue;
        }
        let mut parts = Vec::with_capacity(n_q.div_ceil(query_step));
        for q0 in (0..n_q).step_by(query_step) {
            let qn = query_step.min(n_q - q0);
            parts.push(attention_block(&qb.narrow(1, q0, qn)?, &ktb, &vb)?);
        }
        rows.push(Tensor::cat(&parts, 1)?);
    }
    Tensor::cat(&rows, 0)
}

fn attention_block(q_scaled: &Tensor, kt: &Tensor, v: &Tensor) -> Result<Tensor> {
    kernels::softmax_last_dim(&q_scaled.matmul(kt)?)?
        .to_dtype(v.dtype())?
        .matmul(v)
}

/// `RelativePosition`: a learned table indexed by the clamped key-minus-query distance.
#[derive(Debug, Clone)]
pub struct RelativePosition {
    embeddings_table: Tensor,
    max_relative_position: usize,
}

impl RelativePosition {
    pub fn new(vb: VarBuilder, num_units: usize, max_relative_position: usize) -> Result<Self> {
        let embeddings_table = vb.get(
            (2 * max_relative_position + 1, num_units),
            "embeddings_table",
        )?;
        Ok(Self {
            embeddings_table,
            max_relative_position,
        })
    }

    /// E[i, j] = table[clamp(j - i, -max, max) + max], shape (len_q, len_k, units).
    pub fn forward(&self, len_q: usize, len_k: usize) -> Result<Tensor> {
        let max = self.max_relative_position as i64;
        let mut index = Vec::with_capacity(len_q * len_k);
        for i in 0..len_q as i64 {
            for j in 0..len_k as i64 {
                index.push(((j - i).clamp(-max, max) + max) as u32);
            }
        }
        let index = Tensor::from_vec(index, len_q * len_k, self.embeddings_table.device())?;
        let units = self.embeddings_table.dim(1)?;
        self.embeddings_table
            .index_select(&index, 0)?
            .reshape((len_q, len_k, units))
    }
}

/// Which kind of CrossAttention a block holds; decides the weights it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    Plain,
    /// Temporal attention of the VideoCrafter1 text-to-video models.
    RelativePosition {
        temporal_length: usize,
    },
    /// i2v spatial cross-attention: the first 77 context tokens are text, the rest image tokens.
    ImageCrossAttention,
}

/// Number of text tokens before the image tokens in an i2v context (hard-coded in the original).
pub const TEXT_CONTEXT_LEN: usize = 77;

#[derive(Debug, Clone)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    image_kv: Option<(Linear, Linear)>,
    relative: Option<(RelativePosition, RelativePosition)>,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        kind: AttentionKind,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        let to_q = candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?;
        let to_k = candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?;
        let to_v = candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?;
        let to_out = candle_nn::linear(inner, query_dim, vb.pp("to_out.0"))?;
        let image_kv = match kind {
            AttentionKind::ImageCrossAttention => Some((
                candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k_ip"))?,
                candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v_ip"))?,
            )),
            _ => None,
        };
        let relative = match kind {
            AttentionKind::RelativePosition { temporal_length } => Some((
                RelativePosition::new(vb.pp("relative_position_k"), dim_head, temporal_length)?,
                RelativePosition::new(vb.pp("relative_position_v"), dim_head, temporal_length)?,
            )),
            _ => None,
        };
        Ok(Self {
            to_q,
            to_k,
            to_v,
            to_out,
            image_kv,
            relative,
            heads,
            scale: (dim_head as f64).powf(-0.5),
        })
    }

    /// 'b n (h d) -> (b h) n d'
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, inner) = x.dims3()?;
        let d = inner / self.heads;
        x.reshape((b, n, self.heads, d))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, d))
    }

    /// '(b h) n d -> b n (h d)'
    fn merge_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (bh, n, d) = x.dims3()?;
        x.reshape((bh / self.heads, self.heads, n, d))?
            .transpose(1, 2)?
            .reshape((bh / self.heads, n, self.heads * d))
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let context = context.unwrap_or(x);
        let out = match &self.image_kv {
            Some((to_k_ip, to_v_ip)) => {
                let text_len = TEXT_CONTEXT_LEN.min(context.dim(1)?);
                let text = context.narrow(1, 0, text_len)?;
                let image = context.narrow(1, text_len, context.dim(1)? - text_len)?;
                let k = self.split_heads(&self.to_k.forward(&text)?)?;
                let v = self.split_heads(&self.to_v.forward(&text)?)?;
                let k_ip = self.split_heads(&to_k_ip.forward(&image)?)?;
                let v_ip = self.split_heads(&to_v_ip.forward(&image)?)?;
                // Two independent softmaxes; image_cross_attention_scale is 1.0.
                (attention(&q, &k, &v, self.scale)? + attention(&q, &k_ip, &v_ip, self.scale)?)?
            }
            None => {
                let k = self.split_heads(&self.to_k.forward(context)?)?;
                let v = self.split_heads(&self.to_v.forward(context)?)?;
                match &self.relative {
                    Some(relative) => self.relative_attention(&q, &k, &v, relative)?,
                    None => attention(&q, &k, &v, self.scale)?,
                }
            }
        };
        self.to_out.forward(&self.merge_heads(&out)?)
    }

    /// Temporal attention with relative-position terms on scores and values. Sequences are the
    /// frame count (16), so the full score matrix is small.
    fn relative_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (rel_k, rel_v): &(RelativePosition, RelativePosition),
    ) -> Result<Tensor> {
        let (len_q, len_k) = (q.dim(1)?, k.dim(1)?);
        let dtype = v.dtype();
        let (q, k) = (
            &q.to_dtype(score_dtype(dtype))?,
            &k.to_dtype(score_dtype(dtype))?,
        );
        let e_k = rel_k.forward(len_q, len_k)?.to_dtype(q.dtype())?; // (t, s, d)
        let e_v = rel_v.forward(len_q, len_k)?.to_dtype(dtype)?;
        let scores = q.matmul(&k.t()?)?;
        // einsum('b t d, t s d -> b t s'): per query position t, a (b, d) x (d, s) product.
        let rel_scores = q
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&e_k.transpose(1, 2)?.contiguous()?)?
            .transpose(0, 1)?;
        let scores = ((scores + rel_scores)? * self.scale)?;
        let probs = kernels::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let out = probs.matmul(v)?;
        // einsum('b t s, t s d -> b t d')
        let rel_out = probs
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&e_v.contiguous()?)?
            .transpose(0, 1)?;
        out + rel_out
    }
}

/// FeedForward with GEGLU (`ff.net.0.proj`, `ff.net.2`): exact-erf GELU on the gate half.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: candle_nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let half = h.dim(D::Minus1)? / 2;
        let a = h.narrow(D::Minus1, 0, half)?;
        let gate = h.narrow(D::Minus1, half, half)?;
        self.out.forward(&(a * gate.gelu_erf()?)?)
    }
}

pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        dim,
        candle_nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
        vb,
    )
}

/// A LayerNorm on the residual stream: f32 affine parameters (the stream is f32 in a
/// half-precision network), the result in the compute dtype of the projection it feeds.
#[derive(Debug, Clone)]
struct StreamLayerNorm {
    norm: LayerNorm,
    compute: DType,
}

impl StreamLayerNorm {
    fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let compute = vb.dtype();
        let norm = layer_norm(vb, dim, eps)?;
        let wide = super::precision::wide(compute);
        let bias = match norm.bias() {
            Some(bias) => bias.to_dtype(wide)?,
            None => candle_core::bail!("layer norm without bias"),
        };
        Ok(Self {
            norm: LayerNorm::new(norm.weight().to_dtype(wide)?, bias, eps),
            compute,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = super::precision::to_stream(x, self.compute)?;
        self.norm.forward(&x)?.to_dtype(self.compute)
    }
}

/// BasicTransformerBlock: self-attention, cross-attention (a second self-attention when there
/// is no context), GEGLU feed-forward; pre-LayerNorm residuals, kept in the stream dtype.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff: FeedForward,
    norm1: StreamLayerNorm,
    norm2: StreamLayerNorm,
    norm3: StreamLayerNorm,
}

impl BasicTransformerBlock {
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: Option<usize>,
        self_kind: AttentionKind,
        cross_kind: AttentionKind,
    ) -> Result<Self> {
        Ok(Self {
            attn1: CrossAttention::new(vb.pp("attn1"), dim, None, heads, dim_head, self_kind)?,
            attn2: CrossAttention::new(
                vb.pp("attn2"),
                dim,
                context_dim,
                heads,
                dim_head,
                cross_kind,
            )?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            norm1: StreamLayerNorm::new(vb.pp("norm1"), dim, 1e-5)?,
            norm2: StreamLayerNorm::new(vb.pp("norm2"), dim, 1e-5)?,
            norm3: StreamLayerNorm::new(vb.pp("norm3"), dim, 1e-5)?,
        })
    }

    /// `x` is the token residual stream `(n, tokens, dim)`; so is the result.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        use super::precision::add_to_stream;
        let x = add_to_stream(x, &self.attn1.forward(&self.norm1.forward(x)?, None)?)?;
        let x = add_to_stream(&x, &self.attn2.forward(&self.norm2.forward(&x)?, context)?)?;
        add_to_stream(&x, &self.ff.forward(&self.norm3.forward(&x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        use crate::sampler::noise::{NoiseSource, SeededNoise};
        SeededNoise::new(seed)
            .next(&shape.into(), &Device::Cpu)
            .unwrap()
    }

    #[test]
    fn blocked_attention_equals_one_block() {
        let (q, k, v) = (
            random((6, 50, 8), 1),
            random((6, 37, 8), 2),
            random((6, 37, 8), 3),
        );
        let whole = attention_blocked(&q, &k, &v, 0.35, usize::MAX).unwrap();
        // Batch blocks only; batch and query blocks; a budget below one row.
        for budget in [2 * 50 * 37, 50 * 37 - 1, 100, 1] {
            let blocked = attention_blocked(&q, &k, &v, 0.35, budget).unwrap();
            let diff = (blocked - &whole)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "budget {budget}: diff {diff}");
        }
    }
}
