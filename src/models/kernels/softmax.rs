//! Softmax over the last dimension with all arithmetic in f32, whatever the storage type.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

struct SoftmaxF32;

/// softmax(x) along the last dimension; the result has `x`'s dtype. The maximum, the
/// exponentials and their sum are computed in f32 (f64 for f64 input).
///
/// On the CPU this is candle's softmax on the input widened to f32 (the same arithmetic as
/// [`SoftmaxF32`]'s CPU code, but compiled with the dependencies' optimisation in dev builds,
/// where this crate's own loops are not optimised); elsewhere it is the custom op.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        let wide = match x.dtype() {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        return candle_nn::ops::softmax_last_dim(&x.to_dtype(wide)?)?.to_dtype(x.dtype());
    }
    x.contiguous()?.apply_op1_no_bwd(&SoftmaxF32)
}

fn softmax_rows<T: WithDType>(src: &[T], cols: usize) -> Vec<T> {
    let mut dst = vec![T::zero(); src.len()];
    dst.par_chunks_mut(cols)
        .zip(src.par_chunks(cols))
        .for_each(|(out, row)| {
            let max = row
                .iter()
                .map(|v| v.to_f64() as f32)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            let exps: Vec<f32> = row
                .iter()
                .map(|v| {
                    let e = (v.to_f64() as f32 - max).exp();
                    sum += e;
                    e
                })
                .collect();
            let inv = 1.0 / sum;
            for (o, e) in out.iter_mut().zip(exps) {
                *o = T::from_f64((e * inv) as f64);
            }
        });
    dst
}

fn softmax_rows_f64(src: &[f64], cols: usize) -> Vec<f64> {
    let mut dst = vec![0f64; src.len()];
    dst.par_chunks_mut(cols)
        .zip(src.par_chunks(cols))
        .for_each(|(out, row)| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0f64;
            for (o, v) in out.iter_mut().zip(row) {
                *o = (v - max).exp();
                sum += *o;
            }
            out.iter_mut().for_each(|o| *o /= sum);
        });
    dst
}

impl CustomOp1 for SoftmaxF32 {
    fn name(&self) -> &'static str {
        "floor33-softmax-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: input must be contiguous")
        };
        let cols = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage {
            CpuStorage::F32(s) => CpuStorage::F32(softmax_rows(&s[start..end], cols)),
            CpuStorage::F16(s) => CpuStorage::F16(softmax_rows(&s[start..end], cols)),
            CpuStorage::BF16(s) => CpuStorage::BF16(softmax_rows(&s[start..end], cols)),
            CpuStorage::F64(s) => CpuStorage::F64(softmax_rows_f64(&s[start..end], cols)),
            other => candle_core::bail!("softmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Some(offsets) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: input must be contiguous")
        };
        let cols = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = super::cuda::softmax(storage, offsets, cols)?;
        Ok((out, layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_candle_softmax_in_f32() {
        let x = (Tensor::randn(0f32, 3.0, (5, 7, 300), &Device::Cpu).unwrap() + 40.0).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let got = softmax_last_dim(&x).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
    }

    #[test]
    fn custom_op_cpu_code_matches_the_cpu_path() {
        // The op's own CPU code is the reference for its CUDA kernel.
        let x = Tensor::randn(0f32, 3.0, (4, 513), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let xd = x.to_dtype(dtype).unwrap();
            let op = xd.apply_op1_no_bwd(&SoftmaxF32).unwrap();
            let path = softmax_last_dim(&xd).unwrap();
            let diff = max_diff(
                &op.to_dtype(DType::F32).unwrap(),
                &path.to_dtype(DType::F32).unwrap(),
            );
            // f32: summation order only; half types: at most one rounding step apart.
            assert!(
                diff < 1e-6 || (dtype != DType::F32 && diff < 4e-3),
                "{dtype:?}: {diff}"
            );
        }
    }

    #[test]
    fn half_input_is_reduced_in_f32() {
        // Scores of a few units over 4096 keys: the result must be the f32 softmax of the
        // rounded input, rounded once (within one half-type rounding of each probability).
        let x = Tensor::randn(0f32, 4.0, (3, 4096), &Device::Cpu).unwrap();
        for (dtype, rel) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
            let xh = x.to_dtype(dtype).unwrap();
            let want = candle_nn::ops::softmax_last_dim(&xh.to_dtype(DType::F32).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = softmax_last_dim(&xh).unwrap();
            assert_eq!(got.dtype(), dtype);
            let got = got
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (g, w) in got.iter().zip(&want) {
                // Plus f16's subnormal spacing (2^-24) for the smallest probabilities.
                assert!((g - w).abs() <= w * rel + 6e-8, "{dtype:?}: {g} vs {w}");
            }
        }
    }
}
