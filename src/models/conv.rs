//! Conv2d as the models use it: candle's, except that bf16 on the CPU (which candle's CPU
//! convolution does not support) runs widened to f32 and is rounded once, like a GPU's bf16
//! convolution with f32 accumulation. That keeps the CPU a reference for every dtype.
//!
//! The convolutions at the edges of a half-precision network (the UNet's first and last, the
//! VAE decoder's first and last) can also run in f32 ([`Conv2d::keep_f32`]): their inputs are
//! f32 latents of magnitude up to ~200 and their outputs the noise prediction or the video, where
//! one f16/bf16 rounding alone costs more than the rest of the network. They have 3 or 4 channels
//! on one side, so f32 costs next to nothing there.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// An f32 copy: for bf16 weights on the CPU, and for [`Conv2d::keep_f32`].
    widened: Option<candle_nn::Conv2d>,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Result<Self> {
        let widened = if weight.dtype() == DType::BF16 && weight.device().is_cpu() {
            let bias = bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?;
            Some(candle_nn::Conv2d::new(
                weight.to_dtype(DType::F32)?,
                bias,
                config,
            ))
        } else {
            None
        };
        Ok(Self {
            inner: candle_nn::Conv2d::new(weight, bias, config),
            widened,
        })
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    pub fn config(&self) -> &Conv2dConfig {
        self.inner.config()
    }

    /// Keeps an f32 copy of half-precision weights for [`Conv2d::forward_f32`].
    pub fn keep_f32(mut self) -> Result<Self> {
        if self.widened.is_none() && self.weight().dtype() != DType::F32 {
            let bias = self.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
            let weight = self.weight().to_dtype(DType::F32)?;
            self.widened = Some(candle_nn::Conv2d::new(weight, bias, *self.config()));
        }
        Ok(self)
    }

    /// The convolution of `x` (any float dtype) computed and returned in f32; with half weights
    /// this needs [`Conv2d::keep_f32`].
    pub fn forward_f32(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        match &self.widened {
            Some(wide) => wide.forward(&x),
            None if self.weight().dtype() == DType::F32 => self.inner.forward(&x),
            None => candle_core::bail!("conv2d: forward_f32 needs keep_f32 for half weights"),
        }
    }

    /// The dtype of the weights (the network's compute dtype).
    pub fn dtype(&self) -> DType {
        self.weight().dtype()
    }

    /// The same convolution without its bias (for callers that add it with something else).
    pub fn without_bias(&self) -> Result<Self> {
        Self::new(self.weight().clone(), None, *self.config())
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.widened {
            Some(wide) if x.dtype() == DType::BF16 && x.device().is_cpu() => wide
                .forward(&x.to_dtype(DType::F32)?)?
                .to_dtype(DType::BF16),
            _ => self.inner.forward(x),
        }
    }
}

/// `candle_nn::conv2d` returning [`Conv2d`]: weight `(cout, cin, k, k)` and bias `(cout,)`.
pub fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    // The same init hints as candle_nn::conv2d: checkpoints ignore them, but the random-weight
    // models (`tiny`, bench) draw from them, and a zero hint would flatten every activation.
    let fan_in = (cin / config.groups) * kernel * kernel;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let weight = vb.get_with_hints(
        (cout, cin / config.groups, kernel, kernel),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = vb.get_with_hints(
        cout,
        "bias",
        candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Conv2d::new(weight, Some(bias), config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bf16_on_cpu_is_the_f32_convolution_rounded_once() {
        let dev = &Device::Cpu;
        let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let x = bf(Tensor::randn(0f32, 1.0, (2, 8, 5, 6), dev).unwrap());
        let w = bf(Tensor::randn(0f32, 0.2, (4, 8, 3, 3), dev).unwrap());
        let b = bf(Tensor::randn(0f32, 0.1, 4, dev).unwrap());
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let got = Conv2d::new(w.clone(), Some(b.clone()), cfg)
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = candle_nn::Conv2d::new(f32(&w), Some(f32(&b)), cfg)
            .forward(&f32(&x))
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let diff = (f32(&got) - f32(&want))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}
