//! GroupNorm with an optional SiLU, as one op: statistics in f32 or wider, the f32 affine and
//! the activation applied before the single rounding to the storage type.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

struct GroupNormOp {
    groups: usize,
    /// Consecutive batch rows that form one sample (see [`group_norm_frames`]).
    frames: usize,
    eps: f32,
    silu: bool,
    /// The result's dtype (the input's, or the compute dtype of a mixed-precision network).
    out: DType,
}

/// Everything about one GroupNorm call but its tensors.
#[derive(Debug, Clone, Copy)]
pub struct GroupNormSpec {
    pub groups: usize,
    pub eps: f64,
    /// Apply SiLU to the result (before its one rounding).
    pub silu: bool,
    /// Consecutive batch rows whose statistics are joint (see [`group_norm_frames`]).
    pub frames: usize,
    /// The result's dtype: reading an f32 residual stream and writing the f16/bf16 input of
    /// the next convolution costs no separate cast.
    pub out: DType,
}

/// GroupNorm of `x` `(n, c, ...)` over `groups` groups of channels with f32 `weight` and `bias`
/// `(c,)`, followed by SiLU when `silu`. The result has `x`'s dtype.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    group_norm_frames(x, 1, weight, bias, groups, eps, silu)
}

/// [`group_norm`] of a `(b*t, c, ...)` tensor whose statistics are joint over the `t = frames`
/// consecutive rows of each sample: the original's GroupNorm of the `(b, c, t, ...)` tensor,
/// computed without moving the frames next to each other first.
pub fn group_norm_frames(
    x: &Tensor,
    frames: usize,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let spec = GroupNormSpec {
        groups,
        eps,
        silu,
        frames,
        out: x.dtype(),
    };
    group_norm_with(x, weight, bias, spec)
}

/// The general form of [`group_norm`] and [`group_norm_frames`]: any input and output float
/// dtypes, the arithmetic in f32 (f64 statistics on the CPU) either way.
pub fn group_norm_with(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: GroupNormSpec,
) -> Result<Tensor> {
    let GroupNormSpec {
        groups,
        eps,
        silu,
        frames,
        out,
    } = spec;
    let dims = x.dims();
    if dims.len() < 3 {
        candle_core::bail!("group_norm: input rank must be at least 3, got {dims:?}");
    }
    let channels = dims[1];
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("group_norm: {groups} groups do not divide {channels} channels");
    }
    if frames == 0 || !dims[0].is_multiple_of(frames) {
        candle_core::bail!("group_norm: {frames} frames do not divide {} rows", dims[0]);
    }
    if !out.is_float() {
        candle_core::bail!("group_norm: output dtype must be a float type, got {out:?}");
    }
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [channels] || t.dtype() != DType::F32 {
            candle_core::bail!(
                "group_norm: {name} must be f32 ({channels},), got {:?} {:?}",
                t.dtype(),
                t.dims()
            );
        }
    }
    let op = GroupNormOp {
        groups,
        frames,
        eps: eps as f32,
        silu,
        out,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

/// (rows, channels, spatial) of a contiguous `(rows, c, ...)` layout.
fn extents(layout: &Layout) -> (usize, usize, usize) {
    let dims = layout.dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("group_norm: {what} must be contiguous"),
    }
}

impl GroupNormOp {
    /// [`Self::cpu`] into a storage of the output dtype.
    fn cpu_to<T: WithDType>(
        &self,
        x: &[T],
        weight: &[f32],
        bias: &[f32],
        layout: &Layout,
    ) -> Result<CpuStorage> {
        Ok(match self.out {
            DType::F32 => CpuStorage::F32(self.cpu(x, weight, bias, layout)),
            DType::F16 => CpuStorage::F16(self.cpu(x, weight, bias, layout)),
            DType::BF16 => CpuStorage::BF16(self.cpu(x, weight, bias, layout)),
            DType::F64 => CpuStorage::F64(self.cpu(x, weight, bias, layout)),
            other => candle_core::bail!("group_norm: unsupported output dtype {other:?}"),
        })
    }

