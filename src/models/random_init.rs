//! Deterministic random weights for the `tiny` smoke model and for benchmarks of full-size
//! shapes without checkpoints. Each tensor is drawn from a ChaCha stream seeded by a hash of its
//! name, so the same name always gets the same values, on any machine.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A `VarBuilder` backend that invents every requested tensor.
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// A VarBuilder over random weights.
    pub fn var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights::new(seed)), dtype, device.clone())
    }
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()));
        let dims = s.dims();
        // Norm weights near 1, biases and tables small, matrices scaled by fan-in so that
        // activations stay O(1) through the network.
        let (mean, std) = match h {
            Init::Const(v) if v != 0.0 => (v, 0.1),
            Init::Const(_) => (0.0, 0.02),
            _ if dims.len() >= 2 && !name.contains("embedding") && !name.contains("table") => {
                let fan_in: usize = dims[1..].iter().product();
                (0.0, 1.0 / (fan_in.max(1) as f64).sqrt())
            }
            _ if name.ends_with("weight") && dims.len() == 1 => (1.0, 0.1),
            _ => (0.0, 0.02),
        };
        let data: Vec<f32> = (0..s.elem_count())
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                (mean + std * z) as f32
            })
            .collect();
        Tensor::from_vec(data, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
