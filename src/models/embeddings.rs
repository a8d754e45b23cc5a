//! Sinusoidal timestep embedding and the two-layer MLPs (`time_embed`, `fps_embedding`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// `timestep_embedding(t, dim)`: [cos(t·f_i), sin(t·f_i)] (cos first), f_i = 10000^(-i/half),
/// computed in f32 whatever the model dtype (in f16, t·f near t≈981 would lose whole radians).
pub fn timestep_embedding(values: &[f64], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let mut data = Vec::with_capacity(values.len() * half * 2);
    for &t in values {
        let args: Vec<f32> = freqs.iter().map(|f| t as f32 * f).collect();
        data.extend(args.iter().map(|a| a.cos()));
        data.extend(args.iter().map(|a| a.sin()));
    }
    Tensor::from_vec(data, (values.len(), half * 2), device)
}

/// Linear → SiLU → Linear, keys `.0` and `.2`.
#[derive(Debug, Clone)]
pub struct EmbeddingMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl EmbeddingMlp {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("0"))?,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("2"))?,
        })
    }

    /// Embeds raw scalar values (timesteps or fps) through the sinusoid and the MLP.
    pub fn embed(
        &self,
        values: &[f64],
        dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let sinusoid = timestep_embedding(values, dim, device)?.to_dtype(dtype)?;
        self.forward(&sinusoid)
    }
}

impl Module for EmbeddingMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}
