//! Gaussian noise for the sampler. candle's CPU RNG cannot be seeded, so noise is drawn on the
//! host from a seeded ChaCha stream and uploaded: the same seed gives the same noise on every
//! device, and the same video on the same device.

use candle_core::{Device, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Where the sampler's N(0, 1) draws come from (x_T first, then one draw per step).
pub trait NoiseSource {
    fn next(&mut self, shape: &Shape, device: &Device) -> Result<Tensor>;
}

/// Seeded, reproducible noise.
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn next(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let data: Vec<f32> = (0..shape.elem_count())
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(data, shape, device)
    }
}

/// Replays recorded draws in order (used to reproduce a reference run exactly).
pub struct ReplayNoise {
    draws: std::collections::VecDeque<Tensor>,
}

impl ReplayNoise {
    pub fn new(draws: impl IntoIterator<Item = Tensor>) -> Self {
        Self {
            draws: draws.into_iter().collect(),
        }
    }
}

impl NoiseSource for ReplayNoise {
    fn next(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let draw = self
            .draws
            .pop_front()
            .ok_or_else(|| candle_core::Error::Msg("replayed noise exhausted".into()))?;
        draw.reshape(shape)?.to_device(device)
    }
}