    fn cpu<T: WithDType, U: WithDType>(
        &self,
        x: &[T],
        weight: &[f32],
        bias: &[f32],
        layout: &Layout,
    ) -> Vec<U> {
        let (rows, channels, spatial) = extents(layout);
        // One chunk = one group of channels of one row; a sample's group spans `frames` chunks,
        // `channels * spatial` apart.
        let chunk = channels / self.groups * spatial;
        let row = channels * spatial;
        let mut out = vec![U::zero(); x.len()];
        if chunk == 0 {
            return out;
        }
        let samples = rows / self.frames;
        let stats: Vec<(f32, f32)> = (0..samples * self.groups)
            .into_par_iter()
            .map(|sg| {
                let (sample, group) = (sg / self.groups, sg % self.groups);
                let chunks = (0..self.frames).map(|f| {
                    let start = (sample * self.frames + f) * row + group * chunk;
                    &x[start..start + chunk]
                });
                // Two passes in f64: the mean, then the squared deviations.
                let n = (chunk * self.frames) as f64;
                let mean = chunks.clone().flatten().map(|v| v.to_f64()).sum::<f64>() / n;
                let var = chunks
                    .flatten()
                    .map(|v| {
                        let d = v.to_f64() - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / n;
                (mean as f32, (1.0 / (var + self.eps as f64).sqrt()) as f32)
            })
            .collect();
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .enumerate()
            .for_each(|(index, (dst, src))| {
                let (r, group) = (index / self.groups, index % self.groups);
                let (mean, inv_std) = stats[(r / self.frames) * self.groups + group];
                let first_channel = group * (channels / self.groups);
                for (c, (dst, src)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate()
                {
                    let (w, b) = (weight[first_channel + c], bias[first_channel + c]);
                    for (d, s) in dst.iter_mut().zip(src) {
                        let mut v = (s.to_f64() as f32 - mean) * inv_std * w + b;
                        if self.silu {
                            v /= 1.0 + (-v).exp();
                        }
                        *d = U::from_f64(v as f64);
                    }
                }
            });
        out
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "floor33-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(weight), CpuStorage::F32(bias)) = (weight, bias) else {
            candle_core::bail!("group_norm: weight and bias must be f32")
        };
        let weight = contiguous(weight, weight_layout, "weight")?;
        let bias = contiguous(bias, bias_layout, "bias")?;
        let out = match x {
            CpuStorage::F32(s) => {
                self.cpu_to(contiguous(s, x_layout, "x")?, weight, bias, x_layout)
            }
            CpuStorage::F16(s) => {
                self.cpu_to(contiguous(s, x_layout, "x")?, weight, bias, x_layout)
            }
            CpuStorage::BF16(s) => {
                self.cpu_to(contiguous(s, x_layout, "x")?, weight, bias, x_layout)
            }
            CpuStorage::F64(s) => {
                self.cpu_to(contiguous(s, x_layout, "x")?, weight, bias, x_layout)
            }
            other => candle_core::bail!("group_norm: unsupported dtype {:?}", other.dtype()),
        }?;
        Ok((out, x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        weight: &candle_core::CudaStorage,
        weight_layout: &Layout,
        bias: &candle_core::CudaStorage,
        bias_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let offsets = |layout: &Layout, what: &str| match layout.contiguous_offsets() {
            Some(o) => Ok(o),
            None => candle_core::bail!("group_norm: {what} must be contiguous"),
        };
        let (rows, channels, spatial) = extents(x_layout);
        let out = super::cuda::group_norm(super::cuda::GroupNormArgs {
            x,
            x_offsets: offsets(x_layout, "x")?,
            weight,
            weight_offsets: offsets(weight_layout, "weight")?,
            bias,
            bias_offsets: offsets(bias_layout, "bias")?,
            samples: rows / self.frames,
            frames: self.frames,
            channels,
            spatial,
            groups: self.groups,
            eps: self.eps,
            silu: self.silu,
            out: self.out,
        })?;
        Ok((out, x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        values(a)
            .iter()
            .zip(values(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn affine(c: usize) -> (Tensor, Tensor) {
        let dev = &Device::Cpu;
        (
            (Tensor::randn(0f32, 0.2, c, dev).unwrap() + 1.0).unwrap(),
            Tensor::randn(0f32, 0.1, c, dev).unwrap(),
        )
    }

    /// candle's unfused GroupNorm (+ SiLU), the formulation this op replaces.
    fn unfused(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, silu: bool) -> Tensor {
        let gn = candle_nn::GroupNorm::new(w.clone(), b.clone(), w.dim(0).unwrap(), groups, 1e-5)
            .unwrap();
        let y = gn.forward(x).unwrap();
        if silu {
            y.silu().unwrap()
        } else {
            y
        }
    }

    #[test]
    fn f32_matches_unfused_group_norm_and_silu() {
        // 4-D and 5-D inputs, an offset mean (x ~ 3 + N(0, 1)) and a non-contiguous input.
        let x = (Tensor::randn(0f32, 1.0, (2, 64, 5, 6, 7), &Device::Cpu).unwrap() + 3.0).unwrap();
        let (w, b) = affine(64);
        for silu in [false, true] {
            let want = unfused(&x, &w, &b, 32, silu);
            let got = group_norm(&x, &w, &b, 32, 1e-5, silu).unwrap();
            assert!(max_diff(&got, &want) < 2e-5, "5-D silu={silu}");
            let x4 = x.flatten_from(3).unwrap().transpose(2, 3).unwrap();
            let want = unfused(&x4.contiguous().unwrap(), &w, &b, 32, silu);
            let got = group_norm(&x4, &w, &b, 32, 1e-5, silu).unwrap();
            assert!(max_diff(&got, &want) < 2e-5, "strided silu={silu}");
        }
    }

    #[test]
    fn frames_match_group_norm_of_the_5d_tensor() {
        // (b*t, c, h, w) with joint statistics over t == GroupNorm of (b, c, t, h, w).
        let (b, t, c) = (2, 3, 64);
        let x = Tensor::randn(0f32, 1.0, (b * t, c, 4, 5), &Device::Cpu).unwrap();
        let (w, bias) = affine(c);
        let x5 = x
            .reshape((b, t, c, 4, 5))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let want = unfused(&x5, &w, &bias, 32, true)
            .transpose(1, 2)
            .unwrap()
            .reshape((b * t, c, 4, 5))
            .unwrap();
        let got = group_norm_frames(&x, t, &w, &bias, 32, 1e-5, true).unwrap();
        assert!(max_diff(&got, &want) < 2e-5);
        assert!(group_norm_frames(&x, 4, &w, &bias, 32, 1e-5, true).is_err());
    }

    #[test]
    fn half_types_round_once_from_f32() {
        // The half result is the f32 result of the rounded input, rounded once: within half an
        // ulp of outputs below 4 (f16 2e-3, bf16 1.6e-2), with slack for the f32 arithmetic.
        let x = Tensor::randn(0f32, 1.0, (3, 64, 4, 9), &Device::Cpu).unwrap();
        let (w, b) = affine(64);
        for (dtype, tol) in [(DType::F16, 4e-3), (DType::BF16, 3e-2)] {
            let xh = x.to_dtype(dtype).unwrap();
            let want =
                group_norm(&xh.to_dtype(DType::F32).unwrap(), &w, &b, 32, 1e-5, true).unwrap();
            let got = group_norm(&xh, &w, &b, 32, 1e-5, true).unwrap();
            assert_eq!(got.dtype(), dtype);
            let err = max_diff(&got, &want);
            assert!(err <= tol, "{dtype:?}: {err:e}");
        }
    }

    #[test]
    fn output_dtype_is_the_f32_result_rounded_once() {
        // An f32 residual stream normalised straight into a half-precision conv input: the f32
        // op's result rounded once, within the output type's unit roundoff (f16 2^-11, bf16
        // 2^-8, relative; plus f16's subnormal spacing), and exactly it in f32.
        let x = (Tensor::randn(0f32, 1.0, (4, 64, 3, 5), &Device::Cpu).unwrap() + 2.0).unwrap();
        let (w, b) = affine(64);
        let want = values(&group_norm_frames(&x, 2, &w, &b, 32, 1e-5, true).unwrap());
        for (out, rel) in [
            (DType::F16, 2f32.powi(-11)),
            (DType::BF16, 2f32.powi(-8)),
            (DType::F32, 0.0),
        ] {
            let spec = GroupNormSpec {
                groups: 32,
                eps: 1e-5,
                silu: true,
                frames: 2,
                out,
            };
            let got = group_norm_with(&x, &w, &b, spec).unwrap();
            assert_eq!(got.dtype(), out);
            for (g, w) in values(&got).iter().zip(&want) {
                let slack = if out == DType::F16 { 6e-8 } else { 0.0 };
                assert!(
                    (g - w).abs() <= w.abs() * rel + slack,
                    "{out:?}: {g} vs {w}"
                );
            }
        }
        let spec = GroupNormSpec {
            groups: 32,
            eps: 1e-5,
            silu: false,
            frames: 1,
            out: DType::U8,
        };
        assert!(group_norm_with(&x, &w, &b, spec).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = Tensor::zeros((2, 6, 4), DType::F32, &Device::Cpu).unwrap();
        let (w, b) = affine(6);
        assert!(group_norm(&x, &w, &b, 4, 1e-5, false).is_err());
        let (w8, b8) = affine(8);
        assert!(group_norm(&x, &w8, &b8, 2, 1e-5, false).is_err());
        let wh = w.to_dtype(DType::F16).unwrap();
        assert!(group_norm(&x, &wh, &b, 2, 1e-5, false).is_err());
    }
}
